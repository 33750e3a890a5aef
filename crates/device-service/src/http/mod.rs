//! device-service's REST API under /api/v1/devices.

mod activity;
pub(crate) mod commands;
mod devices;
mod shadow;
mod shadow_jobs;
mod telemetry;

use axum::Router;
use axum::routing::{get, post, put};
use utoipa::OpenApi;
use wf_common::http::{finish, ops_routes};
use wf_common::openapi::{BearerAuth, PERMISSION_CHECKED};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let db_check = wf_common::http::database_check(state.store.db().clone());
    let bus_check = wf_common::http::event_bus_check(state.bus.clone());
    let api = Router::new()
        .route("/api/v1/devices", get(devices::list).post(devices::create))
        .route("/api/v1/devices/summary", get(devices::summary))
        .route("/api/v1/devices/activity", get(activity::activity))
        .route(
            "/api/v1/devices/{id}",
            get(devices::get)
                .patch(devices::update)
                .delete(devices::delete),
        )
        .route("/api/v1/devices/{id}/secret", post(devices::rotate_secret))
        .route("/api/v1/devices/{id}/owner", put(devices::transfer))
        .route(
            "/api/v1/devices/{id}/status-history",
            get(devices::status_history),
        )
        .route("/api/v1/devices/{id}/telemetry", get(telemetry::series))
        .route(
            "/api/v1/devices/{id}/telemetry/latest",
            get(telemetry::latest),
        )
        .route(
            "/api/v1/devices/{id}/commands",
            get(commands::list).post(commands::create),
        )
        .route(
            "/api/v1/devices/{id}/commands/{command_id}",
            get(commands::get),
        )
        .route("/api/v1/commands", get(commands::list_all))
        .route(
            "/api/v1/devices/{id}/shadow",
            get(shadow::get).patch(shadow::update),
        )
        .route("/api/v1/devices/{id}/shadow/history", get(shadow::history))
        .route(
            "/api/v1/devices/{id}/attributes",
            get(shadow::attributes).patch(shadow::update_attributes),
        )
        .route(
            "/api/v1/shadow-jobs",
            get(shadow_jobs::list).post(shadow_jobs::create),
        )
        .route("/api/v1/shadow-jobs/{id}", get(shadow_jobs::get))
        .route("/api/v1/shadow-jobs/{id}/cancel", post(shadow_jobs::cancel))
        .route(
            "/api/v1/shadow-jobs/{id}/devices",
            get(shadow_jobs::devices),
        )
        .route(
            "/api/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        )
        .with_state(state.clone());
    finish(
        api.merge(ops_routes(vec![
            ("database", db_check),
            ("event_bus", bus_check),
        ])),
        "device-service",
        state.config.max_body_bytes,
    )
}

/// device-service's OpenAPI document, served at `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "wf-iot device-service"),
    paths(
        devices::list, devices::create, devices::summary, devices::get, devices::update,
        devices::delete, devices::rotate_secret, devices::transfer, devices::status_history,
        activity::activity,
        telemetry::latest, telemetry::series,
        commands::list, commands::list_all, commands::create, commands::get,
        shadow::get, shadow::update, shadow::history, shadow::attributes,
        shadow::update_attributes,
        shadow_jobs::create, shadow_jobs::list, shadow_jobs::get, shadow_jobs::cancel, shadow_jobs::devices,
    ),
    modifiers(&BearerAuth, &PERMISSION_CHECKED),
    tags((name = "devices"), (name = "telemetry"), (name = "commands"), (name = "device state")),
)]
pub struct ApiDoc;

pub use wf_common::paging::{Page, Paged};
