//! firmware-service and its worker: the firmware store (streamed uploads
//! with digest and signature checks, range-capable downloads for devices)
//! and over-the-air rollouts (per-device executions with a rate, a failure
//! threshold, timeouts and retries).
//!
//! Two runnable parts share this crate and one database:
//!
//! - [`Application`]: the REST API (HTTP 8103) and the gRPC API (50053).
//! - [`worker::Worker`]: starts and paces rollouts, notifies devices through
//!   mqtt-gateway, applies `device.ota.progress` and `device.deleted`
//!   events, times out and retries executions, aborts rollouts past their
//!   failure threshold and completes the rest. `wf-iot serve worker` runs
//!   it alone; `wf-iot serve` runs it in the all-in-one process. Any number
//!   of workers may run at once.
//!
//! The executions table is the worker's job queue; why, and how leases make
//! a killed worker lose nothing and count nothing twice, is written down in
//! `docs/architecture.md` ("Firmware rollouts").

pub mod blobs;
pub mod clients;
pub mod domain;
mod engine;
pub mod error;
mod events;
mod grpc;
mod http;
mod state;
pub mod store;
pub mod worker;

/// Entry points for the fuzz targets under `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::read_upload_body;
}

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wf_common::db::Db;
use wf_common::events::EventBus;
use wf_common::jwt::JwtVerifier;
use wf_common::service::{Listeners, Runner};

pub use blobs::{StorageBackend, StorageConfig};
pub use state::AppState;

/// firmware-service configuration (`[firmware]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub host: IpAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    /// `sqlite://path/firmware.db` or
    /// `mysql://user:pass@host:3306/iot_firmware_db`; when empty,
    /// `firmware.db` in the platform's data directory.
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
    /// device-service's gRPC endpoint (targets, device credentials).
    pub device_service_url: String,
    /// mqtt-gateway's gRPC endpoint (OTA notifications).
    pub mqtt_gateway_url: String,
    /// How long a permission answer from auth-service is reused. Also the
    /// longest a disabled account, a revoked token or a changed role takes
    /// to apply here (twice that with the Redis-shared cache).
    pub permission_cache_ttl_secs: u64,
    /// A Redis through which every replica shares the permission answers
    /// it got; empty: each process keeps its own. `wf-iot serve <service>`
    /// fills in `events.redis_url`.
    pub permission_cache_redis_url: String,
    /// The base URL devices reach this service at; download links in OTA
    /// notifications start with it.
    pub public_url: String,
    /// The largest firmware image accepted, in bytes.
    pub max_firmware_bytes: u64,
    /// The largest JSON request body.
    /// Peers whose `X-Forwarded-For` is believed (the api-gateway, a
    /// proxy) for the client address the audit log records: addresses or
    /// CIDR ranges. Everyone else's is ignored.
    pub trusted_proxies: Vec<wf_common::net::IpRange>,
    pub max_body_bytes: usize,
    /// Limits of the HTTP listener: header timeout and size, connections
    /// per client address, the file-descriptor reserve.
    pub http_limits: wf_common::http::HttpLimits,
    /// Where firmware images are kept.
    pub storage: StorageConfig,
    /// Where uploads are written while they arrive; when empty,
    /// `firmware-uploads` in the data directory.
    pub upload_dir: PathBuf,
    /// Ed25519 public keys (PEM, or base64 of the raw 32 bytes) that
    /// firmware signatures are checked against.
    pub signing_public_keys: Vec<String>,
    /// Refuse unsigned firmware.
    pub require_signature: bool,
    /// The HMAC key of download links; when unset, one is generated and
    /// kept in the database, so the service and its workers share it.
    #[serde(serialize_with = "wf_common::config::redact_opt")]
    pub download_link_key: Option<SecretString>,
    /// How long a download link in an OTA notification stays valid (at
    /// least the rollout's per-device timeout).
    pub download_link_ttl_secs: u64,
    pub worker: WorkerConfig,
    /// The secret every gRPC call between services carries. Not read from
    /// this section: `wf-iot serve` sets one for the whole platform, and
    /// services run apart take `internal.token`.
    #[serde(skip)]
    pub internal_token: wf_common::grpc::InternalToken,
}

