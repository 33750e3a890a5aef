//! The fleet's activity over time: telemetry messages, devices online and
//! command outcomes per bucket. What a request may ask, checked here.

use super::series::{Interval, parse_time};

/// The longest range one activity request covers: 31 days.
pub const MAX_RANGE_MS: i64 = 31 * 86_400_000;
/// The most buckets one activity request returns.
pub const MAX_BUCKETS: i64 = 1_440;
/// The narrowest bucket, and what every bucket is a multiple of: one
/// minute, the resolution at which messages are counted.
pub const MIN_INTERVAL_MS: i64 = 60_000;
/// The default range: the hour before `to`.
const DEFAULT_RANGE_MS: i64 = 3_600_000;

/// The query parameters of an activity request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityParams<'a> {
    /// RFC 3339 or milliseconds since the epoch; default one hour before `to`.
    pub from: Option<&'a str>,
    /// RFC 3339 or milliseconds since the epoch; default now.
    pub to: Option<&'a str>,
    /// Bucket width, whole minutes (`1m`, `5m`, `1h`); default the range
    /// divided into 60 buckets, rounded up to whole minutes.
    pub interval: Option<&'a str>,
}

/// A checked activity request: `[from, to)` in buckets of `interval_ms`
/// aligned to the epoch, the first one starting at or before `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivitySpec {
    pub from: i64,
    pub to: i64,
    pub interval_ms: i64,
}

impl ActivitySpec {
    pub fn parse(params: ActivityParams<'_>, now: i64) -> Result<Self, String> {
        let to = parse_time("to", params.to)?.unwrap_or(now);
        let from = parse_time("from", params.from)?.unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS));
        if from >= to {
            return Err("from must be before to".into());
        }
        if i128::from(to) - i128::from(from) > i128::from(MAX_RANGE_MS) {
            return Err("the range must be at most 31 days".into());
        }
        let span = to - from;
        let interval_ms = match params.interval.map(str::trim).filter(|i| !i.is_empty()) {
            Some(text) => Interval::parse(text)?.millis(),
            None => {
                let sixtieth = (span + 59) / 60;
                ((sixtieth + MIN_INTERVAL_MS - 1) / MIN_INTERVAL_MS).max(1) * MIN_INTERVAL_MS
            }
        };
        // Messages are counted per minute.
        if interval_ms < MIN_INTERVAL_MS || interval_ms % MIN_INTERVAL_MS != 0 {
            return Err("interval must be a whole number of minutes (1m, 5m, 1h, ...)".into());
        }
        let spec = Self {
            from,
            to,
            interval_ms,
        };
        let buckets = spec.bucket_count();
        if buckets > MAX_BUCKETS {
            return Err(format!(
                "this range and interval make {buckets} buckets; the limit is {MAX_BUCKETS}: \
                 use a wider interval or a shorter range"
            ));
        }
        Ok(spec)
    }

    /// The start of the first bucket.
    pub fn start(self) -> i64 {
        self.from - self.from.rem_euclid(self.interval_ms)
    }

    /// How many buckets cover `[from, to)`.
    pub fn bucket_count(self) -> i64 {
        (self.to - self.start() + self.interval_ms - 1) / self.interval_ms
    }

    /// The start of every bucket, oldest first.
    pub fn bucket_starts(self) -> impl Iterator<Item = i64> {
        let start = self.start();
        (0..self.bucket_count()).map(move |i| start + i * self.interval_ms)
    }

    /// The index of the bucket holding `ts`, if any.
    pub fn bucket_of(self, ts: i64) -> Option<usize> {
        if ts < self.start() || ts >= self.to {
            return None;
        }
        usize::try_from((ts - self.start()) / self.interval_ms).ok()
    }
}

/// A status change of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub device_id: String,
    pub at: i64,
    pub online: bool,
}

