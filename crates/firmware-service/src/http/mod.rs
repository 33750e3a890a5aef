//! firmware-service's REST API: /api/v1/firmware, /api/v1/rollouts and
//! /api/v1/upgrade-tasks.

mod download;
mod firmware;
mod rollouts;
mod tasks;

pub use firmware::read_upload_body;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use wf_common::http::{ReadinessCheck, finish, ops_routes};
use wf_common::openapi::{BearerAuth, PERMISSION_CHECKED};

use crate::domain::{ExecutionState, RolloutState};
use crate::state::AppState;

/// Room for the text fields and multipart framing around an image.
const FORM_OVERHEAD: u64 = 256 * 1024;

pub fn router(state: AppState) -> Router {
    let db_check = wf_common::http::database_check(state.store.db().clone());
    let blobs = state.blobs.clone();
    let storage_check: ReadinessCheck = Arc::new(move || {
        let blobs = blobs.clone();
        Box::pin(async move { blobs.ping().await.map_err(|e| e.to_string()) })
    });
    let bus_check = wf_common::http::event_bus_check(state.bus.clone());
    let upload_limit = usize::try_from(
        state
            .config
            .max_firmware_bytes
            .saturating_add(FORM_OVERHEAD),
    )
    .unwrap_or(usize::MAX);
    let api = Router::new()
        .route(
            "/api/v1/firmware",
            get(firmware::list)
                .post(firmware::upload)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/api/v1/firmware/{id}",
            get(firmware::get).delete(firmware::delete),
        )
        .route("/api/v1/firmware/{id}/download", get(download::download))
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::create),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::get))
        .route("/api/v1/rollouts/{id}/pause", post(rollouts::pause))
        .route("/api/v1/rollouts/{id}/resume", post(rollouts::resume))
        .route("/api/v1/rollouts/{id}/cancel", post(rollouts::cancel))
        .route(
            "/api/v1/rollouts/{id}/executions",
            get(rollouts::executions),
        )
        .route(
            "/api/v1/rollouts/{id}/executions/{execution_id}",
            get(rollouts::execution),
        )
        .route(
            "/api/v1/upgrade-tasks",
            get(tasks::list).post(tasks::create),
        )
        .route("/api/v1/upgrade-tasks/{id}", get(tasks::get))
        .route("/api/v1/upgrade-tasks/{id}/cancel", post(tasks::cancel))
        .route(
            "/api/openapi.json",
            get(|| async { axum::Json(document()) }),
        )
        .with_state(state.clone());
    finish(
        api.merge(ops_routes(vec![
            ("database", db_check),
            ("storage", storage_check),
            ("event_bus", bus_check),
        ])),
        "firmware-service",
        state.config.max_body_bytes,
    )
}

/// firmware-service's OpenAPI document, served at `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "wf-iot firmware-service"),
    paths(
        firmware::upload, firmware::list, firmware::get, firmware::delete,
        download::download,
        rollouts::create, rollouts::list, rollouts::get, rollouts::pause, rollouts::resume,
        rollouts::cancel, rollouts::executions, rollouts::execution,
        tasks::create, tasks::list, tasks::get, tasks::cancel,
    ),
    modifiers(&BearerAuth, &DeviceBasicAuth, &PERMISSION_CHECKED),
    tags(
        (name = "firmware", description = "Firmware images: upload, list, read, delete and download"),
        (name = "rollouts", description = "Over-the-air rollouts to many devices"),
        (name = "upgrade-tasks", description = "Over-the-air upgrades of one device"),
    ),
)]
pub struct ApiDoc;

/// The OpenAPI document as served. utoipa 5 writes the fields of response
/// links in snake case (`operation_id`); OpenAPI spells them in camel case,
/// so they are renamed here for clients that follow links.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let operations = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let responses = operation
            .get_mut("responses")
            .and_then(serde_json::Value::as_object_mut);
        for response in responses.into_iter().flat_map(|r| r.values_mut()) {
            let links = response
                .get_mut("links")
                .and_then(serde_json::Value::as_object_mut);
            for link in links.into_iter().flat_map(|l| l.values_mut()) {
                let Some(link) = link.as_object_mut() else {
                    continue;
                };
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.to_string(), v);
                    }
                }
            }
        }
    }
    doc
}

/// Adds the `device_basic` security scheme: HTTP Basic `device_id:secret`,
/// which devices use to download firmware.
struct DeviceBasicAuth;

impl utoipa::Modify for DeviceBasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("A device's id and secret, `device_id:secret`"))
                    .build(),
            ),
        );
    }
}

/// A string schema whose values are exactly `values`.
fn string_enum<'a>(description: &str, values: impl IntoIterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// The states of a rollout, as the API spells them.
pub struct RolloutStateSchema;

impl utoipa::PartialSchema for RolloutStateSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "A rollout's state",
            RolloutState::ALL.iter().map(|s| s.as_str()),
        )
    }
}

impl utoipa::ToSchema for RolloutStateSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "RolloutState".into()
    }
}

/// The states of an execution (one device's upgrade), as the API spells
/// them.
pub struct ExecutionStateSchema;

impl utoipa::PartialSchema for ExecutionStateSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "An execution's (one device's upgrade) state",
            ExecutionState::ALL.iter().map(|s| s.as_str()),
        )
    }
}

impl utoipa::ToSchema for ExecutionStateSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ExecutionState".into()
    }
}

pub use wf_common::paging::{Page, Paged};

/// RFC 3339 for optional timestamps.
fn time(ms: Option<i64>) -> Option<String> {
    ms.map(wf_common::format_millis)
}
