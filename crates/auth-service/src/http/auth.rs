//! Login, refresh, logout, the caller's own account, and the JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use wf_common::error::ErrorEnvelope;
use wf_common::extract;
use wf_common::jwt::JwkSet;

use super::users::UserDto;
use super::{Caller, Client};
use crate::domain::NewPassword;
use crate::error::{Error, Result};
use crate::state::{AppState, TokenPair};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// A username or an e-mail address.
    #[serde(alias = "email", alias = "login")]
    username: String,
    password: String,
}

/// Logs in. Failures are throttled per (account, client address) with
/// growing delays and per client address, never by locking the account; a
/// username and its e-mail count as one account.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 422, body = ErrorEnvelope),
        (status = 429, description = "This client failed too often for this account, or too often overall; see Retry-After", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Password hashing is saturated; see Retry-After", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait")))))]
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    extract::Json(req): extract::Json<LoginRequest>,
) -> Result<Json<TokenPair>> {
    if req.username.trim().is_empty() || req.password.is_empty() {
        return Err(Error::Validation(
            "username and password are required".into(),
        ));
    }
    state
        .login(&req.username, req.password, &client)
        .await
        .map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Rotates a refresh token. A spent token presented again revokes its
/// family (401), except within `refresh_reuse_grace_secs` of its first use,
/// when it is answered with a new pair of the same family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair)))]
pub async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    extract::Json(req): extract::Json<RefreshRequest>,
) -> Result<Json<TokenPair>> {
    state.refresh(&req.refresh_token, &client).await.map(Json)
}

/// Ends a session: the refresh token (and every token rotated from the same
/// login) stops working. The access token expires on its own.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "The session ended")))]
pub async fn logout(
    State(state): State<AppState>,
    Client(client): Client,
    extract::Json(req): extract::Json<RefreshRequest>,
) -> Result<StatusCode> {
    state.logout(&req.refresh_token, None, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    #[serde(flatten)]
    user: UserDto,
    permissions: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse)))]
pub async fn me(caller: Caller) -> Json<MeResponse> {
    let permissions = caller.effective_permissions();
    let identity = caller.0;
    Json(MeResponse {
        user: UserDto::new(identity.user, identity.roles),
        permissions,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChangePasswordRequest {
    current_password: String,
    new_password: String,
}

/// Changes the caller's password. Every token issued before stops working,
/// so other sessions are logged out.
#[utoipa::path(put, path = "/api/v1/auth/me/password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses((status = 204, description = "Changed; other sessions end"), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, description = "Password hashing is saturated; see Retry-After", body = ErrorEnvelope)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<ChangePasswordRequest>,
) -> Result<StatusCode> {
    let ok = state
        .hasher
        .verify(
            req.current_password,
            Some(caller.user.password_hash.clone()),
        )
        .await?;
    if !ok {
        return Err(Error::Forbidden("the current password is wrong".into()));
    }
    let new = NewPassword::parse(req.new_password).map_err(Error::Validation)?;
    let hash = state.hasher.hash(new.expose().to_string()).await?;
    let now = wf_common::now_millis();
    state
        .store
        .set_password(&caller.user.id, &hash, now)
        .await?;
    state.store.revoke_user_tokens(&caller.user.id, now).await?;
    state
        .audit_action(
            &caller,
            &client,
            "auth.password_change",
            Some(caller.user.id.clone()),
            None,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, body = JwkSet)))]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CACHE_CONTROL, "public, max-age=300")],
        Json(JwkSet {
            keys: vec![state.signer.jwk()],
        }),
    )
}
