//! Answers to "does this user hold this permission?", remembered for a
//! short time so that a hot endpoint does not ask auth-service on every
//! request: in the process, and, when the services run apart, in Redis as
//! well, so that what one replica asked is known to every other one.
//!
//! An answer lives at most the configured time in either place: a role or
//! permission change, or a disabled account, takes effect everywhere within
//! it. Redis is an optimisation only: when it cannot be reached, the cache
//! asks auth-service as if the answer had never been stored.
//!
//! [`PermissionClient`] is what the services use: auth-service's
//! `CheckPermission` behind a [`PermissionCache`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use wf_proto::auth::auth_service_client::AuthServiceClient;
use wf_proto::auth::{CheckPermissionRequest, GetUserByIdRequest};

use crate::grpc::{InternalChannel, InternalToken};

/// Above this many answers, expired ones are swept from the process.
const SWEEP_ABOVE: usize = 10_000;

/// How long a Redis call may take before the cache gives up on it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Asks auth-service whether a user holds a permission, through a
/// [`PermissionCache`], so a hot endpoint does not pay a round trip per
/// request. The request id of the caller goes along.
pub struct PermissionClient {
    client: AuthServiceClient<InternalChannel>,
    cache: PermissionCache,
}

impl PermissionClient {
    /// auth-service's gRPC `url` (connected on first use); answers kept for
    /// `ttl`, in the process and, unless `redis_url` is empty, in Redis.
    pub async fn new(
        url: &str,
        token: &InternalToken,
        ttl: Duration,
        redis_url: &str,
    ) -> anyhow::Result<Self> {
        let channel = crate::grpc::internal_channel(url, token)?;
        let mut cache = PermissionCache::new(ttl);
        if !redis_url.trim().is_empty() {
            cache = cache.with_redis(redis_url, "wf-iot:").await;
        }
        Ok(Self {
            client: AuthServiceClient::new(channel),
            cache,
        })
    }

    /// Whether `user_id` holds `permission`. A user auth-service does not
    /// know holds nothing; a failed call is the caller's to report.
    pub async fn check_permission(
        &self,
        user_id: &str,
        permission: &str,
    ) -> Result<bool, tonic::Status> {
        self.cache
            .check(user_id, permission, || async {
                let answer = self
                    .client
                    .clone()
                    .check_permission(CheckPermissionRequest {
                        user_id: user_id.to_string(),
                        permission: permission.to_string(),
                    })
                    .await;
                match answer {
                    Ok(r) => Ok(r.into_inner().allowed),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                    Err(s) => Err(s),
                }
            })
            .await
    }
}

/// What auth-service says of the account behind an access token, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The account exists, is active, and the token was issued under its
    /// current token version (no password change or disabling since).
    pub valid: bool,
    /// The account acts as an administrator: a superuser, or holding the
    /// `admin` role.
    pub admin: bool,
}

/// What a service answers when the session of an access token has ended.
pub const SESSION_ENDED: &str = "the account is disabled or the token was revoked; log in again";

impl PermissionClient {
    /// For verified `claims`: whether the caller acts as an administrator
    /// now, or `None` when the token's session has ended (see
    /// [`PermissionClient::session`]).
    pub async fn current_admin(
        &self,
        claims: &crate::jwt::AccessClaims,
    ) -> Result<Option<bool>, tonic::Status> {
        let session = self.session(&claims.sub, claims.ver).await?;
        Ok(session.valid.then_some(session.admin))
    }

    /// Whether the session of `user_id`'s token issued under
    /// `token_version` still stands, and whether the account is an
    /// administrator, as auth-service sees it now (through the cache, so
    /// a change reaches every service within the cache's time).
    pub async fn session(
        &self,
        user_id: &str,
        token_version: i64,
    ) -> Result<Session, tonic::Status> {
        let user = || async {
            match self
                .client
                .clone()
                .get_user_by_id(GetUserByIdRequest {
                    user_id: user_id.to_string(),
                })
                .await
            {
                Ok(r) => Ok(Some(r.into_inner())),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                Err(s) => Err(s),
            }
        };
        let valid = self
            .cache
            .check(user_id, &format!("@session:{token_version}"), || async {
                Ok::<_, tonic::Status>(
                    user()
                        .await?
                        .is_some_and(|u| u.is_active && u.token_version == token_version),
                )
            })
            .await?;
        if !valid {
            return Ok(Session {
                valid,
                admin: false,
            });
        }
        let admin = self
            .cache
            .check(user_id, "@admin", || async {
                Ok::<_, tonic::Status>(user().await?.is_some_and(|u| {
                    u.is_active && (u.is_superuser || u.roles.iter().any(|r| r == "admin"))
                }))
            })
            .await?;
        Ok(Session { valid, admin })
    }
}

pub struct PermissionCache {
    local: Mutex<HashMap<(String, String), (bool, Instant)>>,
    ttl: Duration,
    shared: Option<Shared>,
}

