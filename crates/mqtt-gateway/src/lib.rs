//! mqtt-gateway: the platform's bridge to MQTT. Devices talk to one of two
//! brokers (`broker` in the configuration):
//!
//! - `embedded` (the default): rmqtt inside the gateway (TCP and
//!   WebSocket), with device authentication through device-service and
//!   per-device topic ACLs;
//! - `mosquitto`: an external Mosquitto 2 that authenticates devices and
//!   enforces their ACLs with its dynamic-security plugin, kept in step by
//!   `SyncDeviceCredentials`; the gateway joins it as a client, takes
//!   device messages through shared subscriptions (so replicas split the
//!   load) and binds no MQTT listener.
//!
//! Either way device messages become events (telemetry in batches) on the
//! event bus through one ingest pipeline; the platform publishes to devices
//! and follows their messages over gRPC; and the HTTP auth/ACL hooks serve
//! sites running EMQX.

// A failed unwrap is how a test says what went wrong.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
mod broker;
pub mod clients;
pub mod domain;
pub mod error;
mod grpc;
mod http;
mod state;
mod uplink;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wf_common::events::EventBus;
use wf_common::service::{Listeners, Runner};
use wf_common::shutdown::Shutdown;

use crate::broker::Backend;
use crate::broker::embedded::{BrokerSettings, EmbeddedBroker};
use crate::broker::mosquitto::Bridge;
use crate::clients::DeviceServiceAuthenticator;
use crate::domain::DeviceId;
use crate::state::AppState;
use crate::uplink::{Batcher, Ingest};

/// mqtt-gateway configuration (`[mqtt_gateway]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the MQTT and MQTT-over-WebSocket listeners bind to.
    pub host: IpAddr,
    /// Address the HTTP (health, metrics, broker hooks) and gRPC listeners
    /// bind to; unset: `host`. The all-in-one platform sets 127.0.0.1.
    pub service_host: Option<IpAddr>,
    /// Which broker devices connect to: `embedded` or `mosquitto`.
    pub broker: BrokerMode,
    /// The external broker, used when `broker = "mosquitto"`.
    pub mosquitto: MosquittoConfig,
    /// MQTT over TCP (embedded broker only).
    pub mqtt_port: u16,
    /// Serve MQTT over WebSocket on `ws_port` (embedded broker only).
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
    /// Embedded broker: a connection that has not completed its CONNECT
    /// within this many seconds of being opened is closed.
    pub connect_timeout_secs: u64,
    /// Embedded broker: the most connections one client address may have
    /// open that have not completed their CONNECT (0: no limit). Devices
    /// that are connected do not count, so a fleet behind one address is
    /// not limited; more are closed at once and counted in
    /// `wf_mqtt_connections_refused_total{reason="unanswered_per_ip"}`.
    pub max_unanswered_connections_per_ip: usize,
    /// Embedded broker: QoS 1 and 2 messages in flight per connection, each
    /// way (1 to 65535). A device may send this many before it has their
    /// acknowledgements, which go out in order once each message is stored:
    /// a wider window lets one database commit acknowledge more of them.
    pub max_inflight_messages: u16,
    /// Embedded broker: every this many seconds the gateway announces on
    /// the bus (`mqtt.broker.heartbeat`) that its broker instance, and the
    /// connections it holds, are alive; its lease is three intervals. When
    /// a gateway dies without closing its sessions (a crash, a lost
    /// machine), device-service takes that instance's devices offline once
    /// the lease lapses. 0 turns the heartbeat off.
    pub broker_heartbeat_secs: u64,
    /// Telemetry messages per `device.data.received` event at most.
    pub batch_max_messages: usize,
    /// How long a batch waits for more messages after its first one. A
    /// batch holding a message whose device waits for its acknowledgement
    /// (QoS 1 and 2 on the embedded broker) does not wait.
    pub batch_linger_ms: u64,
    /// Embedded broker: how long a device's QoS 1 or 2 message may wait to
    /// be stored before the broker gives up on it. The broker acknowledges
    /// (PUBACK, PUBREC) only once the message is stored; past this, or when
    /// it cannot be stored, it closes the connection without acknowledging,
    /// and the device sends the message again when it reconnects.
    pub durable_ack_timeout_ms: u64,
    /// Events waiting for the bus before new ones are dropped (and counted).
    pub ingest_queue_capacity: usize,
    /// How long a successful device authentication is remembered.
    pub auth_cache_ttl_secs: u64,
    /// Malformed messages are logged at most once per device per interval
    /// (every one is counted).
    pub malformed_log_interval_secs: u64,
    /// The oldest telemetry `ts` accepted, in seconds before the time the
    /// gateway receives the message; older values are refused and counted
    /// (`wf_mqtt_malformed_messages_total{reason="ts_out_of_range"}`).
    pub telemetry_max_age_secs: u64,
    /// The newest telemetry `ts` accepted, in seconds after the receive
    /// time (device clock skew); newer values are refused and counted.
    pub telemetry_max_ahead_secs: u64,
    /// The secret every gRPC call between services carries. Not read from
    /// this section: `wf-iot serve` sets one for the whole platform, and
    /// services run apart take `internal.token`.
    #[serde(skip)]
    pub internal_token: wf_common::grpc::InternalToken,
    /// Limits of the HTTP listener: header timeout and size, connections
    /// per client address, the file-descriptor reserve.
    pub http_limits: wf_common::http::HttpLimits,
    /// The EMQX HTTP hooks `/mqtt/auth` and `/mqtt/acl` (`[mqtt_gateway.hooks]`).
    pub hooks: HookConfig,
}

