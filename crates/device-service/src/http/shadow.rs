//! Device state over REST: the shadow document (read, change desired with
//! `If-Match`), its history, and the device's server attributes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wf_common::audit::Client;
use wf_common::contract::{ShadowSection, ShadowSource};
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::{format_millis, now_millis};

use super::{Page, Paged};
use crate::domain::{MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES, Object, check_attribute_name};
use crate::error::{Error, Result};
use crate::shadows::{self, Author};
use crate::state::{AppState, Caller, Permission};
use crate::store::ShadowChange;

/// A device's shadow document.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ShadowDto {
    device_id: String,
    /// Grows on every change; 0 when the device never had any state.
    version: i64,
    /// What the device last said about itself.
    #[schema(value_type = Object)]
    reported: Value,
    /// What operators want the device to be.
    #[schema(value_type = Object)]
    desired: Value,
    /// The desired keys whose values differ from reported.
    #[schema(value_type = Object)]
    delta: Value,
    /// `{"reported": {...}, "desired": {...}}`: the shape of each section,
    /// each leaf the time (ms since the epoch) that key last changed.
    #[schema(value_type = Object)]
    metadata: Value,
    updated_at: Option<String>,
}

/// The document with its version as `ETag`.
fn answer(device_id: &str, shadow: &crate::domain::Shadow) -> Response {
    let mut response = Json(shadows::document(device_id, shadow)).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", shadow.version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/shadow", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ShadowDto, description = "The document; `ETag` is its version",
        headers(("ETag" = String, description = "The version, quoted"))),
        (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &id).await?;
    Ok(answer(&id, &shadows::load(&state, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateShadowRequest)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// Merged deeply into desired; `null` deletes a key. The document may
    /// hold at most `device.shadow_max_bytes` (16 KiB by default) and nest
    /// at most `device.shadow_max_depth` (8) levels.
    #[schema(value_type = Object)]
    desired: Value,
}

/// The version `If-Match` asks for: `"7"`, `W/"7"` or `7`; `*` or none:
/// any.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Error::BadRequest("If-Match is not text".into()))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    bare.parse::<i64>().map(Some).map_err(|_| {
        Error::BadRequest(format!(
            "If-Match {text:?} is not a shadow version (the ETag of GET .../shadow, such as \"7\")"
        ))
    })
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}/shadow", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "Apply only to this version (the ETag of a read)")),
    request_body = UpdateRequest,
    responses((status = 200, body = ShadowDto, headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, body = ErrorEnvelope, description = "If-Match is not a version"),
        (status = 404, body = ErrorEnvelope),
        (status = 412, body = ErrorEnvelope, description = "The document is no longer at the If-Match version; nothing was applied"),
        (status = 422, body = ErrorEnvelope, description = "Not an object, too large or too deep; nothing was applied")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    headers: HeaderMap,
    extract::Json(req): extract::Json<UpdateRequest>,
) -> Result<Response> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    state.device_for(&access, &id).await?;
    let expected = if_match(&headers)?;
    let author = Author {
        source: ShadowSource::User,
        actor: Some(&caller.user_id),
    };
    let updated = shadows::update(
        &state,
        &id,
        ShadowSection::Desired,
        &req.desired,
        author,
        expected,
    )
    .await
    .map_err(|f| f.into_error(&shadows::limits(&state)))?;
    if updated.changed {
        let keys: Vec<&String> = req
            .desired
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        caller
            .record(
                state.bus.as_ref(),
                &client,
                "device.shadow.update",
                &id,
                serde_json::json!({"version": updated.shadow.version, "desired_keys": keys}),
            )
            .await;
    }
    Ok(answer(&id, &updated.shadow))
}

/// One change of a shadow.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ShadowChangeDto {
    version: i64,
    /// `reported` or `desired`.
    section: &'static str,
    /// `device`, `user` or `job`.
    source: &'static str,
    /// The user or job behind the change.
    actor: Option<String>,
    /// The partial state applied (`null` deleted a key).
    #[schema(value_type = Object)]
    changes: Value,
    at: String,
}

impl From<ShadowChange> for ShadowChangeDto {
    fn from(c: ShadowChange) -> Self {
        Self {
            version: c.version,
            section: c.section.as_str(),
            source: c.source.as_str(),
            actor: c.actor,
            changes: c.changes,
            at: format_millis(c.at),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1 to 500 (default 50).
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/shadow/history", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = Paged<ShadowChangeDto>, description = "Newest first"),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Paged<ShadowChangeDto>>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &id).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    let (items, total) = state.store.shadow_history(&id, limit, offset).await?;
    Ok(Json(Paged {
        items: items.into_iter().map(ShadowChangeDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// A device's server attributes: kept by operators, never sent to the
/// device.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttributesDto {
    device_id: String,
    #[schema(value_type = Object)]
    attributes: Object,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/attributes", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = AttributesDto), (status = 404, body = ErrorEnvelope)))]
pub async fn attributes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AttributesDto>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &id).await?;
    Ok(Json(AttributesDto {
        attributes: state.store.attributes(&id).await?,
        device_id: id,
    }))
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}/attributes", tag = "device state", security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "Attributes to set by name (1 to 64 letters, digits, '_', '-' or '.'; \
        a value is any JSON of at most 4 KiB); `null` removes one. A device holds at most 64."),
    responses((status = 200, body = AttributesDto), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope, description = "A bad name or value, or too many; nothing was changed")))]
pub async fn update_attributes(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<Value>,
) -> Result<Json<AttributesDto>> {
    let access = caller.require(&state, Permission::DeviceWrite).await?;
    state.device_for(&access, &id).await?;
    let Value::Object(changes) = body else {
        return Err(Error::Validation(
            "the body must be a JSON object of attributes".into(),
        ));
    };
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for (name, value) in changes {
        check_attribute_name(&name).map_err(Error::Validation)?;
        if value.is_null() {
            remove.push(name);
            continue;
        }
        if value.to_string().len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(Error::Validation(format!(
                "attribute {name:?} is longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes as JSON"
            )));
        }
        set.push((name, value));
    }
    let mut after = state.store.attributes(&id).await?;
    for name in &remove {
        after.remove(name);
    }
    for (name, value) in &set {
        after.insert(name.clone(), value.clone());
    }
    if after.len() > MAX_ATTRIBUTES {
        return Err(Error::Validation(format!(
            "a device holds at most {MAX_ATTRIBUTES} attributes; this would make {}",
            after.len()
        )));
    }
    state
        .store
        .update_attributes(&id, &set, &remove, now_millis())
        .await?;
    let names: Vec<&String> = set.iter().map(|(n, _)| n).chain(remove.iter()).collect();
    caller
        .record(
            state.bus.as_ref(),
            &client,
            "device.attributes.update",
            &id,
            serde_json::json!({"names": names}),
        )
        .await;
    Ok(Json(AttributesDto {
        attributes: state.store.attributes(&id).await?,
        device_id: id,
    }))
}
