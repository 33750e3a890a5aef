//! Shared state of the API and the caller's identity.

use std::ops::Deref;
use std::sync::Arc;

use wf_common::events::EventBus;
use wf_common::jwt::{AccessClaims, JwtVerifier};
pub use wf_common::permissions::Access;

use crate::Config;
use crate::clients::{AuthClient, DeviceClient};
use crate::domain::{LinkSigner, PublicKeys};
use crate::error::{Error, Result};
use crate::storage::BlobStore;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState(Arc<Parts>);

/// Everything the API's handlers use.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    pub verifier: JwtVerifier,
    pub auth: AuthClient,
    pub devices: DeviceClient,
    /// Signs and checks download links.
    pub links: LinkSigner,
    /// Keys firmware signatures are checked against.
    pub signing_keys: PublicKeys,
    /// The bus that carries device progress to the workers (readiness).
    pub bus: Arc<dyn EventBus>,
}

impl Deref for AppState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

/// Permissions firmware-service checks.
#[derive(Debug, Clone, Copy)]
pub enum Permission {
    /// See firmware, rollouts and executions; download images.
    Read,
    /// Upload and delete firmware.
    Write,
    /// Create and control rollouts and upgrade tasks.
    Deploy,
}

impl Permission {
    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "firmware:read",
            Self::Write => "firmware:write",
            Self::Deploy => "firmware:deploy",
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
}

impl Caller {
    /// The caller behind verified `claims`, as auth-service sees the
    /// account now: a disabled account, or a token from before a password
    /// change, is refused within the permission cache's time.
    pub async fn from_claims(state: &AppState, claims: AccessClaims) -> Result<Self> {
        state
            .auth
            .current_admin(&claims)
            .await
            .map_err(|s| crate::clients::call_error("auth-service", s))?
            .ok_or_else(|| Error::Unauthenticated(wf_common::permissions::SESSION_ENDED.into()))?;
        Ok(Self {
            user_id: claims.sub,
            username: claims.username,
        })
    }

    /// Asks auth-service (through the cache) whether the caller holds
    /// `permission`, and whose rollouts, tasks, firmware and devices it
    /// reaches (the rule device-service applies).
    pub async fn require(&self, state: &AppState, permission: Permission) -> Result<Access> {
        match state
            .auth
            .check_permission(&self.user_id, permission.code())
            .await
            .map_err(|s| crate::clients::call_error("auth-service", s))?
        {
            Some(scope) => Ok(Access {
                user_id: self.user_id.clone(),
                scope,
            }),
            None => Err(Error::Forbidden(format!(
                "this requires the {} permission",
                permission.code()
            ))),
        }
    }

    /// How this caller appears in execution histories.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
}
