//! auth-service's gRPC API (`wfiot.auth.v1.AuthService`), with
//! grpc.health.v1 and reflection.

use tonic::{Request, Response, Status};
use wf_proto::auth::auth_service_server::{AuthService, AuthServiceServer};
use wf_proto::auth::{
    CheckPermissionRequest, CheckPermissionResponse, GetUserByIdRequest, User,
    ValidateTokenRequest, ValidateTokenResponse,
};

use crate::domain::PermissionCode;
use crate::state::AppState;

/// auth-service's gRPC service, for the kit's runner.
pub fn service(state: AppState) -> AuthServiceServer<AuthGrpc> {
    AuthServiceServer::new(AuthGrpc { state })
}

pub struct AuthGrpc {
    state: AppState,
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let token = request.into_inner().token;
        let identity = self.state.authenticate(token.trim()).await?;
        Ok(Response::new(ValidateTokenResponse {
            permissions: identity.effective_permissions(),
            user_id: identity.user.id,
            username: identity.user.username,
            is_superuser: identity.user.is_superuser,
            roles: identity.roles.into_iter().map(|r| r.name).collect(),
            expires_at: identity.claims.exp,
            token_id: identity.claims.jti,
        }))
    }

    async fn check_permission(
        &self,
        request: Request<CheckPermissionRequest>,
    ) -> Result<Response<CheckPermissionResponse>, Status> {
        let req = request.into_inner();
        let code = PermissionCode::parse(&req.permission).map_err(Status::invalid_argument)?;
        let scope = self
            .state
            .has_permission(&req.user_id, code.as_str())
            .await?;
        Ok(Response::new(CheckPermissionResponse {
            allowed: scope.is_some(),
            fleet: scope == Some(wf_common::permissions::Scope::Fleet),
        }))
    }

    async fn get_user_by_id(
        &self,
        request: Request<GetUserByIdRequest>,
    ) -> Result<Response<User>, Status> {
        let id = request.into_inner().user_id;
        let user = self
            .state
            .store
            .get_user(&id)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| Status::not_found(format!("no user with id {id:?}")))?;
        let roles = self
            .state
            .store
            .roles_of_users(std::slice::from_ref(&user.id))
            .await
            .map_err(Status::from)?
            .remove(&user.id)
            .unwrap_or_default();
        Ok(Response::new(User {
            id: user.id,
            username: user.username,
            email: user.email,
            full_name: user.full_name,
            is_active: user.is_active,
            is_superuser: user.is_superuser,
            roles: roles.into_iter().map(|r| r.name).collect(),
            created_at: user.created_at,
            token_version: user.token_version,
        }))
    }
}
