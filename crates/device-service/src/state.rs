//! Shared state and the caller's identity.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::broadcast;
use wf_common::events::EventBus;
use wf_common::jwt::{AccessClaims, JwtVerifier};

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

/// Permissions device-service checks.
#[derive(Debug, Clone, Copy)]
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
    /// Superusers and holders of the admin role see every device; others
    /// see the devices they own.
    pub is_admin: bool,
}

impl Caller {
    pub fn from_claims(claims: AccessClaims) -> Self {
        Self {
            is_admin: claims.sees_every_owner(),
            user_id: claims.sub,
            username: claims.username,
        }
    }

    /// Asks auth-service (through the cache) whether the caller holds
    /// `permission`.
    pub async fn require(&self, state: &AppState, permission: Permission) -> Result<()> {
        if state
            .auth
            .check_permission(&self.user_id, permission.code())
            .await
            .map_err(|s| crate::clients::call_error("auth-service", s))?
        {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this requires the {} permission",
                permission.code()
            )))
        }
    }

    /// Whether the caller may see and touch `device`.
    pub fn may_access(&self, device: &DeviceRecord) -> bool {
        self.is_admin || device.owner_id == self.user_id
    }

    /// The owner filter for listings: none for admins.
    pub fn owner_filter(&self) -> Option<String> {
        (!self.is_admin).then(|| self.user_id.clone())
    }
}

impl AppState {
    /// Loads a device the caller may access; another owner's device is
    /// answered as not found, so its existence is not revealed.
    pub async fn device_for(&self, caller: &Caller, id: &str) -> Result<DeviceRecord> {
        match self.store.get_device(id).await? {
            Some(d) if caller.may_access(&d) => Ok(d),
            _ => Err(Error::NotFound(format!("no device with id {id:?}"))),
        }
    }
}
