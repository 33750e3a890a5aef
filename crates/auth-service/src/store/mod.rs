//! auth-service's tables: users, roles, permissions, refresh tokens and the
//! audit log, on SQLite or MySQL/MariaDB.

mod audit;
mod roles;
mod tokens;
mod users;

use sqlx::migrate::Migrator;
use wf_common::db::{Db, Migrations, flag, like_pattern, placeholders};

pub use audit::{AuditEntry, AuditFilter, AuditRecord};
pub use roles::{RoleRecord, RoleRef};
pub use tokens::RefreshTokenRecord;
pub use users::{NewUser, UserFilter, UserRecord, UserUpdate};

use crate::error::Error;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");

/// auth-service's migrations for each supported database.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    mysql: &MYSQL,
};

/// Access to auth-service's tables.
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

/// Maps a unique-constraint violation to `Conflict` with `message`.
fn conflict_on_unique(message: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        if wf_common::db::is_unique_violation(&e) {
            Error::Conflict(message.into())
        } else {
            Error::from(e)
        }
    }
}
