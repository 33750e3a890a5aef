//! Shared state and the caller's identity.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::broadcast;
use wf_common::events::EventBus;
use wf_common::jwt::{AccessClaims, JwtVerifier};
use wf_common::permissions::Access;

use crate::Config;
use crate::clients::{AuthClient, GatewayClient};
use crate::error::{Error, Result};
use crate::store::{DeviceRecord, Store};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub store: Store,
    pub verifier: JwtVerifier,
    pub auth: AuthClient,
    pub gateway: GatewayClient,
    pub bus: Arc<dyn EventBus>,
    /// Ids of commands that just reached a final status, for `?wait=true`.
    pub command_done: broadcast::Sender<String>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        verifier: JwtVerifier,
        auth: AuthClient,
        gateway: GatewayClient,
        bus: Arc<dyn EventBus>,
    ) -> Self {
        let (command_done, _) = broadcast::channel(1024);
        Self(Arc::new(Inner {
            config,
            store,
            verifier,
            auth,
            gateway,
            bus,
            command_done,
        }))
    }
}

/// Permissions device-service checks (named like their codes).
#[derive(Debug, Clone, Copy)]
#[allow(clippy::enum_variant_names)]
pub enum Permission {
    DeviceRead,
    DeviceWrite,
    DeviceCommand,
}

impl Permission {
    pub fn code(self) -> &'static str {
        match self {
            Self::DeviceRead => "device:read",
            Self::DeviceWrite => "device:write",
            Self::DeviceCommand => "device:command",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    /// A superuser or a holder of the admin role (who may, among others,
    /// hand a device to another owner). Which devices a permission reaches
    /// is the scope of the roles granting it (see [`Access`]).
    pub is_admin: bool,
}

impl Caller {
    /// The caller behind verified `claims`, as auth-service sees the
    /// account now: a disabled account, or a token from before a password
    /// change, is refused, and a role change applies, within the permission
    /// cache's time rather than the token's lifetime.
    pub async fn from_claims(state: &AppState, claims: AccessClaims) -> Result<Self> {
        let is_admin = state
            .auth
            .current_admin(&claims)
            .await
            .map_err(|s| crate::clients::call_error("auth-service", s))?
            .ok_or_else(|| Error::Unauthenticated(wf_common::permissions::SESSION_ENDED.into()))?;
        Ok(Self {
            is_admin,
            user_id: claims.sub,
            username: claims.username,
        })
    }

    /// Asks auth-service (through the cache) whether the caller holds
    /// `permission`, and which devices it reaches.
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
}

impl AppState {
    /// Loads a device the caller's permission reaches; a device beyond it
    /// is answered as not found, so its existence is not revealed.
    pub async fn device_for(&self, access: &Access, id: &str) -> Result<DeviceRecord> {
        match self.store.get_device(id).await? {
            Some(d) if access.reaches(&d.owner_id) => Ok(d),
            _ => Err(Error::NotFound(format!("no device with id {id:?}"))),
        }
    }
}
