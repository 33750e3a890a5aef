//! Shared state and the caller's identity.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::broadcast;
use wf_common::audit::TrustedProxies;
pub use wf_common::caller::Caller;
use wf_common::caller::{Authority, PermissionCode};
use wf_common::events::EventBus;
use wf_common::jwt::JwtVerifier;
use wf_common::net::IpRange;
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

impl PermissionCode for Permission {
    fn code(self) -> &'static str {
        match self {
            Self::DeviceRead => "device:read",
            Self::DeviceWrite => "device:write",
            Self::DeviceCommand => "device:command",
        }
    }
}

impl Authority for AppState {
    fn verifier(&self) -> &JwtVerifier {
        &self.verifier
    }

    fn permissions(&self) -> &AuthClient {
        &self.auth
    }
}

impl TrustedProxies for AppState {
    fn trusted_proxies(&self) -> &[IpRange] {
        &self.config.trusted_proxies
    }
}

impl AppState {
    /// Loads a device the caller's permission reaches; a device beyond it
    /// is answered as not found, so its existence is not revealed.
    pub async fn device_for(&self, access: &Access, id: &str) -> Result<DeviceRecord> {
        match self.store.get_device(id).await? {
            Some(d) if access.reaches(&d.owner_id) => Ok(d),
            _ => Err(Error::no_such("device", id)),
        }
    }
}
