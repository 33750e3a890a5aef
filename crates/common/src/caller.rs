//! The caller of a service's REST API: who they are (from a verified
//! access token, as auth-service sees the account now) and what they may do
//! (a permission and how far it reaches).
//!
//! One extractor for every service, [`Caller`]: a handler takes `caller:
//! Caller` and reads the caller's identity through it. Which identity is
//! the service's state's to say ([`Authenticate`]): auth-service loads the
//! account with its roles from its own database; every other service is an
//! [`Authority`], whose callers are [`User`]s checked against auth-service's
//! published keys and (cached) answers, with one `require`.

use std::ops::Deref;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::audit::{AuditEvent, ClientInfo};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::jwt::{AccessClaims, JwtVerifier};
use crate::permissions::{Access, PermissionClient, SESSION_ENDED};

/// A service state that can tell who holds an access token.
pub trait Authenticate: Send + Sync {
    /// Who a caller is, as the service needs to know them.
    type Identity: Send;

    /// The identity behind `token`, or why it is refused.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Self::Identity>> + Send;
}

/// A service state that authenticates callers through auth-service: the
/// verifier of access tokens and auth-service's (cached) answers. Its
/// callers are [`User`]s.
pub trait Authority: Send + Sync {
    fn verifier(&self) -> &JwtVerifier;
    fn permissions(&self) -> &PermissionClient;
}

impl<S: Authority> Authenticate for S {
    type Identity = User;

    async fn authenticate(&self, token: &str) -> Result<User> {
        let claims = self.verifier().verify(token).await?;
        User::from_claims(self.permissions(), claims).await
    }
}

/// The caller of a request, from `Authorization: Bearer <access token>`,
/// authenticated by the service's state; it reads as its identity.
#[derive(Debug, Clone)]
pub struct Caller<I = User>(pub I);

impl<I> Deref for Caller<I> {
    type Target = I;

    fn deref(&self) -> &I {
        &self.0
    }
}

impl<S: Authenticate> FromRequestParts<S> for Caller<S::Identity> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let token = require_bearer(parts)?;
        state.authenticate(token).await.map(Caller)
    }
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

/// A user as a service other than auth-service knows them.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub username: String,
    /// A superuser or a holder of the admin role (who may, among others,
    /// hand a device to another owner). Which records a permission reaches
    /// is the scope of the roles granting it (see [`Access`]).
    pub is_admin: bool,
}

impl User {
    /// The user behind verified `claims`, as auth-service sees the
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

    /// A service that knows one token.
    struct OneToken;

    impl Authenticate for OneToken {
        type Identity = String;

        async fn authenticate(&self, token: &str) -> Result<String> {
            match token {
                "good" => Ok("alice".into()),
                _ => Err(Error::Unauthenticated("unknown token".into())),
            }
        }
    }

    #[tokio::test]
    async fn the_caller_is_who_the_state_says_holds_the_token() {
        let caller = Caller::from_request_parts(&mut parts(Some("Bearer good")), &OneToken)
            .await
            .unwrap();
        assert_eq!(caller.as_str(), "alice");
        for header in [Some("Bearer bad"), None, Some("Basic good")] {
            assert!(matches!(
                Caller::from_request_parts(&mut parts(header), &OneToken).await,
                Err(Error::Unauthenticated(_))
            ));
        }
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
