//! Applies events to executions: the domain decides, the store applies the
//! decision as a conditional update, and a lost race is retried on fresh
//! data. Shared by the worker, the event consumers and the API.

use crate::domain::{
    Decision, ExecutionEvent, ExecutionState, FirmwareVersion, RetryPolicy, decide,
};
use crate::error::{Error, Result};
use crate::store::{Change, RolloutRecord, Store, TaskRecord};

/// How often a change is retried after losing a race.
const ATTEMPTS: usize = 5;

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Moved to this state (or stayed in it with new progress).
    Changed(ExecutionState),
    /// Nothing to do, and why.
    Ignored(&'static str),
}

fn retry_policy(task: &TaskRecord, rollout: &RolloutRecord) -> RetryPolicy {
    RetryPolicy {
        attempts: u32::try_from(task.attempts).unwrap_or(u32::MAX),
        max_retries: u32::try_from(rollout.max_retries).unwrap_or_default(),
        backoff_secs: u64::try_from(rollout.retry_backoff_secs).unwrap_or_default(),
        rollout_active: rollout.state.retries_executions(),
    }
}

/// The row values a decision leads to.
pub fn change_for(
    task: &TaskRecord,
    rollout: &RolloutRecord,
    decision: &Decision,
    now: i64,
) -> Option<Change> {
    let keep = Change {
        state: task.state,
        attempts: task.attempts,
        progress: task.progress,
        error: task.error.clone(),
        reported_version: task.reported_version.clone(),
        next_attempt_at: task.next_attempt_at,
        deadline_at: task.deadline_at,
        finished_at: None,
        now,
        history: None,
        keep_lease: false,
    };
    match decision {
        Decision::Ignore(_) => None,
        Decision::Advance { state, progress } => {
            // Leaving the queue starts an attempt and its clock.
            let starts_attempt = task.state == ExecutionState::Queued;
            let attempts = task.attempts + i64::from(starts_attempt);
            let changed = *state != task.state;
            Some(Change {
                // The worker keeps its lease until the notification it is
                // about to publish went out.
                keep_lease: *state == ExecutionState::Notified,
                state: *state,
                attempts,
                progress: progress.or(if starts_attempt { None } else { task.progress }),
                error: if starts_attempt {
                    None
                } else {
                    task.error.clone()
                },
                deadline_at: if starts_attempt {
                    Some(now + rollout.timeout_secs.saturating_mul(1000))
                } else {
                    task.deadline_at
                },
                history: changed.then(|| {
                    (
                        state.as_str().to_string(),
                        starts_attempt.then(|| format!("attempt {attempts}")),
                    )
                }),
                ..keep
            })
        }
        Decision::Retry { error, delay_ms } => Some(Change {
            state: ExecutionState::Queued,
            progress: None,
            error: Some(error.clone()),
            next_attempt_at: now + delay_ms,
            deadline_at: None,
            history: Some((
                ExecutionState::Queued.as_str().to_string(),
                Some(format!(
                    "attempt {} failed: {error}; retrying in {} s",
                    task.attempts,
                    delay_ms / 1000
                )),
            )),
            ..keep
        }),
        Decision::Finish {
            state,
            error,
            version,
        } => Some(Change {
            state: *state,
            progress: if *state == ExecutionState::Succeeded {
                Some(100.0)
            } else {
                task.progress
            },
            error: error.clone(),
            reported_version: version.clone().or(keep.reported_version.clone()),
            deadline_at: None,
            finished_at: Some(now),
            history: Some((state.as_str().to_string(), error.clone())),
            ..keep
        }),
    }
}

/// Applies `event` to the execution `task_id`, re-reading it after a lost
/// race. `lease_token` guards the worker's notification of a task it
/// leased.
pub async fn apply_event(
    store: &Store,
    task: TaskRecord,
    rollout: &RolloutRecord,
    event: &ExecutionEvent<'_>,
    actor: &str,
    lease_token: Option<&str>,
) -> Result<Applied> {
    let target = FirmwareVersion::parse(&rollout.firmware_version)
        .map_err(|e| Error::Internal(anyhow::anyhow!("rollout {}: {e}", rollout.id)))?;
    let mut task = task;
    for _ in 0..ATTEMPTS {
        let decision = decide(task.state, event, &target, &retry_policy(&task, rollout));
        let now = wf_common::now_millis();
        let Some(change) = change_for(&task, rollout, &decision, now) else {
            if let Decision::Ignore(why) = decision {
                return Ok(Applied::Ignored(why));
            }
            return Ok(Applied::Ignored("no change"));
        };
        if store.apply(&task, &change, actor, lease_token).await? {
            return Ok(Applied::Changed(change.state));
        }
        if lease_token.is_some() {
            // The lease is gone: someone else owns this execution now.
            return Ok(Applied::Ignored("the lease was lost"));
        }
        match store.get_task(&task.id).await? {
            Some(fresh) => task = fresh,
            None => return Ok(Applied::Ignored("the execution is gone")),
        }
    }
    Err(Error::Conflict(format!(
        "execution {} kept changing; try again",
        task.id
    )))
}