impl Config {
    /// Settings mqtt-gateway cannot work with, named under
    /// `[mqtt_gateway]`.
    pub fn check(&self, p: &mut wf_common::config::Problems) {
        p.positive("max_payload_bytes", self.max_payload_bytes);
        p.positive("connect_timeout_secs", self.connect_timeout_secs);
        p.positive("max_inflight_messages", self.max_inflight_messages);
        p.positive("batch_max_messages", self.batch_max_messages);
        p.positive("durable_ack_timeout_ms", self.durable_ack_timeout_ms);
        p.positive("ingest_queue_capacity", self.ingest_queue_capacity);
        p.require(
            !self.device_service_url.trim().is_empty(),
            "device_service_url",
            "must name device-service's gRPC endpoint",
        );
        if self.broker == BrokerMode::Mosquitto
            && let Err(e) = self.mosquitto.validate()
        {
            p.add("mosquitto", e);
        }
        self.http_limits.check(p);
    }

    /// Where the HTTP and gRPC listeners bind.
    pub fn service_host(&self) -> IpAddr {
        self.service_host.unwrap_or(self.host)
    }

    /// The accepted window for a device's own telemetry timestamp.
    pub fn ts_window(&self) -> domain::message::TsWindow {
        let ms = |secs: u64| i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
        domain::message::TsWindow {
            max_age_ms: ms(self.telemetry_max_age_secs),
            max_ahead_ms: ms(self.telemetry_max_ahead_secs),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            service_host: None,
            broker: BrokerMode::default(),
            mosquitto: MosquittoConfig::default(),
            mqtt_port: 1883,
            ws_enabled: true,
            ws_port: 8083,
            http_port: 8104,
            grpc_port: 50054,
            device_service_url: "http://127.0.0.1:50052".into(),
            max_payload_bytes: 64 * 1024,
            connect_timeout_secs: 10,
            max_unanswered_connections_per_ip: 128,
            max_inflight_messages: 128,
            broker_heartbeat_secs: 5,
            batch_max_messages: 500,
            batch_linger_ms: 20,
            durable_ack_timeout_ms: 10_000,
            ingest_queue_capacity: 65_536,
            auth_cache_ttl_secs: 60,
            malformed_log_interval_secs: 60,
            // Devices that buffer while offline may send a year late.
            telemetry_max_age_secs: 366 * 24 * 3600,
            telemetry_max_ahead_secs: 300,
            internal_token: Default::default(),
            http_limits: wf_common::http::HttpLimits::default(),
            hooks: HookConfig::default(),
        }
    }
}

/// Which broker devices connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// rmqtt inside the gateway, on `mqtt_port` and `ws_port`.
    #[default]
    Embedded,
    /// An external Mosquitto 2 (`[mqtt_gateway.mosquitto]`).
    Mosquitto,
}

