use sqlx::Row;
use sqlx::any::AnyRow;
use wf_common::db::{Listing, Param, Select, is_unique_violation};

use super::Store;
use crate::domain::ExecutionState;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct FirmwareRecord {
    pub id: String,
    pub name: String,
    pub device_type: String,
    pub version: String,
    pub release_notes: String,
    pub size: i64,
    /// Lower-case hex.
    pub sha256: String,
    /// Base64 Ed25519 signature over the digest, when signed.
    pub signature: Option<String>,
    pub storage_key: String,
    pub created_by: String,
    pub created_at: i64,
}

const COLUMNS: &str = "id, name, device_type, version, release_notes, size, sha256, signature, \
    storage_key, created_by, created_at";

fn from_row(row: &AnyRow) -> sqlx::Result<FirmwareRecord> {
    Ok(FirmwareRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        device_type: row.try_get("device_type")?,
        version: row.try_get("version")?,
        release_notes: row.try_get("release_notes")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        signature: row.try_get("signature")?,
        storage_key: row.try_get("storage_key")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

/// `'a', 'b'` of execution states, for SQL built from constants.
pub(super) fn state_list(states: impl IntoIterator<Item = ExecutionState>) -> String {
    states
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rollouts that still use their firmware: not final, or with executions
/// still waiting for a device.
fn in_use_condition() -> String {
    let open_tasks = state_list(ExecutionState::ALL.into_iter().filter(|s| !s.is_final()));
    format!(
        "(EXISTS (SELECT 1 FROM rollouts r WHERE r.firmware_id = ? \
           AND r.state IN ('scheduled', 'running', 'paused')) \
         OR EXISTS (SELECT 1 FROM firmware_upgrade_tasks t JOIN rollouts r ON r.id = t.rollout_id \
           WHERE r.firmware_id = ? AND t.state IN ({open_tasks})))"
    )
}

impl Store {
    pub async fn insert_firmware(&self, f: &FirmwareRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO firmware ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(&f.id)
        .bind(&f.name)
        .bind(&f.device_type)
        .bind(&f.version)
        .bind(&f.release_notes)
        .bind(f.size)
        .bind(&f.sha256)
        .bind(f.signature.clone())
        .bind(&f.storage_key)
        .bind(&f.created_by)
        .bind(f.created_at)
        .execute(&self.db.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!(
                    "firmware {} for device type {:?} exists already",
                    f.version, f.device_type
                ))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    pub async fn get_firmware(&self, id: &str) -> Result<Option<FirmwareRecord>> {
        Ok(self
            .db
            .find_by_id("firmware", COLUMNS, id, from_row)
            .await?)
    }

    /// Newest first.
    pub async fn list_firmware(
        &self,
        device_type: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<FirmwareRecord>, i64)> {
        let mut listing = Listing::new();
        if let Some(t) = device_type {
            listing.filter("device_type = ?", [Param::Text(t.to_string())]);
        }
        let order = "created_at DESC, id DESC";
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: COLUMNS,
                    table: "firmware",
                    order,
                },
                limit,
                offset,
                from_row,
            )
            .await?)
    }

    pub async fn firmware_in_use(&self, id: &str) -> Result<bool> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CASE WHEN {} THEN 1 ELSE 0 END AS used",
            in_use_condition()
        )))
        .bind(id)
        .bind(id)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(row.try_get::<i64, _>("used")? != 0)
    }

    /// Deletes a firmware row unless a rollout still uses it, in one
    /// statement: `Ok(false)` when it does not exist, `Conflict` when used.
    pub async fn delete_firmware(&self, id: &str) -> Result<bool> {
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM firmware WHERE id = ? AND NOT {}",
            in_use_condition()
        )))
        .bind(id)
        .bind(id)
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        if deleted.rows_affected() > 0 {
            return Ok(true);
        }
        if self.get_firmware(id).await?.is_some() {
            return Err(Error::Conflict(
                "a rollout or upgrade task still uses this firmware; cancel it or let it finish first"
                    .into(),
            ));
        }
        Ok(false)
    }
}

impl Store {
    /// The image of one version for one device type.
    pub async fn find_firmware(
        &self,
        device_type: &str,
        version: &str,
    ) -> Result<Option<FirmwareRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM firmware WHERE device_type = ? AND version = ?"
        )))
        .bind(device_type)
        .bind(version)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }
}
