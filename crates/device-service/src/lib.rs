//! device-service: the device registry and credentials, telemetry storage
//! and queries, online status, cloud-to-device commands, and device state
//! (shadows, server attributes, fleet shadow jobs).

pub mod clients;
pub mod domain;
pub mod error;
mod grpc;
mod http;
mod ingest;
mod shadows;
mod state;
pub mod store;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wf_common::db::Db;
use wf_common::events::EventBus;
use wf_common::jwt::JwtVerifier;
use wf_common::service::{Listeners, Runner};

pub use state::AppState;

/// device-service configuration (`[device]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub host: IpAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    /// `sqlite://path/devices.db` or `mysql://user:pass@host:3306/iot_device_db`;
    /// when empty, `devices.db` in the platform's data directory.
    #[serde(serialize_with = "wf_common::config::redact_db_url")]
    pub database_url: String,
    pub database_max_connections: u32,
    pub auto_migrate: bool,
    /// auth-service's gRPC endpoint (permission checks).
    pub auth_grpc_url: String,
    /// Where the public keys that verify access tokens are published.
    pub auth_jwks_url: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// mqtt-gateway's gRPC endpoint (commands to devices).
    pub mqtt_gateway_url: String,
    /// How long a permission answer from auth-service is reused. Also the
    /// longest a disabled account, a revoked token or a changed role takes
    /// to apply here (twice that with the Redis-shared cache).
    pub permission_cache_ttl_secs: u64,
    /// A Redis through which every replica shares the permission answers
    /// it got; empty: each process keeps its own. `wf-iot serve <service>`
    /// fills in `events.redis_url`.
    pub permission_cache_redis_url: String,
    /// The most points one series query returns (raw values or buckets).
    pub max_series_points: i64,
    pub command_default_timeout_secs: i64,
    pub command_max_timeout_secs: i64,
    /// The longest `?wait=true` holds a request. A command with a longer
    /// timeout is answered `202` with its current state when the wait ends,
    /// and stays open until its own timeout. Keep it below the api-gateway's
    /// `upstream_timeout_secs`.
    pub command_max_wait_secs: i64,
    /// This replica's name in event consumer groups; stable across restarts
    /// so a replica resumes the events it had not finished.
    pub consumer_name: String,
    /// Peers whose `X-Forwarded-For` is believed (the api-gateway, a
    /// proxy) for the client address the audit log records: addresses or
    /// CIDR ranges. Everyone else's is ignored.
    pub trusted_proxies: Vec<wf_common::net::IpRange>,
    pub max_body_bytes: usize,
    /// Limits of the HTTP listener: header timeout and size, connections
    /// per client address, the file-descriptor reserve.
    pub http_limits: wf_common::http::HttpLimits,
    /// Mark every device offline on start. Right when the broker runs in
    /// the same process (all-in-one), where no device can be connected yet;
    /// wrong for a replica joining a running deployment.
    pub reset_status_on_start: bool,
    /// When a device comes online, its open commands are published again
    /// after this many milliseconds (the time to subscribe to them).
    pub command_redelivery_delay_ms: u64,
    /// Devices kept in memory (0: none), so that reading a device costs no
    /// database round trip. Right only when this process is the only
    /// device-service writing to its database, as in the all-in-one
    /// platform, which sets it; replicas sharing a database must leave it 0.
    pub device_cache_capacity: usize,
    /// The largest shadow document (reported and desired together, as
    /// compact JSON); an update that would exceed it is refused whole.
    pub shadow_max_bytes: usize,
    /// The deepest nesting of objects and arrays in a shadow section.
    pub shadow_max_depth: usize,
    /// The secret every gRPC call between services carries. Not read from
    /// this section: `wf-iot serve` sets one for the whole platform, and
    /// services run apart take `internal.token`.
    #[serde(skip)]
    pub internal_token: wf_common::grpc::InternalToken,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: 8102,
            grpc_port: 50052,
            database_url: String::new(),
            database_max_connections: 8,
            auto_migrate: true,
            auth_grpc_url: "http://127.0.0.1:50051".into(),
            auth_jwks_url: "http://127.0.0.1:8101/.well-known/jwks.json".into(),
            issuer: "wf-iot".into(),
            mqtt_gateway_url: "http://127.0.0.1:50054".into(),
            permission_cache_ttl_secs: 2,
            permission_cache_redis_url: String::new(),
            max_series_points: 10_000,
            command_default_timeout_secs: 30,
            command_max_timeout_secs: 3600,
            command_max_wait_secs: 30,
            consumer_name: "device-service-1".into(),
            trusted_proxies: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                IpAddr::V6(Ipv6Addr::LOCALHOST).into(),
            ],
            max_body_bytes: 64 * 1024,
            http_limits: wf_common::http::HttpLimits::default(),
            reset_status_on_start: false,
            command_redelivery_delay_ms: 1000,
            device_cache_capacity: 0,
            shadow_max_bytes: 16 * 1024,
            shadow_max_depth: 8,
            internal_token: Default::default(),
        }
    }
}

