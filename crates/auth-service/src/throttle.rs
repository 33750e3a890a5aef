//! Throttling of failed logins per (account, client address) with growing
//! delays, and per client address across accounts, over a sliding window.
//!
//! Nothing locks an account: failures from one client slow down only that
//! client's attempts on that account, so a correct password from a client
//! that has not been failing goes through. An attempt is counted when it
//! starts (before the password is hashed) and forgiven when it succeeds, so
//! a burst of parallel attempts meets the limit before any hashing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginThrottleConfig {
    /// Failed logins for one account from one client within the window
    /// before delays start.
    pub failures_before_delay: usize,
    /// The first delay; each further failure doubles it.
    pub delay_base_secs: u64,
    /// The longest delay.
    pub delay_max_secs: u64,
    /// Failed logins from one client address, over all accounts, within the
    /// window before that client is refused; 0 is unlimited.
    pub max_failures_per_client: usize,
    pub window_secs: u64,
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        Self {
            failures_before_delay: 5,
            delay_base_secs: 1,
            delay_max_secs: 900,
            max_failures_per_client: 20,
            window_secs: 900,
        }
    }
}

/// Above this many tracked keys, stale ones are swept on the next attempt.
const SWEEP_ABOVE: usize = 10_000;

pub struct LoginThrottle {
    config: LoginThrottleConfig,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Which limit refused an attempt, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// `account_client` or `client`.
    pub scope: &'static str,
}

/// An attempt in progress, counted as a failure until [`LoginThrottle::forgive`].
#[derive(Debug)]
pub struct Attempt {
    pair: String,
    client: String,
    at: Instant,
}

impl LoginThrottle {
    pub fn new(config: LoginThrottleConfig) -> Self {
        Self {
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs)
    }

    /// The wait after `n` failures of one account from one client.
    fn delay_after(&self, n: usize) -> Duration {
        let Some(over) = n.checked_sub(self.config.failures_before_delay) else {
            return Duration::ZERO;
        };
        let factor = 1u64 << over.min(32);
        Duration::from_secs(
            self.config
                .delay_base_secs
                .saturating_mul(factor)
                .min(self.config.delay_max_secs),
        )
    }

    /// Starts a login attempt of `account` (the account's id, or the login
    /// name when there is no such account) from `client`: refused while the
    /// pair is in its delay or the client is over its limit; otherwise
    /// counted as a failure until it is forgiven.
    pub fn begin(&self, account: &str, client: &str) -> Result<Attempt, Throttled> {
        let now = Instant::now();
        let window = self.window();
        let pair = format!("pair:{account}\n{client}");
        let client = format!("client:{client}");
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, times| {
                prune(times, now, window);
                !times.is_empty()
            });
        }
        if let Some(times) = map.get_mut(&pair) {
            prune(times, now, window);
            if let Some(last) = times.back() {
                let wait = self.delay_after(times.len());
                let since = now.duration_since(*last);
                if since < wait {
                    return Err(Throttled {
                        retry_after: whole_seconds(wait - since),
                        scope: "account_client",
                    });
                }
            }
        }
        let max = self.config.max_failures_per_client;
        if let Some(times) = map.get_mut(&client) {
            prune(times, now, window);
            if max > 0 && times.len() >= max {
                // The attempt that must leave the window to get under the limit.
                let oldest = times[times.len() - max];
                return Err(Throttled {
                    retry_after: whole_seconds(window.saturating_sub(now - oldest)),
                    scope: "client",
                });
            }
        }
        for key in [&pair, &client] {
            map.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Attempt {
            pair,
            client,
            at: now,
        })
    }

    /// A successful attempt: the pair's failures are cleared and the
    /// attempt no longer counts against the client.
    pub fn forgive(&self, attempt: Attempt) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&attempt.pair);
        if let Some(times) = map.get_mut(&attempt.client)
            && let Some(i) = times.iter().rposition(|t| *t == attempt.at)
        {
            times.remove(i);
        }
    }
}

/// Rounded up to whole seconds, at least one: what `Retry-After` says.
fn whole_seconds(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn throttle(free: usize, client: usize) -> LoginThrottle {
        LoginThrottle::new(LoginThrottleConfig {
            failures_before_delay: free,
            delay_base_secs: 2,
            delay_max_secs: 60,
            max_failures_per_client: client,
            window_secs: 600,
        })
    }

    #[test]
    fn the_pair_waits_and_other_clients_pass() {
        let t = throttle(3, 100);
        for _ in 0..3 {
            t.begin("u-alice", "1.1.1.1").unwrap();
        }
        let refused = t.begin("u-alice", "1.1.1.1").unwrap_err();
        assert_eq!(refused.scope, "account_client");
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        // Another client, and another account from the same client, pass.
        assert!(t.begin("u-alice", "2.2.2.2").is_ok());
        assert!(t.begin("u-bob", "1.1.1.1").is_ok());
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let t = throttle(2, 100);
        assert_eq!(t.delay_after(1), Duration::ZERO);
        assert_eq!(t.delay_after(2), Duration::from_secs(2));
        assert_eq!(t.delay_after(3), Duration::from_secs(4));
        assert_eq!(t.delay_after(4), Duration::from_secs(8));
        assert_eq!(t.delay_after(10), Duration::from_secs(60));
        assert_eq!(t.delay_after(usize::MAX), Duration::from_secs(60));
    }

    #[test]
    fn client_limit_spans_accounts() {
        let t = throttle(100, 3);
        for name in ["a", "b", "c"] {
            t.begin(name, "9.9.9.9").unwrap();
        }
        let refused = t.begin("d", "9.9.9.9").unwrap_err();
        assert_eq!(refused.scope, "client");
        assert!(t.begin("d", "8.8.8.8").is_ok());
    }

    #[test]
    fn success_forgives() {
        let t = throttle(2, 2);
        t.begin("alice", "1.1.1.1").unwrap();
        let ok = t.begin("alice", "1.1.1.1").unwrap();
        t.forgive(ok);
        // The pair is cleared and the client has one failure left.
        let again = t.begin("alice", "1.1.1.1").unwrap();
        t.forgive(again);
        assert!(t.begin("bob", "1.1.1.1").is_ok());
    }
}
