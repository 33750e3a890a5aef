//! Starting services: every one in one process (all-in-one), or one alone.
//! In all-in-one mode the services still call each other over gRPC, on the
//! ports this process bound.

use std::net::TcpListener as StdListener;
use std::sync::Arc;

use anyhow::Context;
use wf_common::events::{EventBus, InProcessBus, RedisBus};
use wf_common::shutdown::{Shutdown, until_stopped};

use crate::config::{PlatformConfig, Role};
use crate::serve::Target;

/// Connects the configured event bus: Redis Streams (waiting for Redis
/// with backoff when it is not reachable yet), or in-process.
pub async fn event_bus(config: &PlatformConfig) -> anyhow::Result<Arc<dyn EventBus>> {
    if config.events.redis_url.trim().is_empty() {
        Ok(Arc::new(InProcessBus::new()))
    } else {
        let bus = RedisBus::connect_retrying(&config.events.redis_url, config.events.redis.clone())
            .await
            .with_context(|| {
                format!(
                    "connecting to Redis at {}",
                    wf_common::config::redact_url(&config.events.redis_url)
                )
            })?;
        Ok(Arc::new(bus))
    }
}

/// A free TCP port on the loopback interface when `port` is 0.
fn concrete(port: u16) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let listener = StdListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The ports the running platform listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub auth_http: u16,
    pub auth_grpc: u16,
    pub device_http: u16,
    pub device_grpc: u16,
    pub mqtt: u16,
    pub mqtt_ws: u16,
    pub mqtt_http: u16,
    pub mqtt_grpc: u16,
    pub firmware_http: u16,
    pub firmware_grpc: u16,
    pub gateway_http: u16,
}

impl Ports {
    /// What a person opens first, one line each: the console, the API
    /// documentation, MQTT and MQTT over WebSocket (when it is on).
    pub fn banner(&self) -> String {
        let mut lines = vec![
            "wf-iot is running:".to_string(),
            format!("  console        http://localhost:{}/", self.gateway_http),
            format!(
                "  API docs       http://localhost:{}/docs",
                self.gateway_http
            ),
            format!("  MQTT           mqtt://localhost:{}", self.mqtt),
        ];
        if self.mqtt_ws != 0 {
            lines.push(format!(
                "  MQTT over WS   ws://localhost:{}/mqtt",
                self.mqtt_ws
            ));
        }
        lines.push("Stop with Ctrl-C.".to_string());
        lines.join("\n")
    }
}

