//! The token bucket: `burst` tokens, refilled at `per_second`; each request
//! takes one. The same arithmetic runs in process and, as a Lua script, in
//! Redis.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A rate: `per_second` sustained, `burst` at once. Either at 0 disables it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for Limit {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

impl Limit {
    pub const UNLIMITED: Self = Self {
        per_second: 0.0,
        burst: 0,
    };

    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    pub fn is_enforced(&self) -> bool {
        self.per_second > 0.0 && self.per_second.is_finite() && self.burst > 0
    }

    /// How long a full bucket takes to refill from empty.
    pub fn refill_time(&self) -> Duration {
        if self.is_enforced() {
            Duration::from_secs_f64(f64::from(self.burst) / self.per_second)
        } else {
            Duration::ZERO
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn full(limit: Limit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    fn refill(&mut self, limit: Limit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.updated = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, limit: Limit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limit.per_second,
            ))
        }
    }

    /// Gives back a token taken for a request that another bucket refused.
    pub fn refund(&mut self, limit: Limit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    /// Whether the bucket would be full by `now`: forgetting it changes nothing.
    pub fn is_full(&self, limit: Limit, now: Instant) -> bool {
        let mut b = *self;
        b.refill(limit, now);
        b.tokens >= f64::from(limit.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let limit = Limit::new(2.0, 3);
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        for _ in 0..3 {
            assert!(b.take(limit, t0).is_ok());
        }
        let wait = b.take(limit, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(limit, t1).is_ok());
        assert!(b.take(limit, t1).is_err());
        // Never more than the burst, however long it rests.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.is_full(limit, t2));
        for _ in 0..3 {
            assert!(b.take(limit, t2).is_ok());
        }
        assert!(b.take(limit, t2).is_err());
    }

    #[test]
    fn refunds_stop_at_the_burst() {
        let limit = Limit::new(1.0, 2);
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        b.take(limit, t0).unwrap();
        b.refund(limit);
        b.refund(limit);
        b.take(limit, t0).unwrap();
        b.take(limit, t0).unwrap();
        assert!(b.take(limit, t0).is_err());
    }

    #[test]
    fn zero_disables() {
        assert!(!Limit::new(0.0, 10).is_enforced());
        assert!(!Limit::new(10.0, 0).is_enforced());
        assert!(!Limit::UNLIMITED.is_enforced());
        assert!(Limit::new(0.5, 1).is_enforced());
        assert_eq!(Limit::new(2.0, 10).refill_time(), Duration::from_secs(5));
    }
}
