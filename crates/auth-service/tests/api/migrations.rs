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

    // Revert the later migrations one by one, newest first: each takes its
    // column away and keeps the rows.
    let column_gone = async |sql: &'static str| sqlx::query(sql).fetch_all(&db.pool).await.is_err();
    let seed = status
        .iter()
        .position(|m| m.description.contains("seed"))
        .expect("the seed migration");
    for (sql, what) in [
        ("SELECT scope FROM roles", "role_scope"),
        ("SELECT event_id FROM audit_log", "audit_event_id"),
    ] {
        assert!(!column_gone(sql).await, "{sql} before reverting {what}");
        let reverted = db.migrate_down(&MIGRATIONS, 1).await.unwrap();
        let version = status
            .iter()
            .find(|m| m.description.contains(&what.replace('_', " ")))
            .unwrap_or_else(|| panic!("the {what} migration"))
            .version;
        assert_eq!(reverted, vec![version], "{what}");
        assert!(column_gone(sql).await, "{sql} after reverting {what}");
    }
    assert_eq!(
        status.len() - seed - 1,
        2,
        "every migration after the seed is reverted above"
    );
    // Revert the seed: the tables stay, the built-in roles go.
    let reverted = db.migrate_down(&MIGRATIONS, 1).await.unwrap();
    assert_eq!(reverted, vec![status[seed].version]);
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
