//! `wf-iot serve`: every service in one process (the default), or one
//! service alone for the distributed deployment.

use std::sync::Arc;

use anyhow::Context;
use wf_common::shutdown::until_stopped;

use crate::config::{PlatformConfig, Role};
use crate::platform::{Platform, event_bus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// All services with embedded defaults.
    All,
    /// auth-service alone.
    Auth,
    /// device-service alone.
    Device,
    /// mqtt-gateway alone.
    MqttGateway,
    /// firmware-service alone (its HTTP and gRPC APIs).
    Firmware,
    /// The rollout worker alone.
    Worker,
    /// The api-gateway alone: the front door on port 8000.
    Gateway,
}

/// Ports a user moves most often, as `wf-iot serve` flags; they override
/// the configuration file and the environment.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct PortFlags {
    /// The console and API port (`gateway.http_port`, 8000).
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// The embedded broker's MQTT port (`mqtt_gateway.mqtt_port`, 1883).
    #[arg(long, value_name = "PORT")]
    pub mqtt_port: Option<u16>,
    /// The embedded broker's MQTT over WebSocket port
    /// (`mqtt_gateway.ws_port`, 8083).
    #[arg(long, value_name = "PORT")]
    pub ws_port: Option<u16>,
}

impl PortFlags {
    pub fn apply(&self, config: &mut PlatformConfig) {
        if let Some(port) = self.http_port {
            config.gateway.http_port = port;
        }
        if let Some(port) = self.mqtt_port {
            config.mqtt_gateway.mqtt_port = port;
        }
        if let Some(port) = self.ws_port {
            config.mqtt_gateway.ws_port = port;
        }
    }
}

/// Runs `target` with a configuration [`PlatformConfig::complete`]d for
/// it (completed here again, which changes nothing).
pub async fn run(config: PlatformConfig, target: Target) -> anyhow::Result<()> {
    let config = config.complete(Role::Serve(target))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let shutdown = wf_common::shutdown::signal();
    if target == Target::All {
        let platform = Platform::start(config).await?;
        println!("{}", platform.ports.banner());
        return platform.run_until_signal().await;
    }
    // Services running apart exchange events through Redis.
    let bus = event_bus(&config).await?;
    match target {
        Target::All => unreachable!("started above"),
        Target::Auth => {
            // auth-service writes the audit entries the other services
            // publish, so it needs the bus they share.
            let app = auth_service::Application::build(Arc::new(config.auth))
                .await?
                .with_events(bus);
            tracing::info!(
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "auth-service listening"
            );
            until_stopped("auth-service", app.run_until_stopped(shutdown)).await
        }
        Target::Device => {
            let app = device_service::Application::build(Arc::new(config.device), bus).await?;
            tracing::info!(
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "device-service listening"
            );
            until_stopped("device-service", app.run_until_stopped(shutdown)).await
        }
        Target::MqttGateway => {
            let app = mqtt_gateway::Application::build(Arc::new(config.mqtt_gateway), bus).await?;
            tracing::info!(
                mqtt_port = app.mqtt_port(),
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "mqtt-gateway listening"
            );
            until_stopped("mqtt-gateway", app.run_until_stopped(shutdown)).await
        }
        Target::Firmware => {
            let app = firmware_service::Application::build(Arc::new(config.firmware), bus).await?;
            tracing::info!(
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "firmware-service listening"
            );
            until_stopped("firmware-service", app.run_until_stopped(shutdown)).await
        }
        Target::Worker => {
            let worker =
                firmware_service::worker::Worker::build(Arc::new(config.firmware), bus).await?;
            tracing::info!(
                name = worker.name(),
                http_port = worker.http_port(),
                "rollout worker running"
            );
            until_stopped("rollout worker", worker.run_until_stopped(shutdown)).await
        }
        Target::Gateway => {
            let app = api_gateway::Application::build(Arc::new(config.gateway), bus).await?;
            tracing::info!(http_port = app.http_port(), "api-gateway listening");
            until_stopped("api-gateway", app.run_until_stopped(shutdown)).await
        }
    }
}
