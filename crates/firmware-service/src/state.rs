//! Shared state of the API and the caller's identity.

use std::ops::Deref;
use std::sync::Arc;

use wf_common::audit::TrustedProxies;
pub use wf_common::caller::Caller;
use wf_common::caller::{Authority, PermissionCode};
use wf_common::events::EventBus;
use wf_common::jwt::JwtVerifier;
use wf_common::net::IpRange;
pub use wf_common::permissions::Access;

use crate::Config;
use crate::blobs::BlobStore;
use crate::clients::{AuthClient, DeviceClient};
use crate::domain::{LinkSigner, PublicKeys};
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

impl PermissionCode for Permission {
    fn code(self) -> &'static str {
        match self {
            Self::Read => "firmware:read",
            Self::Write => "firmware:write",
            Self::Deploy => "firmware:deploy",
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