/// The rollout worker (`[firmware.worker]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// This worker's name: the owner of its leases and its name in event
    /// consumer groups. Give each worker its own, stable across restarts.
    pub name: String,
    /// How often the worker looks for work.
    pub poll_interval_ms: u64,
    /// How long a claimed execution stays reserved for its worker; a worker
    /// that dies holding claims delays them by at most this.
    pub lease_secs: u64,
    /// The most executions claimed per rollout per round.
    pub batch_size: u32,
    /// Notifications published at once.
    pub publish_concurrency: usize,
    /// When a device with a pending update comes online, its notification
    /// is published again after this many milliseconds (the time to
    /// subscribe to it), at the worker's next round after that.
    pub renotify_delay_ms: u64,
    /// The worker answers `/healthz`, `/readyz` (database and event bus)
    /// and `/metrics` on this port; 0 picks a free one. Unset, `wf-iot
    /// serve worker` uses 8105 and the all-in-one process, which reports
    /// through firmware-service, opens none.
    pub http_port: Option<u16>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: "firmware-worker-1".into(),
            poll_interval_ms: 500,
            lease_secs: 30,
            batch_size: 200,
            publish_concurrency: 32,
            renotify_delay_ms: 1000,
            http_port: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: 8103,
            grpc_port: 50053,
            database_url: String::new(),
            database_max_connections: 8,
            auto_migrate: true,
            auth_grpc_url: "http://127.0.0.1:50051".into(),
            auth_jwks_url: "http://127.0.0.1:8101/.well-known/jwks.json".into(),
            issuer: "wf-iot".into(),
            device_service_url: "http://127.0.0.1:50052".into(),
            mqtt_gateway_url: "http://127.0.0.1:50054".into(),
            permission_cache_ttl_secs: 2,
            permission_cache_redis_url: String::new(),
            public_url: "http://127.0.0.1:8103".into(),
            max_firmware_bytes: 256 * 1024 * 1024,
            trusted_proxies: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                IpAddr::V6(Ipv6Addr::LOCALHOST).into(),
            ],
            max_body_bytes: 64 * 1024,
            http_limits: wf_common::http::HttpLimits::default(),
            storage: StorageConfig::default(),
            upload_dir: PathBuf::new(),
            signing_public_keys: Vec::new(),
            require_signature: false,
            download_link_key: None,
            download_link_ttl_secs: 3600,
            worker: WorkerConfig::default(),
            internal_token: Default::default(),
        }
    }
}

impl Config {
    /// Fills the locations left empty with places under `data_dir`.
    pub fn with_data_dir(mut self, data_dir: &std::path::Path) -> Self {
        if self.database_url.trim().is_empty() {
            self.database_url = format!("sqlite://{}", data_dir.join("firmware.db").display());
        }
        if self.storage.local_dir.as_os_str().is_empty() {
            self.storage.local_dir = data_dir.join("firmware");
        }
        if self.upload_dir.as_os_str().is_empty() {
            self.upload_dir = data_dir.join("firmware-uploads");
        }
        self
    }

    /// Settings firmware-service and its worker cannot work with, named
    /// under `[firmware]`.
    pub fn check(&self, p: &mut wf_common::config::Problems) {
        p.not_empty("issuer", &self.issuer);
        p.positive("database_max_connections", self.database_max_connections);
        p.require(
            wf_common::net::is_http_url(&self.public_url),
            "public_url",
            format_args!(
                "must be the http:// or https:// address devices download from, not {:?}",
                self.public_url
            ),
        );
        p.positive("max_firmware_bytes", self.max_firmware_bytes);
        p.positive("max_body_bytes", self.max_body_bytes);
        p.positive("download_link_ttl_secs", self.download_link_ttl_secs);
        if let Err(e) = domain::PublicKeys::parse(&self.signing_public_keys) {
            p.add("signing_public_keys", e);
        }
        p.require(
            !self.require_signature || !self.signing_public_keys.is_empty(),
            "require_signature",
            "needs at least one key in signing_public_keys to check signatures against",
        );
        if self.storage.backend == StorageBackend::S3 {
            p.require(
                !self.storage.s3.bucket.trim().is_empty(),
                "storage.s3.bucket",
                "is required with storage.backend = \"s3\"",
            );
        }
        self.http_limits.check(p);
        p.section("worker", |p| {
            p.not_empty("name", &self.worker.name);
            p.positive("poll_interval_ms", self.worker.poll_interval_ms);
            p.positive("lease_secs", self.worker.lease_secs);
            p.positive("batch_size", self.worker.batch_size);
            p.positive("publish_concurrency", self.worker.publish_concurrency);
        });
    }
}

