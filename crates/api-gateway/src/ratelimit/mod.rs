//! Token-bucket rate limits per user and per client address, for each route
//! group. In process by default; through Redis when configured, so that
//! every replica draws from the same buckets.
//!
//! A request is admitted only when every bucket that applies to it has a
//! token; a bucket that refuses leaves the others untouched.
//!
//! When Redis cannot be reached (or answers slower than `redis_timeout_ms`)
//! the replica degrades to its own in-process buckets: limits stay enforced,
//! per replica instead of shared, and
//! `wf_gateway_rate_limit_backend_errors_total` counts each such decision.

mod local;
mod shared;

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::domain::bucket::Limit;
use crate::domain::routes::RouteGroup;
use local::LocalBuckets;
use shared::RedisBuckets;

/// The limits of one route group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupLimits {
    /// Per authenticated user, whatever address the requests come from.
    pub per_user: Limit,
    /// Per client address, authenticated or not.
    pub per_ip: Limit,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            per_user: Limit::UNLIMITED,
            per_ip: Limit::UNLIMITED,
        }
    }
}

impl GroupLimits {
    pub const fn new(per_user: Limit, per_ip: Limit) -> Self {
        Self { per_user, per_ip }
    }
}

/// Rate limits per route group (`[gateway.rate_limits]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub enabled: bool,
    pub auth: GroupLimits,
    pub devices: GroupLimits,
    pub firmware: GroupLimits,
    pub streams: GroupLimits,
    pub default: GroupLimits,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            // Login and refresh: tight per address against password guessing
            // (auth-service throttles failed logins per account as well).
            auth: GroupLimits::new(Limit::new(10.0, 30), Limit::new(10.0, 30)),
            devices: GroupLimits::new(Limit::new(100.0, 200), Limit::new(200.0, 400)),
            firmware: GroupLimits::new(Limit::new(20.0, 50), Limit::new(50.0, 100)),
            streams: GroupLimits::new(Limit::new(1.0, 20), Limit::new(2.0, 40)),
            default: GroupLimits::new(Limit::new(50.0, 100), Limit::new(100.0, 200)),
        }
    }
}

impl RateLimits {
    pub fn group(&self, group: RouteGroup) -> GroupLimits {
        match group {
            RouteGroup::Auth => self.auth,
            RouteGroup::Devices => self.devices,
            RouteGroup::Firmware => self.firmware,
            RouteGroup::Streams => self.streams,
            RouteGroup::Default => self.default,
        }
    }
}

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Ip,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Ip => "ip",
        }
    }
}

/// A refused request: which bucket, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub scope: Scope,
    pub retry_after: Duration,
}

impl Denied {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// One bucket to draw from.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub scope: Scope,
    pub key: String,
    pub limit: Limit,
}

pub struct RateLimiter {
    limits: RateLimits,
    local: LocalBuckets,
    redis: Option<RedisBuckets>,
}

impl RateLimiter {
    /// In-process buckets only.
    pub fn local(limits: RateLimits) -> Self {
        Self {
            limits,
            local: LocalBuckets::new(),
            redis: None,
        }
    }