/// The EMQX HTTP authentication and authorization hooks on the HTTP port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HookConfig {
    /// The shared secret EMQX sends in the `x-wf-iot-hook-secret` header.
    /// Empty (the default): the hooks answer `403` to every call.
    #[serde(serialize_with = "wf_common::config::redact")]
    pub secret: SecretString,
    /// Calls with a missing or wrong secret from one address before that
    /// address is answered `429` ...
    pub max_failures: u32,
    /// ... for the rest of this many seconds from its first failure.
    pub failure_window_secs: u64,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            secret: SecretString::from(""),
            max_failures: 10,
            failure_window_secs: 60,
        }
    }
}

/// An external Mosquitto 2 (`[mqtt_gateway.mosquitto]`), used when
/// `broker = "mosquitto"`. The gateway connects as the dynamic-security
/// admin (plain TCP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MosquittoConfig {
    pub host: String,
    pub port: u16,
    /// The dynamic-security admin (`mosquitto_ctrl dynsec init <file>
    /// <admin_username>`), or with `dynsec = false` any account that may
    /// subscribe to and publish on `devices/#`.
    pub admin_username: String,
    #[serde(serialize_with = "wf_common::config::redact")]
    pub admin_password: SecretString,
    /// The gateway's own MQTT client id; every replica needs its own, and
    /// it must not be a possible device id (it needs a `/`, `+`, `#` or
    /// `$`), or a device registered under that name could take over the
    /// gateway's connection.
    pub client_id: String,
    /// The shared-subscription group: replicas in one group split the
    /// devices' messages between them.
    pub shared_group: String,
    /// Keep device credentials and ACLs in Mosquitto's dynamic-security
    /// plugin (`SyncDeviceCredentials`). Off: Mosquitto authenticates
    /// devices by other means and credential syncs are accepted and ignored.
    pub dynsec: bool,
    /// MQTT keep-alive of the gateway's connection.
    pub keep_alive_secs: u64,
    /// Keep this replica's session in Mosquitto across disconnections and
    /// acknowledge each device message only once its event is on the bus.
    /// A replica that crashes then loses nothing: what it had taken but not
    /// passed on, and its share of what arrived while it was away, is
    /// delivered when it connects again with the same `client_id` (run
    /// replicas under a supervisor that restarts them). Off (the default),
    /// sessions are clean: while a replica is away the others take all the
    /// messages, but the few in flight to a crashed replica are lost.
    /// Mosquitto's `max_inflight_messages` (20 by default) then bounds each
    /// replica's throughput: raise it (1000, say) with durable sessions.
    pub durable_session: bool,
}

impl Default for MosquittoConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            admin_username: String::new(),
            admin_password: SecretString::from(""),
            client_id: "wf-iot-gateway/1".into(),
            shared_group: "wf-iot-gateway".into(),
            dynsec: true,
            keep_alive_secs: 30,
            durable_session: false,
        }
    }
}

impl MosquittoConfig {
    /// Refuses settings the gateway cannot work with, saying which.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.host.trim().is_empty() && self.port != 0,
            "mosquitto.host and mosquitto.port must name the broker"
        );
        anyhow::ensure!(
            !self.admin_username.is_empty(),
            "mosquitto.admin_username is required (the dynamic-security admin)"
        );
        anyhow::ensure!(
            !self.dynsec || !self.admin_password.expose_secret().is_empty(),
            "mosquitto.admin_password is required with dynsec"
        );
        anyhow::ensure!(
            !self.client_id.is_empty() && !self.client_id.starts_with(' '),
            "mosquitto.client_id must not be empty"
        );
        anyhow::ensure!(
            DeviceId::parse(&self.client_id).is_err(),
            "mosquitto.client_id {:?} could also be a device id, and a device registered \
             under it could take over the gateway's connection: include a '/' (such as \
             \"wf-iot-gateway/1\")",
            self.client_id
        );
        anyhow::ensure!(
            !self.shared_group.is_empty() && !self.shared_group.contains(['/', '+', '#', '\0']),
            "mosquitto.shared_group must be a non-empty name without '/', '+' or '#'"
        );
        Ok(())
    }
}

/// mqtt-gateway with its listeners bound.
pub struct Application {
    state: AppState,
    backend: Backend,
    batcher: Batcher,
    listeners: Listeners,
}