/// The all-in-one platform, started.
pub struct Platform {
    pub ports: Ports,
    pub bus: Arc<dyn EventBus>,
    pub config: PlatformConfig,
    stop: Shutdown,
    /// The gateway stops first, so the offline events of its devices reach
    /// the services still running.
    edge_stop: Shutdown,
    /// How many of `tasks`, at the end, are the edge (the gateways).
    edge_count: usize,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Platform {
    /// Starts every service. Every listener is bound before anything is
    /// created or served, so a port that is taken stops the start before
    /// the first administrator exists. Ports configured as 0 are chosen
    /// here first, so each service can be told where the others are.
    pub async fn start(config: PlatformConfig) -> anyhow::Result<Self> {
        let mut config = config.complete(Role::Serve(Target::All))?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        config.device.grpc_port = concrete(config.device.grpc_port)?;
        config.mqtt_gateway.grpc_port = concrete(config.mqtt_gateway.grpc_port)?;
        config.firmware.http_port = concrete(config.firmware.http_port)?;
        let bus = event_bus(&config).await?;
        let stop = Shutdown::new();
        let edge_stop = Shutdown::new();

        let auth = auth_service::Application::build(Arc::new(config.auth.clone()))
            .await?
            .with_events(bus.clone());
        let (auth_http, auth_grpc) = (auth.http_port(), auth.grpc_port());

        config.device.auth_grpc_url = format!("http://127.0.0.1:{auth_grpc}");
        config.device.auth_jwks_url = format!("http://127.0.0.1:{auth_http}/.well-known/jwks.json");
        config.device.mqtt_gateway_url =
            format!("http://127.0.0.1:{}", config.mqtt_gateway.grpc_port);
        let device =
            device_service::Application::build(Arc::new(config.device.clone()), bus.clone())
                .await?;
        let (device_http, device_grpc) = (device.http_port(), device.grpc_port());

        config.mqtt_gateway.device_service_url = format!("http://127.0.0.1:{device_grpc}");
        let mqtt =
            mqtt_gateway::Application::build(Arc::new(config.mqtt_gateway.clone()), bus.clone())
                .await?;
        let (mqtt_port, mqtt_ws, mqtt_http, mqtt_grpc) = (
            mqtt.mqtt_port(),
            mqtt.ws_port(),
            mqtt.http_port(),
            mqtt.grpc_port(),
        );

        config.firmware.auth_grpc_url = config.device.auth_grpc_url.clone();
        config.firmware.auth_jwks_url = config.device.auth_jwks_url.clone();
        config.firmware.device_service_url = format!("http://127.0.0.1:{device_grpc}");
        config.firmware.mqtt_gateway_url = format!("http://127.0.0.1:{mqtt_grpc}");
        if config.firmware.public_url == firmware_service::Config::default().public_url {
            config.firmware.public_url = format!("http://127.0.0.1:{}", config.firmware.http_port);
        }
        let firmware =
            firmware_service::Application::build(Arc::new(config.firmware.clone()), bus.clone())
                .await?;
        let (firmware_http, firmware_grpc) = (firmware.http_port(), firmware.grpc_port());
        let worker =
            firmware_service::worker::Worker::build(Arc::new(config.firmware.clone()), bus.clone())
                .await?;

        config.gateway.auth_url = format!("http://127.0.0.1:{auth_http}");
        config.gateway.device_url = format!("http://127.0.0.1:{device_http}");
        config.gateway.firmware_url = format!("http://127.0.0.1:{firmware_http}");
        config.gateway.jwks_url = String::new();
        // The console shows new devices the broker's real port.
        config.gateway.console.mqtt_port = mqtt_port;
        let gateway =
            api_gateway::Application::build(Arc::new(config.gateway.clone()), bus.clone()).await?;
        let gateway_http = gateway.http_port();

        // Every port is bound: only now is the first administrator made.
        if let auth_service::AdminBootstrap::Created {
            username,
            generated_password,
        } = auth.ensure_admin(config.admin_password()).await?
        {
            print_admin_banner(&username, generated_password.as_deref(), gateway_http);
        }
        // Each service is listed in the shutdown's reports until it stops.
        let mut tasks = vec![
            tokio::spawn(until_stopped(
                "auth-service",
                auth.run_until_stopped(stop.wait()),
            )),
            tokio::spawn(until_stopped(
                "device-service",
                device.run_until_stopped(stop.wait()),
            )),
            tokio::spawn(until_stopped(
                "firmware-service",
                firmware.run_until_stopped(stop.wait()),
            )),
            tokio::spawn(until_stopped(
                "rollout worker",
                worker.run_until_stopped(stop.wait()),
            )),
        ];
        let edge_tasks = vec![
            tokio::spawn(until_stopped(
                "mqtt-gateway",
                mqtt.run_until_stopped(edge_stop.wait()),
            )),
            tokio::spawn(until_stopped(
                "api-gateway",
                gateway.run_until_stopped(edge_stop.wait()),
            )),
        ];
        let edge_count = edge_tasks.len();
        tasks.extend(edge_tasks);
        let ports = Ports {
            auth_http,
            auth_grpc,
            device_http,
            device_grpc,
            mqtt: mqtt_port,
            mqtt_ws,
            mqtt_http,
            mqtt_grpc,
            firmware_http,
            firmware_grpc,
            gateway_http,
        };
        tracing::info!(
            console = ports.gateway_http,
            mqtt = ports.mqtt,
            mqtt_ws = ports.mqtt_ws,
            auth_http = ports.auth_http,
            device_http = ports.device_http,
            firmware_http = ports.firmware_http,
            mqtt_gateway_http = ports.mqtt_http,
            auth_grpc = ports.auth_grpc,
            device_grpc = ports.device_grpc,
            firmware_grpc = ports.firmware_grpc,
            mqtt_gateway_grpc = ports.mqtt_grpc,
            "wf-iot is running"
        );
        Ok(Self {
            ports,
            bus,
            config,
            stop,
            edge_stop,
            edge_count,
            tasks,
        })
    }

    /// Starts every service with embedded defaults in `dir`, on free
    /// loopback ports, without MQTT over WebSocket: for benchmarks and tests.
    pub async fn start_local(dir: &std::path::Path, admin_password: &str) -> anyhow::Result<Self> {
        Self::start_local_with(dir, admin_password, PlatformConfig::load(None)?).await
    }

    /// [`Platform::start_local`] from a given configuration, whose ports,
    /// hosts and file locations are replaced.
    pub async fn start_local_with(
        dir: &std::path::Path,
        admin_password: &str,
        mut config: PlatformConfig,
    ) -> anyhow::Result<Self> {
        config.data_dir = dir.to_path_buf();
        let localhost = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        config.auth = auth_service::Config {
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: String::new(),
            signing_key_file: Default::default(),
            ..config.auth
        };
        config.device = device_service::Config {
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: String::new(),
            ..config.device
        };
        config.mqtt_gateway = mqtt_gateway::Config {
            host: localhost,
            mqtt_port: 0,
            ws_enabled: false,
            http_port: 0,
            grpc_port: 0,
            ..config.mqtt_gateway
        };
        let mut firmware = firmware_service::Config {
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: String::new(),
            upload_dir: Default::default(),
            ..config.firmware
        };
        // Files belong under `dir`: completing the configuration puts them there.
        firmware.storage.local_dir = Default::default();
        config.firmware = firmware;
        config.gateway = api_gateway::Config {
            host: localhost,
            http_port: 0,
            ..config.gateway
        };
        config.events.redis_url = String::new();
        config.admin_password = Some(admin_password.to_string().into());
        Self::start(config).await
    }

    /// Stops every service and waits for them to drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.edge_stop.trigger();
        let edge = self.tasks.split_off(self.tasks.len() - self.edge_count);
        for task in edge {
            task.await??;
        }
        self.stop.trigger();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }

