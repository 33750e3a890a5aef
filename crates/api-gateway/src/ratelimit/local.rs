//! In-process buckets: sharded maps of token buckets, forgetting buckets
//! that have refilled completely (they behave exactly like new ones).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use super::{Check, Denied};
use crate::domain::bucket::{Bucket, Limit};

const SHARDS: usize = 32;
/// Buckets per shard before full ones are swept out.
const SWEEP_AT: usize = 4096;

pub struct LocalBuckets {
    shards: Vec<Mutex<HashMap<String, (Bucket, Limit)>>>,
    hasher: RandomState,
}

impl LocalBuckets {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, (Bucket, Limit)>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[index]
    }

    /// Takes one token from every bucket, or none.
    pub fn take(&self, checks: &[Check]) -> Result<(), Denied> {
        let now = Instant::now();
        for (i, check) in checks.iter().enumerate() {
            if let Err(retry_after) = self.take_one(check, now) {
                for earlier in &checks[..i] {
                    self.refund(earlier);
                }
                return Err(Denied {
                    scope: check.scope,
                    retry_after,
                });
            }
        }
        Ok(())
    }

    fn take_one(&self, check: &Check, now: Instant) -> Result<(), std::time::Duration> {
        let mut shard = self
            .shard(&check.key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((bucket, limit)) = shard.get_mut(&check.key) {
            *limit = check.limit;
            return bucket.take(check.limit, now);
        }
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, (bucket, limit)| !bucket.is_full(*limit, now));
            if shard.len() >= SWEEP_AT * 3 / 4 {
                // Mostly busy buckets from very many clients: start over
                // rather than sweep again on every new client.
                tracing::warn!(
                    buckets = shard.len(),
                    "rate-limit buckets full; resetting a shard"
                );
                shard.clear();
            }
        }
        let mut bucket = Bucket::full(check.limit, now);
        let verdict = bucket.take(check.limit, now);
        shard.insert(check.key.clone(), (bucket, check.limit));
        verdict
    }

    fn refund(&self, check: &Check) {
        let mut shard = self
            .shard(&check.key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((bucket, limit)) = shard.get_mut(&check.key) {
            bucket.refund(*limit);
        }
    }
}