impl Application {
    /// Binds the HTTP and gRPC listeners and, with the embedded broker, the
    /// MQTT and WebSocket ones (port 0 picks a free port), and starts the
    /// broker's hooks. With `broker = "mosquitto"` no MQTT port is bound;
    /// the connection to Mosquitto is made (and remade) by `run_until_stopped`.
    /// device-service is connected to lazily, so it need not be up yet.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        // The broker counts from its first connection on.
        wf_common::telemetry::metrics_handle();
        let authenticator = Arc::new(
            DeviceServiceAuthenticator::new(
                &config.device_service_url,
                &config.internal_token,
                Duration::from_secs(config.auth_cache_ttl_secs),
            )
            .with_context(|| format!("device_service_url {:?}", config.device_service_url))?,
        );
        // One identity per process start: a restarted gateway is a new
        // broker instance, whose predecessor's devices go offline with its
        // lease.
        let broker_id = (config.broker == BrokerMode::Embedded && config.broker_heartbeat_secs > 0)
            .then(|| uuid::Uuid::now_v7().to_string());
        let (ingest, batcher) = Ingest::new(&config, bus.clone(), broker_id);
        let backend = match config.broker {
            BrokerMode::Embedded => {
                let settings = BrokerSettings {
                    mqtt_addr: SocketAddr::new(config.host, config.mqtt_port),
                    ws_addr: config
                        .ws_enabled
                        .then(|| SocketAddr::new(config.host, config.ws_port)),
                    max_payload_bytes: config.max_payload_bytes,
                    connect_timeout: Duration::from_secs(config.connect_timeout_secs.max(1)),
                    max_unanswered_per_ip: config.max_unanswered_connections_per_ip,
                    max_inflight: std::num::NonZeroU16::new(config.max_inflight_messages)
                        .context("mqtt_gateway.max_inflight_messages must be at least 1")?,
                };
                Backend::Embedded(
                    EmbeddedBroker::bind(&settings, authenticator.clone(), ingest.clone()).await?,
                )
            }
            BrokerMode::Mosquitto => Backend::Mosquitto(Box::new(
                Bridge::new(&config.mosquitto, config.max_payload_bytes)
                    .context("[mqtt_gateway.mosquitto]")?,
            )),
        };
        ingest.set_downlink(backend.link());
        let listeners = Listeners::bind(
            "mqtt-gateway",
            "mqtt_gateway",
            config.service_host(),
            config.http_port,
            config.grpc_port,
        )
        .await?;
        let state = AppState {
            config,
            authenticator,
            ingest,
            broker: backend.link(),
            bus,
        };
        Ok(Self {
            state,
            backend,
            batcher,
            listeners,
        })
    }

    /// The embedded broker's MQTT port; 0 with an external broker, whose
    /// address devices are given instead.
    pub fn mqtt_port(&self) -> u16 {
        self.backend.mqtt_port()
    }

    /// The MQTT over WebSocket port; 0 when `ws_enabled` is false or with
    /// an external broker.
    pub fn ws_port(&self) -> u16 {
        self.backend.ws_port()
    }

    pub fn http_port(&self) -> u16 {
        self.listeners.http_port()
    }

    pub fn grpc_port(&self) -> u16 {
        self.listeners.grpc_port()
    }

    /// Serves until `shutdown` resolves. Then the embedded broker stops
    /// accepting and closes every device session (their offline events and
    /// last wills go out), or the gateway disconnects from Mosquitto; the
    /// queued events are published, and HTTP and gRPC drain their requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let runner = Runner::new("mqtt-gateway");
        let stop = runner.stop();
        let events_stop = Shutdown::new();
        let batcher = tokio::spawn(self.batcher.run(events_stop.clone()));
        let broker = {
            let ingest = self.state.ingest.clone();
            let stopped = stop.wait();
            async move {
                self.backend.run(ingest, stopped).await;
                // Sessions are closed: what they queued can go out now.
                events_stop.trigger();
                let _ = batcher.await;
            }
        };
        let heartbeat = {
            let (state, stop) = (self.state.clone(), stop.clone());
            async move {
                if let Some(broker) = state.ingest.broker_id() {
                    heartbeat(
                        state.bus.clone(),
                        broker.to_string(),
                        Duration::from_secs(state.config.broker_heartbeat_secs),
                        stop,
                    )
                    .await;
                }
            }
        };
        runner
            .serve(
                self.listeners,
                http::router(self.state.clone()),
                self.state.config.http_limits.clone(),
                &self.state.config.internal_token,
                grpc::service(self.state.clone(), stop),
            )
            .task(broker)
            .task(heartbeat)
            .run_until(shutdown)
            .await
    }
}

