//! Fleet shadow jobs: desired state set on many devices at once, chosen by
//! tag, type, server attribute or id list, applied at an optional rate,
//! with progress up to convergence.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wf_common::audit::Client;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::{format_millis, now_millis};

use super::{Page, Paged};
use crate::domain::{DeviceId, Shadow, Tag, check_attribute_name};
use crate::error::{Error, Result};
use crate::shadows;
use crate::state::{AppState, Caller, Permission};
use crate::store::{DeviceFilter, JobProgress, JobTargetRecord, ShadowJobRecord, TargetState};

/// The most devices one job targets.
pub const MAX_JOB_TARGETS: i64 = 100_000;

/// The highest rate limit, in devices per second.
const MAX_RATE: i64 = 10_000;

/// Which devices a job targets: every filter given must match.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    /// The device type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    device_type: Option<String>,
    /// Server attributes the device must have, by name and value as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
    /// At most 10,000 ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    device_ids: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateShadowJobRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Merged into each target's desired state (`null` deletes a key).
    #[schema(value_type = Object)]
    desired: Value,
    target: JobTarget,
    /// Devices applied per second, 1 to 10,000; none: as fast as they go.
    rate_per_second: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ShadowJobDto {
    id: String,
    #[schema(value_type = Object)]
    desired: Value,
    #[schema(value_type = JobTarget)]
    target: Value,
    rate_per_second: Option<i64>,
    /// `running`, `completed` (every device converged) or `cancelled`.
    status: String,
    progress: JobProgress,
    created_by: String,
    created_at: String,
    finished_at: Option<String>,
}

