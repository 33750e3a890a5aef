//! Database access for SQLite (the embedded default) and MySQL/MariaDB from
//! one code base, through sqlx's `Any` driver. Queries use `?` placeholders
//! and portable types (integers, text, doubles); timestamps are milliseconds
//! since the Unix epoch. Each service keeps one migration set per dialect.

use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migrate, MigrateDatabase, Migrator};
use sqlx::{Any, AnyPool, Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Self::MySql)
        } else {
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: use sqlite:// or mysql://").into(),
            ))
        }
    }
}

/// A service's migrations, one set per dialect (`sqlx::migrate!` of each
/// directory).
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub mysql: &'static Migrator,
}

/// One applied or pending migration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// How long a readiness ping waits for the database.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

/// Normalises a URL for sqlx: `mariadb://` is spelled `mysql://`, and SQLite
/// files are created when missing (with their directory).
fn prepare_url(url: &str, dialect: Dialect) -> Result<String, sqlx::Error> {
    match dialect {
        Dialect::MySql => Ok(url.replacen("mariadb:", "mysql:", 1)),
        Dialect::Sqlite => {
            let path = url
                .trim_start_matches("sqlite:")
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or_default();
            if !path.is_empty()
                && path != ":memory:"
                && let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            Ok(if url.contains("mode=") {
                url.to_string()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            })
        }
    }
}

impl Db {
    /// The row of `table` whose `id` is this one, read as `columns` with
    /// `from_row`; `None` when there is none.
    pub async fn find_by_id<T>(
        &self,
        table: &str,
        columns: &str,
        id: &str,
        from_row: impl Fn(&sqlx::any::AnyRow) -> sqlx::Result<T>,
    ) -> Result<Option<T>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {table} WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Opens a pool. For MySQL the database must exist (see
    /// [`Db::create_database_if_missing`]).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(install_default_drivers);
        let dialect = Dialect::from_url(url)?;
        let url = prepare_url(url, dialect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            // A connection whose transaction could not be rolled back is
            // closed, not reused: SQLite rolls a transaction back by itself
            // on some errors (a full disk), the driver's own ROLLBACK then
            // fails and it would count the transaction as still open, so
            // the next `begin` would only open a savepoint and its "commit"
            // would commit nothing. (The ping first runs the rollback the
            // driver queued when the transaction was dropped.)
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self { pool, dialect })
    }

    /// Creates the database named in `url` when it does not exist yet.
    pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(install_default_drivers);
        let dialect = Dialect::from_url(url)?;
        let url = prepare_url(url, dialect)?;
        if dialect == Dialect::MySql && !Any::database_exists(&url).await? {
            Any::create_database(&url).await?;
        }
        Ok(())
    }

    fn migrator(&self, migrations: &Migrations) -> &'static Migrator {
        match self.dialect {
            Dialect::Sqlite => migrations.sqlite,
            Dialect::MySql => migrations.mysql,
        }
    }

    /// Applies every pending migration.
    pub async fn migrate_up(&self, migrations: &Migrations) -> Result<(), sqlx::Error> {
        self.migrator(migrations).run(&self.pool).await?;
        Ok(())
    }

    /// Reverts the newest `steps` applied migrations; returns their versions.
    pub async fn migrate_down(
        &self,
        migrations: &Migrations,
        steps: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let applied: Vec<i64> = self
            .status(migrations)
            .await?
            .into_iter()
            .filter(|m| m.applied)
            .map(|m| m.version)
            .collect();
        if steps == 0 || applied.is_empty() {
            return Ok(Vec::new());
        }
        let keep = applied.len().saturating_sub(steps);
        let target = if keep == 0 { 0 } else { applied[keep - 1] };
        self.migrator(migrations).undo(&self.pool, target).await?;
        Ok(applied[keep..].iter().rev().copied().collect())
    }

    /// Every known migration and whether it is applied.
    pub async fn status(
        &self,
        migrations: &Migrations,
    ) -> Result<Vec<MigrationState>, sqlx::Error> {
        let migrator = self.migrator(migrations);
        let mut conn = self.pool.acquire().await?;
        conn.ensure_migrations_table(&migrator.table_name).await?;
        let applied: std::collections::HashSet<i64> = conn
            .list_applied_migrations(&migrator.table_name)
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect();
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// Creates the database when missing (MySQL) and opens a pool, retrying
    /// with capped exponential backoff while the server cannot be reached,
    /// so a service started before its database waits for it. Errors no
    /// retry can fix (an unsupported or malformed URL) are returned at once.
    pub async fn connect_retrying(
        url: &str,
        max_connections: u32,
        what: &str,
    ) -> Result<Self, sqlx::Error> {
        crate::retry::until_ok(
            what,
            crate::retry::Backoff::default(),
            |e: &sqlx::Error| matches!(e, sqlx::Error::Configuration(_)),
            || async {
                Self::create_database_if_missing(url).await?;
                Self::connect(url, max_connections).await
            },
        )
        .await
    }

    /// A round trip to the database (`SELECT 1`), for readiness. Gives up
    /// after [`PING_TIMEOUT`] rather than waiting for a pool connection.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await
        {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }
}

