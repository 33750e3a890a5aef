//! firmware-service's tables: firmware, rollouts, their executions
//! (`firmware_upgrade_tasks`, which is also the job queue) with their
//! history, on SQLite or MySQL/MariaDB.
//!
//! Dynamic SQL here is assembled from constant fragments and `?`
//! placeholders only; every value is bound.

mod firmware;
mod rollouts;
mod tasks;

use sqlx::Row;
use sqlx::migrate::Migrator;
use wf_common::db::{Db, Dialect, Migrations, is_unique_violation};

pub use firmware::FirmwareRecord;
pub use rollouts::{NewRollout, RolloutRecord};
pub use tasks::{Change, HistoryRecord, TaskRecord};

use crate::error::Result;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");

/// firmware-service's migrations for each supported database.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    mysql: &MYSQL,
};

/// The setting holding the download link key.
const LINK_KEY: &str = "download_link_key";

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn dialect(&self) -> Dialect {
        self.db.dialect
    }

    /// The download link key, created on first use. Every process sharing
    /// the database reads the same key.
    pub async fn link_key(&self) -> Result<Vec<u8>> {
        let read = || async {
            sqlx::query("SELECT value FROM firmware_settings WHERE name = ?")
                .bind(LINK_KEY)
                .fetch_optional(&self.db.pool)
                .await?
                .map(|r| r.try_get::<String, _>("value"))
                .transpose()
        };
        if let Some(key) = read().await? {
            return Ok(key.into_bytes());
        }
        let inserted = sqlx::query("INSERT INTO firmware_settings (name, value) VALUES (?, ?)")
            .bind(LINK_KEY)
            .bind(wf_common::random::token())
            .execute(&self.db.pool)
            .await;
        match inserted {
            Ok(_) => {}
            // Another process created it first.
            Err(e) if is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
        read()
            .await?
            .map(String::into_bytes)
            .ok_or_else(|| anyhow::anyhow!("the download link key vanished").into())
    }
}
