//! Cloud-to-device commands: send (optionally waiting for the answer),
//! list a device's history, read one.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wf_common::audit::Client;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::format_millis;

use super::{Page, Paged};
use crate::domain::{CommandName, CommandStatus};
use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};
use crate::store::{CommandFilter, CommandRecord, NewCommand};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandDto {
    id: String,
    device_id: String,
    name: String,
    #[schema(value_type = Object)]
    params: serde_json::Value,
    status: &'static str,
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    error: Option<String>,
    created_by: String,
    timeout_s: i64,
    expires_at: String,
    created_at: String,
    sent_at: Option<String>,
    completed_at: Option<String>,
}

impl From<CommandRecord> for CommandDto {
    fn from(c: CommandRecord) -> Self {
        Self {
            id: c.id,
            device_id: c.device_id,
            name: c.name,
            params: c.params,
            status: c.status.as_str(),
            result: c.result,
            error: c.error,
            created_by: c.created_by,
            timeout_s: c.timeout_s,
            expires_at: format_millis(c.expires_at),
            created_at: format_millis(c.created_at),
            sent_at: c.sent_at.map(format_millis),
            completed_at: c.completed_at.map(format_millis),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateCommandRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    params: serde_json::Value,
    timeout_s: Option<i64>,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Hold the request until the device answers or the command times out.
    #[serde(default)]
    wait: bool,
}

/// Sends a command. With `Idempotency-Key`, a retried request returns the
/// command the first one created instead of sending another.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "commands", security(("bearer" = [])), request_body = CreateRequest,
    params(("id" = String, Path), CreateQuery, ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first one's command")),
    responses((status = 201, body = CommandDto), (status = 200, description = "A retry with a used Idempotency-Key", body = CommandDto),
        (status = 202, description = "With ?wait=true: the longest wait ended before the command did; it stays open", body = CommandDto),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(device_id): Path<String>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<CommandDto>)> {
    let access = caller.require(&state, Permission::DeviceCommand).await?;
    let device = state.device_for(&access, &device_id).await?;
    let name = CommandName::parse(&req.name).map_err(Error::Validation)?;
    let max = state.config.command_max_timeout_secs;
    let timeout_s = req
        .timeout_s
        .unwrap_or(state.config.command_default_timeout_secs);
    if !(1..=max).contains(&timeout_s) {
        return Err(Error::Validation(format!(
            "timeout_s must be between 1 and {max}"
        )));
    }
    if req.params.to_string().len() > 16 * 1024 {
        return Err(Error::Validation(
            "params must be at most 16 KiB of JSON".into(),
        ));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 128)
                .ok_or_else(|| {
                    Error::BadRequest("Idempotency-Key must be 1 to 128 visible characters".into())
                })?;
            Some(key.to_string())
        }
        None => None,
    };
    if let Some(key) = &idempotency_key
        && let Some(existing) = state
            .store
            .command_by_idempotency_key(&caller.user_id, key)
            .await?
    {
        return replay(existing, &device.id);
    }

    let now = wf_common::now_millis();
    let command = NewCommand {
        id: uuid::Uuid::now_v7().to_string(),
        device_id: device.id.clone(),
        name: name.as_str().to_string(),
        params: req.params,
        created_by: caller.user_id.clone(),
        idempotency_key: idempotency_key.clone(),
        timeout_s,
        created_at: now,
    };
    match state.store.insert_command(&command).await {
        Ok(()) => {}
        // A concurrent retry with the same key won the race.
        Err(Error::Conflict(_)) if idempotency_key.is_some() => {
            let key = idempotency_key.as_deref().unwrap_or_default();
            if let Some(existing) = state
                .store
                .command_by_idempotency_key(&caller.user_id, key)
                .await?
            {
                return replay(existing, &device.id);
            }
            return Err(Error::Conflict(
                "that idempotency key was used already".into(),
            ));
        }
        Err(e) => return Err(e),
    }
    let details = json!({"command_id": command.id, "name": command.name, "timeout_s": timeout_s});
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.command",
            &device.id,
            details,
        )
        .await;

    match publish(&state, &load(&state, &command.id).await?).await {
        Ok(()) => {
            state
                .store
                .mark_command_sent(&command.id, wf_common::now_millis())
                .await?
        }
        Err(e) => {
            tracing::warn!(command_id = %command.id, error = %e, "command could not be sent");
            state
                .store
                .complete_command(
                    &command.id,
                    &device.id,
                    CommandStatus::Failed,
                    None,
                    Some("the command could not be delivered to the device gateway"),
                    wf_common::now_millis(),
                )
                .await?;
        }
    }

    let record = if query.wait {
        let max_wait = state.config.command_max_wait_secs.max(1);
        if timeout_s <= max_wait {
            wait_for(
                &state,
                &command.id,
                Duration::from_secs(timeout_s as u64),
                true,
            )
            .await?
        } else {
            wait_for(
                &state,
                &command.id,
                Duration::from_secs(max_wait as u64),
                false,
            )
            .await?
        }
    } else {
        load(&state, &command.id).await?
    };
    let status = if record.status.is_final() || !query.wait {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(record.into())))
}

