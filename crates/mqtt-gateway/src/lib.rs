//! mqtt-gateway: the embedded MQTT broker (TCP and WebSocket) with device
//! authentication through device-service and per-device topic ACLs; device
//! messages turned into events (telemetry in batches) on the event bus;
//! the platform's trusted publish and live subscriptions over gRPC; and
//! the HTTP auth/ACL hooks for sites running EMQX instead.

// A failed unwrap is how a test says what went wrong.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
mod broker;
pub mod clients;
pub mod domain;
pub mod error;
mod grpc;
mod http;
mod ingest;
mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use wf_common::events::EventBus;
use wf_common::shutdown::Shutdown;

use crate::broker::{Broker, BrokerSettings};
use crate::clients::DeviceServiceAuthenticator;
use crate::ingest::{Batcher, Ingest};
use crate::state::AppState;

/// mqtt-gateway configuration (`[mqtt_gateway]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on.
    pub host: IpAddr,
    /// MQTT over TCP.
    pub mqtt_port: u16,
    /// Serve MQTT over WebSocket on `ws_port`.
    pub ws_enabled: bool,
    pub ws_port: u16,
    /// Health, readiness, metrics and the EMQX hooks.
    pub http_port: u16,
    pub grpc_port: u16,
    /// gRPC endpoint of device-service, which checks device credentials.
    pub device_service_url: String,
    /// Largest device message payload ingested, and largest platform
    /// publish accepted.
    pub max_payload_bytes: usize,
    /// Telemetry messages per `device.data.received` event at most.
    pub batch_max_messages: usize,
    /// How long a batch waits for more messages after its first one.
    pub batch_linger_ms: u64,
    /// Events waiting for the bus before new ones are dropped (and counted).
    pub ingest_queue_capacity: usize,
    /// How long a successful device authentication is remembered.
    pub auth_cache_ttl_secs: u64,
    /// Malformed messages are logged at most once per device per interval
    /// (every one is counted).
    pub malformed_log_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            mqtt_port: 1883,
            ws_enabled: true,
            ws_port: 8083,
            http_port: 8104,
            grpc_port: 50054,
            device_service_url: "http://127.0.0.1:50052".into(),
            max_payload_bytes: 64 * 1024,
            batch_max_messages: 500,
            batch_linger_ms: 20,
            ingest_queue_capacity: 65_536,
            auth_cache_ttl_secs: 60,
            malformed_log_interval_secs: 60,
        }
    }
}

/// mqtt-gateway with its listeners bound.
pub struct Application {
    state: AppState,
    broker: Broker,
    batcher: Batcher,
    http: TcpListener,
    grpc: TcpListener,
}

impl Application {
    /// Binds the MQTT, WebSocket, HTTP and gRPC listeners (port 0 picks a
    /// free port) and starts the broker's hooks. device-service is
    /// connected to lazily, so it need not be up yet.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        // The broker counts from its first connection on.
        wf_common::telemetry::metrics_handle();
        let authenticator = Arc::new(
            DeviceServiceAuthenticator::new(
                &config.device_service_url,
                Duration::from_secs(config.auth_cache_ttl_secs),
            )
            .with_context(|| format!("device_service_url {:?}", config.device_service_url))?,
        );
        let (ingest, batcher) = Ingest::new(&config, bus.clone());
        let settings = BrokerSettings {
            mqtt_addr: SocketAddr::new(config.host, config.mqtt_port),
            ws_addr: config
                .ws_enabled
                .then(|| SocketAddr::new(config.host, config.ws_port)),
            max_payload_bytes: config.max_payload_bytes,
        };
        let broker = Broker::bind(&settings, authenticator.clone(), ingest.clone()).await?;
        let http = TcpListener::bind(SocketAddr::new(config.host, config.http_port))
            .await
            .with_context(|| format!("binding mqtt-gateway HTTP port {}", config.http_port))?;
        let grpc = TcpListener::bind(SocketAddr::new(config.host, config.grpc_port))
            .await
            .with_context(|| format!("binding mqtt-gateway gRPC port {}", config.grpc_port))?;
        let state = AppState {
            config,
            authenticator,
            ingest,
            platform: broker.platform(),
            bus,
        };
        Ok(Self {
            state,
            broker,
            batcher,
            http,
            grpc,
        })
    }

    pub fn mqtt_port(&self) -> u16 {
        self.broker.mqtt_port()
    }

    /// The MQTT over WebSocket port; 0 when `ws_enabled` is false.
    pub fn ws_port(&self) -> u16 {
        self.broker.ws_port()
    }

    pub fn http_port(&self) -> u16 {
        self.http.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` resolves. Then the broker stops accepting
    /// and closes every device session (their offline events and last
    /// wills go out), the queued events are published, and HTTP and gRPC
    /// drain their requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::new();
        let events_stop = Shutdown::new();
        let batcher = tokio::spawn(self.batcher.run(events_stop.clone()));
        let broker = {
            let ingest = self.state.ingest.clone();
            let stopped = stop.wait();
            async move {
                self.broker.run(ingest, stopped).await;
                // Sessions are closed: what they queued can go out now.
                events_stop.trigger();
                let _ = batcher.await;
            }
        };
        // A server that fails stops the others too.
        let http = {
            let serving = axum::serve(self.http, http::router(self.state.clone()))
                .with_graceful_shutdown(stop.wait());
            let stop = stop.clone();
            async move {
                let result = serving.await;
                stop.trigger();
                result
            }
        };
        let grpc = {
            let serving = grpc::serve(self.state.clone(), self.grpc, stop.clone());
            let stop = stop.clone();
            async move {
                let result = serving.await;
                stop.trigger();
                result
            }
        };
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.trigger();
        });
        tracing::info!("mqtt-gateway ready");
        let (http, grpc, ()) = tokio::join!(http, grpc, broker);
        http.context("mqtt-gateway HTTP server")?;
        grpc.context("mqtt-gateway gRPC server")?;
        Ok(())
    }
}
