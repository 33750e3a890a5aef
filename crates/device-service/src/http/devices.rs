//! Devices: create (with a secret shown once), list, read, update, delete,
//! rotate the secret, status history, and a fleet summary.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wf_common::audit::Client;
use wf_common::contract::DeviceDeleted;
use wf_common::error::ErrorEnvelope;
use wf_common::events::publish;
use wf_common::extract::{self, Path, Query};
use wf_common::format_millis;
use wf_common::permissions::Scope;

use super::{Page, Paged};
use crate::domain::{DeviceId, DeviceSecret, Tag, normalize_tags};
use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};
use crate::store::{DeviceFilter, DeviceRecord, DeviceSort, DeviceUpdate, NewDevice, StatusRecord};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceDto {
    id: String,
    name: String,
    device_type: String,
    tags: Vec<String>,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    owner_id: String,
    online: bool,
    last_seen_at: Option<String>,
    firmware_version: String,
    created_at: String,
    updated_at: String,
}

impl From<DeviceRecord> for DeviceDto {
    fn from(d: DeviceRecord) -> Self {
        Self {
            id: d.id,
            name: d.name,
            device_type: d.device_type,
            tags: d.tags,
            metadata: d.metadata,
            owner_id: d.owner_id,
            online: d.online,
            last_seen_at: d.last_seen_at.map(format_millis),
            firmware_version: d.firmware_version,
            created_at: format_millis(d.created_at),
            updated_at: format_millis(d.updated_at),
        }
    }
}

/// A device with its new secret, answered once on create and rotate.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeviceWithSecret {
    #[serde(flatten)]
    device: DeviceDto,
    credentials: Credentials,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Credentials {
    client_id: String,
    username: String,
    /// Shown only now; stored as a hash.
    secret: String,
}

fn with_secret(device: DeviceRecord, secret: &DeviceSecret) -> DeviceWithSecret {
    DeviceWithSecret {
        credentials: Credentials {
            client_id: device.id.clone(),
            username: device.id.clone(),
            secret: secret.expose().to_string(),
        },
        device: device.into(),
    }
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Validation("name must be 1 to 200 characters".into()));
    }
    wf_common::text::check_printable("name", name).map_err(Error::Validation)?;
    Ok(name.to_string())
}

fn check_type(device_type: &str) -> Result<String> {
    let t = device_type.trim();
    if t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::Validation(
            "device_type must be at most 64 letters, digits, '.', '_' or '-'".into(),
        ));
    }
    Ok(t.to_string())
}

fn check_metadata(metadata: serde_json::Value) -> Result<serde_json::Value> {
    if !metadata.is_object() {
        return Err(Error::Validation("metadata must be a JSON object".into()));
    }
    if metadata.to_string().len() > 16 * 1024 {
        return Err(Error::Validation("metadata must be at most 16 KiB".into()));
    }
    if let Some(map) = metadata.as_object() {
        for key in map.keys() {
            wf_common::text::check_printable("a metadata key", key).map_err(Error::Validation)?;
        }
    }
    Ok(metadata)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateDeviceRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Chosen by the caller, or generated.
    id: Option<String>,
    name: String,
    #[serde(default)]
    device_type: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])), request_body = CreateRequest,
    responses((status = 201, body = DeviceWithSecret), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<DeviceWithSecret>)> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    let id = match req.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => DeviceId::parse(id).map_err(Error::Validation)?,
        None => DeviceId::generate(),
    };
    let secret = DeviceSecret::generate();
    let device = NewDevice {
        id: id.into_inner(),
        name: check_name(&req.name)?,
        device_type: check_type(&req.device_type)?,
        owner_id: caller.user_id.clone(),
        metadata: check_metadata(req.metadata)?,
        tags: normalize_tags(&req.tags).map_err(Error::Validation)?,
        secret_hash: secret.hash(),
        created_at: wf_common::now_millis(),
    };
    state.store.insert_device(&device).await?;
    let details = serde_json::json!({"name": device.name, "device_type": device.device_type});
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.create",
            &device.id,
            details,
        )
        .await;
    sync_credentials(&state, &device.id, secret.expose()).await;
    let record = state.device_for(&access, &device.id).await?;
    tracing::info!(device_id = %record.id, owner = %caller.username, "device created");
    Ok((StatusCode::CREATED, Json(with_secret(record, &secret))))
}

/// What an update changed, for the audit log: the new name and type, the
/// tags, and which metadata keys were set (not their values).
fn changed(update: &DeviceUpdate) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    if let Some(name) = &update.name {
        fields.insert("name".into(), name.clone().into());
    }
    if let Some(device_type) = &update.device_type {
        fields.insert("device_type".into(), device_type.clone().into());
    }
    if let Some(tags) = &update.tags {
        fields.insert("tags".into(), serde_json::json!(tags));
    }
    if let Some(metadata) = &update.metadata {
        let keys: Vec<&String> = metadata
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        fields.insert("metadata_keys".into(), serde_json::json!(keys));
    }
    serde_json::Value::Object(fields)
}

