//! Users: create, list, read, update, enable/disable, reset password,
//! assign roles, delete. Every endpoint needs `user:manage`; changes are
//! further bound by the rules in [`crate::access`]: nobody grants or
//! manages privileges beyond their own.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path, Query};
use wf_common::format_millis;

use super::{Caller, Client, Page, Paged};
use crate::domain::{Email, NewPassword, Permission};
use crate::error::{Error, Result};
use crate::state::{AppState, CreateUser};
use crate::store::{RoleRef, UserFilter, UserRecord, UserUpdate};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserDto {
    id: String,
    username: String,
    email: String,
    full_name: String,
    is_active: bool,
    is_superuser: bool,
    roles: Vec<RoleRef>,
    last_login_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl UserDto {
    pub fn new(user: UserRecord, roles: Vec<RoleRef>) -> Self {
        Self {
            id: user.id,
            username: user.username,
            email: user.email,
            full_name: user.full_name,
            is_active: user.is_active,
            is_superuser: user.is_superuser,
            roles,
            last_login_at: user.last_login_at.map(format_millis),
            created_at: format_millis(user.created_at),
            updated_at: format_millis(user.updated_at),
        }
    }
}

async fn load(state: &AppState, id: &str) -> Result<UserDto> {
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| Error::no_such("user", id))?;
    let roles = state
        .store
        .roles_of_users(std::slice::from_ref(&user.id))
        .await?
        .remove(&user.id)
        .unwrap_or_default();
    Ok(UserDto::new(user, roles))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(max_length = 256)]
    q: Option<String>,
    is_active: Option<bool>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Paged<UserDto>), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Paged<UserDto>>> {
    caller.require(Permission::UserManage)?;
    let page = Page::from_query(query.limit, query.offset)?;
    wf_common::text::check_filter("q", query.q.as_deref()).map_err(Error::Validation)?;
    let (users, total) = state
        .store
        .list_users(&UserFilter {
            search: query.q.filter(|q| !q.trim().is_empty()),
            is_active: query.is_active,
            limit: page.limit,
            offset: page.offset,
        })
        .await?;
    let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
    let mut roles = state.store.roles_of_users(&ids).await?;
    let items = users
        .into_iter()
        .map(|u| {
            let r = roles.remove(&u.id).unwrap_or_default();
            UserDto::new(u, r)
        })
        .collect();
    Ok(Json(Paged {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateUserRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    username: String,
    email: String,
    password: String,
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    is_superuser: bool,
    /// Role names; defaults to `viewer`.
    roles: Option<Vec<String>>,
}

/// Creates an account. The roles given must carry only permissions the
/// caller holds, and only an admin grants the `admin` role (403 otherwise).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("bearer" = [])), request_body = CreateRequest,
    responses((status = 201, body = UserDto),
        (status = 403, description = "No `user:manage`, or the roles carry permissions the caller does not hold", body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, description = "Password hashing is saturated; see Retry-After", body = ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<UserDto>)> {
    caller.require(Permission::UserManage)?;
    if req.is_superuser && !caller.user.is_superuser {
        return Err(Error::Forbidden(
            "only a superuser can create a superuser".into(),
        ));
    }
    let roles = req.roles.unwrap_or_else(|| vec!["viewer".into()]);
    caller.guard_grant_roles(&state.roles_by_name(&roles).await?)?;
    let id = state
        .create_user(CreateUser {
            username: req.username,
            email: req.email,
            full_name: req.full_name,
            password: req.password,
            is_superuser: req.is_superuser,
            roles: roles.clone(),
        })
        .await?;
    state
        .audit_action(
            &caller,
            &client,
            "user.create",
            Some(id.clone()),
            Some(json!({ "roles": roles })),
        )
        .await;
    Ok((StatusCode::CREATED, Json(load(&state, &id).await?)))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = UserDto), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserDto>> {
    caller.require(Permission::UserManage)?;
    load(&state, &id).await.map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateUserRequest)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    email: Option<String>,
    full_name: Option<String>,
    is_superuser: Option<bool>,
}

/// Updates an account the caller may manage (see the module rules: 403
/// for an account holding permissions the caller does not).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = String, Path)), request_body = UpdateRequest,
    responses((status = 200, body = UserDto),
        (status = 403, description = "No `user:manage`, or the account holds privileges beyond the caller's", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<UpdateRequest>,
) -> Result<Json<UserDto>> {
    caller.require(Permission::UserManage)?;
    if req.is_superuser.is_some() && !caller.user.is_superuser {
        return Err(Error::Forbidden(
            "only a superuser can change the superuser flag".into(),
        ));
    }
    if req.is_superuser == Some(false) && caller.user.id == id {
        return Err(Error::Conflict(
            "you cannot remove your own superuser flag".into(),
        ));
    }
    state.user_to_manage(&caller, &id).await?;
    let email = req
        .email
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(Error::Validation)?
        .map(Email::into_inner);
    let full_name = req.full_name.map(|n| n.trim().to_string());
    if full_name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err(Error::Validation(
            "full name must be at most 200 characters".into(),
        ));
    }
    let update = UserUpdate {
        email,
        full_name,
        is_superuser: req.is_superuser,
    };
    if !state
        .store
        .update_user(&id, &update, wf_common::now_millis())
        .await?
    {
        return Err(Error::no_such("user", &id));
    }
    state
        .audit_action(&caller, &client, "user.update", Some(id.clone()), None)
        .await;
    load(&state, &id).await.map(Json)
}

/// Refuses to remove the last active superuser, which would lock everyone
/// out of administration.
async fn guard_last_superuser(state: &AppState, id: &str) -> Result<()> {
    let Some(user) = state.store.get_user(id).await? else {
        return Err(Error::no_such("user", id));
    };
    if user.is_superuser
        && user.is_active
        && state.store.count_other_active_superusers(id).await? == 0
    {
        return Err(Error::Conflict("this is the last active superuser".into()));
    }
    Ok(())
}

/// Deletes an account the caller may manage.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "No `user:manage`, or the account holds privileges beyond the caller's", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    caller.require(Permission::UserManage)?;
    if caller.user.id == id {
        return Err(Error::Conflict("you cannot delete your own account".into()));
    }
    state.user_to_manage(&caller, &id).await?;
    guard_last_superuser(&state, &id).await?;
    if !state.store.delete_user(&id).await? {
        return Err(Error::no_such("user", &id));
    }
    state
        .audit_action(&caller, &client, "user.delete", Some(id), None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables an account the caller may manage.
#[utoipa::path(post, path = "/api/v1/users/{id}/enable", tag = "users", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = UserDto),
        (status = 403, description = "No `user:manage`, or the account holds privileges beyond the caller's", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)))]
pub async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<UserDto>> {
    caller.require(Permission::UserManage)?;
    state.user_to_manage(&caller, &id).await?;
    if !state
        .store
        .set_user_active(&id, true, wf_common::now_millis())
        .await?
    {
        return Err(Error::no_such("user", &id));
    }
    state
        .audit_action(&caller, &client, "user.enable", Some(id.clone()), None)
        .await;
    load(&state, &id).await.map(Json)
}

/// Disables an account the caller may manage: it can no longer log in, and
/// its tokens stop working.
#[utoipa::path(post, path = "/api/v1/users/{id}/disable", tag = "users", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = UserDto),
        (status = 403, description = "No `user:manage`, or the account holds privileges beyond the caller's", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<UserDto>> {
    caller.require(Permission::UserManage)?;
    if caller.user.id == id {
        return Err(Error::Conflict(
            "you cannot disable your own account".into(),
        ));
    }
    state.user_to_manage(&caller, &id).await?;
    guard_last_superuser(&state, &id).await?;
    let now = wf_common::now_millis();
    if !state.store.set_user_active(&id, false, now).await? {
        return Err(Error::no_such("user", &id));
    }
    state.store.revoke_user_tokens(&id, now).await?;
    state
        .audit_action(&caller, &client, "user.disable", Some(id.clone()), None)
        .await;
    load(&state, &id).await.map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetPasswordRequest {
    new_password: String,
}

/// Sets the password of an account the caller may manage; its sessions end.
#[utoipa::path(put, path = "/api/v1/users/{id}/password", tag = "users", security(("bearer" = [])), params(("id" = String, Path)), request_body = ResetPasswordRequest,
    responses((status = 204, description = "Reset; the user's sessions end"),
        (status = 403, description = "No `user:manage`, or the account holds privileges beyond the caller's", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, description = "Password hashing is saturated; see Retry-After", body = ErrorEnvelope)))]
pub async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<ResetPasswordRequest>,
) -> Result<StatusCode> {
    caller.require(Permission::UserManage)?;
    let new = NewPassword::parse(req.new_password).map_err(Error::Validation)?;
    state.user_to_manage(&caller, &id).await?;
    let hash = state.hasher.hash(new.expose().to_string()).await?;
    let now = wf_common::now_millis();
    state.store.set_password(&id, &hash, now).await?;
    state.store.revoke_user_tokens(&id, now).await?;
    state
        .audit_action(&caller, &client, "user.password_reset", Some(id), None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRolesRequest {
    /// Role names.
    roles: Vec<String>,
}

/// Replaces the roles of an account the caller may manage. Nobody changes
/// their own roles; the new roles must carry only permissions the caller
/// holds, and only an admin grants the `admin` role.
#[utoipa::path(put, path = "/api/v1/users/{id}/roles", tag = "users", security(("bearer" = [])), params(("id" = String, Path)), request_body = SetRolesRequest,
    responses((status = 200, body = UserDto),
        (status = 403, description = "No `user:manage`, the caller's own account, an account holding privileges beyond \
            the caller's, or roles carrying permissions the caller does not hold", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn set_roles(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<SetRolesRequest>,
) -> Result<Json<UserDto>> {
    caller.require(Permission::UserManage)?;
    state.user_to_manage(&caller, &id).await?;
    caller.guard_not_self(&id)?;
    let roles = state.roles_by_name(&req.roles).await?;
    caller.guard_grant_roles(&roles)?;
    let role_ids: Vec<String> = roles.into_iter().map(|r| r.id).collect();
    state.store.set_user_roles(&id, &role_ids).await?;
    state
        .audit_action(
            &caller,
            &client,
            "user.roles_set",
            Some(id.clone()),
            Some(json!({ "roles": req.roles })),
        )
        .await;
    load(&state, &id).await.map(Json)
}
