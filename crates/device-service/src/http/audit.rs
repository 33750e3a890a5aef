//! The changes device-service records in the audit log (published on
//! `audit.recorded` once committed; auth-service stores them).

use wf_common::audit::{AuditEvent, ClientInfo, TrustedProxies};
use wf_common::net::IpRange;

use crate::state::{AppState, Caller};

impl TrustedProxies for AppState {
    fn trusted_proxies(&self) -> &[IpRange] {
        &self.config.trusted_proxies
    }
}

/// Records that `caller` did `action` to `target` (a device id).
pub async fn record(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    let event = AuditEvent::new(action, &caller.user_id, &caller.username, client)
        .target(target)
        .details(details);
    wf_common::audit::record(state.bus.as_ref(), event).await;
}