struct Shared {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl PermissionCache {
    /// Answers kept in the process for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            ttl,
            shared: None,
        }
    }

    /// Also keeps answers in Redis at `url`, under keys starting with
    /// `prefix`. An unreachable Redis is logged and left out: the cache then
    /// works in the process only.
    pub async fn with_redis(mut self, url: &str, prefix: &str) -> Self {
        let connected = async {
            let client = redis::Client::open(url)?;
            tokio::time::timeout(
                Duration::from_secs(5),
                redis::aio::ConnectionManager::new(client),
            )
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connecting timed out")))?
        }
        .await;
        match connected {
            Ok(conn) => {
                self.shared = Some(Shared {
                    conn,
                    prefix: format!("{prefix}perm:"),
                });
            }
            Err(e) => tracing::warn!(
                error = %e,
                "permission answers are not shared through Redis; each replica asks auth-service itself"
            ),
        }
        self
    }

    /// Whether answers are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The remembered answer for `user_id` and `permission`, or the one
    /// `ask` gives (remembered unless it fails).
    pub async fn check<E, F, Fut>(&self, user_id: &str, permission: &str, ask: F) -> Result<bool, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, E>>,
    {
        let key = (user_id.to_string(), permission.to_string());
        if let Ok(local) = self.local.lock()
            && let Some((allowed, at)) = local.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(*allowed);
        }
        if let Some(allowed) = self.shared_get(&key).await {
            self.remember_locally(key, allowed);
            return Ok(allowed);
        }
        let allowed = ask().await?;
        self.shared_set(&key, allowed).await;
        self.remember_locally(key, allowed);
        Ok(allowed)
    }

    fn remember_locally(&self, key: (String, String), allowed: bool) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut local) = self.local.lock() {
            if local.len() > SWEEP_ABOVE {
                let ttl = self.ttl;
                local.retain(|_, (_, at)| at.elapsed() < ttl);
            }
            local.insert(key, (allowed, Instant::now()));
        }
    }

    fn redis_key(prefix: &str, (user_id, permission): &(String, String)) -> String {
        format!("{prefix}{permission}:{user_id}")
    }

    async fn shared_get(&self, key: &(String, String)) -> Option<bool> {
        let shared = self.shared.as_ref()?;
        let mut conn = shared.conn.clone();
        let name = Self::redis_key(&shared.prefix, key);
        let value = tokio::time::timeout(REDIS_TIMEOUT, conn.get::<_, Option<String>>(name)).await;
        match value {
            Ok(Ok(Some(v))) => Some(v == "1"),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading a permission answer from Redis failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn shared_set(&self, key: &(String, String), allowed: bool) {
        let Some(shared) = &self.shared else { return };
        let secs = self.ttl.as_secs();
        if secs == 0 {
            return;
        }
        let mut conn = shared.conn.clone();
        let name = Self::redis_key(&shared.prefix, key);
        let value = if allowed { "1" } else { "0" };
        if let Ok(Err(e)) =
            tokio::time::timeout(REDIS_TIMEOUT, conn.set_ex::<_, _, ()>(name, value, secs)).await
        {
            tracing::debug!(error = %e, "storing a permission answer in Redis failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn ask(calls: &AtomicUsize, answer: bool) -> Result<bool, String> {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(answer)
    }

    /// What `cache` says of `user` and `permission`, asking `answer` (and
    /// counting the call) when it does not know.
    async fn allowed(
        cache: &PermissionCache,
        calls: &AtomicUsize,
        user: &str,
        permission: &str,
        answer: bool,
    ) -> bool {
        cache
            .check(user, permission, || ask(calls, answer))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn answers_are_remembered_for_their_time_only() {
        let cache = PermissionCache::new(Duration::from_millis(200));
        let calls = AtomicUsize::new(0);
        assert!(allowed(&cache, &calls, "u1", "device:read", true).await);
        assert!(allowed(&cache, &calls, "u1", "device:read", false).await);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the second answer came from the cache"
        );
        // Another user or permission is asked separately.
        assert!(!allowed(&cache, &calls, "u2", "device:read", false).await);
        assert!(!allowed(&cache, &calls, "u1", "device:write", false).await);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!allowed(&cache, &calls, "u1", "device:read", false).await);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "an expired answer is asked again"
        );
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let cache = PermissionCache::new(Duration::from_secs(60));
        let failed: Result<bool, String> = cache
            .check("u1", "device:read", || async {
                Err("auth-service is down".to_string())
            })
            .await;
        assert!(failed.is_err());
        let calls = AtomicUsize::new(0);
        assert!(allowed(&cache, &calls, "u1", "device:read", true).await);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_redis_leaves_the_cache_in_the_process() {
        // Nothing listens on port 9 of the loopback interface.
        let cache = PermissionCache::new(Duration::from_secs(60))
            .with_redis("redis://127.0.0.1:9", "wf-test:")
            .await;
        assert!(!cache.is_shared());
        let calls = AtomicUsize::new(0);
        assert!(allowed(&cache, &calls, "u1", "device:read", true).await);
        assert!(allowed(&cache, &calls, "u1", "device:read", true).await);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Two replicas sharing one Redis: what one asked, the other knows.
    /// Runs with `WF_IOT_TEST_REDIS_URL`.
    #[tokio::test]
    async fn replicas_share_answers_through_redis() {
        let Ok(url) = std::env::var("WF_IOT_TEST_REDIS_URL") else {
            eprintln!("skipped: set WF_IOT_TEST_REDIS_URL to run the Redis permission-cache test");
            return;
        };
        let prefix = format!("wf-test-{}:", uuid::Uuid::new_v4().simple());
        let a = PermissionCache::new(Duration::from_secs(2))
            .with_redis(&url, &prefix)
            .await;
        let b = PermissionCache::new(Duration::from_secs(2))
            .with_redis(&url, &prefix)
            .await;
        assert!(a.is_shared() && b.is_shared());
        let calls = AtomicUsize::new(0);
        assert!(allowed(&a, &calls, "u1", "firmware:deploy", true).await);
        assert!(allowed(&b, &calls, "u1", "firmware:deploy", false).await);
        assert!(!allowed(&a, &calls, "u2", "firmware:deploy", false).await);
        assert!(!allowed(&b, &calls, "u2", "firmware:deploy", true).await);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "replica b asked nobody");
        // Redis forgets the answers with their time, like the process does.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(!allowed(&b, &calls, "u1", "firmware:deploy", false).await);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
