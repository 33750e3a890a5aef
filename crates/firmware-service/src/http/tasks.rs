//! Single-device upgrade tasks: a one-device rollout, addressed by its
//! execution's id (the `task_id` the device sees). Owned like rollouts:
//! a role of scope `fleet` reaches every task, one of scope `own` only its
//! holder's.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wf_common::audit::Client;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::format_millis;

use super::rollouts::{KIND_TASK, Spec, create_rollout};
use super::{ExecutionStateSchema, Page, Paged, RolloutStateSchema, time};
use crate::domain::{ExecutionEvent, ExecutionState, RolloutState, Target};
use crate::engine::apply_event;
use crate::error::{Error, Result};
use crate::state::{Access, AppState, Caller, Permission};
use crate::store::{HistoryRecord, RolloutRecord, TaskRecord};

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UpgradeTask)]
pub struct TaskDto {
    /// The `task_id` in the device's OTA notification.
    id: String,
    rollout_id: String,
    device_id: String,
    firmware_id: String,
    firmware_version: String,
    #[schema(value_type = ExecutionStateSchema)]
    state: &'static str,
    /// The one-device rollout's state (running, completed, canceled, …).
    #[schema(value_type = RolloutStateSchema)]
    rollout_state: &'static str,
    attempts: i64,
    /// Percent, as the device last reported it.
    progress: Option<f64>,
    error: Option<String>,
    reported_version: Option<String>,
    timeout_secs: i64,
    max_retries: i64,
    retry_backoff_secs: i64,
    #[schema(format = DateTime)]
    deadline_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// On reads of one task and on cancel only.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<super::rollouts::HistoryDto>>,
}

fn to_dto(t: TaskRecord, r: &RolloutRecord, history: Option<Vec<HistoryRecord>>) -> TaskDto {
    TaskDto {
        id: t.id,
        rollout_id: t.rollout_id,
        device_id: t.device_id,
        firmware_id: r.firmware_id.clone(),
        firmware_version: r.firmware_version.clone(),
        state: t.state.as_str(),
        rollout_state: r.state.as_str(),
        attempts: t.attempts,
        progress: t.progress,
        error: t.error,
        reported_version: t.reported_version,
        timeout_secs: r.timeout_secs,
        max_retries: r.max_retries,
        retry_backoff_secs: r.retry_backoff_secs,
        deadline_at: time(t.deadline_at),
        created_at: format_millis(t.created_at),
        updated_at: format_millis(t.updated_at),
        finished_at: time(t.finished_at),
        history: history.map(|h| h.into_iter().map(Into::into).collect()),
    }
}

fn default_timeout() -> u32 {
    600
}
fn default_backoff() -> u32 {
    30
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateUpgradeTaskRequest)]
pub struct CreateRequest {
    /// An uploaded firmware's id (422 when there is none).
    firmware_id: String,
    /// The device to upgrade, of the firmware's device type.
    #[schema(min_length = 1, pattern = "\\S")]
    device_id: String,
    /// How long the device has from notification to a final report.
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 604_800, default = 600)]
    timeout_secs: u32,
    /// Further attempts after a failure or timeout.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10, default = 0)]
    max_retries: u32,
    /// The wait before the first retry; doubled for each further one.
    #[serde(default = "default_backoff")]
    #[schema(minimum = 0, maximum = 86_400, default = 30)]
    retry_backoff_secs: u32,
    /// RFC 3339; absent, empty or past means now.
    #[schema(format = DateTime)]
    start_at: Option<String>,
}

/// A task the caller may see: another owner's is answered like an unknown
/// one.
async fn load(state: &AppState, access: &Access, id: &str) -> Result<(TaskRecord, RolloutRecord)> {
    let not_found = || Error::no_such("upgrade task", id);
    let task = state.store.get_task(id).await?.ok_or_else(not_found)?;
    let rollout = state
        .store
        .get_rollout(&task.rollout_id)
        .await?
        .filter(|r| r.kind == KIND_TASK && access.reaches(&r.created_by))
        .ok_or_else(not_found)?;
    Ok((task, rollout))
}