    /// Runs until SIGINT/SIGTERM, or until a service fails. While the
    /// services drain, what they still wait for is logged; a second signal
    /// exits at once (see [`wf_common::shutdown::signal`]).
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let failed = {
            let tasks = &mut self.tasks;
            tokio::select! {
                () = wf_common::shutdown::signal() => None,
                (result, index, _) = futures_util::future::select_all(tasks.iter_mut()) => Some((result, index)),
            }
        };
        if let Some((result, index)) = failed {
            self.tasks.remove(index);
            self.edge_stop.trigger();
            self.stop.trigger();
            for task in self.tasks {
                let _ = task.await;
            }
            return match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("a service stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            };
        }
        self.stop().await
    }
}

fn print_admin_banner(username: &str, generated: Option<&str>, http_port: u16) {
    println!();
    println!("  wf-iot created the first administrator account.");
    println!("    username: {username}");
    match generated {
        Some(password) => {
            println!("    password: {password}");
            println!("  This password is shown only once: keep it, then change it.");
        }
        None => println!("    password: the value of WF_IOT_ADMIN_PASSWORD"),
    }
    println!("  A lost password is set anew with: wf-iot user reset-password {username}");
    println!(
        "  Log in: curl -s -X POST http://localhost:{http_port}/api/v1/auth/login \
         -H 'content-type: application/json' -d '{{\"username\":\"{username}\",\"password\":\"...\"}}'"
    );
    println!();
}
