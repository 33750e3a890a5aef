//! Shared state: configuration, the token verifier, rate limits, the
//! upstream client and the live-stream hub.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use wf_common::events::EventBus;
use wf_common::jwt::{AccessClaims, JwtError, JwtVerifier};
use wf_common::shutdown::Shutdown;

use crate::Config;
use crate::clients::Upstreams;
use crate::ratelimit::RateLimiter;
use crate::streams::Hub;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub tokens: Tokens,
    pub limiter: RateLimiter,
    pub upstreams: Upstreams,
    pub hub: Hub,
    pub bus: Arc<dyn EventBus>,
    pub instance_id: String,
    /// Ends live streams and the event feed.
    pub stop: Shutdown,
    /// The web console's templates, catalogs and assets.
    pub console: Arc<crate::console::Console>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        let verifier =
            JwtVerifier::from_jwks_url(config.issuer.clone(), config.effective_jwks_url());
        let limiter = if config.redis_url.trim().is_empty() {
            RateLimiter::local(config.rate_limits.clone())
        } else {
            RateLimiter::shared(
                config.rate_limits.clone(),
                &config.redis_url,
                &config.redis_key_prefix,
                Duration::from_millis(config.redis_timeout_ms.max(1)),
            )
            .context("configuring shared rate limits (gateway.redis_url)")?
        };
        let upstreams = Upstreams::new(&config)?;
        let hub = Hub::new(config.stream_buffer);
        Ok(Self(Arc::new(Inner {
            instance_id: config.effective_instance_id(),
            tokens: Tokens::new(verifier),
            limiter,
            upstreams,
            hub,
            bus,
            stop: Shutdown::new(),
            console: Arc::new(crate::console::Console::new(config.console.clone())?),
            config,
        })))
    }

    /// Whether `peer`'s forwarding headers are believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        wf_common::net::in_any(&self.config.trusted_proxies, peer)
    }
}

pub(crate) use wf_common::net::canonical;

/// The verified caller of a request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
    /// When the token expires (seconds since the epoch).
    pub expires_at: i64,
    /// The token itself, for calls made on the caller's behalf.
    pub token: Arc<str>,
}

impl Identity {
    fn from_claims(claims: AccessClaims, token: Arc<str>) -> Self {
        Self {
            user_id: claims.sub,
            username: claims.username,
            expires_at: claims.exp,
            token,
        }
    }
}

/// Verified tokens, remembered until they expire so that a busy client's
/// token is checked once rather than on every request. A token is its own
/// proof: the same string verifies the same way until its expiry.
pub struct Tokens {
    verifier: JwtVerifier,
    cache: Mutex<HashMap<Arc<str>, Arc<Identity>>>,
}

const TOKEN_CACHE: usize = 10_000;

impl Tokens {
    fn new(verifier: JwtVerifier) -> Self {
        Self {
            verifier,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, JwtError> {
        let now = chrono_now();
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(token).cloned())
            && hit.expires_at > now
        {
            return Ok(hit);
        }
        let claims = self.verifier.verify(token).await?;
        let token: Arc<str> = Arc::from(token);
        let identity = Arc::new(Identity::from_claims(claims, token.clone()));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= TOKEN_CACHE {
                cache.retain(|_, id| id.expires_at > now);
                if cache.len() >= TOKEN_CACHE * 3 / 4 {
                    cache.clear();
                }
            }
            cache.insert(token, identity.clone());
        }
        Ok(identity)
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
