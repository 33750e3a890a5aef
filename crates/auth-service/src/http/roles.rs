//! Roles and their permissions. Reading needs `role:manage` or
//! `user:manage` (to assign roles); changing needs `role:manage`, and is
//! further bound by [`crate::access`]: nobody grants a permission they do
//! not hold or changes a role they hold, and built-in roles change only
//! by a superuser.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{self, Path};
use wf_common::format_millis;
use wf_common::permissions::Scope;

use super::{Caller, Client};
use crate::domain::{Permission, PermissionCode, RoleName};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::RoleRecord;

const READ: [Permission; 2] = [Permission::RoleManage, Permission::UserManage];

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleDto {
    id: String,
    name: String,
    description: String,
    is_system: bool,
    /// `fleet`: the role's permissions act on every owner's devices,
    /// firmware and rollouts; `own`: only on those the user owns.
    scope: Scope,
    permissions: Vec<String>,
    created_at: String,
    updated_at: String,
}

impl From<RoleRecord> for RoleDto {
    fn from(r: RoleRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            is_system: r.is_system,
            scope: r.scope,
            permissions: r.permissions,
            created_at: format_millis(r.created_at),
            updated_at: format_millis(r.updated_at),
        }
    }
}

async fn load(state: &AppState, id: &str) -> Result<RoleRecord> {
    state
        .store
        .get_role(id)
        .await?
        .ok_or_else(|| Error::no_such("role", id))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleList {
    items: Vec<RoleDto>,
}

#[utoipa::path(get, path = "/api/v1/roles", tag = "roles", security(("bearer" = [])),
    responses((status = 200, body = RoleList), (status = 403, body = ErrorEnvelope)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<RoleList>> {
    caller.require_any(&READ)?;
    let items = state
        .store
        .list_roles()
        .await?
        .into_iter()
        .map(RoleDto::from)
        .collect();
    Ok(Json(RoleList { items }))
}

#[utoipa::path(get, path = "/api/v1/roles/{id}", tag = "roles", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RoleDto), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoleDto>> {
    caller.require_any(&READ)?;
    Ok(Json(load(&state, &id).await?.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateRoleRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    #[serde(default)]
    description: String,
    /// How far the role's permissions reach: `fleet` (the default) or
    /// `own` (only what the user owns).
    #[serde(default = "fleet")]
    scope: Scope,
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["device:read"]))]
    permissions: Vec<PermissionCode>,
}

fn fleet() -> Scope {
    Scope::Fleet
}

fn check_description(d: &str) -> Result<()> {
    if d.chars().count() > 500 {
        return Err(Error::Validation(
            "description must be at most 500 characters".into(),
        ));
    }
    Ok(())
}

