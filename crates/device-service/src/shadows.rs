//! Device state operations shared by REST, gRPC, the event consumers and
//! the fleet job runner: updates with optimistic concurrency, what each
//! change sends (the event, the desired delta to the device, job
//! convergence), and the documents devices ask for.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use wf_common::contract::{ShadowSection, ShadowSource, ShadowUpdated};
use wf_common::events::publish;
use wf_common::shutdown::Shutdown;
use wf_common::{format_millis, now_millis};

use crate::domain::{Object, Refusal, Shadow, ShadowLimits, converged};
use crate::error::{Error, stale_version};
use crate::state::AppState;
use crate::store::{ShadowChange, ShadowJobRecord, TargetState};

/// How often an update that lost a race with another writer is retried.
const RACE_RETRIES: usize = 8;

/// Why an update was not applied.
#[derive(Debug)]
pub enum Failure {
    Refused(Refusal),
    /// `If-Match` named another version than the current one.
    Stale(i64),
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}

impl Failure {
    /// The answer to an operator's request.
    pub fn into_error(self, limits: &ShadowLimits) -> Error {
        match self {
            Self::Refused(r) => Error::Validation(r.message(limits)),
            Self::Stale(current) => stale_version(current),
            Self::Error(e) => e,
        }
    }
}

/// An applied update.
#[derive(Debug)]
pub struct Updated {
    pub shadow: Shadow,
    /// The document changed (its version grew).
    pub changed: bool,
    /// The new desired delta went to the connected device.
    pub delivered: bool,
}

/// Who asks for a change.
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    pub source: ShadowSource,
    pub actor: Option<&'a str>,
}

pub fn limits(state: &AppState) -> ShadowLimits {
    ShadowLimits {
        max_bytes: state.config.shadow_max_bytes,
        max_depth: state.config.shadow_max_depth,
    }
}

/// The document as REST, gRPC and `devices/{id}/shadow` show it.
pub fn document(device_id: &str, shadow: &Shadow) -> Value {
    json!({
        "device_id": device_id,
        "version": shadow.version,
        "reported": shadow.reported,
        "desired": shadow.desired,
        "delta": shadow.delta(),
        "metadata": shadow.metadata(),
        "updated_at": shadow.updated_at.map(format_millis),
    })
}

/// The device's shadow (empty, version 0, when it never had any state).
pub async fn load(state: &AppState, device_id: &str) -> Result<Shadow, Error> {
    Ok(state.store.get_shadow(device_id).await?.unwrap_or_default())
}

/// Merges `patch` into `section` of the device's shadow. With
/// `if_version`, only when the document is still at that version.
/// Another writer's change in between is read again and the patch applied
/// to it; nothing is half applied.
pub async fn update(
    state: &AppState,
    device_id: &str,
    section: ShadowSection,
    patch: &Value,
    author: Author<'_>,
    if_version: Option<i64>,
) -> Result<Updated, Failure> {
    let limits = limits(state);
    for _ in 0..RACE_RETRIES {
        let current = load(state, device_id).await?;
        if if_version.is_some_and(|v| v != current.version) {
            return Err(Failure::Stale(current.version));
        }
        let now = now_millis();
        let mut next = current.clone();
        if !next
            .apply(section, patch, now, &limits)
            .map_err(Failure::Refused)?
        {
            return Ok(Updated {
                shadow: current,
                changed: false,
                delivered: false,
            });
        }
        let change = ShadowChange {
            version: next.version,
            section,
            source: author.source,
            actor: author.actor.map(str::to_string),
            changes: patch.clone(),
            at: now,
        };
        if state
            .store
            .save_shadow(device_id, &next, current.version, &change)
            .await?
        {
            metrics::counter!("wf_shadow_updates_total", "section" => section.as_str())
                .increment(1);
            let delivered = announce(state, device_id, &next, &change).await;
            return Ok(Updated {
                shadow: next,
                changed: true,
                delivered,
            });
        }
        if if_version.is_some() {
            let now_at = load(state, device_id).await?.version;
            return Err(Failure::Stale(now_at));
        }
    }
    Err(Failure::Error(Error::Unavailable(
        "the shadow kept changing under this update; try again".into(),
    )))
}

/// What follows a stored change: `device.shadow.updated` on the bus, the
/// delta to the device when desired changed, convergence of fleet jobs
/// when reported did. Whether the delta reached a connected device.
async fn announce(
    state: &AppState,
    device_id: &str,
    shadow: &Shadow,
    change: &ShadowChange,
) -> bool {
    let delta = shadow.delta();
    let event = ShadowUpdated {
        device_id: device_id.to_string(),
        version: shadow.version,
        section: change.section,
        source: change.source,
        actor: change.actor.clone(),
        changes: change.changes.clone(),
        delta: Value::Object(delta.clone()),
        at: change.at,
    };
    if let Err(e) = publish(state.bus.as_ref(), &[event]).await {
        metrics::counter!("wf_events_publish_failed_total", "topic" => "device.shadow.updated")
            .increment(1);
        tracing::warn!(device_id, version = shadow.version, error = %e,
            "device.shadow.updated not published; the change is stored");
    }
    match change.section {
        ShadowSection::Desired => push_delta(state, device_id, shadow.version, &delta).await,
        ShadowSection::Reported => {
            settle_jobs(state, device_id, &shadow.reported).await;
            false
        }
    }
}

