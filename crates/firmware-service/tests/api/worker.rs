//! Workers share the job queue, and one killed mid-rollout loses nothing
//! and counts nothing twice.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually_within};

/// Every execution of a rollout with its history.
async fn executions(app: &TestApp, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let list = app
        .get_json(&format!("/api/v1/rollouts/{id}/executions?limit=500"))
        .await;
    for e in list["items"].as_array().unwrap() {
        out.push(
            app.get_json(&format!(
                "/api/v1/rollouts/{id}/executions/{}",
                e["id"].as_str().unwrap()
            ))
            .await,
        );
    }
    out
}

fn transitions_to<'a>(execution: &'a Value, state: &str) -> Vec<&'a Value> {
    execution["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["to"] == state)
        .collect()
}

#[tokio::test]
async fn two_workers_share_the_work() {
    let (app, _workers) = TestApp::builder()
        .configure(|c| {
            c.worker.batch_size = 10;
            c.worker.poll_interval_ms = 20;
        })
        .workers(2)
        .spawn_keeping_workers()
        .await;
    let fw = app.firmware("sensor", "1.5.0", vec![2; 500]).await;
    app.devices("s", 200, "sensor", &[]).await;
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({ "name": "Shared", "firmware_id": fw["id"], "target": { "device_type": "sensor" } }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = app
        .wait_rollout(&id, 120, |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 200);

    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for e in executions(&app, &id).await {
        let notified = transitions_to(&e, "notified");
        assert_eq!(notified.len(), 1, "notified more than once: {e}");
        assert_eq!(transitions_to(&e, "succeeded").len(), 1, "{e}");
        *by_worker
            .entry(notified[0]["actor"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 200);
    assert!(
        by_worker.get("worker-1").is_some_and(|n| *n > 0)
            && by_worker.get("worker-2").is_some_and(|n| *n > 0),
        "both workers should have notified devices: {by_worker:?}"
    );
    // Every device heard of it exactly once.
    assert_eq!(app.fleet.notifications(), 200);
}

#[tokio::test]
async fn a_worker_killed_mid_rollout_loses_nothing_and_counts_nothing_twice() {
    let (app, mut workers) = TestApp::builder()
        .configure(|c| {
            c.worker.lease_secs = 1;
            c.worker.batch_size = 5;
        })
        .workers(1)
        .spawn_keeping_workers()
        .await;
    let fw = app.firmware("sensor", "3.0.0", vec![4; 500]).await;
    app.devices("s", 80, "sensor", &[]).await;
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Interrupted",
                "firmware_id": fw["id"],
                "target": { "device_type": "sensor" },
                "rate_per_minute": 1200,
            }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    eventually_within(
        "the first notifications",
        std::time::Duration::from_secs(20),
        || async { (app.fleet.notifications() >= 20).then_some(()) },
    )
    .await;
    workers.pop().unwrap().kill().await;
    let at_kill = app.get_json(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(at_kill["state"], "running");
    assert!(
        at_kill["counts"]["queued"].as_u64().unwrap() > 0,
        "{at_kill}"
    );

    let second = app.start_worker("worker-2").await;
    let done = app
        .wait_rollout(&id, 120, |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 80);
    assert_eq!(done["total"], 80);

    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for e in executions(&app, &id).await {
        assert_eq!(e["state"], "succeeded");
        // Counted once, whatever was repeated.
        assert_eq!(transitions_to(&e, "succeeded").len(), 1, "{e}");
        let notified = transitions_to(&e, "notified");
        assert!(!notified.is_empty(), "{e}");
        *by_worker
            .entry(notified[0]["actor"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        by_worker.get("worker-1").is_some_and(|n| *n >= 20),
        "{by_worker:?}"
    );
    assert!(
        by_worker.get("worker-2").is_some_and(|n| *n > 0),
        "{by_worker:?}"
    );
    // A notification may be repeated (a publish whose record was cut off),
    // always with the same task id.
    let received = app.fleet.received.lock().unwrap().clone();
    assert_eq!(received.len(), 80);
    for notes in received.values() {
        assert!(notes.iter().all(|n| n["task_id"] == notes[0]["task_id"]));
    }
    second.stop().await;
}
