//! Test support shared by the services' integration tests (feature
//! `testing`): fresh databases on SQLite or on the MariaDB/MySQL server
//! named by `WF_IOT_TEST_MYSQL_URL`, a private Mosquitto ([`mosquitto`]),
//! waiting for what happens in the background ([`eventually`]) and the
//! services' logs on demand ([`init_logs`]). Starting auth-service beside
//! a service is `wf-testkit`'s, which may depend on the services.

pub mod mosquitto;

use std::time::Duration;

/// How long [`eventually`] waits.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms until it returns `Some`, and panics naming
/// `what` after [`EVENTUALLY`].
pub async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, EVENTUALLY, check).await
}

/// [`eventually`], waiting up to `within`.
pub async fn eventually_within<T, Fut>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shows the services' logs in a test's output when `TEST_LOG` is set, at
/// the level (or `RUST_LOG`-style filter) it names, `TEST_LOG=1` meaning
/// `info`; without it, tests run silent. Call it first in a test (the
/// harnesses' builders do); the first call in a test binary decides.
pub fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let Ok(level) = std::env::var("TEST_LOG") else {
        return;
    };
    let filter = match level.trim() {
        "" | "1" | "true" => "info".to_string(),
        other => other.to_string(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_test_writer()
        .try_init();
}

/// A fresh, empty database: a SQLite file in a temporary directory, or a
/// new database on the server in `WF_IOT_TEST_MYSQL_URL`, dropped when this
/// value is.
pub struct TestDatabase {
    pub url: String,
    mysql: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl TestDatabase {
    pub fn new(file_name: &str) -> Self {
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("a temporary directory");
        match std::env::var("WF_IOT_TEST_MYSQL_URL") {
            Ok(server) if !server.trim().is_empty() => {
                let server = server.trim_end_matches('/').to_string();
                let name = format!("wf_test_{}", uuid::Uuid::new_v4().simple());
                Self {
                    url: format!("{server}/{name}"),
                    mysql: Some((server, name)),
                    _dir: dir,
                }
            }
            _ => Self {
                url: format!("sqlite://{}", dir.path().join(file_name).display()),
                mysql: None,
                _dir: dir,
            },
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.mysql.take() else {
            return;
        };
        // On a thread of its own: Drop cannot await, and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(db) = crate::db::Db::connect(&format!("{server}/mysql"), 1).await {
                    // The test's own pool may still hold the database (its
                    // runtime can be the one waiting on this drop): give up
                    // after a few seconds rather than wait forever. CI drops
                    // leftovers before each run.
                    let Ok(mut conn) = db.pool.acquire().await else {
                        return;
                    };
                    let _ = sqlx::query("SET SESSION lock_wait_timeout = 3")
                        .execute(&mut *conn)
                        .await;
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS `{name}`"
                    )))
                    .execute(&mut *conn)
                    .await;
                }
            });
        })
        .join();
    }
}