/// Publishes `{"version", "state": delta}` on `devices/{id}/shadow/desired`
/// when the delta is not empty and the device is connected; whether it
/// went out.
async fn push_delta(state: &AppState, device_id: &str, version: i64, delta: &Object) -> bool {
    if delta.is_empty() {
        return false;
    }
    match state.store.get_device(device_id).await {
        Ok(Some(device)) if device.online => {}
        Ok(_) => return false,
        Err(e) => {
            tracing::warn!(device_id, error = %e, "desired state not sent: the device could not be read");
            return false;
        }
    }
    let payload = json!({"version": version, "state": delta});
    match state
        .gateway
        .publish(
            format!("devices/{device_id}/shadow/desired"),
            payload.to_string().into_bytes(),
            1,
        )
        .await
    {
        Ok(()) => {
            metrics::counter!("wf_shadow_deltas_sent_total").increment(1);
            true
        }
        Err(e) => {
            tracing::warn!(device_id, error = %e,
                "desired state not sent now; the device gets it when it reconnects or asks");
            false
        }
    }
}

/// A device came online: it gets its delta, if any, once it had the time
/// to subscribe, and the jobs that applied desired state to it count it
/// delivered.
pub async fn device_connected(state: AppState, device_id: String) {
    tokio::time::sleep(Duration::from_millis(
        state.config.command_redelivery_delay_ms,
    ))
    .await;
    let shadow = match state.store.get_shadow(&device_id).await {
        Ok(Some(shadow)) => shadow,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(device_id = %device_id, error = %e, "desired state not sent on reconnect");
            return;
        }
    };
    if push_delta(&state, &device_id, shadow.version, &shadow.delta()).await {
        mark_delivered(&state, &device_id).await;
    }
}

async fn mark_delivered(state: &AppState, device_id: &str) {
    let targets = match state.store.open_targets(device_id).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(device_id, error = %e, "shadow job progress not updated");
            return;
        }
    };
    for target in targets.iter().filter(|t| t.state == "applied") {
        if let Err(e) = state
            .store
            .move_target(
                &target.job_id,
                device_id,
                &[TargetState::Applied],
                TargetState::Delivered,
                now_millis(),
            )
            .await
        {
            tracing::warn!(device_id, job_id = %target.job_id, error = %e, "shadow job progress not updated");
        }
    }
}

