//! Test support shared by the services' integration tests (feature
//! `testing`): fresh databases on SQLite or on the MariaDB/MySQL server
//! named by `WF_IOT_TEST_MYSQL_URL`, and a private Mosquitto ([`mosquitto`]).

pub mod mosquitto;

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
