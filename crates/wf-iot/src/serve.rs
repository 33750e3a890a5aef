//! `wf-iot serve`: every service in one process (the default), or one
//! service alone for the distributed deployment.

use std::sync::Arc;

use anyhow::Context;
use wf_common::shutdown::until_stopped;

use crate::config::PlatformConfig;
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

pub async fn run(config: PlatformConfig, target: Target) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let shutdown = wf_common::shutdown::signal();
    match target {
        Target::All => {
            let platform = Platform::start(config).await?;
            println!("{}", platform.ports.banner());
            platform.run_until_signal().await
        }
        Target::Auth => {
            // auth-service writes the audit entries the other services
            // publish, so it needs the bus they share.
            let bus = distributed_bus(&config).await?;
            let mut auth = config.auth;
            auth.internal_token = config.internal.required_token()?;
            let app = auth_service::Application::build(Arc::new(auth))
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
            let bus = distributed_bus(&config).await?;
            let mut device = config.device;
            device.internal_token = config.internal.required_token()?;
            // Replicas share the permission answers they get.
            if device.permission_cache_redis_url.trim().is_empty() {
                device.permission_cache_redis_url = config.events.redis_url.clone();
            }
            let app = device_service::Application::build(Arc::new(device), bus).await?;
            tracing::info!(
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "device-service listening"
            );
            until_stopped("device-service", app.run_until_stopped(shutdown)).await
        }
        Target::MqttGateway => {
            let bus = distributed_bus(&config).await?;
            let mut gateway = config.mqtt_gateway;
            gateway.internal_token = config.internal.required_token()?;
            let app = mqtt_gateway::Application::build(Arc::new(gateway), bus).await?;
            tracing::info!(
                mqtt_port = app.mqtt_port(),
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "mqtt-gateway listening"
            );
            until_stopped("mqtt-gateway", app.run_until_stopped(shutdown)).await
        }
        Target::Firmware => {
            let bus = distributed_bus(&config).await?;
            let mut firmware = config.firmware;
            firmware.internal_token = config.internal.required_token()?;
            if firmware.permission_cache_redis_url.trim().is_empty() {
                firmware.permission_cache_redis_url = config.events.redis_url.clone();
            }
            let app = firmware_service::Application::build(Arc::new(firmware), bus).await?;
            tracing::info!(
                http_port = app.http_port(),
                grpc_port = app.grpc_port(),
                "firmware-service listening"
            );
            until_stopped("firmware-service", app.run_until_stopped(shutdown)).await
        }
        Target::Worker => {
            let bus = distributed_bus(&config).await?;
            let mut firmware = config.firmware;
            firmware.internal_token = config.internal.required_token()?;
            // Alone, the worker answers its own health and readiness probes.
            firmware.worker.http_port = firmware.worker.http_port.or(Some(WORKER_HTTP_PORT));
            let worker = firmware_service::worker::Worker::build(Arc::new(firmware), bus).await?;
            tracing::info!(
                name = worker.name(),
                http_port = worker.http_port(),
                "rollout worker running"
            );
            until_stopped("rollout worker", worker.run_until_stopped(shutdown)).await
        }
        Target::Gateway => {
            let bus = distributed_bus(&config).await?;
            let app = api_gateway::Application::build(Arc::new(config.gateway), bus).await?;
            tracing::info!(http_port = app.http_port(), "api-gateway listening");
            until_stopped("api-gateway", app.run_until_stopped(shutdown)).await
        }
    }
}

/// Where a worker running alone serves `/healthz`, `/readyz` and
/// `/metrics` unless `firmware.worker.http_port` says otherwise.
pub const WORKER_HTTP_PORT: u16 = 8105;

/// Services running apart exchange events through Redis.
async fn distributed_bus(
    config: &PlatformConfig,
) -> anyhow::Result<Arc<dyn wf_common::events::EventBus>> {
    anyhow::ensure!(
        !config.events.redis_url.trim().is_empty(),
        "a service running on its own needs events.redis_url (WF_IOT_EVENTS__REDIS_URL=redis://127.0.0.1:6379)"
    );
    event_bus(config).await
}