/// Opens the configured database (creating a MySQL database when missing),
/// retrying while the server cannot be reached.
pub async fn connect_db(config: &Config) -> anyhow::Result<Db> {
    if config.database_url.trim().is_empty() {
        anyhow::bail!("firmware.database_url is not set");
    }
    // A database that is not reachable yet is waited for, with backoff.
    Db::connect_retrying(
        &config.database_url,
        config.database_max_connections,
        "the firmware database",
    )
    .await
    .context("connecting to the firmware database")
}

/// The database, migrated when configured, and the download-link signer
/// (its key from the configuration or the database).
async fn open_store(config: &Config) -> anyhow::Result<(store::Store, domain::LinkSigner)> {
    let db = connect_db(config).await?;
    if config.auto_migrate {
        db.migrate_up(&store::MIGRATIONS)
            .await
            .context("migrating the firmware database")?;
    }
    let store = store::Store::new(db);
    let key = match &config.download_link_key {
        Some(k) if !k.expose_secret().is_empty() => k.expose_secret().as_bytes().to_vec(),
        _ => store
            .link_key()
            .await
            .map_err(|e| anyhow::anyhow!("loading the download link key: {e}"))?,
    };
    let signer = domain::LinkSigner::new(&key).map_err(|e| anyhow::anyhow!(e))?;
    Ok((store, signer))
}

/// firmware-service with its listeners bound.
pub struct Application {
    state: AppState,
    listeners: Listeners,
}

impl Application {
    /// Connects to the database (migrating when configured) and the blob
    /// store, and binds both listeners; port 0 picks free ports. Other
    /// services are reached lazily, so they may start later.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        let (store, links) = open_store(&config).await?;
        let blobs = blobs::open(&config.storage)
            .await
            .context("opening the firmware storage")?;
        std::fs::create_dir_all(&config.upload_dir).with_context(|| {
            format!(
                "creating the upload directory {}",
                config.upload_dir.display()
            )
        })?;
        let signing_keys = domain::PublicKeys::parse(&config.signing_public_keys)
            .map_err(|e| anyhow::anyhow!("firmware.signing_public_keys: {e}"))?;
        anyhow::ensure!(
            !config.require_signature || !signing_keys.is_empty(),
            "firmware.require_signature needs firmware.signing_public_keys"
        );
        let verifier =
            JwtVerifier::from_jwks_url(config.issuer.clone(), config.auth_jwks_url.clone());
        let auth = clients::AuthClient::new(
            &config.auth_grpc_url,
            &config.internal_token,
            Duration::from_secs(config.permission_cache_ttl_secs),
            &config.permission_cache_redis_url,
        )
        .await?;
        let devices =
            clients::DeviceClient::new(&config.device_service_url, &config.internal_token)?;
        let state = AppState::new(state::Parts {
            config: config.clone(),
            store,
            blobs,
            verifier,
            auth,
            devices,
            links,
            signing_keys,
            bus,
        });
        let listeners = Listeners::bind(
            "firmware-service",
            "firmware",
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

    /// Serves HTTP and gRPC until `shutdown` resolves, then drains
    /// in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Runner::new("firmware-service")
            .serve(
                self.listeners,
                http::router(self.state.clone()),
                self.state.config.http_limits.clone(),
                &self.state.config.internal_token,
                grpc::service(self.state.clone()),
            )
            .run_until(shutdown)
            .await
    }
}
