use sqlx::Row;
use sqlx::any::AnyRow;
use wf_common::db::{Listing, Param, Select, placeholders};

use super::Store;
use super::firmware::state_list;
use crate::domain::ExecutionState;
use crate::error::Result;

/// One device's execution of a rollout (a row of `firmware_upgrade_tasks`).
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: String,
    pub rollout_id: String,
    pub device_id: String,
    pub state: ExecutionState,
    /// Notifications sent so far.
    pub attempts: i64,
    pub progress: Option<f64>,
    pub error: Option<String>,
    pub reported_version: Option<String>,
    pub next_attempt_at: i64,
    pub deadline_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str = "id, rollout_id, device_id, state, attempts, progress, error, reported_version, \
    next_attempt_at, deadline_at, lease_owner, created_at, updated_at, finished_at";

fn from_row(row: &AnyRow) -> sqlx::Result<TaskRecord> {
    let state: String = row.try_get("state")?;
    Ok(TaskRecord {
        id: row.try_get("id")?,
        rollout_id: row.try_get("rollout_id")?,
        device_id: row.try_get("device_id")?,
        state: ExecutionState::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown execution state {state:?}").into())
        })?,
        attempts: row.try_get("attempts")?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        reported_version: row.try_get("reported_version")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        deadline_at: row.try_get("deadline_at")?,
        lease_owner: row.try_get("lease_owner")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// One line of an execution's history.
#[derive(Debug, Clone)]
pub struct HistoryRecord {
    pub at: i64,
    /// Empty for the row recording its creation.
    pub from_state: String,
    pub to_state: String,
    pub attempt: i64,
    /// The worker, `device`, or `user:<name>` that caused it.
    pub actor: String,
    pub detail: Option<String>,
}

/// The new values of an execution, applied only if it is still in the
/// state (and attempt) it was read in.
#[derive(Debug, Clone)]
pub struct Change {
    pub state: ExecutionState,
    pub attempts: i64,
    pub progress: Option<f64>,
    pub error: Option<String>,
    pub reported_version: Option<String>,
    pub next_attempt_at: i64,
    pub deadline_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub now: i64,
    /// A history line, for changes of state (not for progress alone).
    pub history: Option<(String, Option<String>)>,
    /// Keep the worker's lease (a notification about to be published);
    /// every other change ends it.
    pub keep_lease: bool,
}

/// Executions a worker may claim (binds: now, now, now).
const CLAIMABLE: &str = "((state = 'queued' AND next_attempt_at <= ? \
     AND (lease_until IS NULL OR lease_until < ?)) \
     OR (state = 'notified' AND lease_token IS NOT NULL AND lease_until < ?))";

fn truncate(s: Option<String>, n: usize) -> Option<String> {
    s.map(|s| s.chars().take(n).collect())
}

impl Store {
    pub async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>> {
        Ok(self
            .db
            .find_by_id("firmware_upgrade_tasks", COLUMNS, id, from_row)
            .await?)
    }

    /// A rollout's executions in device order, optionally in one state.
    pub async fn list_tasks(
        &self,
        rollout_id: &str,
        state: Option<ExecutionState>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<TaskRecord>, i64)> {
        let mut listing = Listing::new();
        listing.filter("rollout_id = ?", [Param::Text(rollout_id.to_string())]);
        if let Some(s) = state {
            listing.filter("state = ?", [Param::Text(s.as_str().to_string())]);
        }
        let table = "firmware_upgrade_tasks";
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: COLUMNS,
                    table,
                    order: "device_id",
                },
                limit,
                offset,
                from_row,
            )
            .await?)
    }

    /// A device's executions, newest first.
    pub async fn device_tasks(&self, device_id: &str, limit: i64) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM firmware_upgrade_tasks WHERE device_id = ? \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        )))
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    /// A device's executions that are not final.
    pub async fn open_tasks_of_device(&self, device_id: &str) -> Result<Vec<TaskRecord>> {
        let open = state_list(ExecutionState::ALL.into_iter().filter(|s| !s.is_final()));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM firmware_upgrade_tasks WHERE device_id = ? AND state IN ({open})"
        )))
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    pub async fn history(&self, task_id: &str) -> Result<Vec<HistoryRecord>> {
        let rows = sqlx::query(
            "SELECT at, from_state, to_state, attempt, actor, detail \
             FROM firmware_upgrade_task_history WHERE task_id = ? ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(HistoryRecord {
                    at: r.try_get("at")?,
                    from_state: r.try_get("from_state")?,
                    to_state: r.try_get("to_state")?,
                    attempt: r.try_get("attempt")?,
                    actor: r.try_get("actor")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// Ids of a rollout's executions a worker may claim now: queued ones that
    /// are due and not leased, and notified ones whose notification was
    /// never confirmed published (their worker died; the lease ran out).
    pub async fn due_tasks(&self, rollout_id: &str, now: i64, limit: u32) -> Result<Vec<String>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM firmware_upgrade_tasks WHERE rollout_id = ? AND {CLAIMABLE} \
             ORDER BY next_attempt_at, id LIMIT ?"
        )))
        .bind(rollout_id)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Leases those of `ids` still claimable to `owner` until
    /// `lease_until`, marking them with the fresh `token`; returns the
    /// executions this call leased (another worker may have won some).
    pub async fn claim(
        &self,
        ids: &[String],
        owner: &str,
        token: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<TaskRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE firmware_upgrade_tasks SET lease_owner = ?, lease_token = ?, lease_until = ? \
             WHERE id IN ({}) AND {CLAIMABLE}",
            placeholders(ids.len())
        )))
        .bind(owner)
        .bind(token)
        .bind(lease_until);
        for id in ids {
            q = q.bind(id);
        }
        let claimed = q
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM firmware_upgrade_tasks WHERE lease_token = ?"
        )))
        .bind(token)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Confirms a notification was published: the lease ends.
    pub async fn confirm(&self, task_id: &str, token: &str) -> Result<()> {
        sqlx::query(
            "UPDATE firmware_upgrade_tasks SET lease_owner = NULL, lease_token = NULL, \
             lease_until = NULL WHERE id = ? AND lease_token = ?",
        )
        .bind(task_id)
        .bind(token)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Puts back an execution whose notification could not be published:
    /// queued again at `retry_at`, the attempt not counted.
    pub async fn unpublished(
        &self,
        task: &TaskRecord,
        token: &str,
        retry_at: i64,
        actor: &str,
        why: &str,
    ) -> Result<bool> {
        let now = wf_common::now_millis();
        let mut tx = self.db.pool.begin().await?;
        let undone = sqlx::query(
            "UPDATE firmware_upgrade_tasks SET state = 'queued', attempts = ?, \
             next_attempt_at = ?, deadline_at = NULL, lease_owner = NULL, lease_token = NULL, \
             lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'notified' AND lease_token = ?",
        )
        .bind((task.attempts - 1).max(0))
        .bind(retry_at)
        .bind(now)
        .bind(&task.id)
        .bind(token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if undone == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO firmware_upgrade_task_history \
             (task_id, at, from_state, to_state, attempt, actor, detail) VALUES (?, ?, 'notified', 'queued', ?, ?, ?)",
        )
        .bind(&task.id)
        .bind(now)
        .bind((task.attempts - 1).max(0))
        .bind(actor)
        .bind(truncate(Some(format!("the notification could not be published: {why}")), 600))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Executions waiting for their device past their deadline.
    pub async fn overdue_tasks(&self, now: i64, limit: i64) -> Result<Vec<TaskRecord>> {
        let waiting = state_list(ExecutionState::IN_FLIGHT);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM firmware_upgrade_tasks \
             WHERE state IN ({waiting}) AND deadline_at <= ? ORDER BY deadline_at LIMIT ?"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Applies `change` to `task` if it is still in the state and attempt it
    /// was read in (and, with `lease_token`, still leased by that claim),
    /// writing its history line in the same transaction. `Ok(false)` when
    /// something else changed it first.
    pub async fn apply(
        &self,
        task: &TaskRecord,
        change: &Change,
        actor: &str,
        lease_token: Option<&str>,
    ) -> Result<bool> {
        let lease_guard = if lease_token.is_some() {
            " AND lease_token = ?"
        } else {
            ""
        };
        let lease = if change.keep_lease {
            ""
        } else {
            "lease_owner = NULL, lease_token = NULL, lease_until = NULL, "
        };
        let mut tx = self.db.pool.begin().await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE firmware_upgrade_tasks SET state = ?, attempts = ?, progress = ?, error = ?, \
             reported_version = ?, next_attempt_at = ?, deadline_at = ?, finished_at = ?, \
             {lease}updated_at = ? \
             WHERE id = ? AND state = ? AND attempts = ?{lease_guard}"
        )))
        .bind(change.state.as_str())
        .bind(change.attempts)
        .bind(change.progress)
        .bind(truncate(change.error.clone(), 500))
        .bind(truncate(change.reported_version.clone(), 64))
        .bind(change.next_attempt_at)
        .bind(change.deadline_at)
        .bind(change.finished_at)
        .bind(change.now)
        .bind(&task.id)
        .bind(task.state.as_str())
        .bind(task.attempts);
        if let Some(token) = lease_token {
            q = q.bind(token);
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some((to_state, detail)) = &change.history {
            sqlx::query(
                "INSERT INTO firmware_upgrade_task_history \
                 (task_id, at, from_state, to_state, attempt, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&task.id)
            .bind(change.now)
            .bind(task.state.as_str())
            .bind(to_state)
            .bind(change.attempts)
            .bind(actor.chars().take(160).collect::<String>())
            .bind(truncate(detail.clone(), 600))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl Store {
    /// Whether `device_id` has an execution still open (not finished or
    /// canceled) of a rollout or task installing `firmware_id`: what a
    /// device's download of that image needs.
    pub async fn device_has_open_execution(
        &self,
        device_id: &str,
        firmware_id: &str,
    ) -> Result<bool> {
        let open = super::firmware::state_list(
            crate::domain::ExecutionState::ALL
                .into_iter()
                .filter(|s| !s.is_final()),
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM firmware_upgrade_tasks t \
             JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.device_id = ? AND r.firmware_id = ? AND t.state IN ({open})"
        )))
        .bind(device_id)
        .bind(firmware_id)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Single-device upgrade tasks with their rollouts, newest first,
    /// optionally of one device and of one creator.
    pub async fn list_upgrade_tasks(
        &self,
        device_id: Option<&str>,
        owner: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<(TaskRecord, super::RolloutRecord)>, i64)> {
        let mut listing = Listing::new();
        listing.filter("r.kind = 'task'", []);
        if let Some(d) = device_id {
            listing.filter("t.device_id = ?", [Param::Text(d.to_string())]);
        }
        if let Some(o) = owner {
            listing.filter("r.created_by = ?", [Param::Text(o.to_string())]);
        }
        let (ids, total): (Vec<String>, i64) = listing
            .page(
                &self.db,
                Select {
                    columns: "t.id",
                    table: "firmware_upgrade_tasks t JOIN rollouts r ON r.id = t.rollout_id",
                    order: "t.created_at DESC, t.id DESC",
                },
                limit,
                offset,
                |r| r.try_get("id"),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(task) = self.get_task(&id).await?
                && let Some(rollout) = self.get_rollout(&task.rollout_id).await?
            {
                out.push((task, rollout));
            }
        }
        Ok((out, total))
    }
}
