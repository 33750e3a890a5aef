//! Retrying a connection at startup with capped exponential backoff, so a
//! service started before its database, Redis or broker waits for them
//! instead of exiting.

use std::fmt::Display;
use std::time::Duration;

/// Capped exponential backoff: `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay before the next attempt; each call doubles the following
    /// one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    /// 250 ms, doubling to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(10))
    }
}

/// Runs `attempt` until it succeeds or fails with an error `permanent`
/// says retrying cannot fix (a malformed URL, say), which is returned.
/// Every failure is logged with the delay before the next attempt.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    permanent: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(what, failures, "connected after retrying");
                }
                return Ok(value);
            }
            Err(e) if permanent(&e) => return Err(e),
            Err(e) => {
                failures += 1;
                let delay = backoff.next_delay();
                tracing::warn!(
                    what,
                    attempt = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "cannot connect yet; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_returned() {
        let calls = AtomicU32::new(0);
        let fast = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
        let value = until_ok(
            "thing",
            fast,
            |_: &String| false,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("down".to_string())
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(value, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let calls = AtomicU32::new(0);
        let err = until_ok(
            "thing",
            fast,
            |e: &String| e == "bad url",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("bad url".to_string())
            },
        )
        .await;
        assert_eq!(err, Err("bad url".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
