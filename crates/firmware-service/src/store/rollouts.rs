use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;
use wf_common::db::{Listing, Param, Select, placeholders};

use super::Store;
use super::firmware::state_list;
use crate::domain::{ExecutionState, RolloutState, StateCounts, Target, new_id};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct RolloutRecord {
    pub id: String,
    /// `rollout`, or `task` for a single-device upgrade task.
    pub kind: String,
    pub name: String,
    pub firmware_id: String,
    pub firmware_version: String,
    pub device_type: String,
    pub state: RolloutState,
    pub target: Target,
    /// Notifications per minute; 0 is unlimited.
    pub rate_per_minute: i64,
    pub failure_threshold_percent: f64,
    pub min_finished: i64,
    pub timeout_secs: i64,
    pub max_retries: i64,
    pub retry_backoff_secs: i64,
    pub start_at: i64,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A rollout to create, with the devices it was resolved to.
pub struct NewRollout {
    pub rollout: RolloutRecord,
    pub device_ids: Vec<String>,
}

const COLUMNS: &str = "id, kind, name, firmware_id, firmware_version, device_type, state, target, \
    rate_per_minute, failure_threshold_percent, min_finished, timeout_secs, max_retries, \
    retry_backoff_secs, start_at, reason, created_by, created_at, updated_at, started_at, finished_at";

fn from_row(row: &AnyRow) -> sqlx::Result<RolloutRecord> {
    let state: String = row.try_get("state")?;
    let target: String = row.try_get("target")?;
    Ok(RolloutRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        firmware_id: row.try_get("firmware_id")?,
        firmware_version: row.try_get("firmware_version")?,
        device_type: row.try_get("device_type")?,
        state: RolloutState::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown rollout state {state:?}").into())
        })?,
        target: serde_json::from_str(&target).map_err(|e| sqlx::Error::Decode(e.into()))?,
        rate_per_minute: row.try_get("rate_per_minute")?,
        failure_threshold_percent: row.try_get("failure_threshold_percent")?,
        min_finished: row.try_get("min_finished")?,
        timeout_secs: row.try_get("timeout_secs")?,
        max_retries: row.try_get("max_retries")?,
        retry_backoff_secs: row.try_get("retry_backoff_secs")?,
        start_at: row.try_get("start_at")?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Executions inserted per statement.
const INSERT_CHUNK: usize = 200;

/// Bursts a rate-limited rollout may catch up after a slow round.
const RATE_BURST_MS: i64 = 1_000;

impl Store {
    /// Creates a rollout and one queued execution per device, in one
    /// transaction.
    pub async fn insert_rollout(&self, new: &NewRollout, actor: &str) -> Result<()> {
        let r = &new.rollout;
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollouts ({COLUMNS}, next_slot_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
        )))
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.name)
        .bind(&r.firmware_id)
        .bind(&r.firmware_version)
        .bind(&r.device_type)
        .bind(r.state.as_str())
        .bind(serde_json::to_string(&r.target).map_err(anyhow::Error::from)?)
        .bind(r.rate_per_minute)
        .bind(r.failure_threshold_percent)
        .bind(r.min_finished)
        .bind(r.timeout_secs)
        .bind(r.max_retries)
        .bind(r.retry_backoff_secs)
        .bind(r.start_at)
        .bind(r.reason.clone())
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(r.started_at)
        .bind(r.finished_at)
        .execute(&mut *tx)
        .await?;
        let now = r.created_at;
        for chunk in new.device_ids.chunks(INSERT_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|_| new_id("ex")).collect();
            let rows = vec!["(?, ?, ?, 'queued', 0, ?, ?, ?)"; chunk.len()].join(", ");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO firmware_upgrade_tasks \
                 (id, rollout_id, device_id, state, attempts, next_attempt_at, created_at, updated_at) \
                 VALUES {rows}"
            )));
            for (id, device) in ids.iter().zip(chunk) {
                q = q
                    .bind(id)
                    .bind(&r.id)
                    .bind(device)
                    .bind(now)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
            let rows = vec!["(?, ?, '', 'queued', 0, ?, 'created')"; chunk.len()].join(", ");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO firmware_upgrade_task_history \
                 (task_id, at, from_state, to_state, attempt, actor, detail) VALUES {rows}"
            )));
            for id in &ids {
                q = q.bind(id).bind(now).bind(actor);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>> {
        Ok(self
            .db
            .find_by_id("rollouts", COLUMNS, id, from_row)
            .await?)
    }

    /// Newest first, of one kind, optionally in one state and of one
    /// creator.
    pub async fn list_rollouts(
        &self,
        kind: &str,
        state: Option<RolloutState>,
        owner: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<RolloutRecord>, i64)> {
        let mut listing = Listing::new();
        listing.filter("kind = ?", [Param::Text(kind.to_string())]);
        if let Some(s) = state {
            listing.filter("state = ?", [Param::Text(s.as_str().to_string())]);
        }
        if let Some(o) = owner {
            listing.filter("created_by = ?", [Param::Text(o.to_string())]);
        }
        let order = "created_at DESC, id DESC";
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: COLUMNS,
                    table: "rollouts",
                    order,
                },
                limit,
                offset,
                from_row,
            )
            .await?)
    }

    /// Rollouts in any of `states`, oldest first.
    pub async fn rollouts_in(&self, states: &[RolloutState]) -> Result<Vec<RolloutRecord>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state IN ({}) ORDER BY created_at, id",
            placeholders(states.len())
        )));
        for s in states {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.db.pool).await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Scheduled rollouts whose start time has come.
    pub async fn due_scheduled(&self, now: i64) -> Result<Vec<RolloutRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state = 'scheduled' AND start_at <= ?"
        )))
        .bind(now)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Moves a rollout from `from` to `to` unless someone else moved it
    /// first; records when it started and finished.
    pub async fn set_rollout_state(
        &self,
        id: &str,
        from: RolloutState,
        to: RolloutState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let started = i64::from(to == RolloutState::Running);
        let finished = i64::from(to.is_final());
        let result = sqlx::query(
            "UPDATE rollouts SET state = ?, reason = COALESCE(?, reason), updated_at = ?, \
             started_at = CASE WHEN ? = 1 AND started_at IS NULL THEN ? ELSE started_at END, \
             finished_at = CASE WHEN ? = 1 THEN ? ELSE finished_at END \
             WHERE id = ? AND state = ?",
        )
        .bind(to.as_str())
        .bind(reason.map(|r| r.chars().take(500).collect::<String>()))
        .bind(now)
        .bind(started)
        .bind(now)
        .bind(finished)
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Executions of one rollout per state.
    pub async fn counts(&self, rollout_id: &str) -> Result<StateCounts> {
        Ok(self
            .counts_of(std::slice::from_ref(&rollout_id.to_string()))
            .await?
            .remove(rollout_id)
            .unwrap_or_default())
    }

    /// Executions per state for each of `ids`.
    pub async fn counts_of(&self, ids: &[String]) -> Result<HashMap<String, StateCounts>> {
        let mut out: HashMap<String, StateCounts> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT rollout_id, state, COUNT(*) AS n FROM firmware_upgrade_tasks \
             WHERE rollout_id IN ({}) GROUP BY rollout_id, state",
            placeholders(ids.len())
        )));
        for id in ids {
            q = q.bind(id);
        }
        for row in q.fetch_all(&self.db.pool).await? {
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            if let Some(s) = ExecutionState::parse(&state) {
                out.entry(row.try_get("rollout_id")?)
                    .or_default()
                    .set(s, u64::try_from(n).unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// Cancels a rollout's queued executions (not those a device is working
    /// on), recording each in its history. Returns how many.
    pub async fn cancel_queued(
        &self,
        rollout_id: &str,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<u64> {
        let mark = new_id("cancel");
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE firmware_upgrade_tasks SET state = 'canceled', error = ?, finished_at = ?, \
             updated_at = ?, deadline_at = NULL, lease_owner = NULL, lease_until = NULL, lease_token = ? \
             WHERE rollout_id = ? AND state = 'queued'",
        )
        .bind(reason)
        .bind(now)
        .bind(now)
        .bind(&mark)
        .bind(rollout_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated > 0 {
            sqlx::query(
                "INSERT INTO firmware_upgrade_task_history \
                 (task_id, at, from_state, to_state, attempt, actor, detail) \
                 SELECT id, ?, 'queued', 'canceled', attempts, ?, ? FROM firmware_upgrade_tasks \
                 WHERE lease_token = ?",
            )
            .bind(now)
            .bind(actor)
            .bind(reason)
            .bind(&mark)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE firmware_upgrade_tasks SET lease_token = NULL WHERE lease_token = ?",
            )
            .bind(&mark)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    /// Reserves up to `want` notification slots of a rate-limited rollout
    /// at `now`, shared by every worker through a compare-and-set on
    /// `next_slot_at`. Returns how many were granted.
    pub async fn reserve_slots(
        &self,
        rollout_id: &str,
        rate_per_minute: i64,
        want: u32,
        now: i64,
    ) -> Result<u32> {
        if rate_per_minute <= 0 || want == 0 {
            return Ok(want);
        }
        let interval = 60_000.0 / rate_per_minute as f64;
        for _ in 0..8 {
            let Some(row) = sqlx::query("SELECT next_slot_at FROM rollouts WHERE id = ?")
                .bind(rollout_id)
                .fetch_optional(&self.db.pool)
                .await?
            else {
                return Ok(0);
            };
            let next: i64 = row.try_get("next_slot_at")?;
            let base = next.max(now - RATE_BURST_MS);
            if base > now {
                return Ok(0);
            }
            let available = ((now - base) as f64 / interval).floor() as u64 + 1;
            let granted = available.min(u64::from(want)) as u32;
            let new_next = base + (f64::from(granted) * interval).round() as i64;
            let swapped = sqlx::query(
                "UPDATE rollouts SET next_slot_at = ? WHERE id = ? AND next_slot_at = ?",
            )
            .bind(new_next)
            .bind(rollout_id)
            .bind(next)
            .execute(&self.db.pool)
            .await?
            .rows_affected();
            if swapped > 0 {
                return Ok(granted);
            }
        }
        Ok(0)
    }

    /// Gives back slots reserved but not used.
    pub async fn refund_slots(&self, rollout_id: &str, rate_per_minute: i64, n: u32) -> Result<()> {
        if rate_per_minute <= 0 || n == 0 {
            return Ok(());
        }
        let ms = (f64::from(n) * 60_000.0 / rate_per_minute as f64).round() as i64;
        sqlx::query("UPDATE rollouts SET next_slot_at = next_slot_at - ? WHERE id = ?")
            .bind(ms)
            .bind(rollout_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Whether a device already has an open execution of firmware for its
    /// type, in any rollout other than finished ones.
    pub async fn open_executions_of(&self, device_ids: &[String]) -> Result<Vec<String>> {
        let mut busy = Vec::new();
        let open = state_list(ExecutionState::ALL.into_iter().filter(|s| !s.is_final()));
        for chunk in device_ids.chunks(500) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT device_id FROM firmware_upgrade_tasks \
                 WHERE state IN ({open}) AND device_id IN ({})",
                placeholders(chunk.len())
            )));
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.db.pool).await? {
                busy.push(row.try_get("device_id")?);
            }
        }
        busy.sort();
        Ok(busy)
    }
}
