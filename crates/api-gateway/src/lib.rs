//! api-gateway: the front door of wf-iot on port 8000.
//!
//! - Routes `/api/v1/*` to auth-service, device-service and
//!   firmware-service, streaming bodies both ways through a pooled HTTP
//!   client; upstream failures become 502/503/504 envelopes, never a hang.
//! - Verifies access tokens at the edge against auth-service's JWKS and
//!   passes the verified identity and the request id on (the services keep
//!   verifying tokens themselves).
//! - Token-bucket rate limits per user and per client address for each
//!   route group, in process or shared through Redis.
//! - CORS, with preflights answered here.
//! - Live device updates as Server-Sent Events, fed by the event bus.
//! - The web console at `/`: server-rendered pages, embedded assets.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod clients;
pub mod console;
pub mod domain;
pub mod error;
mod http;
pub mod loadtest;
pub mod ratelimit;
mod state;
mod streams;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use state::AppState;
use wf_common::events::EventBus;
use wf_common::service::{Listeners, Runner};

pub use domain::routes::RouteGroup;
pub use loadtest::{LoadReport, load_test};
pub use ratelimit::{GroupLimits, Limit, RateLimits};

/// api-gateway configuration (`[gateway]` in the wf-iot config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub host: IpAddr,
    pub http_port: u16,
    /// auth-service's HTTP base URL (`/api/v1/auth|users|roles|permissions|audit-logs`,
    /// `/.well-known/jwks.json`).
    pub auth_url: String,
    /// device-service's HTTP base URL (`/api/v1/devices...`).
    pub device_url: String,
    /// firmware-service's HTTP base URL (`/api/v1/firmware|rollouts|upgrade-tasks...`).
    pub firmware_url: String,
    /// Where the keys that verify access tokens are published; when empty,
    /// `{auth_url}/.well-known/jwks.json`.
    pub jwks_url: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// This replica's name. Each replica consumes device events in a
    /// consumer group of its own (`api-gateway-{instance_id}`), so replicas
    /// need distinct, restart-stable ids; when empty, the host name.
    pub instance_id: String,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (a
    /// load balancer or nginx in front): addresses or CIDR ranges such as
    /// `10.0.0.0/8`. Empty: the peer is the client.
    pub trusted_proxies: Vec<wf_common::net::IpRange>,
    /// `redis://host:6379` to share rate limits between replicas; empty for
    /// in-process limits.
    #[serde(serialize_with = "wf_common::config::redact_db_url")]
    pub redis_url: String,
    /// Prefix of the rate-limit keys in Redis.
    pub redis_key_prefix: String,
    /// The longest a rate-limit decision waits for Redis before this replica
    /// decides alone.
    pub redis_timeout_ms: u64,
    pub rate_limits: RateLimits,
    pub cors: CorsConfig,
    /// Connecting to an upstream service.
    pub upstream_connect_timeout_ms: u64,
    /// The longest an upstream may take to answer once the request body is
    /// sent, and the longest a body (either way) may stall mid-stream. Above
    /// device-service's default command wait (`?wait=true`, 30 s).
    pub upstream_timeout_secs: u64,
    /// Largest request body, except on firmware routes.
    pub max_body_bytes: u64,
    /// Limits of the HTTP listener: header timeout and size, connections
    /// per client address, the file-descriptor reserve.
    pub http_limits: wf_common::http::HttpLimits,
    /// Largest request body on firmware routes (image uploads).
    pub max_upload_bytes: u64,
    /// Events buffered per live-stream subscriber before it is told it lagged.
    pub stream_buffer: usize,
    /// Comment lines keeping idle streams open through proxies.
    pub stream_keep_alive_secs: u64,
    /// How often a live stream re-checks the caller's access.
    pub stream_recheck_secs: u64,
    /// Events older than this on the bus (a replica catching up after a
    /// restart) are not pushed to live streams; 0 pushes everything.
    pub stream_max_event_age_secs: u64,
    /// What the web console tells people about connecting devices.
    pub console: ConsoleConfig,
}

/// The web console's settings (`[gateway.console]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleConfig {
    /// The MQTT host devices connect to, shown with new device credentials;
    /// empty: the host name the browser reached the console at.
    pub mqtt_host: String,
    /// The MQTT port shown with new device credentials (`wf-iot serve`
    /// sets the port its broker bound).
    pub mqtt_port: u16,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            mqtt_host: String::new(),
            mqtt_port: 1883,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: 8000,
            auth_url: "http://127.0.0.1:8101".into(),
            device_url: "http://127.0.0.1:8102".into(),
            firmware_url: "http://127.0.0.1:8103".into(),
            jwks_url: String::new(),
            issuer: "wf-iot".into(),
            instance_id: String::new(),
            trusted_proxies: Vec::new(),
            redis_url: String::new(),
            redis_key_prefix: "wf-iot:gateway:".into(),
            redis_timeout_ms: 100,
            rate_limits: RateLimits::default(),
            cors: CorsConfig::default(),
            upstream_connect_timeout_ms: 2_000,
            upstream_timeout_secs: 60,
            max_body_bytes: 1024 * 1024,
            http_limits: wf_common::http::HttpLimits::default(),
            max_upload_bytes: 1024 * 1024 * 1024,
            stream_buffer: 1024,
            stream_keep_alive_secs: 15,
            stream_recheck_secs: 60,
            stream_max_event_age_secs: 60,
            console: ConsoleConfig::default(),
        }
    }
}

