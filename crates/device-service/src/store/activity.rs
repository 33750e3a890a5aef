//! The fleet's activity per time bucket: telemetry messages stored, status
//! changes and commands, optionally only for one owner's devices.
// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use wf_common::db::{Dialect, placeholders};

use super::Store;
use crate::domain::StatusChange;
use crate::error::Result;

/// Commands created in one bucket, by the status they have now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CommandCounts {
    pub succeeded: i64,
    pub failed: i64,
    pub timed_out: i64,
    /// Not answered yet (pending or sent).
    pub open: i64,
}

/// Counts written per statement (three parameters each).
const ACTIVITY_ROWS_PER_STATEMENT: usize = 300;

/// `AND device_id IN (...)` for an owner, or nothing.
fn owned(owner_id: Option<&str>) -> &'static str {
    if owner_id.is_some() {
        " AND device_id IN (SELECT id FROM devices WHERE owner_id = ?)"
    } else {
        ""
    }
}

impl Store {
    /// Runs `sql` with `numbers` bound in order and then, for an owner,
    /// the owner (the placeholder [`owned`] adds last).
    async fn fetch_owned(
        &self,
        sql: String,
        numbers: &[i64],
        owner_id: Option<&str>,
    ) -> Result<Vec<AnyRow>> {
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for n in numbers {
            query = query.bind(*n);
        }
        if let Some(owner) = owner_id {
            query = query.bind(owner.to_string());
        }
        Ok(query.fetch_all(&self.db.pool).await?)
    }

    /// Adds telemetry messages stored, `(device, minute start, count)`, to
    /// the per-minute counts the activity is read from.
    pub async fn add_activity(&self, counts: &[(String, i64, i64)]) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let tail = match self.db.dialect {
            Dialect::Sqlite => {
                " ON CONFLICT (minute, device_id) DO UPDATE SET \
                 messages = device_activity.messages + excluded.messages"
            }
            Dialect::MySql => " ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages)",
        };
        let mut tx = self.db.pool.begin().await?;
        for chunk in counts.chunks(ACTIVITY_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO device_activity (minute, device_id, messages) VALUES {}{tail}",
                vec![format!("({})", placeholders(3)); chunk.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (device, minute, n) in chunk {
                query = query.bind(*minute).bind(device.as_str()).bind(*n);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Telemetry messages stored in `[from, to)` per bucket of
    /// `interval_ms` (whole minutes) aligned to the epoch: `(bucket start,
    /// count)`, empty buckets absent. A message is one device's values at
    /// one time, however many metrics it carries, counted in the minute of
    /// its time.
    pub async fn messages_per_bucket(
        &self,
        owner_id: Option<&str>,
        from: i64,
        to: i64,
        interval_ms: i64,
    ) -> Result<Vec<(i64, i64)>> {
        let sum = match self.db.dialect {
            Dialect::Sqlite => "SUM(messages)",
            // MariaDB sums integers as decimals.
            Dialect::MySql => "CAST(SUM(messages) AS SIGNED)",
        };
        let sql = format!(
            "SELECT (minute - (minute % ?)) AS bucket, {sum} AS n FROM device_activity \
             WHERE minute >= ? AND minute < ?{} GROUP BY bucket ORDER BY bucket",
            owned(owner_id)
        );
        let rows = self
            .fetch_owned(sql, &[interval_ms, from, to], owner_id)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("bucket")?, r.try_get("n")?)))
            .collect::<sqlx::Result<_>>()?)
    }

    /// The devices that were online just before `at`: each one's last
    /// status change before it was to online.
    pub async fn online_before(&self, owner_id: Option<&str>, at: i64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT h.device_id, h.online FROM device_status_history h \
             JOIN (SELECT device_id, MAX(at) AS last_at FROM device_status_history \
                   WHERE at < ?{} GROUP BY device_id) l \
             ON h.device_id = l.device_id AND h.at = l.last_at \
             ORDER BY h.device_id, h.online",
            owned(owner_id)
        );
        let rows = self.fetch_owned(sql, &[at], owner_id).await?;
        // Two changes at the same millisecond: online (ordered last) wins.
        let mut last: Vec<(String, bool)> = Vec::new();
        for row in &rows {
            let device: String = row.try_get("device_id")?;
            let online = row.try_get::<i64, _>("online")? != 0;
            match last.last_mut() {
                Some((d, o)) if *d == device => *o = online,
                _ => last.push((device, online)),
            }
        }
        Ok(last
            .into_iter()
            .filter_map(|(d, online)| online.then_some(d))
            .collect())
    }

    /// Status changes in `[from, to)`, oldest first.
    pub async fn status_changes(
        &self,
        owner_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<StatusChange>> {
        let sql = format!(
            "SELECT device_id, at, online FROM device_status_history WHERE at >= ? AND at < ?{} \
             ORDER BY at, online, device_id",
            owned(owner_id)
        );
        let rows = self.fetch_owned(sql, &[from, to], owner_id).await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(StatusChange {
                    device_id: r.try_get("device_id")?,
                    at: r.try_get("at")?,
                    online: r.try_get::<i64, _>("online")? != 0,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// Commands created in `[from, to)` per bucket, by their status now:
    /// `(bucket start, counts)`, empty buckets absent.
    pub async fn commands_per_bucket(
        &self,
        owner_id: Option<&str>,
        from: i64,
        to: i64,
        interval_ms: i64,
    ) -> Result<Vec<(i64, CommandCounts)>> {
        let sql = format!(
            "SELECT (created_at - (created_at % ?)) AS bucket, status, COUNT(*) AS n \
             FROM device_commands WHERE created_at >= ? AND created_at < ?{} \
             GROUP BY bucket, status ORDER BY bucket",
            owned(owner_id)
        );
        let rows = self
            .fetch_owned(sql, &[interval_ms, from, to], owner_id)
            .await?;
        let mut out: Vec<(i64, CommandCounts)> = Vec::new();
        for row in &rows {
            let bucket: i64 = row.try_get("bucket")?;
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            if out.last().is_none_or(|(b, _)| *b != bucket) {
                out.push((bucket, CommandCounts::default()));
            }
            if let Some((_, counts)) = out.last_mut() {
                match status.as_str() {
                    "succeeded" => counts.succeeded += n,
                    "failed" => counts.failed += n,
                    "timed_out" => counts.timed_out += n,
                    _ => counts.open += n,
                }
            }
        }
        Ok(out)
    }
}
