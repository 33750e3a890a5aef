//! auth-service: users, roles and permissions, JWT login with refresh-token
//! rotation, RBAC checks for the other services (gRPC), and the audit log.

mod access;
mod consume;
pub mod domain;
pub mod error;
mod grpc;
mod http;
mod passwords;
mod state;
pub mod store;
mod throttle;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wf_common::db::Db;
use wf_common::events::EventBus;
use wf_common::jwt::{JwtVerifier, SigningKey};
use wf_common::net::IpRange;
use wf_common::service::{Listeners, Runner};

pub use passwords::{HashingLimit, PasswordHashing};
pub use state::{AppState, CreateUser};
pub use throttle::LoginThrottleConfig;

/// auth-service configuration (`[auth]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on.
    pub host: IpAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    /// `sqlite://path/auth.db` or `mysql://user:pass@host:3306/iot_auth_db`;
    /// when empty, `auth.db` in the platform's data directory.
    #[serde(serialize_with = "wf_common::config::redact_db_url")]
    pub database_url: String,
    pub database_max_connections: u32,
    /// Apply pending migrations on start.
    pub auto_migrate: bool,
    /// The `iss` of every token, checked by every verifier.
    pub issuer: String,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    /// A spent refresh token presented again within this many seconds of
    /// its first use gets a new pair instead of revoking its family, so
    /// that a client's parallel refreshes do not log it out; 0 disables.
    pub refresh_reuse_grace_secs: i64,
    /// PKCS#8 PEM Ed25519 key file, created on first start when absent;
    /// when empty, `jwt-signing-key.pem` in the platform's data directory.
    pub signing_key_file: PathBuf,
    /// The signing key itself (PEM), taking precedence over the file; for
    /// replicas that share a key through a secret store.
    #[serde(serialize_with = "wf_common::config::redact_opt")]
    pub signing_key_pem: Option<SecretString>,
    pub password_hashing: PasswordHashing,
    pub password_hashing_limit: HashingLimit,
    pub login_throttle: LoginThrottleConfig,
    /// Peers whose `X-Forwarded-For` is believed (the api-gateway, a
    /// proxy): addresses or CIDR ranges. Everyone else's is ignored.
    pub trusted_proxies: Vec<IpRange>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// This replica's name in the `audit.recorded` consumer group; stable
    /// across restarts so a replica resumes the entries it had not stored.
    pub consumer_name: String,
    /// The secret every gRPC call between services carries. Not read from
    /// this section: `wf-iot serve` sets one for the whole platform, and
    /// services run apart take `internal.token`.
    #[serde(skip)]
    pub internal_token: wf_common::grpc::InternalToken,
    /// Limits of the HTTP listener: header timeout and size, connections
    /// per client address, the file-descriptor reserve.
    pub http_limits: wf_common::http::HttpLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: 8101,
            grpc_port: 50051,
            database_url: String::new(),
            database_max_connections: 8,
            auto_migrate: true,
            issuer: "wf-iot".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            refresh_reuse_grace_secs: 10,
            signing_key_file: PathBuf::new(),
            signing_key_pem: None,
            password_hashing: PasswordHashing::default(),
            password_hashing_limit: HashingLimit::default(),
            login_throttle: LoginThrottleConfig::default(),
            trusted_proxies: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                IpAddr::V6(Ipv6Addr::LOCALHOST).into(),
            ],
            max_body_bytes: 64 * 1024,
            consumer_name: "auth-service-1".into(),
            internal_token: Default::default(),
            http_limits: wf_common::http::HttpLimits::default(),
        }
    }
}

impl Config {
    /// Fills the locations left empty with files under `data_dir`.
    pub fn with_data_dir(mut self, data_dir: &std::path::Path) -> Self {
        if self.database_url.trim().is_empty() {
            self.database_url = format!("sqlite://{}", data_dir.join("auth.db").display());
        }
        if self.signing_key_file.as_os_str().is_empty() {
            self.signing_key_file = data_dir.join("jwt-signing-key.pem");
        }
        self
    }

    /// Settings auth-service cannot work with, named under `[auth]`.
    pub fn check(&self, p: &mut wf_common::config::Problems) {
        p.not_empty("issuer", &self.issuer);
        p.positive("access_token_ttl_secs", self.access_token_ttl_secs);
        p.require(
            self.refresh_token_ttl_secs > self.access_token_ttl_secs,
            "refresh_token_ttl_secs",
            format_args!(
                "must be longer than access_token_ttl_secs ({}), not {}",
                self.access_token_ttl_secs, self.refresh_token_ttl_secs
            ),
        );
        p.require(
            self.refresh_reuse_grace_secs >= 0,
            "refresh_reuse_grace_secs",
            "must be 0 (off) or more",
        );
        p.positive("database_max_connections", self.database_max_connections);
        p.positive("max_body_bytes", self.max_body_bytes);
        p.not_empty("consumer_name", &self.consumer_name);
        self.http_limits.check(p);
    }

