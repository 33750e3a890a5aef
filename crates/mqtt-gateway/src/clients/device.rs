//! Device credentials, checked by device-service over gRPC
//! (`wfiot.device.v1.DeviceService/AuthenticateDevice`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use wf_proto::device::AuthenticateDeviceRequest;
use wf_proto::device::device_service_client::DeviceServiceClient;

use crate::error::{Error, Result};

/// Checks a device's MQTT credentials.
#[async_trait]
pub trait DeviceAuthenticator: Send + Sync + 'static {
    /// Whether `secret` is the secret of the device `device_id`; `false`
    /// for an unknown device too. `Err` when the answer cannot be had.
    async fn authenticate(&self, device_id: &str, secret: &str) -> Result<bool, Error>;

    /// Drops whatever is remembered about `device_id`'s credentials (they
    /// changed, or the device is gone).
    fn forget(&self, _device_id: &str) {}
}

/// Cached entries at which expired ones are swept out.
const CACHE_SWEEP_AT: usize = 10_000;

/// Asks device-service, and remembers successful answers for a while so a
/// fleet reconnecting at once does not hammer it. Only successes are
/// cached, keyed on the device id and a SHA-256 of the secret, so a changed
/// secret or a revoked device is refused once the entry expires.
pub struct DeviceServiceAuthenticator {
    client: DeviceServiceClient<wf_common::grpc::InternalChannel>,
    ttl: Duration,
    cache: Mutex<HashMap<(String, [u8; 32]), Instant>>,
}

impl DeviceServiceAuthenticator {
    /// Connects lazily: the gateway starts before device-service answers.
    pub fn new(
        url: &str,
        token: &wf_common::grpc::InternalToken,
        cache_ttl: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: DeviceServiceClient::new(wf_common::grpc::internal_channel(url, token)?),
            ttl: cache_ttl,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn key(device_id: &str, secret: &str) -> (String, [u8; 32]) {
        (
            device_id.to_string(),
            Sha256::digest(secret.as_bytes()).into(),
        )
    }

    fn cached(&self, key: &(String, [u8; 32])) -> bool {
        let Ok(cache) = self.cache.lock() else {
            return false;
        };
        cache.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, key: (String, [u8; 32])) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            if cache.len() >= CACHE_SWEEP_AT {
                cache.retain(|_, until| *until > now);
            }
            cache.insert(key, now + self.ttl);
        }
    }
}

#[async_trait]
impl DeviceAuthenticator for DeviceServiceAuthenticator {
    async fn authenticate(&self, device_id: &str, secret: &str) -> Result<bool, Error> {
        let key = Self::key(device_id, secret);
        if self.cached(&key) {
            return Ok(true);
        }
        let reply = self
            .client
            .clone()
            .authenticate_device(AuthenticateDeviceRequest {
                device_id: device_id.to_string(),
                secret: secret.to_string(),
            })
            .await
            .map_err(|status| {
                Error::Unavailable(format!(
                    "device-service did not check the credentials: {}",
                    status.message()
                ))
            })?
            .into_inner();
        if reply.authenticated {
            self.remember(key);
        }
        Ok(reply.authenticated)
    }

    fn forget(&self, device_id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(id, _), _| id != device_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_device_service_is_unavailable_not_a_refusal() {
        // Nothing listens on port 9 of the loopback interface.
        let auth = DeviceServiceAuthenticator::new(
            "http://127.0.0.1:9",
            &Default::default(),
            Duration::from_secs(60),
        )
        .expect("valid url");
        let err = auth.authenticate("d1", "secret").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn the_cache_remembers_successes_for_its_ttl_only() {
        let auth = DeviceServiceAuthenticator::new(
            "http://127.0.0.1:9",
            &Default::default(),
            Duration::from_millis(50),
        )
        .expect("valid url");
        let key = DeviceServiceAuthenticator::key("d1", "s1");
        assert!(!auth.cached(&key));
        auth.remember(key.clone());
        assert!(auth.cached(&key));
        assert!(!auth.cached(&DeviceServiceAuthenticator::key("d1", "s2")));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!auth.cached(&key));
    }

    #[tokio::test]
    async fn forgetting_a_device_drops_its_entries_only() {
        let auth = DeviceServiceAuthenticator::new(
            "http://127.0.0.1:9",
            &Default::default(),
            Duration::from_secs(60),
        )
        .expect("valid url");
        let d1 = DeviceServiceAuthenticator::key("d1", "s1");
        let d2 = DeviceServiceAuthenticator::key("d2", "s2");
        auth.remember(d1.clone());
        auth.remember(d2.clone());
        auth.forget("d1");
        assert!(!auth.cached(&d1));
        assert!(auth.cached(&d2));
    }
}
