//! The shared secret in front of the EMQX hooks, and a throttle on the
//! addresses that keep presenting a wrong one.
//!
//! EMQX sends the secret as a request header it is configured with
//! (`x-wf-iot-hook-secret`). Without a configured secret the hooks answer
//! `403` to everyone; a missing or wrong secret is `401` and counts as a
//! failure of the calling address; an address with `max_failures` failures
//! within `failure_window_secs` is answered `429` until its window ends,
//! whatever it sends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use wf_common::ApiError;

use crate::HookConfig;

/// The header EMQX is configured to send the shared secret in.
pub const SECRET_HEADER: &str = "x-wf-iot-hook-secret";

/// Addresses tracked at most; beyond, expired windows are dropped first.
const MAX_TRACKED: usize = 10_000;

pub struct HookGuard {
    config: HookConfig,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl HookGuard {
    pub fn new(config: HookConfig) -> Arc<Self> {
        for reason in ["disabled", "wrong_secret", "throttled"] {
            metrics::counter!("wf_mqtt_hook_refused_total", "reason" => reason).increment(0);
        }
        Arc::new(Self {
            config,
            failures: Mutex::default(),
        })
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.failure_window_secs.max(1))
    }

    /// Seconds left in the address's window when it is throttled.
    fn throttled(&self, ip: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (count, since) = failures.get(&ip)?;
        let left = self.window().checked_sub(since.elapsed())?;
        (*count >= self.config.max_failures.max(1)).then(|| left.as_secs().max(1))
    }

    fn fail(&self, ip: IpAddr) {
        let window = self.window();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn secret_matches(&self, presented: Option<&[u8]>) -> bool {
        let expected = self.config.secret.expose_secret().as_bytes();
        presented.is_some_and(|p| bool::from(p.ct_eq(expected)))
    }
}

fn refuse(reason: &'static str, peer: SocketAddr, error: ApiError) -> Response {
    metrics::counter!("wf_mqtt_hook_refused_total", "reason" => reason).increment(1);
    tracing::warn!(%peer, reason, "broker hook call refused");
    error.into_response()
}

pub async fn check(
    guard: Arc<HookGuard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let ip = peer.ip();
    if let Some(retry_after) = guard.throttled(ip) {
        return refuse(
            "throttled",
            peer,
            ApiError::too_many_requests("too many calls with a wrong hook secret", retry_after),
        );
    }
    if guard.config.secret.expose_secret().is_empty() {
        return refuse(
            "disabled",
            peer,
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the broker hooks are off: set mqtt_gateway.hooks.secret and send it in the x-wf-iot-hook-secret header",
            ),
        );
    }
    let presented = req.headers().get(SECRET_HEADER).map(|v| v.as_bytes());
    if !guard.secret_matches(presented) {
        guard.fail(ip);
        return refuse(
            "wrong_secret",
            peer,
            ApiError::unauthorized("missing or wrong x-wf-iot-hook-secret header"),
        );
    }
    next.run(req).await
}
