//! The audit entries other services publish on `audit.recorded`: stored
//! once however often they are delivered, and found by their target.

use std::sync::Arc;
use std::time::Duration;

use auth_service::store::{MIGRATIONS, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wf_common::audit::{AuditEvent, ClientInfo};
use wf_common::contract::Event;
use wf_common::db::Db;
use wf_common::events::{EventBus, InProcessBus};

use crate::helpers::{TestApp, TestDatabase};

fn event(action: &str, target: &str) -> AuditEvent {
    let client = ClientInfo {
        ip: "203.0.113.7".into(),
        user_agent: Some("audit-test".into()),
        request_id: Some(format!("req-{action}")),
    };
    AuditEvent::new(action, "user-1", "alice", &client)
        .target(target)
        .details(json!({ "name": "reboot" }))
}

#[tokio::test]
async fn a_stored_event_is_not_stored_again() {
    let test_db = TestDatabase::new("auth.db");
    Db::create_database_if_missing(&test_db.url).await.unwrap();
    let db = Db::connect(&test_db.url, 2).await.unwrap();
    db.migrate_up(&MIGRATIONS).await.unwrap();
    let store = Store::new(db.clone());
    let first = event("device.command", "dev-1");
    assert!(store.insert_audit_event(&first).await.unwrap());
    assert!(!store.insert_audit_event(&first).await.unwrap());
    // The same change under another id is another entry.
    let mut second = first.clone();
    second.event_id = uuid::Uuid::now_v7().to_string();
    assert!(store.insert_audit_event(&second).await.unwrap());
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE target = 'dev-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    db.pool.close().await;
}

async fn entries(app: &TestApp, query: &str) -> Vec<Value> {
    let resp = app
        .get(&format!("/api/v1/audit-logs?{query}"), &app.admin_token)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

async fn publish(bus: &InProcessBus, event: &AuditEvent) {
    wf_common::events::publish(bus, std::slice::from_ref(event))
        .await
        .unwrap();
}

#[tokio::test]
async fn redelivered_events_are_recorded_once_and_found_by_target() {
    let bus = Arc::new(InProcessBus::new());
    let app = TestApp::builder()
        .events(bus.clone() as Arc<dyn EventBus>)
        .spawn()
        .await;
    let created = event("device.create", "dev-42");
    let command = event("device.command", "dev-42");
    publish(&bus, &created).await;
    publish(&bus, &created).await;
    publish(&bus, &command).await;
    publish(&bus, &event("device.create", "dev-420")).await;
    // An undecodable event is skipped, not retried forever.
    bus.publish(AuditEvent::TOPIC, vec![b"not json".to_vec()])
        .await
        .unwrap();
    // Events are handled in order: once the last is stored, so are the rest.
    let last = event("device.delete", "dev-last");
    publish(&bus, &last).await;
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = entries(&app, "target=dev-last").await;
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored.len(), 1, "the last event was never stored");

    let history = entries(&app, "target=dev-42").await;
    let actions: Vec<&str> = history
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["device.command", "device.create"]);
    let entry = &history[1];
    assert_eq!(entry["actor_id"], "user-1");
    assert_eq!(entry["actor_username"], "alice");
    assert_eq!(entry["client_ip"], "203.0.113.7");
    assert_eq!(entry["user_agent"], "audit-test");
    assert_eq!(entry["request_id"], "req-device.create");
    assert_eq!(entry["outcome"], "success");
    assert_eq!(entry["details"]["name"], "reboot");
    assert_eq!(entry["at"], created.at);
    // Exact matches only; the filter combines with the others.
    assert!(entries(&app, "target=dev-4").await.is_empty());
    assert_eq!(
        entries(&app, "target=dev-42&action=device.create")
            .await
            .len(),
        1
    );
    assert!(
        entries(&app, "target=dev-42&outcome=denied")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_target_filter_is_checked_and_needs_audit_read() {
    let app = TestApp::spawn().await;
    let long = "d".repeat(257);
    let resp = app
        .get(
            &format!("/api/v1/audit-logs?target={long}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let user_id = app
        .create_user("vera", "viewer-password-1", &["viewer"])
        .await;
    let viewer = app.token("vera", "viewer-password-1").await;
    let resp = app.get("/api/v1/audit-logs?target=anything", &viewer).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // auth-service's own entries name their target too.
    let history = entries(&app, &format!("target={user_id}")).await;
    assert!(
        history.iter().any(|e| e["action"] == "user.create"),
        "{history:?}"
    );
}
