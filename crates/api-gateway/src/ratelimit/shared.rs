//! Buckets shared by every replica: one Redis hash per bucket, updated by
//! a Lua script so that reading, refilling and taking are one atomic step.
//! The script reads the clock of the Redis server, so replicas with skewed
//! clocks still agree.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Check, Denied};

/// KEYS: the buckets. ARGV: per_second and burst of each, in order.
/// Returns {1, 0, 0} when every bucket gave a token, or
/// {0, index, wait_ms} for the first bucket (1-based) that had none; then
/// nothing is written.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = {}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  end
  if tokens < 1 then
    return {0, i, math.ceil((1 - tokens) * 1000 / rate)}
  end
  left[i] = tokens - 1
end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 't', tostring(left[i]), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return {1, 0, 0}
";

/// After a failure, Redis is left alone this long (decisions are local).
const BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this long about Redis being unusable.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct RedisBuckets {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    sha: Mutex<Option<String>>,
    down_until: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is backing off after a failure")]
    BackingOff,
    #[error("unexpected answer from the rate-limit script: {0:?}")]
    Answer((i64, i64, i64)),
}

impl RedisBuckets {
    /// Connects lazily: Redis may come up after the gateway.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
            sha: Mutex::new(None),
            down_until: Mutex::new(None),
            last_warning: Mutex::new(None),
        })
    }

    /// The shared verdict, or why Redis could not give one.
    pub async fn take(&self, checks: &[Check]) -> Result<Result<(), Denied>, BackendError> {
        if self
            .down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(BackendError::BackingOff);
        }
        let result = match tokio::time::timeout(self.timeout, self.run(checks)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(self.timeout)),
        };
        if result.is_err()
            && let Ok(mut d) = self.down_until.lock()
        {
            *d = Some(Instant::now() + BACKOFF);
        }
        let (admitted, index, wait_ms) = result?;
        if admitted == 1 {
            return Ok(Ok(()));
        }
        let check = usize::try_from(index - 1)
            .ok()
            .and_then(|i| checks.get(i))
            .ok_or(BackendError::Answer((admitted, index, wait_ms)))?;
        Ok(Err(Denied {
            scope: check.scope,
            retry_after: Duration::from_millis(wait_ms.max(1) as u64),
        }))
    }

    async fn run(&self, checks: &[Check]) -> Result<(i64, i64, i64), BackendError> {
        let mut conn = self.conn.clone();
        let cached = self.sha.lock().ok().and_then(|s| s.clone());
        let sha = match cached {
            Some(sha) => sha,
            None => self.load(&mut conn).await?,
        };
        match self.eval(&mut conn, &sha, checks).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and forgot the script.
                let sha = self.load(&mut conn).await?;
                Ok(self.eval(&mut conn, &sha, checks).await?)
            }
            other => Ok(other?),
        }
    }

    async fn load(&self, conn: &mut ConnectionManager) -> Result<String, BackendError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(conn)
            .await?;
        if let Ok(mut cached) = self.sha.lock() {
            *cached = Some(sha.clone());
        }
        Ok(sha)
    }

    async fn eval(
        &self,
        conn: &mut ConnectionManager,
        sha: &str,
        checks: &[Check],
    ) -> redis::RedisResult<(i64, i64, i64)> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(checks.len());
        for check in checks {
            cmd.arg(format!("{}{}", self.prefix, check.key));
        }
        for check in checks {
            cmd.arg(check.limit.per_second).arg(check.limit.burst);
        }
        cmd.query_async(conn).await
    }

    /// Logs that Redis is unusable, at most every few seconds.
    pub fn warn(&self, error: &BackendError) {
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                error = %error,
                "shared rate limits unavailable; this replica enforces its own until Redis answers"
            );
        }
    }
}
