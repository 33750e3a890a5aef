//! Throttling of failed logins, per account and per client address, over a
//! sliding window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginThrottleConfig {
    /// Failed logins for one account within the window before further
    /// attempts are refused.
    pub max_failures_per_account: usize,
    /// Failed logins from one client address within the window.
    pub max_failures_per_client: usize,
    pub window_secs: u64,
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_client: 20,
            window_secs: 900,
        }
    }
}

/// Above this many tracked keys, stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

pub struct LoginThrottle {
    config: LoginThrottleConfig,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Which limit refused an attempt, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub by_account: bool,
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

    /// Refuses an attempt when the account or the client is over its limit.
    pub fn check(&self, login: &str, client: &str) -> Result<(), Throttled> {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        let limits = [
            (
                account_key(login),
                self.config.max_failures_per_account,
                true,
            ),
            (
                client_key(client),
                self.config.max_failures_per_client,
                false,
            ),
        ];
        for (key, max, by_account) in limits {
            if let Some(times) = map.get_mut(&key) {
                prune(times, now, self.window());
                if max > 0 && times.len() >= max {
                    // The attempt that must leave the window to get under the limit.
                    let oldest = times[times.len() - max];
                    let retry_after = self.window().saturating_sub(now - oldest);
                    return Err(Throttled {
                        retry_after: retry_after.max(Duration::from_secs(1)),
                        by_account,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, login: &str, client: &str) {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() > SWEEP_ABOVE {
            let window = self.window();
            map.retain(|_, times| {
                prune(times, now, window);
                !times.is_empty()
            });
        }
        for key in [account_key(login), client_key(client)] {
            let times = map.entry(key).or_default();
            prune(times, now, self.window());
            times.push_back(now);
        }
    }

    /// A successful login clears the account's failures (not the client's).
    pub fn record_success(&self, login: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&account_key(login));
        }
    }
}

fn account_key(login: &str) -> String {
    format!("account:{}", login.trim().to_ascii_lowercase())
}

fn client_key(client: &str) -> String {
    format!("client:{client}")
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
mod tests {
    use super::*;

    fn throttle(account: usize, client: usize) -> LoginThrottle {
        LoginThrottle::new(LoginThrottleConfig {
            max_failures_per_account: account,
            max_failures_per_client: client,
            window_secs: 60,
        })
    }

    #[test]
    fn account_limit() {
        let t = throttle(3, 100);
        for _ in 0..3 {
            assert!(t.check("alice", "1.1.1.1").is_ok());
            t.record_failure("Alice", "1.1.1.1");
        }
        let refused = t.check("alice", "2.2.2.2").unwrap_err();
        assert!(refused.by_account);
        assert!(refused.retry_after <= Duration::from_secs(60));
        assert!(t.check("bob", "1.1.1.1").is_ok());
    }

    #[test]
    fn client_limit_spans_accounts() {
        let t = throttle(100, 3);
        for name in ["a", "b", "c"] {
            t.record_failure(name, "9.9.9.9");
        }
        let refused = t.check("d", "9.9.9.9").unwrap_err();
        assert!(!refused.by_account);
        assert!(t.check("d", "8.8.8.8").is_ok());
    }

    #[test]
    fn success_clears_the_account() {
        let t = throttle(2, 100);
        t.record_failure("alice", "1.1.1.1");
        t.record_success("alice");
        t.record_failure("alice", "1.1.1.1");
        assert!(t.check("alice", "1.1.1.1").is_ok());
    }
}
