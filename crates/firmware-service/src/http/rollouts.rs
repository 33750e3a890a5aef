//! Rollouts: create (targets resolved through device-service), list, read
//! with counts per state, pause / resume / cancel, and their executions
//! with each one's history.
//!
//! Ownership: a rollout (and an upgrade task) belongs to its creator. A
//! role of scope `fleet` reaches every rollout; one of scope `own` only its
//! holder's, and another owner's is answered 404. Targets resolve through
//! device-service with the caller's reach (the whole fleet, or the devices
//! they own), so a device out of reach is answered exactly like an unknown
//! id.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::{RefOr, Schema};
use wf_common::audit::Client;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::format_millis;

use super::{ExecutionStateSchema, Page, Paged, RolloutStateSchema, time};
use crate::clients::{DeviceQuery, MAX_TARGETS};
use crate::domain::{ExecutionState, RolloutState, StateCounts, Target, check_device_type, new_id};
use crate::error::{Error, Result};
use crate::state::{Access, AppState, Caller, Permission};
use crate::store::{HistoryRecord, NewRollout, RolloutRecord, TaskRecord};

pub const KIND_ROLLOUT: &str = "rollout";
pub const KIND_TASK: &str = "task";

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Rollout)]
pub struct RolloutDto {
    id: String,
    name: String,
    firmware_id: String,
    firmware_version: String,
    device_type: String,
    #[schema(value_type = RolloutStateSchema)]
    state: &'static str,
    /// Why it was aborted or canceled.
    reason: Option<String>,
    target: Target,
    rate_per_minute: i64,
    failure_threshold_percent: f64,
    min_finished: i64,
    timeout_secs: i64,
    max_retries: i64,
    retry_backoff_secs: i64,
    #[schema(format = DateTime)]
    start_at: String,
    created_by: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    started_at: Option<String>,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// Executions per state (every state present, zeros included).
    #[schema(value_type = BTreeMap<String, u64>)]
    counts: BTreeMap<&'static str, u64>,
    total: u64,
    /// Devices the target matched that were left out because another
    /// rollout is upgrading them (on create only).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_devices: Option<Vec<String>>,
}

pub fn counts_map(counts: &StateCounts) -> BTreeMap<&'static str, u64> {
    counts.iter().map(|(s, n)| (s.as_str(), n)).collect()
}

impl RolloutDto {
    pub fn new(r: RolloutRecord, counts: &StateCounts) -> Self {
        Self {
            id: r.id,
            name: r.name,
            firmware_id: r.firmware_id,
            firmware_version: r.firmware_version,
            device_type: r.device_type,
            state: r.state.as_str(),
            reason: r.reason,
            target: r.target,
            rate_per_minute: r.rate_per_minute,
            failure_threshold_percent: r.failure_threshold_percent,
            min_finished: r.min_finished,
            timeout_secs: r.timeout_secs,
            max_retries: r.max_retries,
            retry_backoff_secs: r.retry_backoff_secs,
            start_at: format_millis(r.start_at),
            created_by: r.created_by,
            created_at: format_millis(r.created_at),
            updated_at: format_millis(r.updated_at),
            started_at: time(r.started_at),
            finished_at: time(r.finished_at),
            counts: counts_map(counts),
            total: counts.total(),
            skipped_devices: None,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RolloutExecution)]
pub struct ExecutionDto {
    /// The `task_id` the device sees.
    id: String,
    rollout_id: String,
    device_id: String,
    #[schema(value_type = ExecutionStateSchema)]
    state: &'static str,
    attempts: i64,
    /// Percent, as the device last reported it.
    progress: Option<f64>,
    error: Option<String>,
    reported_version: Option<String>,
    /// When a queued execution is next tried.
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    /// When a waiting execution times out.
    #[schema(format = DateTime)]
    deadline_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// On reads of one execution only.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<HistoryDto>>,
}

impl From<TaskRecord> for ExecutionDto {
    fn from(t: TaskRecord) -> Self {
        Self {
            next_attempt_at: (t.state == ExecutionState::Queued)
                .then(|| format_millis(t.next_attempt_at)),
            id: t.id,
            rollout_id: t.rollout_id,
            device_id: t.device_id,
            state: t.state.as_str(),
            attempts: t.attempts,
            progress: t.progress,
            error: t.error,
            reported_version: t.reported_version,
            deadline_at: time(t.deadline_at),
            created_at: format_millis(t.created_at),
            updated_at: format_millis(t.updated_at),
            finished_at: time(t.finished_at),
            history: None,
        }
    }
}

impl ExecutionDto {
    pub fn with_history(mut self, history: Vec<HistoryRecord>) -> Self {
        self.history = Some(history.into_iter().map(HistoryDto::from).collect());
        self
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ExecutionHistoryEntry)]
pub struct HistoryDto {
    #[schema(format = DateTime)]
    time: String,
    /// Empty for the line recording the execution's creation.
    from: String,
    to: String,
    attempt: i64,
    actor: String,
    detail: Option<String>,
}

impl From<HistoryRecord> for HistoryDto {
    fn from(h: HistoryRecord) -> Self {
        Self {
            time: format_millis(h.at),
            from: h.from_state,
            to: h.to_state,
            attempt: h.attempt,
            actor: h.actor,
            detail: h.detail,
        }
    }
}

/// `target` of a create request: exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    device_ids: Option<Vec<String>>,
    tag: Option<String>,
    device_type: Option<String>,
}

