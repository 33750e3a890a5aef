//! argon2id password hashing, run on the blocking pool so a burst of logins
//! never stalls the async executor.

use std::sync::Arc;

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

#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// Verified against when a login names no account, so that answering
    /// "no such user" takes as long as "wrong password".
    dummy_hash: Arc<String>,
}

impl Hasher {
    pub fn new(config: &PasswordHashing) -> Result<Self> {
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
        Ok(Self { params, dummy_hash })
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(|e| Error::Internal(e.into()))?
    }

    /// Checks `password` against `hash`; with no hash, burns the same time
    /// and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || {
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::new(&PasswordHashing {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
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