impl Config {
    /// Settings the api-gateway cannot work with, named under `[gateway]`.
    pub fn check(&self, p: &mut wf_common::config::Problems) {
        p.not_empty("issuer", &self.issuer);
        for (setting, url) in [
            ("auth_url", &self.auth_url),
            ("device_url", &self.device_url),
            ("firmware_url", &self.firmware_url),
        ] {
            p.require(
                wf_common::net::is_http_url(url),
                setting,
                format_args!("must be an http:// or https:// base URL, not {url:?}"),
            );
        }
        p.require(
            self.jwks_url.trim().is_empty() || wf_common::net::is_http_url(&self.jwks_url),
            "jwks_url",
            format_args!(
                "must be empty or an http:// or https:// URL, not {:?}",
                self.jwks_url
            ),
        );
        p.positive(
            "upstream_connect_timeout_ms",
            self.upstream_connect_timeout_ms,
        );
        p.positive("upstream_timeout_secs", self.upstream_timeout_secs);
        p.positive("max_body_bytes", self.max_body_bytes);
        p.positive("max_upload_bytes", self.max_upload_bytes);
        p.positive("stream_buffer", self.stream_buffer);
        self.http_limits.check(p);
    }

    /// The JWKS location, derived from `auth_url` when not set.
    pub fn effective_jwks_url(&self) -> String {
        if self.jwks_url.trim().is_empty() {
            format!(
                "{}/.well-known/jwks.json",
                self.auth_url.trim_end_matches('/')
            )
        } else {
            self.jwks_url.clone()
        }
    }

    /// The replica name, falling back to the host name.
    pub fn effective_instance_id(&self) -> String {
        let configured = self.instance_id.trim();
        if !configured.is_empty() {
            return configured.to_string();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "api-gateway-1".into())
    }
}

/// Cross-origin access for browser clients served from another origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Origins such as `https://console.example.com`, or `["*"]` for any.
    /// Empty: no cross-origin access (the console served by the gateway
    /// itself is same-origin and needs none).
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    /// Request headers browsers may send, or `["*"]`.
    pub allowed_headers: Vec<String>,
    /// Lets browsers send cookies and credentials; not with `*`.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                .map(String::from)
                .to_vec(),
            allowed_headers: ["authorization", "content-type", "x-request-id"]
                .map(String::from)
                .to_vec(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

/// api-gateway with its listener bound.
pub struct Application {
    state: AppState,
    listeners: Listeners,
}

impl Application {
    /// Checks the configuration and binds the listener; port 0 picks a free
    /// port. Upstream services and Redis are reached lazily, so they may
    /// start later.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        let state = AppState::new(config.clone(), bus)?;
        let listeners =
            Listeners::bind_http("api-gateway", "gateway", config.host, config.http_port).await?;
        Ok(Self { state, listeners })
    }

    pub fn http_port(&self) -> u16 {
        self.listeners.http_port()
    }

    /// Serves HTTP and feeds live streams from the event bus until
    /// `shutdown` resolves; then live streams end and in-flight requests
    /// finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = http::router(self.state.clone())?;
        tracing::info!(instance = %self.state.instance_id, "api-gateway instance");
        Runner::with_stop("api-gateway", self.state.stop.clone())
            .http(
                self.listeners.http,
                router,
                self.state.config.http_limits.clone(),
            )
            .task(streams::feed(self.state.clone()))
            .run_until(shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_location_follows_auth_service_unless_set() {
        let mut config = Config {
            auth_url: "http://auth.internal:8101/".into(),
            ..Config::default()
        };
        assert_eq!(
            config.effective_jwks_url(),
            "http://auth.internal:8101/.well-known/jwks.json"
        );
        config.jwks_url = "http://keys.internal/jwks.json".into();
        assert_eq!(
            config.effective_jwks_url(),
            "http://keys.internal/jwks.json"
        );
    }

    #[test]
    fn a_configured_instance_id_wins() {
        let config = Config {
            instance_id: " edge-2 ".into(),
            ..Config::default()
        };
        assert_eq!(config.effective_instance_id(), "edge-2");
        assert!(!Config::default().effective_instance_id().is_empty());
    }
}