/// How many devices are online at the end of each bucket (or at `to` for
/// the last one), from each device's state before the first bucket
/// (`initially_online`) and the changes since, oldest first.
pub fn online_per_bucket(
    spec: ActivitySpec,
    initially_online: impl IntoIterator<Item = String>,
    changes: &[StatusChange],
) -> Vec<i64> {
    let mut online: std::collections::HashSet<String> = initially_online.into_iter().collect();
    let mut next = changes.iter().peekable();
    spec.bucket_starts()
        .map(|start| {
            let end = (start + spec.interval_ms).min(spec.to);
            while let Some(change) = next.next_if(|c| c.at < end) {
                if change.online {
                    online.insert(change.device_id.clone());
                } else {
                    online.remove(&change.device_id);
                }
            }
            online.len() as i64
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_789_999_980_000; // a whole minute since the epoch

    fn parse(
        from: Option<&str>,
        to: Option<&str>,
        interval: Option<&str>,
    ) -> Result<ActivitySpec, String> {
        ActivitySpec::parse(ActivityParams { from, to, interval }, NOW)
    }

    #[test]
    fn defaults_to_the_last_hour_in_sixty_buckets() {
        let spec = parse(None, None, None).unwrap();
        assert_eq!(
            (spec.from, spec.to, spec.interval_ms),
            (NOW - 3_600_000, NOW, 60_000)
        );
        assert_eq!(spec.start(), NOW - 3_600_000);
        assert_eq!(spec.bucket_count(), 60);
    }

    #[test]
    fn buckets_are_aligned_to_the_epoch_and_cover_the_range() {
        let spec = parse(Some("90500"), Some("210000"), Some("1m")).unwrap();
        assert_eq!(spec.start(), 60_000);
        assert_eq!(
            spec.bucket_starts().collect::<Vec<_>>(),
            [60_000, 120_000, 180_000]
        );
        assert_eq!(spec.bucket_of(90_500), Some(0));
        assert_eq!(spec.bucket_of(209_999), Some(2));
        assert_eq!(spec.bucket_of(210_000), None);
        assert_eq!(spec.bucket_of(59_999), None);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (from, to, interval, says) in [
            (Some("2000"), Some("1000"), None, "before"),
            (Some("1000"), Some("1000"), None, "before"),
            (Some("yesterday"), None, None, "RFC 3339"),
            (None, None, Some("fast"), "not an interval"),
            (None, None, Some("500ms"), "whole number of minutes"),
            (None, None, Some("10s"), "whole number of minutes"),
            (None, None, Some("90s"), "whole number of minutes"),
            (Some("0"), Some("172800000"), Some("1m"), "2880 buckets"),
            (
                Some("0"),
                Some(&*format!("{}", 32 * 86_400_000_i64)),
                Some("1d"),
                "31 days",
            ),
            (
                Some(&*i64::MIN.to_string()),
                Some(&*i64::MAX.to_string()),
                Some("1d"),
                "31 days",
            ),
        ] {
            let err = parse(from, to, interval).unwrap_err();
            assert!(err.contains(says), "{from:?} {to:?} {interval:?}: {err}");
        }
        assert!(
            parse(Some("0"), Some("86400000"), Some("1m")).is_ok(),
            "1440 buckets"
        );
        assert!(
            parse(Some("0"), Some("86400001"), Some("1m")).is_err(),
            "1441 buckets"
        );
    }

    #[test]
    fn online_devices_follow_the_changes() {
        let spec = parse(Some("0"), Some("180000"), Some("1m")).unwrap();
        let change = |device: &str, at: i64, online: bool| StatusChange {
            device_id: device.into(),
            at,
            online,
        };
        let counts = online_per_bucket(
            spec,
            ["a".to_string()],
            &[
                change("b", 6_000, true),
                change("a", 72_000, false),
                change("a", 90_000, true),
                change("c", 119_999, true),
                change("b", 150_000, false),
            ],
        );
        assert_eq!(counts, [2, 3, 2]);
    }
}
