//! device-service's tables: devices and tags, telemetry, status history and
//! commands, on SQLite or MySQL/MariaDB.

mod commands;
mod devices;
mod telemetry;

use sqlx::migrate::Migrator;
use wf_common::db::{Db, Migrations};

pub use commands::{CommandRecord, NewCommand};
pub use devices::{DeviceFilter, DeviceRecord, DeviceSort, DeviceUpdate, NewDevice, StatusRecord};
pub use telemetry::{Bucket, LatestValue, RawPoint};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");

/// device-service's migrations for each supported database.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    mysql: &MYSQL,
};

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
}
