// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.
use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use wf_common::contract::MetricValue;
use wf_common::db::{Dialect, placeholders};

use super::Store;
use crate::domain::Reading;
use crate::error::Result;

/// Rows per INSERT statement: well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 400;

const KIND_NUMBER: i64 = 0;
const KIND_BOOL: i64 = 1;
const KIND_TEXT: i64 = 2;

/// One stored value: device, metric, timestamp, kind, number, text.
type Row6<'a> = (&'a str, &'a str, i64, i64, Option<f64>, Option<&'a str>);

fn encode(value: &MetricValue) -> (i64, Option<f64>, Option<&str>) {
    match value {
        MetricValue::Number(n) => (KIND_NUMBER, Some(*n), None),
        MetricValue::Bool(b) => (KIND_BOOL, Some(if *b { 1.0 } else { 0.0 }), None),
        MetricValue::Text(t) => (KIND_TEXT, None, Some(t.as_str())),
    }
}

fn decode(row: &AnyRow) -> sqlx::Result<MetricValue> {
    let kind: i64 = row.try_get("kind")?;
    Ok(match kind {
        KIND_BOOL => {
            MetricValue::Bool(row.try_get::<Option<f64>, _>("num")?.unwrap_or_default() != 0.0)
        }
        KIND_TEXT => {
            MetricValue::Text(row.try_get::<Option<String>, _>("txt")?.unwrap_or_default())
        }
        _ => MetricValue::Number(row.try_get::<Option<f64>, _>("num")?.unwrap_or_default()),
    })
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LatestValue {
    pub metric: String,
    pub ts: i64,
    #[schema(value_type = Object)]
    pub value: MetricValue,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RawPoint {
    pub ts: i64,
    #[schema(value_type = Object)]
    pub value: MetricValue,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Start of the bucket (ms).
    pub ts: i64,
    /// The aggregate; null when the bucket holds no numeric value.
    pub value: Option<f64>,
    pub count: i64,
}

impl Store {
    /// Stores a batch of readings in one transaction: every value, and the
    /// latest value per device and metric. Values already stored (same
    /// device, metric and timestamp) are left as they are, so a redelivered
    /// batch changes nothing. Returns how many values were new.
    pub async fn insert_telemetry(&self, readings: &[Reading]) -> Result<u64> {
        let rows: Vec<Row6<'_>> = readings
            .iter()
            .flat_map(|m| {
                m.values.iter().map(move |(metric, value)| {
                    let (kind, num, txt) = encode(value);
                    (m.device_id.as_str(), metric.as_str(), m.ts, kind, num, txt)
                })
            })
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        // The newest value per device and metric in this batch.
        let mut latest: HashMap<(&str, &str), Row6<'_>> = HashMap::new();
        for row in &rows {
            let entry = latest.entry((row.0, row.1)).or_insert(*row);
            if row.2 >= entry.2 {
                *entry = *row;
            }
        }
        let latest: Vec<Row6<'_>> = latest.into_values().collect();

        let insert_verb = match self.db.dialect {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::MySql => "INSERT IGNORE",
        };
        let upsert_tail = match self.db.dialect {
            Dialect::Sqlite => {
                " ON CONFLICT (device_id, metric) DO UPDATE SET kind = excluded.kind, \
                 num = excluded.num, txt = excluded.txt, ts = excluded.ts \
                 WHERE excluded.ts >= device_latest.ts"
            }
            // Assignments apply left to right: ts last, so the others compare
            // against the stored timestamp.
            Dialect::MySql => {
                " ON DUPLICATE KEY UPDATE kind = IF(VALUES(ts) >= ts, VALUES(kind), kind), \
                 num = IF(VALUES(ts) >= ts, VALUES(num), num), \
                 txt = IF(VALUES(ts) >= ts, VALUES(txt), txt), ts = GREATEST(ts, VALUES(ts))"
            }
        };

        let mut inserted = 0;
        let mut tx = self.db.pool.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "{insert_verb} INTO device_data (device_id, metric, ts, kind, num, txt) VALUES {}",
                vec![format!("({})", placeholders(6)); chunk.len()].join(", ")
            );
            inserted += bind_rows(sqlx::query(AssertSqlSafe(sql)), chunk)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO device_latest (device_id, metric, ts, kind, num, txt) VALUES {}{upsert_tail}",
                vec![format!("({})", placeholders(6)); chunk.len()].join(", ")
            );
            bind_rows(sqlx::query(AssertSqlSafe(sql)), chunk)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// How many values of `metric` are stored, across all devices.
    pub async fn count_values(&self, metric: &str) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM device_data WHERE metric = ?")
                .bind(metric)
                .fetch_one(&self.db.pool)
                .await?
                .try_get("n")?,
        )
    }

    pub async fn latest_values(&self, device_id: &str) -> Result<Vec<LatestValue>> {
        let rows = sqlx::query(
            "SELECT metric, ts, kind, num, txt FROM device_latest WHERE device_id = ? ORDER BY metric",
        )
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(LatestValue {
                    metric: r.try_get("metric")?,
                    ts: r.try_get("ts")?,
                    value: decode(r)?,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// Raw values of one metric in `[from, to)`, oldest first.
    pub async fn series_raw(
        &self,
        device_id: &str,
        metric: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<RawPoint>> {
        let rows = sqlx::query(
            "SELECT ts, kind, num, txt FROM device_data WHERE device_id = ? AND metric = ? \
             AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
        )
        .bind(device_id)
        .bind(metric)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(RawPoint {
                    ts: r.try_get("ts")?,
                    value: decode(r)?,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// One metric in `[from, to)` in buckets of `interval_ms` aligned to the
    /// epoch, each reduced with `aggregate` (an SQL aggregate of `num`).
    /// Buckets without values are absent.
    pub async fn series_buckets(
        &self,
        device_id: &str,
        metric: &str,
        from: i64,
        to: i64,
        interval_ms: i64,
        aggregate: &str,
    ) -> Result<Vec<Bucket>> {
        let sql = format!(
            "SELECT (ts - (ts % ?)) AS bucket, {aggregate} AS value, COUNT(*) AS n FROM device_data \
             WHERE device_id = ? AND metric = ? AND ts >= ? AND ts < ? GROUP BY bucket ORDER BY bucket"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(interval_ms)
            .bind(device_id)
            .bind(metric)
            .bind(from)
            .bind(to)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Bucket {
                    ts: r.try_get("bucket")?,
                    value: numeric(r, "value"),
                    count: r.try_get("n")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }
}

/// Reads an aggregate that a database may return as a double, an integer
/// or (MySQL's DECIMAL sums and averages) text.
fn numeric(row: &AnyRow, column: &str) -> Option<f64> {
    if let Ok(v) = row.try_get::<Option<f64>, _>(column) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(column) {
        return v.map(|v| v as f64);
    }
    row.try_get::<Option<String>, _>(column)
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
}

fn bind_rows<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    rows: &'q [Row6<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for (device, metric, ts, kind, num, txt) in rows {
        q = q
            .bind(*device)
            .bind(*metric)
            .bind(*ts)
            .bind(*kind)
            .bind(*num)
            .bind(*txt);
    }
    q
}