/// Exactly one of `device_ids`, `tag` or `device_type`.
impl utoipa::PartialSchema for TargetRequest {
    fn schema() -> RefOr<Schema> {
        let one = |name: &str, description: &str, schema: serde_json::Value| {
            serde_json::json!({
                "type": "object",
                "description": description,
                "properties": { name: schema },
                "required": [name],
                "additionalProperties": false,
            })
        };
        let schema = serde_json::json!({
            "description": "Which devices to upgrade: exactly one of device_ids, tag or device_type",
            "oneOf": [
                one("device_ids", "These devices, each of the firmware's device type", serde_json::json!({
                    "type": "array",
                    "items": { "type": "string", "minLength": 1, "pattern": "\\S" },
                    "minItems": 1,
                    "maxItems": MAX_TARGETS,
                })),
                one("tag", "The devices of the firmware's device type carrying this tag", serde_json::json!({
                    "type": "string", "minLength": 1, "pattern": "\\S",
                })),
                one("device_type", "Every device of this type, which must be the firmware's", serde_json::json!({
                    "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._-]+$",
                })),
            ],
        });
        serde_json::from_value(schema).expect("the target schema is a valid schema")
    }
}

impl utoipa::ToSchema for TargetRequest {
    fn name() -> std::borrow::Cow<'static, str> {
        "RolloutTargetRequest".into()
    }
}

