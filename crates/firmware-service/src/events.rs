//! What the worker does with device events: OTA progress moves executions
//! (`device.ota.progress`), and a deleted device's open executions are
//! canceled (`device.deleted`). Both handlers are idempotent: a redelivered
//! event finds its execution already moved and changes nothing.

use std::sync::Arc;

use wf_common::contract::{DeviceDeleted, OtaProgress, OtaState};
use wf_common::events::{Batch, EventBus, run_consumer};
use wf_common::shutdown::Shutdown;

use crate::domain::{ExecutionEvent, Reported};
use crate::engine::{Applied, apply_event};
use crate::store::Store;

/// The consumer group of every firmware worker.
pub const GROUP: &str = "firmware-service";

/// Consumes both topics until `stop` is triggered.
pub async fn run(store: Store, bus: Arc<dyn EventBus>, consumer: String, stop: Shutdown) {
    let progress = {
        let store = store.clone();
        run_consumer(
            bus.clone(),
            GROUP.into(),
            consumer.clone(),
            128,
            stop.wait(),
            move |batch| {
                let store = store.clone();
                async move { apply_progress(&store, batch).await }
            },
        )
    };
    let deleted = run_consumer(bus, GROUP.into(), consumer, 64, stop.wait(), move |batch| {
        let store = store.clone();
        async move { cancel_deleted(&store, batch).await }
    });
    tokio::join!(progress, deleted);
}

/// What a device's reported OTA state means to its execution.
fn reported(state: OtaState) -> Reported {
    match state {
        OtaState::Downloading => Reported::Downloading,
        OtaState::Installing => Reported::Installing,
        OtaState::Succeeded => Reported::Succeeded,
        OtaState::Failed => Reported::Failed,
        OtaState::Rejected => Reported::Rejected,
    }
}

pub async fn apply_progress(store: &Store, batch: Batch<OtaProgress>) -> anyhow::Result<()> {
    for p in batch.events() {
        let Some(task) = store.get_task(&p.task_id).await? else {
            tracing::debug!(device_id = %p.device_id, task_id = %p.task_id, "progress for an unknown task");
            continue;
        };
        if task.device_id != p.device_id {
            tracing::warn!(
                device_id = %p.device_id,
                task_id = %p.task_id,
                "a device reported progress on another device's task; ignored"
            );
            continue;
        }
        let Some(rollout) = store.get_rollout(&task.rollout_id).await? else {
            continue;
        };
        let event = ExecutionEvent::Report {
            state: reported(p.state),
            progress: p.progress,
            version: p.version.as_deref(),
            error: p.error.as_deref(),
        };
        match apply_event(store, task, &rollout, &event, "device", None).await? {
            Applied::Changed(state) => {
                if state.is_final() {
                    metrics::counter!("wf_ota_executions_finished_total", "state" => state.as_str())
                        .increment(1);
                }
            }
            Applied::Ignored(why) => {
                tracing::debug!(task_id = %p.task_id, state = p.state.as_str(), why, "progress ignored");
            }
        }
    }
    Ok(())
}

async fn cancel_deleted(store: &Store, batch: Batch<DeviceDeleted>) -> anyhow::Result<()> {
    for d in batch.events() {
        for task in store.open_tasks_of_device(&d.device_id).await? {
            let Some(rollout) = store.get_rollout(&task.rollout_id).await? else {
                continue;
            };
            let id = task.id.clone();
            let applied = apply_event(
                store,
                task,
                &rollout,
                &ExecutionEvent::Cancel {
                    reason: "the device was deleted",
                },
                "device-service",
                None,
            )
            .await?;
            tracing::info!(device_id = %d.device_id, task_id = %id, ?applied, "deleted device's execution canceled");
        }
    }
    Ok(())
}