/// Refuses permission codes the platform does not know.
async fn known_permissions(state: &AppState, codes: Vec<PermissionCode>) -> Result<Vec<String>> {
    let known = state.store.list_permissions().await?;
    let mut out: Vec<String> = Vec::with_capacity(codes.len());
    for code in codes {
        if !known.iter().any(|(c, _)| c == code.as_str()) {
            return Err(Error::Validation(format!(
                "unknown permission {:?}",
                code.as_str()
            )));
        }
        out.push(code.into());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Creates a role; its permissions must all be held by the caller.
#[utoipa::path(post, path = "/api/v1/roles", tag = "roles", security(("bearer" = [])), request_body = CreateRequest,
    responses((status = 201, body = RoleDto),
        (status = 403, description = "No `role:manage`, or permissions the caller does not hold", body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    extract::Json(req): extract::Json<CreateRequest>,
) -> Result<(StatusCode, Json<RoleDto>)> {
    caller.require(Permission::RoleManage)?;
    let name = RoleName::parse(&req.name).map_err(Error::Validation)?;
    check_description(&req.description)?;
    let permissions = known_permissions(&state, req.permissions).await?;
    caller.guard_holds_all(
        permissions.iter().map(|p| (p, req.scope)),
        "grant_permission",
        "you would grant",
    )?;
    let id = uuid::Uuid::now_v7().to_string();
    state
        .store
        .insert_role(
            &id,
            name.as_str(),
            req.description.trim(),
            req.scope,
            wf_common::now_millis(),
        )
        .await?;
    state.store.set_role_permissions(&id, &permissions).await?;
    state
        .audit_action(
            &caller,
            &client,
            "role.create",
            Some(id.clone()),
            Some(json!({ "name": name.as_str(), "scope": req.scope, "permissions": permissions })),
        )
        .await;
    Ok((StatusCode::CREATED, Json(load(&state, &id).await?.into())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UpdateRoleRequest)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    name: Option<String>,
    description: Option<String>,
    /// `fleet` or `own`; widening to `fleet` needs the role's permissions
    /// on the whole fleet.
    scope: Option<Scope>,
}

/// Renames, describes or rescopes a role. Built-in roles change only by a
/// superuser; nobody changes a role they hold or one carrying permissions
/// they lack.
#[utoipa::path(patch, path = "/api/v1/roles/{id}", tag = "roles", security(("bearer" = [])), params(("id" = String, Path)), request_body = UpdateRequest,
    responses((status = 200, body = RoleDto),
        (status = 403, description = "No `role:manage`, a built-in role (superusers only), a role the caller holds, \
            or one carrying permissions the caller does not hold", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<UpdateRequest>,
) -> Result<Json<RoleDto>> {
    caller.require(Permission::RoleManage)?;
    let role = load(&state, &id).await?;
    caller.guard_manage_role(&role)?;
    let name = req
        .name
        .as_deref()
        .map(RoleName::parse)
        .transpose()
        .map_err(Error::Validation)?;
    if role.is_system && name.as_ref().is_some_and(|n| n.as_str() != role.name) {
        return Err(Error::Conflict(format!(
            "the built-in role {:?} cannot be renamed",
            role.name
        )));
    }
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    if role.is_system && role.name == "admin" && req.scope == Some(Scope::Own) {
        return Err(Error::Conflict(
            "the admin role always reaches the whole fleet".into(),
        ));
    }
    if let Some(scope) = req.scope {
        caller.guard_holds_all(
            role.permissions.iter().map(|p| (p, scope)),
            "manage_role",
            "this role would carry",
        )?;
    }
    state
        .store
        .update_role(
            &id,
            name.as_ref().map(RoleName::as_str),
            req.description.as_deref().map(str::trim),
            req.scope,
            wf_common::now_millis(),
        )
        .await?;
    let details = req
        .scope
        .filter(|s| *s != role.scope)
        .map(|s| json!({ "scope": s }));
    state
        .audit_action(&caller, &client, "role.update", Some(id.clone()), details)
        .await;
    Ok(Json(load(&state, &id).await?.into()))
}

/// Deletes a custom role the caller may change (see update).
#[utoipa::path(delete, path = "/api/v1/roles/{id}", tag = "roles", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "No `role:manage`, a role the caller holds, or one carrying permissions the caller does not hold", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    caller.require(Permission::RoleManage)?;
    let role = load(&state, &id).await?;
    if role.is_system {
        return Err(Error::Conflict(format!(
            "the built-in role {:?} cannot be deleted",
            role.name
        )));
    }
    caller.guard_manage_role(&role)?;
    state.store.delete_role(&id).await?;
    state
        .audit_action(
            &caller,
            &client,
            "role.delete",
            Some(id),
            Some(json!({ "name": role.name })),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPermissionsRequest {
    #[schema(value_type = Vec<String>, example = json!(["device:read", "device:command"]))]
    permissions: Vec<PermissionCode>,
}

/// Replaces a role's permissions. The admin role always keeps all of them;
/// other built-in roles change only by a superuser; nobody changes a role
/// they hold, and every permission given (and taken) must be the caller's.
#[utoipa::path(put, path = "/api/v1/roles/{id}/permissions", tag = "roles", security(("bearer" = [])), params(("id" = String, Path)), request_body = SetPermissionsRequest,
    responses((status = 200, body = RoleDto),
        (status = 403, description = "No `role:manage`, a built-in role (superusers only), a role the caller holds, \
            or permissions the caller does not hold", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn set_permissions(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
    extract::Json(req): extract::Json<SetPermissionsRequest>,
) -> Result<Json<RoleDto>> {
    caller.require(Permission::RoleManage)?;
    let role = load(&state, &id).await?;
    if role.is_system && role.name == "admin" {
        return Err(Error::Conflict(
            "the admin role always holds every permission".into(),
        ));
    }
    caller.guard_manage_role(&role)?;
    let permissions = known_permissions(&state, req.permissions).await?;
    caller.guard_holds_all(
        permissions.iter().map(|p| (p, role.scope)),
        "grant_permission",
        "you would grant",
    )?;
    state.store.set_role_permissions(&id, &permissions).await?;
    state
        .audit_action(
            &caller,
            &client,
            "role.permissions_set",
            Some(id.clone()),
            Some(json!({ "permissions": permissions })),
        )
        .await;
    Ok(Json(load(&state, &id).await?.into()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PermissionDto {
    code: String,
    description: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PermissionList {
    items: Vec<PermissionDto>,
}

#[utoipa::path(get, path = "/api/v1/permissions", tag = "roles", security(("bearer" = [])),
    responses((status = 200, body = PermissionList), (status = 403, body = ErrorEnvelope)))]
pub async fn permissions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PermissionList>> {
    caller.require_any(&READ)?;
    let items = state
        .store
        .list_permissions()
        .await?
        .into_iter()
        .map(|(code, description)| PermissionDto { code, description })
        .collect();
    Ok(Json(PermissionList { items }))
}