fn default_threshold() -> f64 {
    100.0
}
fn default_min_finished() -> u32 {
    1
}
fn default_timeout() -> u32 {
    600
}
fn default_backoff() -> u32 {
    30
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateRolloutRequest)]
pub struct CreateRequest {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    /// An uploaded firmware's id (422 when there is none).
    firmware_id: String,
    target: TargetRequest,
    /// Devices notified per minute; 0 (the default) is unlimited.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000, default = 0)]
    rate_per_minute: u32,
    /// Abort once failures pass this share of finished executions.
    #[serde(default = "default_threshold")]
    #[schema(minimum = 0, maximum = 100, default = 100.0)]
    failure_threshold_percent: f64,
    /// …counted only after this many have finished.
    #[serde(default = "default_min_finished")]
    #[schema(default = 1)]
    min_finished: u32,
    /// How long a device has from notification to a final report.
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

/// A rollout to create, as both endpoints describe it.
pub struct Spec {
    pub kind: &'static str,
    pub name: Option<String>,
    pub firmware_id: String,
    pub target: Target,
    pub rate_per_minute: u32,
    pub failure_threshold_percent: f64,
    pub min_finished: u32,
    pub timeout_secs: u32,
    pub max_retries: u32,
    pub retry_backoff_secs: u32,
    pub start_at: Option<String>,
}

fn validate_knobs(spec: &Spec) -> Result<()> {
    let bad = |m: &str| Err(Error::Validation(m.into()));
    if !(0.0..=100.0).contains(&spec.failure_threshold_percent) {
        return bad("failure_threshold_percent must be between 0 and 100");
    }
    if !(1..=7 * 86_400).contains(&spec.timeout_secs) {
        return bad("timeout_secs must be between 1 and 604800 (a week)");
    }
    if spec.max_retries > 10 {
        return bad("max_retries must be at most 10");
    }
    if spec.retry_backoff_secs > 86_400 {
        return bad("retry_backoff_secs must be at most 86400");
    }
    if spec.rate_per_minute > 1_000_000 {
        return bad("rate_per_minute must be at most 1000000 (0 is unlimited)");
    }
    Ok(())
}

/// Resolves the target to device ids through device-service, among the
/// devices the caller may see. Explicit ids must all be visible and of the
/// firmware's type (another owner's device is reported like an unknown
/// one); tags and types select visible devices of the firmware's type.
async fn resolve(
    state: &AppState,
    access: &Access,
    target: &Target,
    device_type: &str,
) -> Result<Vec<String>> {
    let owner_id = access.owner_filter().map(str::to_string);
    match target {
        Target::DeviceIds(ids) => {
            let found = state
                .devices
                .list_all(&DeviceQuery {
                    ids: ids.clone(),
                    owner_id,
                    ..DeviceQuery::default()
                })
                .await?;
            let known: HashSet<&str> = found.iter().map(|d| d.id.as_str()).collect();
            let unknown: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| !known.contains(id))
                .collect();
            if !unknown.is_empty() {
                return Err(Error::Validation(format!(
                    "no such devices: {}",
                    unknown
                        .iter()
                        .take(20)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let other: Vec<&str> = found
                .iter()
                .filter(|d| d.device_type != device_type)
                .map(|d| d.id.as_str())
                .collect();
            if !other.is_empty() {
                return Err(Error::Validation(format!(
                    "this firmware is for {device_type:?} devices; these are not: {}",
                    other
                        .iter()
                        .take(20)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(ids.clone())
        }
        Target::Tag(tag) => Ok(state
            .devices
            .list_all(&DeviceQuery {
                tag: tag.clone(),
                device_type: device_type.to_string(),
                owner_id,
                ..DeviceQuery::default()
            })
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect()),
        Target::DeviceType(t) => {
            if t != device_type {
                return Err(Error::Validation(format!(
                    "this firmware is for {device_type:?} devices, not {t:?}"
                )));
            }
            Ok(state
                .devices
                .list_all(&DeviceQuery {
                    device_type: t.clone(),
                    owner_id,
                    ..DeviceQuery::default()
                })
                .await?
                .into_iter()
                .map(|d| d.id)
                .collect())
        }
    }
}

/// Creates a rollout (or upgrade task): checks the knobs and the firmware,
/// resolves the devices, and queues one execution per device.
pub async fn create_rollout(
    state: &AppState,
    caller: &Caller,
    access: &Access,
    spec: Spec,
) -> Result<(RolloutRecord, Vec<String>)> {
    validate_knobs(&spec)?;
    let firmware = state
        .store
        .get_firmware(&spec.firmware_id)
        .await?
        .ok_or_else(|| Error::Validation(format!("no firmware with id {:?}", spec.firmware_id)))?;
    let now = wf_common::now_millis();
    let start_at = match spec.start_at.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .map_err(|e| Error::Validation(format!("start_at is not an RFC 3339 time: {e}")))?
            .timestamp_millis()
            .max(now),
        None => now,
    };
    let devices = resolve(state, access, &spec.target, &firmware.device_type).await?;
    if devices.is_empty() {
        return Err(Error::Validation(format!(
            "the target matches no {:?} device",
            firmware.device_type
        )));
    }
    if devices.len() > MAX_TARGETS {
        return Err(Error::Validation(format!(
            "a rollout targets at most {MAX_TARGETS} devices"
        )));
    }
    let busy = state.store.open_executions_of(&devices).await?;
    if !busy.is_empty() && matches!(spec.target, Target::DeviceIds(_)) {
        return Err(Error::Conflict(format!(
            "another rollout or upgrade task is upgrading: {}",
            busy.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let busy_set: HashSet<&String> = busy.iter().collect();
    let devices: Vec<String> = devices
        .iter()
        .filter(|d| !busy_set.contains(d))
        .cloned()
        .collect();
    if devices.is_empty() {
        return Err(Error::Conflict(
            "every matching device is being upgraded by another rollout".into(),
        ));
    }
    let scheduled = start_at > now;
    let rollout = RolloutRecord {
        id: new_id("ro"),
        kind: spec.kind.to_string(),
        name: spec
            .name
            .unwrap_or_else(|| format!("{} {}", firmware.name, firmware.version)),
        firmware_id: firmware.id,
        firmware_version: firmware.version,
        device_type: firmware.device_type,
        state: if scheduled {
            RolloutState::Scheduled
        } else {
            RolloutState::Running
        },
        target: spec.target,
        rate_per_minute: i64::from(spec.rate_per_minute),
        failure_threshold_percent: spec.failure_threshold_percent,
        min_finished: i64::from(spec.min_finished.max(1)),
        timeout_secs: i64::from(spec.timeout_secs),
        max_retries: i64::from(spec.max_retries),
        retry_backoff_secs: i64::from(spec.retry_backoff_secs),
        start_at,
        reason: None,
        created_by: caller.user_id.clone(),
        created_at: now,
        updated_at: now,
        started_at: (!scheduled).then_some(now),
        finished_at: None,
    };
    state
        .store
        .insert_rollout(
            &NewRollout {
                rollout: rollout.clone(),
                device_ids: devices.clone(),
            },
            &caller.actor(),
        )
        .await?;
    metrics::counter!("wf_rollouts_created_total", "kind" => spec.kind).increment(1);
    tracing::info!(
        rollout_id = %rollout.id,
        kind = spec.kind,
        devices = devices.len(),
        skipped = busy.len(),
        by = %caller.username,
        "rollout created"
    );
    Ok((rollout, busy))
}

/// Creates a rollout: resolves the target through device-service and
/// queues one execution per device. Devices that another rollout is
/// upgrading are skipped (listed in `skipped_devices`) for tag and
/// device-type targets, refused (409) for explicit device ids. Requires
/// `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/rollouts", operation_id = "create_rollout", tag = "rollouts", security(("bearer" = [])),
    request_body = CreateRequest,
    responses(
        (status = 201, body = RolloutDto,
            links(("GetRollout" = (operation_id = "get_rollout", parameters(("id" = "$response.body#/id")))), ("PauseRollout" = (operation_id = "pause_rollout", parameters(("id" = "$response.body#/id")))), ("ResumeRollout" = (operation_id = "resume_rollout", parameters(("id" = "$response.body#/id")))), ("CancelRollout" = (operation_id = "cancel_rollout", parameters(("id" = "$response.body#/id")))), ("ListRolloutExecutions" = (operation_id = "list_rollout_executions", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 409, description = "The devices are being upgraded by another rollout or upgrade task", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
        (status = 415, description = "Not application/json", body = ErrorEnvelope),
        (status = 422, description = "An invalid field, an unknown firmware, a device that is unknown or another \
            owner's (answered alike), a device of another type, or a target matching no device of the caller's", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<RolloutDto>)> {
    let access = caller.require(&state, Permission::Deploy).await?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Validation("name must be 1 to 200 characters".into()));
    }
    let target = match (
        req.target.device_ids,
        req.target.tag,
        req.target.device_type,
    ) {
        (Some(ids), None, None) => {
            let mut seen = HashSet::new();
            let ids: Vec<String> = ids
                .into_iter()
                .map(|i| i.trim().to_string())
                .filter(|i| !i.is_empty() && seen.insert(i.clone()))
                .collect();
            if ids.is_empty() || ids.len() > MAX_TARGETS {
                return Err(Error::Validation(format!(
                    "target.device_ids must list 1 to {MAX_TARGETS} devices"
                )));
            }
            Target::DeviceIds(ids)
        }
        (None, Some(tag), None) if !tag.trim().is_empty() => {
            Target::Tag(tag.trim().to_ascii_lowercase())
        }
        (None, None, Some(t)) => {
            Target::DeviceType(check_device_type(&t).map_err(Error::Validation)?)
        }
        _ => {
            return Err(Error::Validation(
                "target must have exactly one of device_ids, tag or device_type".into(),
            ));
        }
    };
    let (rollout, skipped) = create_rollout(
        &state,
        &caller,
        &access,
        Spec {
            kind: KIND_ROLLOUT,
            name: Some(name),
            firmware_id: req.firmware_id,
            target,
            rate_per_minute: req.rate_per_minute,
            failure_threshold_percent: req.failure_threshold_percent,
            min_finished: req.min_finished,
            timeout_secs: req.timeout_secs,
            max_retries: req.max_retries,
            retry_backoff_secs: req.retry_backoff_secs,
            start_at: req.start_at,
        },
    )
    .await?;
    let counts = state.store.counts(&rollout.id).await?;
    let details = serde_json::json!({
        "name": rollout.name, "firmware_id": rollout.firmware_id,
        "version": rollout.firmware_version, "target_count": counts.total(),
        "skipped": skipped.len(),
    });
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "rollout.create",
            &rollout.id,
            details,
        )
        .await;
    let mut dto = RolloutDto::new(rollout, &counts);
    dto.skipped_devices = Some(skipped);
    Ok((StatusCode::CREATED, Json(dto)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only rollouts in this state.
    #[param(value_type = Option<RolloutStateSchema>)]
    state: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Rollouts, newest first (upgrade tasks are listed under
/// `/api/v1/upgrade-tasks`): the caller's own, every owner's for admins.
/// Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/rollouts", operation_id = "list_rollouts", tag = "rollouts", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = Paged<RolloutDto>),
        (status = 400, description = "A query parameter is not of its type", body = ErrorEnvelope),
        (status = 422, description = "An unknown state, or limit or offset out of range", body = ErrorEnvelope),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<RolloutDto>>> {
    let access = caller.require(&state, Permission::Read).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    let filter = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RolloutState::parse(s).ok_or_else(|| {
            Error::Validation(format!(
                "state {s:?} is not scheduled, running, paused, completed, aborted or canceled"
            ))
        })?),
    };
    let (rollouts, total) = state
        .store
        .list_rollouts(KIND_ROLLOUT, filter, access.owner_filter(), limit, offset)
        .await?;
    let ids: Vec<String> = rollouts.iter().map(|r| r.id.clone()).collect();
    let mut counts = state.store.counts_of(&ids).await?;
    Ok(Json(Paged {
        items: rollouts
            .into_iter()
            .map(|r| {
                let c = counts.remove(&r.id).unwrap_or_default();
                RolloutDto::new(r, &c)
            })
            .collect(),
        total,
        limit,
        offset,
    }))
}

/// A rollout the caller may see: another owner's is answered like an
/// unknown one.
async fn load(state: &AppState, access: &Access, id: &str) -> Result<RolloutRecord> {
    match state.store.get_rollout(id).await? {
        Some(r) if r.kind == KIND_ROLLOUT && access.reaches(&r.created_by) => Ok(r),
        _ => Err(Error::no_such("rollout", id)),
    }
}

async fn dto(state: &AppState, rollout: RolloutRecord) -> Result<Json<RolloutDto>> {
    let counts = state.store.counts(&rollout.id).await?;
    Ok(Json(RolloutDto::new(rollout, &counts)))
}

/// One rollout with its executions counted per state. Requires
/// `firmware:read`.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", operation_id = "get_rollout", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The rollout id")),
    responses(
        (status = 200, body = RolloutDto),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutDto>> {
    let access = caller.require(&state, Permission::Read).await?;
    let rollout = load(&state, &access, &id).await?;
    dto(&state, rollout).await
}

/// Moves a rollout by `step`, re-reading it once if it changed meanwhile.
async fn control(
    state: &AppState,
    access: &Access,
    id: &str,
    step: impl Fn(&RolloutRecord) -> Result<RolloutState, String>,
) -> Result<(RolloutRecord, RolloutRecord)> {
    for _ in 0..3 {
        let current = load(state, access, id).await?;
        let next = step(&current).map_err(Error::Conflict)?;
        if state
            .store
            .set_rollout_state(id, current.state, next, None, wf_common::now_millis())
            .await?
        {
            let updated = load(state, access, id).await?;
            return Ok((current, updated));
        }
    }
    Err(Error::Conflict(
        "the rollout changed meanwhile; try again".into(),
    ))
}

/// Stops notifying further devices; devices already notified carry on and
/// their reports are still recorded. Requires `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", operation_id = "pause_rollout", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The rollout id")),
    responses(
        (status = 200, description = "Paused", body = RolloutDto),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
        (status = 409, description = "Only a scheduled or running rollout can be paused", body = ErrorEnvelope),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<RolloutDto>> {
    let access = caller.require(&state, Permission::Deploy).await?;
    let (_, rollout) = control(&state, &access, &id, |r| r.state.pause()).await?;
    tracing::info!(rollout_id = %id, by = %caller.username, "rollout paused");
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "rollout.pause",
            &id,
            serde_json::json!({}),
        )
        .await;
    dto(&state, rollout).await
}

/// Resumes a paused rollout (scheduled again when its start is still
/// ahead). Requires `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", operation_id = "resume_rollout", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The rollout id")),
    responses(
        (status = 200, description = "Resumed", body = RolloutDto),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
        (status = 409, description = "Only a paused rollout can be resumed", body = ErrorEnvelope),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<RolloutDto>> {
    let access = caller.require(&state, Permission::Deploy).await?;
    let (_, rollout) = control(&state, &access, &id, |r| {
        r.state.resume(r.start_at <= wf_common::now_millis())
    })
    .await?;
    tracing::info!(rollout_id = %id, by = %caller.username, "rollout resumed");
    let details = serde_json::json!({"state": rollout.state.as_str()});
    caller
        .record(state.bus.as_ref(), &client, "rollout.resume", &id, details)
        .await;
    dto(&state, rollout).await
}

/// Cancels the rollout and its queued executions. Devices already working
/// on the update are not interrupted; their outcome is still recorded.
/// Requires `firmware:deploy`.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/cancel", operation_id = "cancel_rollout", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The rollout id")),
    responses(
        (status = 200, description = "Canceled", body = RolloutDto),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
        (status = 409, description = "The rollout is finished already", body = ErrorEnvelope),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<RolloutDto>> {
    let access = caller.require(&state, Permission::Deploy).await?;
    control(&state, &access, &id, |r| r.state.cancel()).await?;
    let canceled = state
        .store
        .cancel_queued(
            &id,
            "the rollout was canceled",
            &caller.actor(),
            wf_common::now_millis(),
        )
        .await?;
    tracing::info!(rollout_id = %id, by = %caller.username, canceled, "rollout canceled");
    let details = serde_json::json!({"canceled_executions": canceled});
    caller
        .record(state.bus.as_ref(), &client, "rollout.cancel", &id, details)
        .await;
    let rollout = load(&state, &access, &id).await?;
    dto(&state, rollout).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionsQuery {
    /// Only executions in this state.
    #[param(value_type = Option<ExecutionStateSchema>)]
    state: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// A rollout's executions, one per device. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/executions", operation_id = "list_rollout_executions", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The rollout id"), ExecutionsQuery),
    responses(
        (status = 200, body = Paged<ExecutionDto>,
            links(("GetRolloutExecution" = (operation_id = "get_rollout_execution",
                parameters(("id" = "$request.path.id"), ("execution_id" = "$response.body#/items/0/id")))))),
        (status = 400, description = "A query parameter is not of its type", body = ErrorEnvelope),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
        (status = 422, description = "An unknown state, or limit or offset out of range", body = ErrorEnvelope),
    ))]
pub async fn executions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ExecutionsQuery>,
) -> Result<Json<Paged<ExecutionDto>>> {
    let access = caller.require(&state, Permission::Read).await?;
    load(&state, &access, &id).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    let filter =
        match q.state.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(ExecutionState::parse(s).ok_or_else(|| {
                Error::Validation(format!("state {s:?} is not an execution state"))
            })?),
        };
    let (tasks, total) = state.store.list_tasks(&id, filter, limit, offset).await?;
    Ok(Json(Paged {
        items: tasks.into_iter().map(ExecutionDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// One execution with its history. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/executions/{execution_id}", operation_id = "get_rollout_execution", tag = "rollouts", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The rollout id"),
        ("execution_id" = String, Path, description = "The execution id (the device's `task_id`)"),
    ),
    responses(
        (status = 200, body = ExecutionDto),
        (status = 404, description = "No such rollout among the caller's (another owner's is answered alike)", body = ErrorEnvelope),
    ))]
pub async fn execution(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, execution_id)): Path<(String, String)>,
) -> Result<Json<ExecutionDto>> {
    let access = caller.require(&state, Permission::Read).await?;
    load(&state, &access, &id).await?;
    let task = match state.store.get_task(&execution_id).await? {
        Some(t) if t.rollout_id == id => t,
        _ => {
            return Err(Error::NotFound(format!(
                "rollout {id:?} has no execution {execution_id:?}"
            )));
        }
    };
    let history = state.store.history(&task.id).await?;
    Ok(Json(ExecutionDto::from(task).with_history(history)))
}