/// Tells mqtt-gateway the credentials (an external broker keeps its own
/// copy). The registry stays the source of truth, so a failure is logged.
async fn sync_credentials(state: &AppState, device_id: &str, secret: &str) {
    if let Err(e) = state.gateway.sync_credentials(device_id, secret).await {
        tracing::warn!(device_id, error = %e, "could not sync device credentials to mqtt-gateway");
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Substring of the name.
    #[param(max_length = 256)]
    name: Option<String>,
    #[serde(rename = "type")]
    #[param(max_length = 256)]
    device_type: Option<String>,
    #[param(max_length = 256)]
    tag: Option<String>,
    /// `online` or `offline`.
    status: Option<String>,
    /// `created_at`, `name`, `last_seen_at` or `id`; `-` in front sorts
    /// descending.
    sort: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
    /// `attr.{name}=value`: devices whose server attribute `name` has this
    /// value (text, or the number or boolean it spells); several must all
    /// match.
    #[serde(rename = "attr.{name}")]
    #[param(rename = "attr.{name}")]
    #[allow(dead_code)]
    attr: Option<String>,
}

/// The `attr.{name}=value` pairs of a query string.
fn attribute_filters(raw: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let Some(name) = key.strip_prefix("attr.") else {
            continue;
        };
        crate::domain::check_attribute_name(name).map_err(Error::Validation)?;
        wf_common::text::check_filter("attr", Some(&value)).map_err(Error::Validation)?;
        out.push((name.to_string(), value.into_owned()));
    }
    if out.len() > 8 {
        return Err(Error::Validation("at most 8 attr.{name} filters".into()));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Paged<DeviceDto>), (status = 422, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Json<Paged<DeviceDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    let attributes = attribute_filters(raw.as_deref())?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    for (field, value) in [
        ("name", &q.name),
        ("type", &q.device_type),
        ("tag", &q.tag),
        ("status", &q.status),
        ("sort", &q.sort),
    ] {
        wf_common::text::check_filter(field, value.as_deref()).map_err(Error::Validation)?;
    }
    let online = match q.status.as_deref() {
        None | Some("") => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(other) => {
            return Err(Error::Validation(format!(
                "status {other:?} is not online or offline"
            )));
        }
    };
    let sort_spec = q.sort.as_deref().unwrap_or("created_at");
    let (descending, field) = match sort_spec.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, sort_spec),
    };
    let sort = match field {
        "created_at" => DeviceSort::CreatedAt,
        "name" => DeviceSort::Name,
        "last_seen_at" => DeviceSort::LastSeen,
        "id" => DeviceSort::Id,
        other => {
            return Err(Error::Validation(format!(
                "cannot sort by {other:?} (created_at, name, last_seen_at or id)"
            )));
        }
    };
    let tag = q
        .tag
        .filter(|t| !t.is_empty())
        .map(|t| Tag::parse(&t).map(Tag::into_inner))
        .transpose()
        .map_err(Error::Validation)?;
    let (devices, total) = state
        .store
        .list_devices(&DeviceFilter {
            name: q.name.filter(|n| !n.trim().is_empty()),
            device_type: q.device_type.filter(|t| !t.is_empty()),
            tag,
            attributes,
            online,
            owner_id: access.owner_filter().map(str::to_string),
            sort,
            descending,
            limit,
            offset,
            ..DeviceFilter::default()
        })
        .await?;
    Ok(Json(Paged {
        items: devices.into_iter().map(DeviceDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DeviceDto), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    Ok(Json(state.device_for(&access, &id).await?.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateDeviceRequest)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    name: Option<String>,
    device_type: Option<String>,
    tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])), params(("id" = String, Path)), request_body = UpdateRequest,
    responses((status = 200, body = DeviceDto), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<UpdateRequest>,
) -> Result<Json<DeviceDto>> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    state.device_for(&access, &id).await?;
    let update = DeviceUpdate {
        name: req.name.as_deref().map(check_name).transpose()?,
        device_type: req.device_type.as_deref().map(check_type).transpose()?,
        tags: req
            .tags
            .as_deref()
            .map(normalize_tags)
            .transpose()
            .map_err(Error::Validation)?,
        metadata: req.metadata.map(check_metadata).transpose()?,
    };
    if !state
        .store
        .update_device(&id, &update, wf_common::now_millis())
        .await?
    {
        return Err(Error::no_such("device", &id));
    }
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.update",
            &id,
            changed(&update),
        )
        .await;
    Ok(Json(state.device_for(&access, &id).await?.into()))
}

