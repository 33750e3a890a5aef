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

    /// How far `user_id`'s `permission` reaches, or `None` when the user
    /// does not hold it. A user auth-service does not know holds nothing;
    /// a failed call is the caller's to report.
    pub async fn check_permission(
        &self,
        user_id: &str,
        permission: &str,
    ) -> Result<Option<Scope>, tonic::Status> {
        let level = self
            .cache
            .level(user_id, permission, || async {
                let answer = self
                    .client
                    .clone()
                    .check_permission(CheckPermissionRequest {
                        user_id: user_id.to_string(),
                        permission: permission.to_string(),
                    })
                    .await;
                match answer {
                    Ok(r) => {
                        let r = r.into_inner();
                        Ok(match (r.allowed, r.fleet) {
                            (false, _) => 0,
                            (true, false) => Scope::Own.level(),
                            (true, true) => Scope::Fleet.level(),
                        })
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(0),
                    Err(s) => Err(s),
                }
            })
            .await?;
        Ok(Scope::from_level(level))
    }
}

impl PermissionClient {
    /// Whether auth-service knows an account with this id (asked every
    /// time, not cached).
    pub async fn user_exists(&self, user_id: &str) -> Result<bool, tonic::Status> {
        match self
            .client
            .clone()
            .get_user_by_id(GetUserByIdRequest {
                user_id: user_id.to_string(),
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }
}

/// How far a permission reaches: every owner's devices, firmware and
/// rollouts, or only those the user owns. A role carries one scope for all
/// its permissions; a user holding a permission through several roles gets
/// the widest scope among the roles that carry it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only what the user owns.
    Own,
    /// The whole fleet.
    Fleet,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Fleet => "fleet",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "own" => Ok(Self::Own),
            "fleet" => Ok(Self::Fleet),
            other => Err(format!(
                "{other:?} is not a scope (expected \"fleet\" or \"own\")"
            )),
        }
    }

    /// The level stored in the permission cache (0 is "not held").
    const fn level(self) -> u8 {
        match self {
            Self::Own => 1,
            Self::Fleet => 2,
        }
    }

    fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => None,
            1 => Some(Self::Own),
            _ => Some(Self::Fleet),
        }
    }
}

/// A caller cleared for one permission, and what it reaches: the one rule
/// for "whose resources may this caller act on", shared by every service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub user_id: String,
    pub scope: Scope,
}

impl Access {
    /// Whether the permission reaches a resource owned by `owner_id`.
    pub fn reaches(&self, owner_id: &str) -> bool {
        self.scope == Scope::Fleet || owner_id == self.user_id
    }

    /// The owner filter for listings and lookups: none on the whole fleet.
    pub fn owner_filter(&self) -> Option<&str> {
        (self.scope == Scope::Own).then_some(self.user_id.as_str())
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
    local: Mutex<HashMap<(String, String), (u8, Instant)>>,
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
        let level = self
            .level(user_id, permission, || async { ask().await.map(u8::from) })
            .await?;
        Ok(level > 0)
    }

    /// Like [`PermissionCache::check`], for answers with more than two
    /// values (0 meaning "no"): how far a permission reaches.
    pub async fn level<E, F, Fut>(&self, user_id: &str, permission: &str, ask: F) -> Result<u8, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u8, E>>,
    {
        let key = (user_id.to_string(), permission.to_string());
        if let Ok(local) = self.local.lock()
            && let Some((level, at)) = local.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(*level);
        }
        if let Some(level) = self.shared_get(&key).await {
            self.remember_locally(key, level);
            return Ok(level);
        }
        let level = ask().await?;
        self.shared_set(&key, level).await;
        self.remember_locally(key, level);
        Ok(level)
    }

    fn remember_locally(&self, key: (String, String), level: u8) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut local) = self.local.lock() {
            if local.len() > SWEEP_ABOVE {
                let ttl = self.ttl;
                local.retain(|_, (_, at)| at.elapsed() < ttl);
            }
            local.insert(key, (level, Instant::now()));
        }
    }

    fn redis_key(prefix: &str, (user_id, permission): &(String, String)) -> String {
        format!("{prefix}{permission}:{user_id}")
    }

    async fn shared_get(&self, key: &(String, String)) -> Option<u8> {
        let shared = self.shared.as_ref()?;
        let mut conn = shared.conn.clone();
        let name = Self::redis_key(&shared.prefix, key);
        let value = tokio::time::timeout(REDIS_TIMEOUT, conn.get::<_, Option<String>>(name)).await;
        match value {
            Ok(Ok(Some(v))) => v.parse().ok(),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading a permission answer from Redis failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn shared_set(&self, key: &(String, String), level: u8) {
        let Some(shared) = &self.shared else { return };
        let secs = self.ttl.as_secs();
        if secs == 0 {
            return;
        }
        let mut conn = shared.conn.clone();
        let name = Self::redis_key(&shared.prefix, key);
        let value = level.to_string();
        if let Ok(Err(e)) =
            tokio::time::timeout(REDIS_TIMEOUT, conn.set_ex::<_, _, ()>(name, value, secs)).await
        {
            tracing::debug!(error = %e, "storing a permission answer in Redis failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn a_scope_decides_whose_resources_an_access_reaches() {
        let own = Access {
            user_id: "u1".into(),
            scope: Scope::Own,
        };
        assert!(own.reaches("u1"));
        assert!(!own.reaches("u2"));
        assert_eq!(own.owner_filter(), Some("u1"));
        let fleet = Access {
            user_id: "u1".into(),
            scope: Scope::Fleet,
        };
        assert!(fleet.reaches("u2"));
        assert_eq!(fleet.owner_filter(), None);
        for scope in [Scope::Own, Scope::Fleet] {
            assert_eq!(Scope::parse(scope.as_str()), Ok(scope));
            assert_eq!(Scope::from_level(scope.level()), Some(scope));
        }
        assert_eq!(Scope::from_level(0), None);
        assert!(Scope::parse("team").is_err());
        assert!(Scope::Fleet > Scope::Own);
    }

    #[tokio::test]
    async fn levels_are_remembered_like_answers() {
        let cache = PermissionCache::new(Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let level = cache
                .level("u1", "device:read", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(2)
                })
                .await
                .unwrap();
            assert_eq!(level, 2);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A yes/no answer is level 1 or 0.
        assert!(
            cache
                .check("u1", "device:read", || async { Ok::<_, String>(false) })
                .await
                .unwrap()
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
