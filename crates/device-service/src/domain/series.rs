use wf_common::contract::MetricName;

/// How the values in one bucket are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

impl Aggregation {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "avg" | "mean" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            "sum" => Self::Sum,
            "count" => Self::Count,
            _ => {
                return Err(format!(
                    "{s:?} is not an aggregation (avg, min, max, sum or count)"
                ));
            }
        })
    }

    /// The SQL aggregate over the numeric column.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Avg => "AVG(num)",
            Self::Min => "MIN(num)",
            Self::Max => "MAX(num)",
            Self::Sum => "SUM(num)",
            Self::Count => "COUNT(*)",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Sum => "sum",
            Self::Count => "count",
        }
    }
}

/// A bucket width: a whole number of `ms`, `s`, `m`, `h` or `d` (a bare
/// number is seconds), at least one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(i64);

impl Interval {
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not an interval (e.g. 500ms, 10s, 5m, 1h, 1d)");
        let s = s.trim();
        let (digits, unit_ms) = if let Some(d) = s.strip_suffix("ms") {
            (d, 1)
        } else if let Some(d) = s.strip_suffix('s') {
            (d, 1_000)
        } else if let Some(d) = s.strip_suffix('m') {
            (d, 60_000)
        } else if let Some(d) = s.strip_suffix('h') {
            (d, 3_600_000)
        } else if let Some(d) = s.strip_suffix('d') {
            (d, 86_400_000)
        } else {
            (s, 1_000)
        };
        let n: i64 = digits.parse().map_err(|_| err())?;
        if n <= 0 {
            return Err(err());
        }
        n.checked_mul(unit_ms).map(Self).ok_or_else(err)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// How many buckets of this width the range `[from, to)` spans (at most
    /// one more for the alignment of the first). Exact for any two `i64`
    /// times: the arithmetic is done in `i128`, so extreme ranges count as
    /// many buckets instead of wrapping around.
    pub fn buckets(self, from: i64, to: i64) -> i128 {
        let span = i128::from(to) - i128::from(from);
        let width = i128::from(self.0);
        (span + width - 1).div_euclid(width) + 1
    }
}

/// The query parameters of a series request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeriesParams<'a> {
    pub metric: Option<&'a str>,
    /// RFC 3339 or milliseconds since the epoch; default one hour before `to`.
    pub from: Option<&'a str>,
    /// RFC 3339 or milliseconds since the epoch; default now.
    pub to: Option<&'a str>,
    /// Bucket width; without it, raw values.
    pub interval: Option<&'a str>,
    /// The aggregation of each bucket (default avg); needs `interval`.
    pub agg: Option<&'a str>,
    /// Raw values only: the most to return (default 1000).
    pub limit: Option<i64>,
}

/// How a series is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesShape {
    /// Raw values, at most `limit` of them.
    Raw { limit: i64 },
    /// Buckets of `interval` aligned to the epoch, each reduced with
    /// `aggregation`.
    Buckets {
        interval: Interval,
        aggregation: Aggregation,
    },
}

/// A checked series request: one metric over `[from, to)`, returning at
/// most the configured number of points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSpec {
    pub metric: MetricName,
    pub from: i64,
    pub to: i64,
    pub shape: SeriesShape,
}

/// The default time range of a series: the hour before `to`.
const DEFAULT_RANGE_MS: i64 = 3_600_000;

impl SeriesSpec {
    /// Checks a series request at `now` (ms since the epoch), allowing at
    /// most `max_points` raw values or buckets.
    pub fn parse(params: SeriesParams<'_>, now: i64, max_points: i64) -> Result<Self, String> {
        let metric = MetricName::parse(params.metric.ok_or("metric is required")?)
            .map_err(|e| e.to_string())?;
        let to = parse_time("to", params.to)?.unwrap_or(now);
        let from = parse_time("from", params.from)?.unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS));
        if from >= to {
            return Err("from must be before to".into());
        }
        let Some(interval) = params.interval.filter(|i| !i.is_empty()) else {
            if params.agg.is_some() {
                return Err("agg needs an interval".into());
            }
            let limit = params.limit.unwrap_or(1000);
            if !(1..=max_points).contains(&limit) {
                return Err(format!("limit must be between 1 and {max_points}"));
            }
            return Ok(Self {
                metric,
                from,
                to,
                shape: SeriesShape::Raw { limit },
            });
        };
        let interval = Interval::parse(interval)?;
        let aggregation = Aggregation::parse(params.agg.unwrap_or("avg"))?;
        // In i128: a range and an interval near the ends of i64 must not wrap
        // around into a small count.
        let (span, width) = (
            i128::from(to) - i128::from(from),
            i128::from(interval.millis()),
        );
        let buckets = (span + width - 1) / width + 1;
        if buckets > i128::from(max_points) {
            return Err(format!(
                "this range and interval make {buckets} buckets; the limit is {max_points}: \
                 use a wider interval or a shorter range"
            ));
        }
        Ok(Self {
            metric,
            from,
            to,
            shape: SeriesShape::Buckets {
                interval,
                aggregation,
            },
        })
    }
}

