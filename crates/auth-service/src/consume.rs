//! The audit entries other services publish on `audit.recorded`, written
//! to the audit log once each.

use std::sync::Arc;

use wf_common::audit::AuditEvent;
use wf_common::events::{Batch, EventBus, run_consumer};

use crate::state::AppState;

/// auth-service's consumer group.
pub const GROUP: &str = "auth-service";

/// Events written per batch.
const MAX_BATCH: usize = 256;

/// Consumes `audit.recorded` until `stop` resolves. A batch that cannot be
/// written is retried; a redelivered event is stored once.
pub async fn run(state: AppState, bus: Arc<dyn EventBus>, stop: impl Future<Output = ()> + Send) {
    let consumer = state.config.consumer_name.clone();
    run_consumer(bus, GROUP.into(), consumer, MAX_BATCH, stop, |batch| {
        store(state.clone(), batch)
    })
    .await;
}

async fn store(state: AppState, batch: Batch<AuditEvent>) -> anyhow::Result<()> {
    for event in batch.events() {
        let new = state.store.insert_audit_event(&event).await?;
        if !new {
            tracing::debug!(event_id = %event.event_id, "audit entry delivered again; stored once");
        }
    }
    Ok(())
}
