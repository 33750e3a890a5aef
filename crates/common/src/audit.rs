//! The audit trail across services: who changed what, when and from where.
//!
//! auth-service writes its own entries (logins, users, roles) straight to
//! its `audit_log`. The other services describe each change an operator
//! made as an [`AuditEvent`] and publish it on `audit.recorded` once the
//! change has committed ([`record`]); auth-service consumes the topic and
//! stores each event once, keyed by its `event_id`, however often it is
//! delivered.
//!
//! [`Client`] is the one extractor every service uses for where a request
//! came from: the client's address (through the proxies the service
//! trusts), its user agent and the request id.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::contract::{Event, topics};
use crate::events::EventBus;
use crate::net::IpRange;

/// Outcomes an audit entry can have.
pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";
pub const DENIED: &str = "denied";

/// Where a request came from, for throttling and the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address, or `unknown`.
    pub ip: String,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl ClientInfo {
    /// Reads the client from a request: the peer's address, or the last
    /// address of `X-Forwarded-For` when the peer is one of `trusted`
    /// proxies (the one that proxy saw; earlier ones are the client's own
    /// claim).
    pub fn from_parts(parts: &Parts, trusted: &[IpRange]) -> Self {
        let peer: Option<IpAddr> = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let ip = match (peer, forwarded) {
            (Some(peer), Some(fwd)) if crate::net::in_any(trusted, peer) => Some(fwd),
            (peer, _) => peer,
        };
        Self {
            ip: ip
                .map(|ip| crate::net::canonical(ip).to_string())
                .unwrap_or_else(|| "unknown".into()),
            user_agent: parts
                .headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            request_id: crate::telemetry::current_request_id(),
        }
    }
}

/// A service state that knows which peers' `X-Forwarded-For` to believe
/// (its `trusted_proxies` setting).
pub trait TrustedProxies {
    fn trusted_proxies(&self) -> &[IpRange];
}

/// Extracts the [`ClientInfo`] of a request; never fails.
pub struct Client(pub ClientInfo);

impl<S> FromRequestParts<S> for Client
where
    S: TrustedProxies + Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        Ok(Client(ClientInfo::from_parts(
            parts,
            state.trusted_proxies(),
        )))
    }
}

/// One audit entry on `audit.recorded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique (UUID v7): the entry is stored once however often the event
    /// is delivered.
    pub event_id: String,
    /// When the change was made (ms since the epoch).
    pub at: i64,
    pub actor_id: Option<String>,
    pub actor_username: Option<String>,
    /// e.g. `device.create`, `rollout.pause`.
    pub action: String,
    /// The id of what was changed.
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

impl AuditEvent {
    /// A new entry for `action` by the user `actor_id` (`actor_username`)
    /// from `client`, made now, with outcome `success`.
    pub fn new(action: &str, actor_id: &str, actor_username: &str, client: &ClientInfo) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7().to_string(),
            at: crate::now_millis(),
            actor_id: Some(actor_id.to_string()),
            actor_username: Some(actor_username.to_string()),
            action: action.to_string(),
            target: None,
            outcome: SUCCESS.to_string(),
            client_ip: Some(client.ip.clone()),
            user_agent: client.user_agent.clone(),
            request_id: client
                .request_id
                .clone()
                .or_else(crate::telemetry::current_request_id),
            details: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Marks the entry a refused attempt.
    pub fn denied(mut self) -> Self {
        self.outcome = DENIED.to_string();
        self
    }
}

impl Event for AuditEvent {
    const TOPIC: &'static str = topics::AUDIT_RECORDED;

    fn validate(&self) -> Result<(), String> {
        if self.event_id.is_empty() {
            return Err("event_id is empty".into());
        }
        if self.action.is_empty() {
            return Err("action is empty".into());
        }
        if ![SUCCESS, FAILURE, DENIED].contains(&self.outcome.as_str()) {
            return Err(format!("{:?} is not an outcome", self.outcome));
        }
        Ok(())
    }
}

/// Publishes `event` on `audit.recorded`. Called after the change has
/// committed; a failure does not undo it or fail the request, so it is
/// logged with the whole entry and counted in
/// `wf_audit_events_unpublished_total{action}`.
pub async fn record(bus: &dyn EventBus, event: AuditEvent) {
    if let Err(e) = crate::events::publish(bus, std::slice::from_ref(&event)).await {
        metrics::counter!("wf_audit_events_unpublished_total", "action" => event.action.clone())
            .increment(1);
        tracing::error!(
            error = %e,
            action = %event.action,
            event_id = %event.event_id,
            entry = %serde_json::to_string(&event).unwrap_or_default(),
            "publishing an audit entry failed"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(peer: &str, forwarded: Option<&str>) -> Parts {
        let mut builder = Request::builder().header(USER_AGENT, "curl/8");
        if let Some(f) = forwarded {
            builder = builder.header("x-forwarded-for", f);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    #[test]
    fn forwarded_address_only_from_trusted_proxies() {
        let trusted: Vec<IpRange> = vec!["127.0.0.1".parse().unwrap()];
        let p = parts("127.0.0.1:5000", Some("198.51.100.7, 203.0.113.9"));
        let client = ClientInfo::from_parts(&p, &trusted);
        assert_eq!(client.ip, "203.0.113.9");
        assert_eq!(client.user_agent.as_deref(), Some("curl/8"));
        let p = parts("192.0.2.1:5000", Some("203.0.113.9"));
        assert_eq!(ClientInfo::from_parts(&p, &trusted).ip, "192.0.2.1");
        let p = parts("127.0.0.1:5000", Some("not an address"));
        assert_eq!(ClientInfo::from_parts(&p, &trusted).ip, "127.0.0.1");
        let p = parts("127.0.0.1:5000", None);
        assert_eq!(ClientInfo::from_parts(&p, &[]).ip, "127.0.0.1");
        let (no_peer, ()) = Request::new(()).into_parts();
        assert_eq!(ClientInfo::from_parts(&no_peer, &trusted).ip, "unknown");
    }

    #[test]
    fn events_have_unique_ids_and_round_trip() {
        let client = ClientInfo {
            ip: "203.0.113.9".into(),
            user_agent: None,
            request_id: Some("req-1".into()),
        };
        let a = AuditEvent::new("device.create", "u1", "alice", &client).target("d1");
        let b = AuditEvent::new("device.create", "u1", "alice", &client).denied();
        assert_ne!(a.event_id, b.event_id);
        assert_eq!(b.outcome, DENIED);
        assert_eq!(a.request_id.as_deref(), Some("req-1"));
        let json = serde_json::to_vec(&a).unwrap();
        assert_eq!(serde_json::from_slice::<AuditEvent>(&json).unwrap(), a);
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(b.validate(), Ok(()));
        let mut odd = a.clone();
        odd.outcome = "maybe".into();
        assert!(odd.validate().is_err());
    }
}
