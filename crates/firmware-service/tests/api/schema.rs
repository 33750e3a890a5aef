//! The migrations run up, down and up again on the test database (SQLite,
//! or MariaDB when WF_IOT_TEST_MYSQL_URL is set).

use wf_common::db::Db;
use wf_common::testing::TestDatabase;

#[tokio::test]
async fn migrations_run_up_down_and_up() {
    let test_db = TestDatabase::new("firmware.db");
    Db::create_database_if_missing(&test_db.url).await.unwrap();
    let db = Db::connect(&test_db.url, 2).await.unwrap();
    let migrations = &firmware_service::store::MIGRATIONS;
    db.migrate_up(migrations).await.unwrap();
    assert!(
        db.status(migrations)
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied)
    );
    let reverted = db.migrate_down(migrations, 1).await.unwrap();
    assert_eq!(reverted.len(), 1);
    assert!(
        db.status(migrations)
            .await
            .unwrap()
            .iter()
            .all(|m| !m.applied)
    );
    // The tables are really gone, and come back.
    assert!(
        sqlx::query("SELECT COUNT(*) FROM firmware")
            .execute(&db.pool)
            .await
            .is_err()
    );
    db.migrate_up(migrations).await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM firmware_upgrade_tasks")
        .execute(&db.pool)
        .await
        .unwrap();
    db.pool.close().await;
}