impl From<ShadowJobRecord> for ShadowJobDto {
    fn from(j: ShadowJobRecord) -> Self {
        Self {
            id: j.id,
            desired: j.desired,
            target: j.target,
            rate_per_second: j.rate_per_second,
            status: j.status,
            progress: j.progress,
            created_by: j.created_by,
            created_at: format_millis(j.created_at),
            finished_at: j.finished_at.map(format_millis),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/shadow-jobs", tag = "device state", security(("bearer" = [])),
    request_body = CreateRequest,
    responses((status = 201, body = ShadowJobDto),
        (status = 422, body = ErrorEnvelope, description = "Bad desired state, no filter, no device matches, or more than 100,000 do")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<ShadowJobDto>)> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    let limits = shadows::limits(&state);
    // The state alone must fit any document.
    Shadow::default()
        .apply(
            wf_common::contract::ShadowSection::Desired,
            &req.desired,
            0,
            &limits,
        )
        .map_err(|r| Error::Validation(r.message(&limits)))?;
    if req.desired.as_object().is_none_or(|m| m.is_empty()) {
        return Err(Error::Validation(
            "desired must set at least one key".into(),
        ));
    }
    if let Some(rate) = req.rate_per_second
        && !(1..=MAX_RATE).contains(&rate)
    {
        return Err(Error::Validation(format!(
            "rate_per_second must be from 1 to {MAX_RATE}, not {rate}"
        )));
    }
    let t = &req.target;
    if t.tag.is_none()
        && t.device_type.is_none()
        && t.attributes.is_empty()
        && t.device_ids.is_empty()
    {
        return Err(Error::Validation(
            "target needs at least one of tag, type, attributes or device_ids".into(),
        ));
    }
    if t.device_ids.len() > 10_000 {
        return Err(Error::Validation(
            "target.device_ids holds at most 10,000 ids".into(),
        ));
    }
    let mut ids = Vec::with_capacity(t.device_ids.len());
    for id in &t.device_ids {
        ids.push(DeviceId::parse(id).map_err(Error::Validation)?.into_inner());
    }
    let tag = t
        .tag
        .as_deref()
        .map(|tag| Tag::parse(tag).map(Tag::into_inner))
        .transpose()
        .map_err(Error::Validation)?;
    for name in t.attributes.keys() {
        check_attribute_name(name).map_err(Error::Validation)?;
    }
    let (devices, total) = state
        .store
        .list_devices(&DeviceFilter {
            ids,
            device_type: t.device_type.clone(),
            tag,
            attributes: t.attributes.clone().into_iter().collect(),
            owner_id: access.owner_filter().map(str::to_string),
            limit: MAX_JOB_TARGETS,
            ..DeviceFilter::default()
        })
        .await?;
    if total > MAX_JOB_TARGETS {
        return Err(Error::Validation(format!(
            "{total} devices match; a job targets at most {MAX_JOB_TARGETS}"
        )));
    }
    if devices.is_empty() {
        return Err(Error::Validation("no device matches the target".into()));
    }
    let device_ids: Vec<String> = devices.into_iter().map(|d| d.id).collect();
    let job = ShadowJobRecord {
        id: uuid::Uuid::now_v7().to_string(),
        desired: req.desired,
        target: serde_json::to_value(&req.target).unwrap_or_default(),
        rate_per_second: req.rate_per_second,
        status: "running".into(),
        created_by: caller.user_id.clone(),
        created_at: now_millis(),
        finished_at: None,
        progress: JobProgress::default(),
    };
    state.store.insert_shadow_job(&job, &device_ids).await?;
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "shadow_job.create",
            &job.id,
            serde_json::json!({"devices": device_ids.len(), "target": job.target}),
        )
        .await;
    tracing::info!(job_id = %job.id, devices = device_ids.len(), "shadow job created");
    let created = load(&state, &job.id, &caller).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/shadow-jobs", tag = "device state", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = Paged<ShadowJobDto>, description = "Newest first"), (status = 422, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<ShadowJobDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    let mine = access.owner_filter().map(|_| caller.user_id.as_str());
    let (jobs, total) = state.store.list_shadow_jobs(mine, limit, offset).await?;
    Ok(Json(Paged {
        items: jobs.into_iter().map(ShadowJobDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// A job the caller may see: everyone's with a fleet scope, their own
/// otherwise.
async fn load(state: &AppState, id: &str, caller: &Caller) -> Result<ShadowJobRecord> {
    let access = caller.require(state, Permission::DeviceRead).await?;
    match state.store.get_shadow_job(id).await? {
        Some(job) if access.owner_filter().is_none() || job.created_by == caller.user_id => Ok(job),
        _ => Err(Error::no_such("shadow job", id)),
    }
}

#[utoipa::path(get, path = "/api/v1/shadow-jobs/{id}", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ShadowJobDto), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ShadowJobDto>> {
    Ok(Json(load(&state, &id, &caller).await?.into()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DevicesQuery {
    /// Only devices where the job is `pending` (not delivered yet),
    /// `delivered` (sent, not reported back yet), `converged` or `failed`.
    #[param(value_type = Option<JobDeviceState>)]
    state: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Where a job is with a device, as its progress counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobDeviceState {
    Pending,
    Delivered,
    Converged,
    Failed,
}

impl JobDeviceState {
    const ALL: [Self; 4] = [
        Self::Pending,
        Self::Delivered,
        Self::Converged,
        Self::Failed,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Converged => "converged",
            Self::Failed => "failed",
        }
    }

    fn of(state: TargetState) -> Self {
        match state {
            TargetState::Queued | TargetState::Applied => Self::Pending,
            TargetState::Delivered => Self::Delivered,
            TargetState::Converged => Self::Converged,
            TargetState::Failed => Self::Failed,
        }
    }

    /// The stored states this one stands for.
    fn stored(self) -> Vec<TargetState> {
        TargetState::ALL
            .into_iter()
            .filter(|s| Self::of(*s) == self)
            .collect()
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobDeviceDto {
    device_id: String,
    state: JobDeviceState,
    /// When the job last moved on with this device.
    updated_at: String,
}

impl From<JobTargetRecord> for JobDeviceDto {
    fn from(t: JobTargetRecord) -> Self {
        Self {
            device_id: t.device_id,
            state: JobDeviceState::of(t.state),
            updated_at: format_millis(t.updated_at),
        }
    }
}

/// The devices a job targets, by id, with where the job is with each:
/// which are still pending, which did not report back, which failed.
#[utoipa::path(get, path = "/api/v1/shadow-jobs/{id}/devices", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path), DevicesQuery),
    responses((status = 200, body = Paged<JobDeviceDto>), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope, description = "An unknown state, or limit or offset out of range")))]
pub async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DevicesQuery>,
) -> Result<Json<Paged<JobDeviceDto>>> {
    let job = load(&state, &id, &caller).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    let wanted = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(s) => JobDeviceState::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| {
                Error::Validation(format!(
                    "unknown state {s:?}: pending, delivered, converged or failed"
                ))
            })?
            .stored(),
    };
    let (targets, total) = state
        .store
        .job_targets(&job.id, &wanted, limit, offset)
        .await?;
    Ok(Json(Paged {
        items: targets.into_iter().map(JobDeviceDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(post, path = "/api/v1/shadow-jobs/{id}/cancel", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ShadowJobDto, description = "Cancelled: devices not reached yet are left as they are"),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope, description = "The job is not running")))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<ShadowJobDto>> {
    caller.require(&state, Permission::DeviceWrite).await?;
    let job = load(&state, &id, &caller).await?;
    if !state
        .store
        .finish_shadow_job(&job.id, "cancelled", now_millis())
        .await?
    {
        return Err(Error::Conflict(format!(
            "the shadow job is {}, not running",
            job.status
        )));
    }
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "shadow_job.cancel",
            &job.id,
            serde_json::json!({}),
        )
        .await;
    Ok(Json(load(&state, &id, &caller).await?.into()))
}
