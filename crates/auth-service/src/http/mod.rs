//! auth-service's REST API under /api/v1, plus the JWKS and ops endpoints.

mod audit;
mod auth;
mod roles;
mod users;

use axum::Router;
use axum::routing::{get, post, put};
use utoipa::OpenApi;
use wf_common::http::{finish, ops_routes};
use wf_common::openapi::{AUTHENTICATED, BearerAuth};

use crate::error::Result;
use crate::state::{AppState, Identity};

pub fn router(state: AppState) -> Router {
    let db_check = wf_common::http::database_check(state.store.db().clone());
    let api = Router::new()
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route("/api/v1/auth/me/password", put(auth::change_password))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route(
            "/api/v1/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/api/v1/users/{id}/enable", post(users::enable))
        .route("/api/v1/users/{id}/disable", post(users::disable))
        .route("/api/v1/users/{id}/password", put(users::reset_password))
        .route("/api/v1/users/{id}/roles", put(users::set_roles))
        .route("/api/v1/roles", get(roles::list).post(roles::create))
        .route(
            "/api/v1/roles/{id}",
            get(roles::get).patch(roles::update).delete(roles::delete),
        )
        .route(
            "/api/v1/roles/{id}/permissions",
            put(roles::set_permissions),
        )
        .route("/api/v1/permissions", get(roles::permissions))
        .route("/api/v1/audit-logs", get(audit::list))
        .route(
            "/api/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        )
        .with_state(state.clone());
    let max_body = state.config.max_body_bytes;
    finish(
        api.merge(ops_routes(vec![("database", db_check)])),
        "auth-service",
        max_body,
    )
}

/// auth-service's OpenAPI document, served at `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "wf-iot auth-service"),
    paths(
        auth::login, auth::refresh, auth::logout, auth::me, auth::change_password, auth::jwks,
        users::list, users::create, users::get, users::update, users::delete, users::enable,
        users::disable, users::reset_password, users::set_roles,
        roles::list, roles::get, roles::create, roles::update, roles::delete, roles::set_permissions,
        roles::permissions, audit::list,
    ),
    modifiers(&BearerAuth, &AUTHENTICATED),
    tags((name = "auth"), (name = "users"), (name = "roles"), (name = "audit")),
)]
pub struct ApiDoc;

/// The authenticated caller, from `Authorization: Bearer <access token>`:
/// their account as it is now, with its roles and permissions.
pub type Caller = wf_common::caller::Caller<Identity>;

impl wf_common::caller::Authenticate for AppState {
    type Identity = Identity;

    async fn authenticate(&self, token: &str) -> Result<Identity> {
        AppState::authenticate(self, token).await
    }
}

/// The client's address (through trusted proxies), user agent and request id.
pub use wf_common::audit::Client;

impl wf_common::audit::TrustedProxies for AppState {
    fn trusted_proxies(&self) -> &[wf_common::net::IpRange] {
        &self.config.trusted_proxies
    }
}

pub use wf_common::paging::{Page, Paged};
