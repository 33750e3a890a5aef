//! Migrations run forward and back on the test database (SQLite, or
//! MariaDB when `WF_IOT_TEST_MYSQL_URL` is set).

use auth_service::store::MIGRATIONS;
use wf_common::db::Db;

use crate::helpers::TestDatabase;

#[tokio::test]
async fn migrations_run_up_down_and_up_again() {
    let test_db = TestDatabase::new("auth.db");
    Db::create_database_if_missing(&test_db.url).await.unwrap();
    let db = Db::connect(&test_db.url, 2).await.unwrap();

    let status = db.status(&MIGRATIONS).await.unwrap();
    assert!(status.len() >= 2);
    assert!(status.iter().all(|m| !m.applied));

    db.migrate_up(&MIGRATIONS).await.unwrap();
    assert!(
        db.status(&MIGRATIONS)
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    let roles: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM roles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(roles, 3);

    // Revert the audit log's event id: the column goes, the rows stay.
    assert!(
        sqlx::query("SELECT event_id FROM audit_log")
            .fetch_all(&db.pool)
            .await
            .is_ok()
    );
    let reverted = db.migrate_down(&MIGRATIONS, 1).await.unwrap();
    assert_eq!(reverted, vec![status[status.len() - 1].version]);
    assert!(
        sqlx::query("SELECT event_id FROM audit_log")
            .fetch_all(&db.pool)
            .await
            .is_err()
    );

    // Revert the seed: the tables stay, the built-in roles go.
    let reverted = db.migrate_down(&MIGRATIONS, 1).await.unwrap();
    assert_eq!(reverted, vec![status[status.len() - 2].version]);
    let roles: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM roles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(roles, 0);

    // Revert everything: the tables go.
    db.migrate_down(&MIGRATIONS, 10).await.unwrap();
    assert!(
        db.status(&MIGRATIONS)
            .await
            .unwrap()
            .iter()
            .all(|m| !m.applied)
    );
    assert!(
        sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&db.pool)
            .await
            .is_err()
    );

    db.migrate_up(&MIGRATIONS).await.unwrap();
    let roles: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM roles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(roles, 3);
    db.pool.close().await;
}
