//! argon2id password hashing, run on the blocking pool so a burst of logins
//! never stalls the async executor, and bounded: at most
//! `max_concurrent` hashes run at once (each holds `memory_kib`), others
//! wait up to `queue_timeout_ms` and are then refused with 503, so a login
//! flood cannot exhaust memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// argon2id cost. The defaults follow OWASP's recommendation (19 MiB, two
/// passes, one lane).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// How many hashes run at once, and how long a request waits for its turn
/// (`[auth.password_hashing_limit]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HashingLimit {
    /// Hashes (logins, password changes) computed at once; at least 1.
    pub max_concurrent: usize,
    /// How long a request waits for a free slot before it is answered 503
    /// with `Retry-After`.
    pub queue_timeout_ms: u64,
}

impl Default for HashingLimit {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            queue_timeout_ms: 2_000,
        }
    }
}

#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when a login names no account, so that answering
    /// "no such user" takes as long as "wrong password".
    dummy_hash: Arc<String>,
}

impl Hasher {
    pub fn new(config: &PasswordHashing, limit: &HashingLimit) -> Result<Self> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| {
            Error::Internal(anyhow::anyhow!("invalid password hashing parameters: {e}"))
        })?;
        let dummy_hash = Arc::new(hash_with(&params, "not a real password")?);
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(limit.max_concurrent.max(1))),
            queue_timeout: Duration::from_millis(limit.queue_timeout_ms),
            dummy_hash,
        })
    }

    /// A slot to hash in, waited for up to the queue timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit> {
        match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(Error::Internal(closed.into())),
            Err(_) => {
                metrics::counter!("wf_auth_hashing_refused_total").increment(1);
                tracing::warn!("password hashing is saturated; a request was refused");
                Err(crate::error::busy(1))
            }
        }
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        let permit = self.slot().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_with(&params, &password)
        })
        .await
        .map_err(|e| Error::Internal(e.into()))?
    }

    /// Checks `password` against `hash`; with no hash, burns the same time
    /// and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let permit = self.slot().await?;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|e| Error::Internal(e.into()))?;
        Ok(known && ok)
    }
}

fn hash_with(params: &Params, password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&wf_common::random::bytes::<16>())
        .map_err(|e| Error::Internal(anyhow::anyhow!("salt: {e}")))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(anyhow::anyhow!("hashing a password: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::new(
            &PasswordHashing {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            &HashingLimit::default(),
        )
        .unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("correct horse".into(), None).await.unwrap());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[tokio::test]
    async fn a_saturated_hasher_refuses_after_the_queue_timeout() {
        let hasher = Hasher::new(
            &PasswordHashing {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            &HashingLimit {
                max_concurrent: 1,
                queue_timeout_ms: 50,
            },
        )
        .unwrap();
        let held = hasher.slot().await.unwrap();
        let refused = hasher.verify("x".into(), None).await.unwrap_err();
        assert!(crate::error::is_busy(&refused), "{refused:?}");
        drop(held);
        assert!(!hasher.verify("x".into(), None).await.unwrap());
    }
}