impl Config {
    /// Fills the database location, when empty, with a file under `data_dir`.
    pub fn with_data_dir(mut self, data_dir: &std::path::Path) -> Self {
        if self.database_url.trim().is_empty() {
            self.database_url = format!("sqlite://{}", data_dir.join("devices.db").display());
        }
        self
    }

    /// Settings device-service cannot work with, named under `[device]`.
    pub fn check(&self, p: &mut wf_common::config::Problems) {
        p.not_empty("issuer", &self.issuer);
        p.positive("database_max_connections", self.database_max_connections);
        p.positive("max_series_points", self.max_series_points);
        p.positive("command_max_timeout_secs", self.command_max_timeout_secs);
        p.require(
            (1..=self.command_max_timeout_secs).contains(&self.command_default_timeout_secs),
            "command_default_timeout_secs",
            format_args!(
                "must be from 1 to command_max_timeout_secs ({}), not {}",
                self.command_max_timeout_secs, self.command_default_timeout_secs
            ),
        );
        p.positive("command_max_wait_secs", self.command_max_wait_secs);
        p.positive("max_body_bytes", self.max_body_bytes);
        p.not_empty("consumer_name", &self.consumer_name);
        p.positive("shadow_max_bytes", self.shadow_max_bytes);
        p.positive("shadow_max_depth", self.shadow_max_depth);
        self.http_limits.check(p);
    }
}

/// Opens the configured database (creating a MySQL database when missing),
/// retrying while the server cannot be reached.
pub async fn connect_db(config: &Config) -> anyhow::Result<Db> {
    if config.database_url.trim().is_empty() {
        anyhow::bail!("device.database_url is not set");
    }
    // A database that is not reachable yet is waited for, with backoff.
    Db::connect_retrying(
        &config.database_url,
        config.database_max_connections,
        "the device database",
    )
    .await
    .context("connecting to the device database")
}

/// device-service with its listeners bound.
pub struct Application {
    state: AppState,
    listeners: Listeners,
}

impl Application {
    /// Connects to the database (migrating when configured) and binds both
    /// listeners; port 0 picks free ports. Other services are reached lazily,
    /// so they may start later.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        let db = connect_db(&config).await?;
        if config.auto_migrate {
            db.migrate_up(&store::MIGRATIONS)
                .await
                .context("migrating the device database")?;
        }
        if config.reset_status_on_start {
            let store = store::Store::new(db.clone());
            let reset = store
                .mark_all_offline(wf_common::now_millis())
                .await
                .context("marking devices offline on start")?;
            if reset > 0 {
                tracing::info!(
                    devices = reset,
                    "devices online when the platform last stopped are offline until they reconnect"
                );
            }
        }
        let verifier =
            JwtVerifier::from_jwks_url(config.issuer.clone(), config.auth_jwks_url.clone());
        let auth = clients::AuthClient::new(
            &config.auth_grpc_url,
            &config.internal_token,
            Duration::from_secs(config.permission_cache_ttl_secs),
            &config.permission_cache_redis_url,
        )
        .await?;
        let gateway =
            clients::GatewayClient::new(&config.mqtt_gateway_url, &config.internal_token)?;
        let state = AppState::new(
            config.clone(),
            store::Store::new(db).with_device_cache(config.device_cache_capacity),
            verifier,
            auth,
            gateway,
            bus,
        );
        let listeners = Listeners::bind(
            "device-service",
            "device",
            config.host,
            config.http_port,
            config.grpc_port,
        )
        .await?;
        Ok(Self { state, listeners })
    }

    pub fn http_port(&self) -> u16 {
        self.listeners.http_port()
    }

    pub fn grpc_port(&self) -> u16 {
        self.listeners.grpc_port()
    }

    /// Serves HTTP and gRPC and consumes device events until `shutdown`
    /// resolves, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let runner = Runner::new("device-service");
        let workers = ingest::run(self.state.clone(), runner.stop());
        runner
            .serve(
                self.listeners,
                http::router(self.state.clone()),
                self.state.config.http_limits.clone(),
                &self.state.config.internal_token,
                grpc::service(self.state.clone()),
            )
            .task(workers)
            .run_until(shutdown)
            .await
    }
}