/// A value a listing's filter binds.
#[derive(Debug, Clone)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// What a listing reads: `columns` of `table` (a table, or tables joined),
/// its pages in `order`.
#[derive(Debug, Clone, Copy)]
pub struct Select<'a> {
    pub columns: &'a str,
    pub table: &'a str,
    pub order: &'a str,
}

/// A filtered, paged listing: the conditions (`?` placeholders, joined by
/// AND) with the values they bind, in order.
#[derive(Debug, Default)]
pub struct Listing {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Listing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition with the values of its placeholders, in order.
    pub fn filter(
        &mut self,
        condition: impl Into<String>,
        params: impl IntoIterator<Item = Param>,
    ) {
        self.conditions.push(condition.into());
        self.params.extend(params);
    }

    /// `WHERE ...`, or nothing without a condition.
    pub fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn query<'q>(&self, sql: String) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for param in &self.params {
            query = match param {
                Param::Text(t) => query.bind(t.clone()),
                Param::Int(n) => query.bind(*n),
            };
        }
        query
    }

    /// One page of what `select` names, read with `from_row`, and how many
    /// rows match in all.
    pub async fn page<T>(
        &self,
        db: &Db,
        select: Select<'_>,
        limit: i64,
        offset: i64,
        from_row: impl Fn(&sqlx::any::AnyRow) -> sqlx::Result<T>,
    ) -> Result<(Vec<T>, i64), sqlx::Error> {
        let Select {
            columns,
            table,
            order,
        } = select;
        use sqlx::Row;
        let filter = self.where_clause();
        let total: i64 = self
            .query(format!("SELECT COUNT(*) AS n FROM {table} {filter}"))
            .fetch_one(&db.pool)
            .await?
            .try_get("n")?;
        let rows = self
            .query(format!(
                "SELECT {columns} FROM {table} {filter} ORDER BY {order} LIMIT ? OFFSET ?"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(&db.pool)
            .await?;
        let items = rows.iter().map(from_row).collect::<sqlx::Result<_>>()?;
        Ok((items, total))
    }
}

/// `?, ?, ?` for an `IN (...)` list or a row of `n` values.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A `LIKE ... ESCAPE '!'` pattern matching `s` anywhere, with `%`, `_` and
/// `!` taken literally. (`!` rather than a backslash, which MySQL string
/// literals treat as an escape of their own.)
pub fn like_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Booleans are stored as integers in every dialect.
pub fn flag(v: i64) -> bool {
    v != 0
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Whether an error says the database's storage is full: SQLite's
/// `SQLITE_FULL` ("database or disk is full"), MySQL/MariaDB's full table
/// or disk (1114, 1021, errno 28), or an I/O error `ENOSPC`.
pub fn is_storage_full(err: &sqlx::Error) -> bool {
    const ENOSPC: i32 = 28;
    match err {
        sqlx::Error::Io(e) => e.raw_os_error() == Some(ENOSPC),
        sqlx::Error::Database(db) => {
            let message = db.message();
            db.code().as_deref() == Some("13")
                || message.contains("disk is full")
                || message.contains("No space left on device")
                || message.contains("Errcode: 28")
                || (message.starts_with("The table") && message.ends_with("is full"))
        }
        _ => false,
    }
}

/// Whether an error is a foreign-key violation.
pub fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a%b_c!"), "%a!%b!_c!!%");
    }

    #[test]
    fn dialects_from_urls() {
        assert_eq!(Dialect::from_url("sqlite://x.db").unwrap(), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_url("mysql://root@h/db").unwrap(),
            Dialect::MySql
        );
        assert_eq!(
            Dialect::from_url("mariadb://root@h/db").unwrap(),
            Dialect::MySql
        );
        assert!(Dialect::from_url("postgres://h/db").is_err());
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/a.db", dir.path().display());
        assert!(
            prepare_url(&url, Dialect::Sqlite)
                .unwrap()
                .ends_with("?mode=rwc")
        );
        assert!(dir.path().join("sub").is_dir());
    }
}