    /// Buckets shared through Redis at `url` (connected lazily), with keys
    /// under `prefix`; each decision waits at most `timeout` for Redis.
    pub fn shared(
        limits: RateLimits,
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            limits,
            local: LocalBuckets::new(),
            redis: Some(RedisBuckets::new(url, prefix, timeout)?),
        })
    }

    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Takes a token for a login attempt on the account named `login` from
    /// `ip`: the `auth` group's per-address limit applies to each (address,
    /// account) pair, so that a flood of guesses from one address at other
    /// accounts does not refuse the right password of an account that
    /// address has not been guessing at. auth-service throttles the failures
    /// themselves (per account and client, and per client).
    pub async fn check_login(&self, ip: IpAddr, login: &str) -> Result<(), Denied> {
        let limit = self.limits.auth.per_ip;
        if !self.limits.enabled || !limit.is_enforced() {
            return Ok(());
        }
        let login: String = login
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect();
        self.decide(&[Check {
            scope: Scope::Ip,
            key: format!("auth:login:{}:{login}", client_key(ip)),
            limit,
        }])
        .await
    }

    /// Takes a token for a request in `group` from `ip` (and `user`, when
    /// authenticated).
    pub async fn check(
        &self,
        group: RouteGroup,
        ip: IpAddr,
        user: Option<&str>,
    ) -> Result<(), Denied> {
        if !self.limits.enabled {
            return Ok(());
        }
        let limits = self.limits.group(group);
        let mut checks: Vec<Check> = Vec::with_capacity(2);
        if limits.per_ip.is_enforced() {
            checks.push(Check {
                scope: Scope::Ip,
                key: format!("{}:ip:{}", group.name(), client_key(ip)),
                limit: limits.per_ip,
            });
        }
        if let Some(user) = user.filter(|_| limits.per_user.is_enforced()) {
            checks.push(Check {
                scope: Scope::User,
                key: format!("{}:user:{user}", group.name()),
                limit: limits.per_user,
            });
        }
        if checks.is_empty() {
            return Ok(());
        }
        self.decide(&checks).await
    }

    /// Takes a token from every bucket of `checks`, shared through Redis
    /// when configured.
    async fn decide(&self, checks: &[Check]) -> Result<(), Denied> {
        if let Some(redis) = &self.redis {
            match redis.take(checks).await {
                Ok(verdict) => return verdict,
                Err(e) => {
                    metrics::counter!("wf_gateway_rate_limit_backend_errors_total").increment(1);
                    redis.warn(&e);
                }
            }
        }
        self.local.take(checks)
    }
}

/// The bucket key of an address: IPv4 addresses alone, IPv6 by /64 (one
/// subscriber usually holds a whole /64).
fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(user: Limit, ip: Limit) -> RateLimiter {
        RateLimiter::local(RateLimits {
            devices: GroupLimits::new(user, ip),
            ..RateLimits::default()
        })
    }

    #[tokio::test]
    async fn users_and_addresses_have_their_own_buckets() {
        let rl = limiter(Limit::new(0.001, 2), Limit::new(0.001, 3));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g = RouteGroup::Devices;
        assert!(rl.check(g, a, Some("alice")).await.is_ok());
        assert!(rl.check(g, a, Some("alice")).await.is_ok());
        let denied = rl.check(g, a, Some("alice")).await.unwrap_err();
        assert_eq!(denied.scope, Scope::User);
        assert!(denied.retry_after_secs() >= 900);
        // alice from elsewhere is still alice.
        assert_eq!(
            rl.check(g, b, Some("alice")).await.unwrap_err().scope,
            Scope::User
        );
        // The refused requests did not use up address a's bucket: one left.
        assert!(rl.check(g, a, Some("bob")).await.is_ok());
        assert_eq!(
            rl.check(g, a, Some("carol")).await.unwrap_err().scope,
            Scope::Ip
        );
        // Other groups are not affected.
        assert!(rl.check(RouteGroup::Auth, a, Some("alice")).await.is_ok());
    }

    #[tokio::test]
    async fn disabled_limits_admit_everything() {
        let mut limits = RateLimits {
            devices: GroupLimits::new(Limit::new(0.001, 1), Limit::new(0.001, 1)),
            ..RateLimits::default()
        };
        limits.enabled = false;
        let rl = RateLimiter::local(limits);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(rl.check(RouteGroup::Devices, ip, Some("u")).await.is_ok());
        }
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.1.2.3");
    }

    #[test]
    fn retry_after_rounds_up() {
        let d = |ms| Denied {
            scope: Scope::Ip,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(d(1).retry_after_secs(), 1);
        assert_eq!(d(1000).retry_after_secs(), 1);
        assert_eq!(d(1001).retry_after_secs(), 2);
    }
}
