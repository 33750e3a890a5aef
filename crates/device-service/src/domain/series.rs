/// A metric name: 1–64 characters of letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricName(String);

impl MetricName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a metric name (1 to 64 letters, digits, '.', '_' or '-')"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

#[cfg(test)]
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

    #[test]
    fn aggregations() {
        assert_eq!(Aggregation::parse("avg").unwrap(), Aggregation::Avg);
        assert!(Aggregation::parse("median").is_err());
    }
}