/// Deletes a device and everything stored about it, and announces
/// `device.deleted` so other services (rollouts) let go of it.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted, with its telemetry and commands"), (status = 404, body = ErrorEnvelope), (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    state.device_for(&access, &id).await?;
    if !state.store.delete_device(&id).await? {
        return Err(Error::no_such("device", &id));
    }
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.delete",
            &id,
            serde_json::json!({}),
        )
        .await;
    let event = DeviceDeleted {
        device_id: id.clone(),
        at: wf_common::now_millis(),
    };
    publish(state.bus.as_ref(), &[event])
        .await
        .map_err(|e| Error::Internal(e.into()))?;
    sync_credentials(&state, &id, "").await;
    tracing::info!(device_id = %id, by = %caller.username, "device deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new secret; the old one stops working.
#[utoipa::path(post, path = "/api/v1/devices/{id}/secret", tag = "devices", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DeviceWithSecret), (status = 404, body = ErrorEnvelope), (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<DeviceWithSecret>> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    state.device_for(&access, &id).await?;
    let secret = DeviceSecret::generate();
    state
        .store
        .set_secret_hash(&id, &secret.hash(), wf_common::now_millis())
        .await?;
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.secret_rotate",
            &id,
            serde_json::json!({}),
        )
        .await;
    sync_credentials(&state, &id, secret.expose()).await;
    Ok(Json(with_secret(
        state.device_for(&access, &id).await?,
        &secret,
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The id of the user who owns the device from now on.
    #[schema(min_length = 1, max_length = 36)]
    owner_id: String,
}

/// Hands a device to another owner (administrators only). What a role of
/// scope `own` reaches follows the owner at once.
#[utoipa::path(put, path = "/api/v1/devices/{id}/owner", tag = "devices", security(("bearer" = [])), params(("id" = String, Path)), request_body = TransferRequest,
    responses((status = 200, body = DeviceDto),
        (status = 403, description = "Not an administrator", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 422, description = "No user with that id", body = ErrorEnvelope),
        (status = 507, description = "Storage is full: nothing was saved; retry once space is freed", body = ErrorEnvelope)))]
pub async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<TransferRequest>,
) -> Result<Json<DeviceDto>> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    if !caller.is_admin {
        return Err(Error::Forbidden(
            "only an administrator can hand a device to another owner".into(),
        ));
    }
    let previous = state.device_for(&access, &id).await?;
    let owner_id = req.owner_id.trim();
    if owner_id.is_empty() || owner_id.len() > 36 {
        return Err(Error::Validation(
            "owner_id must be a user id of 1 to 36 characters".into(),
        ));
    }
    if !state
        .auth
        .user_exists(owner_id)
        .await
        .map_err(|s| wf_common::grpc::call_error("auth-service", s))?
    {
        return Err(Error::Validation(format!("no user with id {owner_id:?}")));
    }
    if !state
        .store
        .set_owner(&id, owner_id, wf_common::now_millis())
        .await?
    {
        return Err(Error::no_such("device", &id));
    }
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.transfer",
            &id,
            serde_json::json!({ "from": previous.owner_id, "to": owner_id }),
        )
        .await;
    tracing::info!(device_id = %id, from = %previous.owner_id, to = %owner_id, by = %caller.username, "device handed to another owner");
    Ok(Json(state.device_for(&access, &id).await?.into()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusDto {
    time: String,
    online: bool,
    reason: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/status-history", tag = "devices", security(("bearer" = [])), params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = Vec<StatusDto>), (status = 404, body = ErrorEnvelope)))]
pub async fn status_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<StatusDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &id).await?;
    let Page { limit, .. } = Page::from_query(q.limit, None)?;
    let history = state.store.status_history(&id, limit).await?;
    Ok(Json(
        history
            .into_iter()
            .map(|StatusRecord { at, online, reason }| StatusDto {
                time: format_millis(at),
                online,
                reason,
            })
            .collect(),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Summary {
    total: i64,
    online: i64,
    offline: i64,
    /// Which devices the caller's `device:read` reaches, and these counts
    /// cover: `fleet` (every device) or `own` (the caller's).
    scope: Scope,
}

/// Device counts for the devices the caller may see.
#[utoipa::path(get, path = "/api/v1/devices/summary", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Summary)))]
pub async fn summary(State(state): State<AppState>, caller: Caller) -> Result<Json<Summary>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    let owner = access.owner_filter().map(str::to_string);
    let (total, online) = state.store.count_devices(owner.as_deref()).await?;
    Ok(Json(Summary {
        total,
        online,
        offline: total - online,
        scope: access.scope,
    }))
}
