use sqlx::Row;
use sqlx::any::AnyRow;
use wf_common::db::{Listing, Param, Select, is_unique_violation};

use super::Store;
use crate::domain::CommandStatus;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub id: String,
    pub device_id: String,
    pub name: String,
    pub params: serde_json::Value,
    pub status: CommandStatus,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_by: String,
    pub timeout_s: i64,
    pub expires_at: i64,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub completed_at: Option<i64>,
}

const COLUMNS: &str = "id, device_id, name, params, status, result, error, created_by, timeout_s, \
    expires_at, created_at, sent_at, completed_at";

fn from_row(row: &AnyRow) -> sqlx::Result<CommandRecord> {
    let params: String = row.try_get("params")?;
    let result: Option<String> = row.try_get("result")?;
    let status: String = row.try_get("status")?;
    Ok(CommandRecord {
        id: row.try_get("id")?,
        device_id: row.try_get("device_id")?,
        name: row.try_get("name")?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        status: CommandStatus::parse(&status).unwrap_or(CommandStatus::Failed),
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        error: row.try_get("error")?,
        created_by: row.try_get("created_by")?,
        timeout_s: row.try_get("timeout_s")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        sent_at: row.try_get("sent_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

/// Which commands a listing returns; `None` fields do not narrow it.
#[derive(Debug, Default)]
pub struct CommandFilter {
    pub device_id: Option<String>,
    /// Only commands to devices this user owns.
    pub owner_id: Option<String>,
    pub status: Option<CommandStatus>,
}

pub struct NewCommand {
    pub id: String,
    pub device_id: String,
    pub name: String,
    pub params: serde_json::Value,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub timeout_s: i64,
    pub created_at: i64,
}

impl Store {
    /// Stores a new pending command. With an idempotency key already used by
    /// the same user, answers `Conflict` (the caller then returns the
    /// existing command).
    pub async fn insert_command(&self, c: &NewCommand) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_commands (id, device_id, name, params, status, created_by, \
             idempotency_key, timeout_s, expires_at, created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
        )
        .bind(&c.id)
        .bind(&c.device_id)
        .bind(&c.name)
        .bind(c.params.to_string())
        .bind(&c.created_by)
        .bind(c.idempotency_key.clone())
        .bind(c.timeout_s)
        .bind(c.created_at + c.timeout_s * 1000)
        .bind(c.created_at)
        .execute(&self.db.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict("that idempotency key was used already".into())
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    pub async fn get_command(&self, id: &str) -> Result<Option<CommandRecord>> {
        Ok(self
            .db
            .find_by_id("device_commands", COLUMNS, id, from_row)
            .await?)
    }

    pub async fn command_by_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<CommandRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands WHERE created_by = ? AND idempotency_key = ?"
        )))
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Commands newest first, narrowed by `filter`, with the number that
    /// match.
    pub async fn list_commands(
        &self,
        filter: &CommandFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<CommandRecord>, i64)> {
        let mut listing = Listing::new();
        if let Some(device) = &filter.device_id {
            listing.filter("device_id = ?", [Param::Text(device.clone())]);
        }
        if let Some(owner) = &filter.owner_id {
            listing.filter(
                "device_id IN (SELECT id FROM devices WHERE owner_id = ?)",
                [Param::Text(owner.clone())],
            );
        }
        if let Some(status) = filter.status {
            listing.filter("status = ?", [Param::Text(status.as_str().to_string())]);
        }
        let order = "created_at DESC, id DESC";
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: COLUMNS,
                    table: "device_commands",
                    order,
                },
                limit,
                offset,
                from_row,
            )
            .await?)
    }

    /// A device's commands still waiting for its answer and not expired,
    /// oldest first.
    pub async fn open_commands(&self, device_id: &str, now: i64) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands WHERE device_id = ? \
             AND status IN ('pending', 'sent') AND expires_at > ? ORDER BY created_at, id"
        )))
        .bind(device_id)
        .bind(now)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<sqlx::Result<_>>()?)
    }

    pub async fn mark_command_sent(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE device_commands SET status = 'sent', sent_at = ? WHERE id = ? AND status = 'pending'")
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Moves an open command to a final status; false when it was final
    /// already (a late or repeated answer changes nothing).
    pub async fn complete_command(
        &self,
        id: &str,
        device_id: &str,
        status: CommandStatus,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let outcome = sqlx::query(
            "UPDATE device_commands SET status = ?, result = ?, error = ?, completed_at = ? \
             WHERE id = ? AND device_id = ? AND status IN ('pending', 'sent')",
        )
        .bind(status.as_str())
        .bind(result.map(|r| r.to_string()))
        .bind(error.map(|e| e.chars().take(500).collect::<String>()))
        .bind(now)
        .bind(id)
        .bind(device_id)
        .execute(&self.db.pool)
        .await?;
        Ok(outcome.rows_affected() > 0)
    }

    /// Times out every open command past its deadline; returns how many.
    pub async fn expire_commands(&self, now: i64) -> Result<u64> {
        let outcome = sqlx::query(
            "UPDATE device_commands SET status = 'timed_out', completed_at = ?, \
             error = 'the device did not answer in time' \
             WHERE status IN ('pending', 'sent') AND expires_at <= ?",
        )
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(outcome.rows_affected())
    }
}
