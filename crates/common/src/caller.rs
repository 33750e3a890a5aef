//! The caller of a service's REST API: who they are (from a verified
//! access token, as auth-service sees the account now) and what they may do
//! (a permission and how far it reaches). One extractor and one `require`
//! for every service that checks permissions through auth-service.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::audit::{AuditEvent, ClientInfo};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::jwt::{AccessClaims, JwtVerifier};
use crate::permissions::{Access, PermissionClient, SESSION_ENDED};

/// A service state that authenticates callers: the verifier of access
/// tokens and auth-service's (cached) answers.
pub trait Authority: Send + Sync {
    fn verifier(&self) -> &JwtVerifier;
    fn permissions(&self) -> &PermissionClient;
}

/// A permission a service checks, by its code (`device:read`).
pub trait PermissionCode: Copy {
    fn code(self) -> &'static str;
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The bearer token of a request, or the error a request without one gets.
pub fn require_bearer(parts: &Parts) -> Result<&str> {
    bearer_token(parts)
        .ok_or_else(|| Error::Unauthenticated("expected Authorization: Bearer <token>".into()))
}

/// The refusal of a caller who lacks `code`.
pub fn forbidden(code: &str) -> Error {
    Error::Forbidden(format!("this requires the {code} permission"))
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    /// A superuser or a holder of the admin role (who may, among others,
    /// hand a device to another owner). Which records a permission reaches
    /// is the scope of the roles granting it (see [`Access`]).
    pub is_admin: bool,
}

impl Caller {
    /// The caller behind verified `claims`, as auth-service sees the
    /// account now: a disabled account, or a token from before a password
    /// change, is refused, and a role change applies, within the permission
    /// cache's time rather than the token's lifetime.
    pub async fn from_claims(auth: &PermissionClient, claims: AccessClaims) -> Result<Self> {
        let is_admin = auth
            .current_admin(&claims)
            .await
            .map_err(|s| crate::grpc::call_error("auth-service", s))?
            .ok_or_else(|| Error::Unauthenticated(SESSION_ENDED.into()))?;
        Ok(Self {
            is_admin,
            user_id: claims.sub,
            username: claims.username,
        })
    }

    /// Asks auth-service (through the cache) whether the caller holds
    /// `permission`, and whose records it reaches.
    pub async fn require(
        &self,
        state: &impl Authority,
        permission: impl PermissionCode,
    ) -> Result<Access> {
        match state
            .permissions()
            .check_permission(&self.user_id, permission.code())
            .await
            .map_err(|s| crate::grpc::call_error("auth-service", s))?
        {
            Some(scope) => Ok(Access {
                user_id: self.user_id.clone(),
                scope,
            }),
            None => Err(forbidden(permission.code())),
        }
    }

    /// How this caller appears in histories (`user:<username>`).
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }

    /// Records in the audit log that this caller did `action` to `target`
    /// (published on `audit.recorded`; auth-service stores it).
    pub async fn record(
        &self,
        bus: &dyn EventBus,
        client: &ClientInfo,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) {
        let event = self
            .audit_event(action, client)
            .target(target)
            .details(details);
        crate::audit::record(bus, event).await;
    }

    /// Records a refused attempt (outcome `denied`).
    pub async fn record_denied(
        &self,
        bus: &dyn EventBus,
        client: &ClientInfo,
        action: &str,
        target: &str,
    ) {
        let event = self.audit_event(action, client).target(target).denied();
        crate::audit::record(bus, event).await;
    }

    fn audit_event(&self, action: &str, client: &ClientInfo) -> AuditEvent {
        AuditEvent::new(action, &self.user_id, &self.username, client)
    }
}

/// The caller, from `Authorization: Bearer <access token>` verified against
/// auth-service's published keys.
impl<S: Authority> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let token = require_bearer(parts)?;
        let claims = state.verifier().verify(token).await?;
        Caller::from_claims(state.permissions(), claims).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut req = axum::http::Request::builder();
        if let Some(v) = authorization {
            req = req.header(AUTHORIZATION, v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_bearer_token_is_read_from_either_spelling() {
        assert_eq!(bearer_token(&parts(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_token(&parts(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(&parts(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&parts(Some("Bearer "))), None);
        assert!(matches!(
            require_bearer(&parts(None)),
            Err(Error::Unauthenticated(_))
        ));
    }
}