/// A time given as milliseconds since the epoch or RFC 3339; absent when
/// missing or blank.
pub(crate) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| format!("{name} must be RFC 3339 or milliseconds since the epoch"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extreme_ranges_count_buckets_without_overflow() {
        let day = Interval::parse("1d").unwrap();
        let buckets = day.buckets(i64::MIN, i64::MAX);
        assert!(buckets > 200_000_000_000, "{buckets}");
        assert_eq!(day.buckets(0, 86_400_000), 2);
        assert_eq!(Interval::parse("1ms").unwrap().buckets(0, 10), 11);
        let max = Interval::parse(&format!("{}ms", i64::MAX)).unwrap();
        assert_eq!(max.buckets(i64::MIN, i64::MAX), 4);
    }

    #[test]
    fn intervals() {
        assert_eq!(Interval::parse("500ms").unwrap().millis(), 500);
        assert_eq!(Interval::parse("10s").unwrap().millis(), 10_000);
        assert_eq!(Interval::parse("5m").unwrap().millis(), 300_000);
        assert_eq!(Interval::parse("1h").unwrap().millis(), 3_600_000);
        assert_eq!(Interval::parse("2d").unwrap().millis(), 172_800_000);
        assert_eq!(Interval::parse("30").unwrap().millis(), 30_000);
        for bad in ["", "0s", "-5m", "1w", "m", "99999999999999999d"] {
            assert!(Interval::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    const NOW: i64 = 1_735_689_600_000;

    fn spec(params: SeriesParams<'_>) -> Result<SeriesSpec, String> {
        SeriesSpec::parse(params, NOW, 1000)
    }

    fn metric(metric: &str) -> SeriesParams<'_> {
        SeriesParams {
            metric: Some(metric),
            ..SeriesParams::default()
        }
    }

    #[test]
    fn a_series_defaults_to_raw_values_of_the_last_hour() {
        let s = spec(metric("temp")).unwrap();
        assert_eq!(s.metric.as_str(), "temp");
        assert_eq!((s.from, s.to), (NOW - 3_600_000, NOW));
        assert_eq!(s.shape, SeriesShape::Raw { limit: 1000 });
        let s = spec(SeriesParams {
            from: Some("2025-01-01T00:00:00Z"),
            to: Some(" 1735693200000 "),
            interval: Some("1m"),
            agg: Some("max"),
            ..metric("temp")
        })
        .unwrap();
        assert_eq!((s.from, s.to), (NOW, NOW + 3_600_000));
        assert_eq!(
            s.shape,
            SeriesShape::Buckets {
                interval: Interval(60_000),
                aggregation: Aggregation::Max
            }
        );
    }

    #[test]
    fn bad_series_requests_are_refused() {
        for bad in [
            SeriesParams::default(),
            metric("bad name"),
            SeriesParams {
                from: Some("yesterday"),
                ..metric("t")
            },
            SeriesParams {
                from: Some("10"),
                to: Some("10"),
                ..metric("t")
            },
            SeriesParams {
                agg: Some("max"),
                ..metric("t")
            },
            SeriesParams {
                limit: Some(1001),
                ..metric("t")
            },
            SeriesParams {
                limit: Some(0),
                ..metric("t")
            },
            SeriesParams {
                interval: Some("1w"),
                ..metric("t")
            },
            SeriesParams {
                interval: Some("1m"),
                agg: Some("median"),
                ..metric("t")
            },
            // A day in one-second buckets.
            SeriesParams {
                from: Some("0"),
                to: Some("86400000"),
                interval: Some("1s"),
                ..metric("t")
            },
        ] {
            assert!(spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The bucket count was computed in i64, so a range across most of i64
    /// overflowed: a panic in debug builds, and in release builds a wrapped
    /// count that slipped under the point limit.
    #[test]
    fn a_range_across_all_of_time_cannot_wrap_under_the_bucket_limit() {
        let err = spec(SeriesParams {
            from: Some("-9223372036854775808"),
            to: Some("9223372036854775807"),
            interval: Some("1ms"),
            ..metric("t")
        })
        .unwrap_err();
        assert!(err.contains("the limit is 1000"), "{err}");
        // The widest interval over the widest range is two buckets.
        let s = spec(SeriesParams {
            from: Some("-9223372036854775808"),
            to: Some("9223372036854775807"),
            interval: Some("9223372036854775807ms"),
            ..metric("t")
        })
        .unwrap();
        assert_eq!((s.from, s.to), (i64::MIN, i64::MAX));
    }

    /// The default start an hour before `to` overflowed when `to` was
    /// within an hour of the smallest time.
    #[test]
    fn the_default_start_stops_at_the_smallest_time() {
        let s = spec(SeriesParams {
            to: Some("-9223372036854775000"),
            ..metric("t")
        })
        .unwrap();
        assert_eq!(s.from, i64::MIN);
        assert_eq!(s.to, -9_223_372_036_854_775_000);
    }

    #[test]
    fn aggregations() {
        assert_eq!(Aggregation::parse("avg").unwrap(), Aggregation::Avg);
        assert!(Aggregation::parse("median").is_err());
    }
}