    fn signing_key(&self) -> anyhow::Result<SigningKey> {
        match &self.signing_key_pem {
            Some(pem) if !pem.expose_secret().trim().is_empty() => {
                Ok(SigningKey::from_pkcs8_pem(pem.expose_secret())?)
            }
            _ => SigningKey::load_or_create(&self.signing_key_file).with_context(|| {
                format!(
                    "loading the signing key {}",
                    self.signing_key_file.display()
                )
            }),
        }
    }
}

/// Opens the configured database (creating a MySQL database when missing),
/// retrying while the server cannot be reached.
pub async fn connect_db(config: &Config) -> anyhow::Result<Db> {
    if config.database_url.trim().is_empty() {
        anyhow::bail!("auth.database_url is not set");
    }
    // A database that is not reachable yet is waited for, with backoff.
    Db::connect_retrying(
        &config.database_url,
        config.database_max_connections,
        "the auth database",
    )
    .await
    .context("connecting to the auth database")
}

/// The service's state without its listeners: the database (migrated when
/// configured), the signing key and the password hasher. For commands that
/// manage accounts without serving.
pub async fn open(config: Arc<Config>) -> anyhow::Result<AppState> {
    let db = connect_db(&config).await?;
    if config.auto_migrate {
        db.migrate_up(&store::MIGRATIONS)
            .await
            .context("migrating the auth database")?;
    }
    let signer = config.signing_key()?;
    let verifier = JwtVerifier::with_keys(config.issuer.clone(), [signer.verifying_key()]);
    Ok(AppState::new(
        config,
        store::Store::new(db),
        signer,
        verifier,
    )?)
}

/// What the first start of the platform did about the admin account.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// Users exist already; nothing was done.
    Existing,
    /// An admin was created; `generated_password` is set when none was given.
    Created {
        username: String,
        generated_password: Option<String>,
    },
}

/// auth-service with its listeners bound.
pub struct Application {
    state: AppState,
    listeners: Listeners,
    bus: Option<Arc<dyn EventBus>>,
}

impl Application {
    /// Connects to the database (migrating when configured), loads the
    /// signing key and binds both listeners; port 0 picks free ports.
    pub async fn build(config: Arc<Config>) -> anyhow::Result<Self> {
        let state = open(config.clone()).await?;
        let listeners = Listeners::bind(
            "auth-service",
            "auth",
            config.host,
            config.http_port,
            config.grpc_port,
        )
        .await?;
        Ok(Self {
            state,
            listeners,
            bus: None,
        })
    }

    /// Writes the audit entries other services publish on `audit.recorded`
    /// to the audit log while running. Without a bus, only auth-service's
    /// own entries are recorded.
    pub fn with_events(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    pub fn http_port(&self) -> u16 {
        self.listeners.http_port()
    }

    pub fn grpc_port(&self) -> u16 {
        self.listeners.grpc_port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Creates the first admin account when the database has no users.
    pub async fn ensure_admin(&self, password: Option<String>) -> anyhow::Result<AdminBootstrap> {
        if self.state.store.count_users().await? > 0 {
            return Ok(AdminBootstrap::Existing);
        }
        let generated = password.is_none().then(wf_common::random::password);
        let password = password.or_else(|| generated.clone()).unwrap_or_default();
        self.state
            .create_user(state::CreateUser {
                username: "admin".into(),
                email: "admin@localhost.localdomain".into(),
                full_name: "Administrator".into(),
                password,
                is_superuser: true,
                roles: vec!["admin".into()],
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the admin account: {e}"))?;
        Ok(AdminBootstrap::Created {
            username: "admin".into(),
            generated_password: generated,
        })
    }

    /// Serves HTTP and gRPC until `shutdown` resolves, then drains in-flight
    /// requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let runner = Runner::new("auth-service");
        let housekeeping = housekeeping(self.state.clone(), runner.stop().wait());
        let audit_events = {
            let (state, bus, stop) = (self.state.clone(), self.bus, runner.stop().wait());
            async move {
                match bus {
                    Some(bus) => consume::run(state, bus, stop).await,
                    None => tracing::info!(
                        "no event bus: audit entries of the other services are not recorded"
                    ),
                }
            }
        };
        runner
            .serve(
                self.listeners,
                http::router(self.state.clone()),
                self.state.config.http_limits.clone(),
                &self.state.config.internal_token,
                grpc::service(self.state.clone()),
            )
            .task(housekeeping)
            .task(audit_events)
            .run_until(shutdown)
            .await
    }
}

/// Purges refresh tokens a day past their expiry, hourly.
async fn housekeeping(state: AppState, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {
                let cutoff = wf_common::now_millis() - 24 * 3600 * 1000;
                if let Err(e) = state.store.purge_expired_refresh_tokens(cutoff).await {
                    tracing::warn!(error = %e, "purging expired refresh tokens failed");
                }
            }
        }
    }
}