/// Creates an upgrade task: a one-device rollout. Requires
/// `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/upgrade-tasks", operation_id = "create_upgrade_task", tag = "upgrade-tasks", security(("bearer" = [])),
    request_body = CreateRequest,
    responses(
        (status = 201, body = TaskDto,
            links(("GetUpgradeTask" = (operation_id = "get_upgrade_task", parameters(("id" = "$response.body#/id")))), ("CancelUpgradeTask" = (operation_id = "cancel_upgrade_task", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 409, description = "Another rollout or upgrade task is upgrading the device", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
        (status = 415, description = "Not application/json", body = ErrorEnvelope),
        (status = 422, description = "An invalid field, an unknown firmware, a device that is unknown or another owner's \
            (answered alike), or a device of another type", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<TaskDto>)> {
    let access = caller.require(&state, Permission::Deploy).await?;
    let device_id = req.device_id.trim().to_string();
    if device_id.is_empty() {
        return Err(Error::Validation("device_id is required".into()));
    }
    let (rollout, _) = create_rollout(
        &state,
        &caller,
        &access,
        Spec {
            kind: KIND_TASK,
            name: Some(format!("upgrade {device_id}")),
            firmware_id: req.firmware_id,
            target: Target::DeviceIds(vec![device_id]),
            rate_per_minute: 0,
            failure_threshold_percent: 100.0,
            min_finished: 1,
            timeout_secs: req.timeout_secs,
            max_retries: req.max_retries,
            retry_backoff_secs: req.retry_backoff_secs,
            start_at: req.start_at,
        },
    )
    .await?;
    let (tasks, _) = state.store.list_tasks(&rollout.id, None, 1, 0).await?;
    let task = tasks.into_iter().next().ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "upgrade task {} has no execution",
            rollout.id
        ))
    })?;
    let details = serde_json::json!({
        "device_id": task.device_id, "firmware_id": rollout.firmware_id,
        "version": rollout.firmware_version,
    });
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "upgrade_task.create",
            &task.id,
            details,
        )
        .await;
    Ok((StatusCode::CREATED, Json(to_dto(task, &rollout, None))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this device's tasks.
    #[param(max_length = 256)]
    device_id: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Upgrade tasks, newest first: the caller's own, every owner's for
/// admins. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/upgrade-tasks", operation_id = "list_upgrade_tasks", tag = "upgrade-tasks", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = Paged<TaskDto>),
        (status = 400, description = "A query parameter is not of its type", body = ErrorEnvelope),
        (status = 422, description = "limit or offset out of range, or a filter longer than 256 characters", body = ErrorEnvelope),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<TaskDto>>> {
    let access = caller.require(&state, Permission::Read).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    wf_common::text::check_filter("device_id", q.device_id.as_deref())
        .map_err(Error::Validation)?;
    let device = q.device_id.filter(|d| !d.trim().is_empty());
    let (rows, total) = state
        .store
        .list_upgrade_tasks(device.as_deref(), access.owner_filter(), limit, offset)
        .await?;
    Ok(Json(Paged {
        items: rows.into_iter().map(|(t, r)| to_dto(t, &r, None)).collect(),
        total,
        limit,
        offset,
    }))
}

/// One upgrade task with its history. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/upgrade-tasks/{id}", operation_id = "get_upgrade_task", tag = "upgrade-tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upgrade task id (the device's `task_id`)")),
    responses(
        (status = 200, body = TaskDto),
        (status = 404, description = "No such upgrade task among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskDto>> {
    let access = caller.require(&state, Permission::Read).await?;
    let (task, rollout) = load(&state, &access, &id).await?;
    let history = state.store.history(&task.id).await?;
    Ok(Json(to_dto(task, &rollout, Some(history))))
}

/// Cancels the task, even while the device works on it (its later
/// reports are ignored, and its download link stops working). Requires
/// `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/upgrade-tasks/{id}/cancel", operation_id = "cancel_upgrade_task", tag = "upgrade-tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upgrade task id (the device's `task_id`)")),
    responses(
        (status = 200, body = TaskDto),
        (status = 404, description = "No such upgrade task among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
        (status = 409, description = "The task is finished already", body = ErrorEnvelope),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskDto>> {
    let access = caller.require(&state, Permission::Deploy).await?;
    let (task, rollout) = load(&state, &access, &id).await?;
    if task.state.is_final() {
        return Err(Error::Conflict(format!(
            "the upgrade task is {} already",
            task.state.as_str()
        )));
    }
    let now = wf_common::now_millis();
    if let Ok(next) = rollout.state.cancel() {
        state
            .store
            .set_rollout_state(&rollout.id, rollout.state, next, Some("canceled"), now)
            .await?;
    }
    let rollout = state
        .store
        .get_rollout(&rollout.id)
        .await?
        .unwrap_or(rollout);
    apply_event(
        &state.store,
        task,
        &rollout,
        &ExecutionEvent::Cancel {
            reason: "the upgrade task was canceled",
        },
        &caller.actor(),
        None,
    )
    .await?;
    let (task, rollout) = load(&state, &access, &id).await?;
    if task.state != ExecutionState::Canceled && rollout.state == RolloutState::Canceled {
        tracing::info!(task_id = %id, state = task.state.as_str(), "upgrade task finished before it was canceled");
    }
    let history = state.store.history(&task.id).await?;
    Ok(Json(to_dto(task, &rollout, Some(history))))
}
