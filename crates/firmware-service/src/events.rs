//! What the worker does with device events: OTA progress moves executions
//! (`device.ota.progress`), and a deleted device's open executions are
//! canceled (`device.deleted`). Both handlers are idempotent: a redelivered
//! event finds its execution already moved and changes nothing.

use std::sync::Arc;

use wf_common::events::{
    Delivery, DeviceDeleted, EventBus, OtaProgress, decode_all, run_consumer, topics,
};
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
            topics::DEVICE_OTA_PROGRESS,
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
    let deleted = run_consumer(
        bus,
        topics::DEVICE_DELETED,
        GROUP.into(),
        consumer,
        64,
        stop.wait(),
        move |batch| {
            let store = store.clone();
            async move { cancel_deleted(&store, batch).await }
        },
    );
    tokio::join!(progress, deleted);
}

pub async fn apply_progress(store: &Store, batch: Vec<Delivery>) -> anyhow::Result<()> {
    for p in decode_all::<OtaProgress>(topics::DEVICE_OTA_PROGRESS, &batch) {
        let Some(reported) = Reported::parse(&p.state) else {
            tracing::warn!(device_id = %p.device_id, task_id = %p.task_id, state = %p.state, "unknown OTA state reported");
            continue;
        };
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
            state: reported,
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
                tracing::debug!(task_id = %p.task_id, state = %p.state, why, "progress ignored");
            }
        }
    }
    Ok(())
}

async fn cancel_deleted(store: &Store, batch: Vec<Delivery>) -> anyhow::Result<()> {
    for d in decode_all::<DeviceDeleted>(topics::DEVICE_DELETED, &batch) {
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