/// Publishes `command` to its device (`devices/{id}/commands`, QoS 1).
pub(crate) async fn publish(state: &AppState, command: &CommandRecord) -> Result<()> {
    let payload = json!({
        "id": command.id,
        "name": command.name,
        "params": command.params,
        "expires_at": format_millis(command.expires_at),
    });
    let topic = format!("devices/{}/commands", command.device_id);
    state
        .gateway
        .publish(topic, payload.to_string().into_bytes(), 1)
        .await
}

fn replay(existing: CommandRecord, device_id: &str) -> Result<(StatusCode, Json<CommandDto>)> {
    if existing.device_id != device_id {
        return Err(Error::Conflict(
            "that idempotency key was used for a command to another device".into(),
        ));
    }
    Ok((StatusCode::OK, Json(existing.into())))
}

async fn load(state: &AppState, id: &str) -> Result<CommandRecord> {
    state
        .store
        .get_command(id)
        .await?
        .ok_or_else(|| Error::no_such("command", id))
}

/// Waits until the command is final or `timeout` passes; with
/// `expire_at_end` (the wait covers the command's whole timeout) it is then
/// marked `timed_out`. Completion is announced in-process; the periodic
/// re-read covers a response handled by another replica.
async fn wait_for(
    state: &AppState,
    id: &str,
    timeout: Duration,
    expire_at_end: bool,
) -> Result<CommandRecord> {
    let mut done = state.command_done.subscribe();
    let grace = if expire_at_end {
        Duration::from_millis(500)
    } else {
        Duration::ZERO
    };
    let deadline = tokio::time::Instant::now() + timeout + grace;
    loop {
        let record = load(state, id).await?;
        if record.status.is_final() {
            return Ok(record);
        }
        if tokio::time::Instant::now() >= deadline {
            if !expire_at_end {
                // The wait ends before the command's own timeout: it stays
                // open, and the caller gets it as it is now.
                return Ok(record);
            }
            let now = wf_common::now_millis();
            state
                .store
                .complete_command(
                    id,
                    &record.device_id,
                    CommandStatus::TimedOut,
                    None,
                    Some("the device did not answer in time"),
                    now,
                )
                .await?;
            return load(state, id).await;
        }
        let poll = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            () = poll => {}
            () = tokio::time::sleep_until(deadline) => {}
            finished = done.recv() => {
                if let Ok(finished) = finished
                    && finished != id
                {
                    continue;
                }
            }
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only commands in this status: pending, sent, succeeded, failed or
    /// timed_out.
    status: Option<String>,
    /// 1 to 500; default 50.
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetListQuery {
    /// Only commands to this device.
    device: Option<String>,
    /// Only commands in this status: pending, sent, succeeded, failed or
    /// timed_out.
    status: Option<String>,
    /// 1 to 500; default 50.
    limit: Option<i64>,
    offset: Option<i64>,
}

fn status_filter(status: Option<String>) -> Result<Option<CommandStatus>> {
    wf_common::text::check_filter("status", status.as_deref()).map_err(Error::Validation)?;
    status
        .filter(|s| !s.is_empty())
        .map(|s| {
            CommandStatus::parse(&s)
                .ok_or_else(|| Error::Validation(format!("unknown status {s:?}")))
        })
        .transpose()
}

async fn listing(
    state: &AppState,
    filter: CommandFilter,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<Json<Paged<CommandDto>>> {
    let Page { limit, offset } = Page::from_query(limit, offset)?;
    let (commands, total) = state.store.list_commands(&filter, limit, offset).await?;
    Ok(Json(Paged {
        items: commands.into_iter().map(CommandDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// A device's commands, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", tag = "commands", security(("bearer" = [])), params(("id" = String, Path), ListQuery),
    responses((status = 200, body = Paged<CommandDto>), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(device_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<CommandDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &device_id).await?;
    let filter = CommandFilter {
        device_id: Some(device_id),
        status: status_filter(q.status)?,
        ..CommandFilter::default()
    };
    listing(&state, filter, q.limit, q.offset).await
}

/// Commands across the fleet, newest first: those to every device the
/// caller's `device:read` reaches (the whole fleet, or with a role of
/// scope `own` the devices the caller owns).
#[utoipa::path(get, path = "/api/v1/commands", tag = "commands", security(("bearer" = [])), params(FleetListQuery),
    responses((status = 200, body = Paged<CommandDto>), (status = 422, body = ErrorEnvelope)))]
pub async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<FleetListQuery>,
) -> Result<Json<Paged<CommandDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    wf_common::text::check_filter("device", q.device.as_deref()).map_err(Error::Validation)?;
    let filter = CommandFilter {
        device_id: q.device.filter(|d| !d.is_empty()),
        owner_id: access.owner_filter().map(str::to_string),
        status: status_filter(q.status)?,
    };
    listing(&state, filter, q.limit, q.offset).await
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{command_id}", tag = "commands", security(("bearer" = [])), params(("id" = String, Path), ("command_id" = String, Path)),
    responses((status = 200, body = CommandDto), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((device_id, command_id)): Path<(String, String)>,
) -> Result<Json<CommandDto>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &device_id).await?;
    match state.store.get_command(&command_id).await? {
        Some(c) if c.device_id == device_id => Ok(Json(c.into())),
        _ => Err(Error::NotFound(format!(
            "no command with id {command_id:?}"
        ))),
    }
}
