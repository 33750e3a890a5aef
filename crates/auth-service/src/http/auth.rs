//! Login, refresh, logout, the caller's own account, and the JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use wf_common::extract;
use wf_common::jwt::JwkSet;

use super::users::UserDto;
use super::{Caller, Client};
use crate::domain::NewPassword;
use crate::error::{Error, Result};
use crate::state::{AppState, TokenPair};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// A username or an e-mail address.
    #[serde(alias = "email", alias = "login")]
    username: String,
    password: String,
}

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

#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    extract::Json(req): extract::Json<RefreshRequest>,
) -> Result<Json<TokenPair>> {
    state.refresh(&req.refresh_token, &client).await.map(Json)
}

/// Ends a session: the refresh token (and every token rotated from the same
/// login) stops working. The access token expires on its own.
pub async fn logout(
    State(state): State<AppState>,
    Client(client): Client,
    extract::Json(req): extract::Json<RefreshRequest>,
) -> Result<StatusCode> {
    state.logout(&req.refresh_token, None, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct MeResponse {
    #[serde(flatten)]
    user: UserDto,
    permissions: Vec<String>,
}

pub async fn me(Caller(caller): Caller) -> Json<MeResponse> {
    let permissions = caller.effective_permissions();
    Json(MeResponse {
        user: UserDto::new(caller.user, caller.roles),
        permissions,
    })
}

#[derive(Deserialize)]
pub struct ChangePasswordRequest {
    current_password: String,
    new_password: String,
}

/// Changes the caller's password. Every token issued before stops working,
/// so other sessions are logged out.
pub async fn change_password(
    State(state): State<AppState>,
    Caller(caller): Caller,
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
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CACHE_CONTROL, "public, max-age=300")],
        Json(JwkSet {
            keys: vec![state.signer.jwk()],
        }),
    )
}