/// Jobs whose desired state the device now reports count it converged;
/// a job whose every device converged is completed.
async fn settle_jobs(state: &AppState, device_id: &str, reported: &Object) {
    let result: Result<(), Error> = async {
        for target in state.store.open_targets(device_id).await? {
            if !converged(&target.desired, reported) {
                continue;
            }
            let now = now_millis();
            if state
                .store
                .move_target(
                    &target.job_id,
                    device_id,
                    &[TargetState::Applied, TargetState::Delivered],
                    TargetState::Converged,
                    now,
                )
                .await?
                && state
                    .store
                    .complete_shadow_job_if_done(&target.job_id, now)
                    .await?
            {
                tracing::info!(job_id = %target.job_id, "shadow job completed: every device converged");
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(device_id, error = %e, "shadow job convergence not recorded");
    }
}

/// What a device reported on `devices/{id}/shadow/reported`. A refused
/// update is answered on `devices/{id}/shadow/rejected`, counted and
/// logged; the document stays as it was.
pub async fn reported(state: &AppState, device_id: &str, patch: &Value) -> Result<(), Error> {
    if state.store.get_device(device_id).await?.is_none() {
        tracing::debug!(
            device_id,
            "state reported by a device that no longer exists"
        );
        return Ok(());
    }
    let author = Author {
        source: ShadowSource::Device,
        actor: None,
    };
    match update(
        state,
        device_id,
        ShadowSection::Reported,
        patch,
        author,
        None,
    )
    .await
    {
        Ok(updated) => {
            if !updated.changed {
                // Nothing new, yet the device may have caught up with a job
                // applied while its report was on its way.
                settle_jobs(state, device_id, &updated.shadow.reported).await;
            }
            Ok(())
        }
        Err(Failure::Refused(refusal)) => {
            reject(
                state,
                device_id,
                refusal.code(),
                &refusal.message(&limits(state)),
            )
            .await;
            Ok(())
        }
        Err(Failure::Stale(_)) => Ok(()),
        Err(Failure::Error(e)) => Err(e),
    }
}

/// Tells the device why its update was refused.
pub async fn reject(state: &AppState, device_id: &str, code: &str, message: &str) {
    metrics::counter!("wf_shadow_updates_rejected_total", "code" => code.to_string()).increment(1);
    tracing::info!(
        device_id,
        code,
        message,
        "shadow update from the device refused"
    );
    let payload = json!({"code": code, "message": message});
    if let Err(e) = state
        .gateway
        .publish(
            format!("devices/{device_id}/shadow/rejected"),
            payload.to_string().into_bytes(),
            1,
        )
        .await
    {
        tracing::warn!(device_id, error = %e, "the refusal could not be sent to the device");
    }
}

/// A device asked for its document on `devices/{id}/shadow/get`.
pub async fn requested(state: &AppState, device_id: &str) -> Result<(), Error> {
    if state.store.get_device(device_id).await?.is_none() {
        return Ok(());
    }
    let shadow = load(state, device_id).await?;
    let doc = document(device_id, &shadow);
    state
        .gateway
        .publish(
            format!("devices/{device_id}/shadow"),
            doc.to_string().into_bytes(),
            1,
        )
        .await
}

/// Targets applied per job and tick without a rate limit.
const UNLIMITED_PER_TICK: i64 = 500;

/// How many of a job's devices one step works on at once.
const JOB_CONCURRENCY: usize = 16;

const JOB_TICK: Duration = Duration::from_millis(250);

/// Applies running fleet jobs to their devices, at each job's rate, until
/// `stop`. Every replica runs it; a target is claimed with a conditional
/// update, so each is applied once.
pub async fn run_jobs(state: AppState, stop: Shutdown) {
    let mut credit: HashMap<String, f64> = HashMap::new();
    let mut ticks = tokio::time::interval(JOB_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.wait() => return,
        }
        let jobs = match state.store.running_shadow_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "running shadow jobs could not be read; retrying");
                continue;
            }
        };
        credit.retain(|id, _| jobs.iter().any(|j| &j.id == id));
        for job in jobs {
            let budget = match job.rate_per_second {
                Some(rate) => {
                    let c = credit.entry(job.id.clone()).or_default();
                    *c = (*c + rate as f64 * JOB_TICK.as_secs_f64()).min(rate as f64);
                    let whole = c.floor();
                    *c -= whole;
                    whole as i64
                }
                None => UNLIMITED_PER_TICK,
            };
            if budget > 0
                && let Err(e) = advance(&state, &job, budget).await
            {
                tracing::warn!(job_id = %job.id, error = %e, "shadow job step failed; retrying");
            }
        }
    }
}

/// One step of `job` on one of its queued devices: desired state set, then
/// the target moved on to what came of it.
async fn apply_to(
    state: &AppState,
    job: &ShadowJobRecord,
    wanted: &Object,
    device_id: String,
) -> Result<(), Error> {
    let author = Author {
        source: ShadowSource::Job,
        actor: Some(&job.id),
    };
    let now = now_millis();
    if !state
        .store
        .move_target(
            &job.id,
            &device_id,
            &[TargetState::Queued],
            TargetState::Applied,
            now,
        )
        .await?
    {
        return Ok(());
    }
    let mut failed = None;
    let next = match update(
        state,
        &device_id,
        ShadowSection::Desired,
        &job.desired,
        author,
        None,
    )
    .await
    {
        Ok(updated) if converged(wanted, &updated.shadow.reported) => TargetState::Converged,
        Ok(updated)
            if updated.delivered
                || (!updated.changed
                    && push_delta(
                        state,
                        &device_id,
                        updated.shadow.version,
                        &updated.shadow.delta(),
                    )
                    .await) =>
        {
            TargetState::Delivered
        }
        // Delivered when the device connects.
        Ok(_) | Err(Failure::Stale(_)) => return Ok(()),
        Err(Failure::Refused(refusal)) => {
            tracing::warn!(job_id = %job.id, device_id = %device_id, code = refusal.code(),
                "shadow job not applied to a device: {}", refusal.message(&limits(state)));
            TargetState::Failed
        }
        Err(Failure::Error(e)) => {
            // Back in the queue for the next tick.
            failed = Some(e);
            TargetState::Queued
        }
    };
    state
        .store
        .move_target(&job.id, &device_id, &[TargetState::Applied], next, now)
        .await?;
    failed.map_or(Ok(()), Err)
}

/// Applies `job` to at most `budget` of its queued devices, a few at a
/// time (each one is a few reads and writes and a publish to the device).
async fn advance(state: &AppState, job: &ShadowJobRecord, budget: i64) -> Result<(), Error> {
    let Value::Object(wanted) = &job.desired else {
        return Ok(());
    };
    let queued = state.store.queued_targets(&job.id, budget).await?;
    let results: Vec<Result<(), Error>> = futures_util::stream::iter(queued)
        .map(|device_id| apply_to(state, job, wanted, device_id))
        .buffer_unordered(JOB_CONCURRENCY)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    state
        .store
        .complete_shadow_job_if_done(&job.id, now_millis())
        .await?;
    Ok(())
}