/// Announces `broker`'s lease every `interval` until `stop`. A heartbeat
/// that cannot be published is logged and counted; the next one tries again
/// (the lease covers two missed ones).
async fn heartbeat(bus: Arc<dyn EventBus>, broker: String, interval: Duration, stop: Shutdown) {
    let lease_ms = i64::try_from(interval.as_millis() * 3).unwrap_or(i64::MAX);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(broker = %broker, lease_ms, "announcing the embedded broker's lease");
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.wait() => return,
        }
        let beats = [wf_common::contract::BrokerHeartbeat {
            broker: broker.clone(),
            at: wf_common::now_millis(),
            lease_ms,
        }];
        let published = wf_common::events::publish(bus.as_ref(), &beats);
        // A bus that is down does not hold up shutdown.
        let published = tokio::select! {
            published = published => published,
            () = stop.wait() => return,
        };
        if let Err(e) = published {
            metrics::counter!("wf_mqtt_heartbeats_failed_total").increment(1);
            tracing::warn!(error = %e, "the broker heartbeat was not published; retrying at the next one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mosquitto(client_id: &str) -> MosquittoConfig {
        MosquittoConfig {
            admin_username: "admin".into(),
            admin_password: SecretString::from("pw"),
            client_id: client_id.into(),
            ..MosquittoConfig::default()
        }
    }

    #[test]
    fn configs_without_broker_settings_keep_the_embedded_broker() {
        let config: Config = serde_json::from_value(json!({"mqtt_port": 1884})).unwrap();
        assert_eq!(config.broker, BrokerMode::Embedded);
        assert_eq!(config.mqtt_port, 1884);
        assert_eq!(config.mosquitto.client_id, "wf-iot-gateway/1");
        assert_eq!(config.mosquitto.shared_group, "wf-iot-gateway");
        assert!(config.mosquitto.dynsec);
    }

    #[test]
    fn the_mosquitto_mode_reads_its_settings_and_hides_the_password() {
        let config: Config = serde_json::from_value(json!({
            "broker": "mosquitto",
            "mosquitto": {"host": "mqtt.internal", "admin_username": "admin", "admin_password": "hunter2"}
        }))
        .unwrap();
        assert_eq!(config.broker, BrokerMode::Mosquitto);
        assert_eq!(config.mosquitto.host, "mqtt.internal");
        assert_eq!(config.mosquitto.port, 1883);
        assert_eq!(config.mosquitto.admin_password.expose_secret(), "hunter2");
        let printed = serde_json::to_value(&config).unwrap();
        assert_eq!(printed["broker"], "mosquitto");
        assert_eq!(printed["mosquitto"]["admin_password"], "********");
        assert!(!printed.to_string().contains("hunter2"));
    }

    #[test]
    fn mosquitto_settings_the_gateway_cannot_work_with_are_refused() {
        assert!(mosquitto("wf-iot-gateway/1").validate().is_ok());
        assert!(mosquitto("gw$2").validate().is_ok());
        // A name a device could register would let it take over the
        // gateway's connection.
        let err = mosquitto("wf-iot-gateway-1").validate().unwrap_err();
        assert!(
            err.to_string().contains("could also be a device id"),
            "{err}"
        );
        assert!(mosquitto("").validate().is_err());
        let mut no_admin = mosquitto("gw/1");
        no_admin.admin_username.clear();
        assert!(no_admin.validate().is_err());
        let mut no_password = mosquitto("gw/1");
        no_password.admin_password = SecretString::from("");
        assert!(no_password.validate().is_err());
        no_password.dynsec = false;
        assert!(no_password.validate().is_ok());
        let mut bad_group = mosquitto("gw/1");
        bad_group.shared_group = "a/b".into();
        assert!(bad_group.validate().is_err());
    }
}
