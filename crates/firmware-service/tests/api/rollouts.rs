//! Rollouts end to end: the worker notifies devices through mqtt-gateway,
//! the simulated fleet answers with progress events, and the rollout
//! completes, aborts, times out, retries, pauses and cancels.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_proto::firmware::firmware_service_client::FirmwareServiceClient;
use wf_proto::firmware::{GetRolloutRequest, ListDeviceExecutionsRequest};

use crate::helpers::{Behaviour, TestApp, assert_error, eventually_within};

fn states(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap().to_string())
        .collect()
}

async fn execution(app: &TestApp, rollout: &str, device: &str) -> Value {
    let list = app
        .get_json(&format!("/api/v1/rollouts/{rollout}/executions?limit=500"))
        .await;
    let id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["device_id"] == device)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.get_json(&format!("/api/v1/rollouts/{rollout}/executions/{id}"))
        .await
}

#[tokio::test]
async fn a_rollout_over_300_devices_completes() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("sensor", "1.1.0", vec![3; 20_000]).await;
    app.devices("s", 300, "sensor", &["fleet-a"]).await;
    // Same tag, another product: not targeted.
    app.devices("other", 5, "camera", &["fleet-a"]).await;
    let started = Instant::now();
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Fleet A to 1.1.0",
                "firmware_id": fw["id"],
                "target": { "tag": "fleet-a" },
                "failure_threshold_percent": 5,
                "min_finished": 20,
            }),
        )
        .await;
    assert_eq!(rollout["state"], "running");
    assert_eq!(rollout["total"], 300);
    assert_eq!(rollout["counts"]["queued"], 300);
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = app
        .wait_rollout(&id, 120, |r| r["state"] != "running")
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 300);
    assert_eq!(done["total"], 300);
    assert!(done["finished_at"].is_string());
    eprintln!("300 devices upgraded in {:?}", started.elapsed());
    // Each device was told exactly once, with the image's facts.
    assert_eq!(app.fleet.notifications(), 300);
    let note = &app.fleet.notifications_of("s-0042")[0];
    assert_eq!(note["version"], "1.1.0");
    assert_eq!(note["size"], 20_000);
    assert_eq!(note["sha256"], fw["sha256"]);
    assert!(app.fleet.notifications_of("other-0001").is_empty());

    let succeeded = app
        .get_json(&format!(
            "/api/v1/rollouts/{id}/executions?state=succeeded&limit=10"
        ))
        .await;
    assert_eq!(succeeded["total"], 300);
    assert_eq!(succeeded["items"].as_array().unwrap().len(), 10);
    let none = app
        .get_json(&format!("/api/v1/rollouts/{id}/executions?state=failed"))
        .await;
    assert_eq!(none["total"], 0);
    let one = execution(&app, &id, "s-0042").await;
    assert_eq!(one["state"], "succeeded");
    assert_eq!(one["reported_version"], "1.1.0");
    assert_eq!(one["progress"], 100.0);
    assert_eq!(
        states(&one["history"]),
        [
            "queued",
            "notified",
            "downloading",
            "installing",
            "succeeded"
        ]
    );
    assert_eq!(one["history"][1]["actor"], "worker-1");
    assert_eq!(one["history"][2]["actor"], "device");
    assert_error(
        app.request(
            Method::GET,
            &format!("/api/v1/rollouts/{id}/executions?state=bogus"),
            Some(&app.admin_token),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // The same over gRPC.
    let mut grpc = FirmwareServiceClient::new(app.grpc_channel());
    let r = grpc
        .get_rollout(GetRolloutRequest {
            rollout_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.state.as_str(), r.total), ("completed", 300));
    assert!(
        r.counts
            .iter()
            .any(|c| c.state == "succeeded" && c.count == 300)
    );
    let mine = grpc
        .list_device_executions(ListDeviceExecutionsRequest {
            device_id: "s-0001".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.executions.len(), 1);
    assert_eq!(mine.executions[0].firmware_version, "1.1.0");
    assert_eq!(mine.executions[0].state, "succeeded");
}

#[tokio::test]
async fn failing_devices_push_a_rollout_past_its_threshold() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("sensor", "2.0.0", vec![1; 1000]).await;
    app.devices("s", 100, "sensor", &[]).await;
    // Every other device fails to flash.
    app.fleet.script(|device, _| {
        let n: u32 = device.trim_start_matches("s-").parse().unwrap();
        if n.is_multiple_of(2) {
            Behaviour::Fail
        } else {
            Behaviour::Succeed
        }
    });
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Risky",
                "firmware_id": fw["id"],
                "target": { "device_type": "sensor" },
                "rate_per_minute": 600,
                "failure_threshold_percent": 20,
                "min_finished": 10,
            }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    // Aborting cancels the queued executions right after the state change.
    let done = app
        .wait_rollout(&id, 60, |r| {
            r["state"] != "running" && r["counts"]["queued"] == 0
        })
        .await;
    assert_eq!(done["state"], "aborted", "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("20% threshold"),
        "{done}"
    );
    let counts = &done["counts"];
    assert!(counts["failed"].as_u64().unwrap() >= 2, "{done}");
    assert!(counts["canceled"].as_u64().unwrap() > 50, "{done}");
    assert_eq!(counts["queued"], 0);
    // Nothing more is sent once it aborted.
    let sent = app.fleet.notifications();
    assert!(sent < 50, "{sent} devices notified");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.fleet.notifications(), sent);
    let canceled = app
        .get_json(&format!(
            "/api/v1/rollouts/{id}/executions?state=canceled&limit=1"
        ))
        .await;
    let eid = canceled["items"][0]["id"].as_str().unwrap();
    let one = app
        .get_json(&format!("/api/v1/rollouts/{id}/executions/{eid}"))
        .await;
    assert_eq!(states(&one["history"]), ["queued", "canceled"]);
    assert_eq!(one["error"], "the rollout was aborted");
}

#[tokio::test]
async fn a_device_that_comes_back_is_notified_again_at_once() {
    let app = TestApp::builder()
        .configure(|c| c.worker.renotify_delay_ms = 50)
        .workers(1)
        .spawn()
        .await;
    let fw = app.firmware("gate", "5.0.0", vec![6; 100]).await;
    app.devices("gate", 2, "gate", &[]).await;
    app.fleet.script(|device, nth| match (device, nth) {
        // Away when first notified: misses it.
        ("gate-0001", 1) => Behaviour::Hang,
        _ => Behaviour::Succeed,
    });
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({ "name": "Gates", "firmware_id": fw["id"], "target": { "device_type": "gate" }, "timeout_secs": 300 }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    eventually_within(
        "both notified, one done",
        std::time::Duration::from_secs(20),
        || async {
            let e = execution(&app, &id, "gate-0002").await;
            (app.fleet.notifications_of("gate-0001").len() == 1 && e["state"] == "succeeded")
                .then_some(())
        },
    )
    .await;
    // Both come online: only the one still notified hears again, long
    // before its 300 s timeout, and the rollout completes.
    let back = |device: &str| wf_common::contract::StatusChanged {
        device_id: device.into(),
        online: true,
        at: wf_common::now_millis(),
        reason: wf_common::contract::StatusReason::Connected,
        broker: None,
    };
    wf_common::events::publish(app.bus.as_ref(), &[back("gate-0001"), back("gate-0002")])
        .await
        .unwrap();
    let done = app.wait_rollout(&id, 20, |r| r["state"] != "running").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 2);
    let again = execution(&app, &id, "gate-0001").await;
    assert_eq!(again["attempts"], 1, "{again}");
    let notes = app.fleet.notifications_of("gate-0001");
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0]["task_id"], notes[1]["task_id"]);
    assert_eq!(app.fleet.notifications_of("gate-0002").len(), 1);
}

#[tokio::test]
async fn timeouts_and_retries() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("lock", "4.0.0", vec![5; 100]).await;
    app.devices("lock", 4, "lock", &["door"]).await;
    app.fleet.script(|device, nth| match (device, nth) {
        // Never answers: times out, retried once, times out for good.
        ("lock-0001", _) => Behaviour::Hang,
        // Fails, then succeeds on the retry.
        ("lock-0002", 1) => Behaviour::Fail,
        // Reports success on the old version, then really upgrades.
        ("lock-0003", 1) => Behaviour::WrongVersion,
        // Refuses: final at once, no retry.
        ("lock-0004", _) => Behaviour::Reject,
        _ => Behaviour::Succeed,
    });
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Locks",
                "firmware_id": fw["id"],
                "target": { "tag": "door" },
                "timeout_secs": 1,
                "max_retries": 1,
                "retry_backoff_secs": 1,
            }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = app.wait_rollout(&id, 30, |r| r["state"] != "running").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 2);
    assert_eq!(done["counts"]["timed_out"], 1);
    assert_eq!(done["counts"]["rejected"], 1);

    let hung = execution(&app, &id, "lock-0001").await;
    assert_eq!(hung["state"], "timed_out");
    assert_eq!(hung["attempts"], 2);
    assert_eq!(
        states(&hung["history"]),
        ["queued", "notified", "queued", "notified", "timed_out"]
    );
    assert!(
        hung["history"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("retrying in 1 s")
    );
    assert_eq!(app.fleet.notifications_of("lock-0001").len(), 2);
    // Both notifications carry the same task id.
    let notes = app.fleet.notifications_of("lock-0001");
    assert_eq!(notes[0]["task_id"], notes[1]["task_id"]);

    let retried = execution(&app, &id, "lock-0002").await;
    assert_eq!(retried["state"], "succeeded");
    assert_eq!(retried["attempts"], 2);
    let h = states(&retried["history"]);
    assert_eq!(&h[..3], ["queued", "notified", "downloading"]);
    assert!(h.contains(&"queued".to_string()) && h.ends_with(&["succeeded".to_string()]));

    let wrong = execution(&app, &id, "lock-0003").await;
    assert_eq!(wrong["state"], "succeeded");
    assert_eq!(wrong["attempts"], 2);
    let detail = wrong["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["detail"].as_str())
        .find(|d| d.contains("runs version"))
        .unwrap()
        .to_string();
    assert!(detail.contains("\"0.0.1\""), "{detail}");

    let rejected = execution(&app, &id, "lock-0004").await;
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["attempts"], 1);
    assert_eq!(rejected["error"], "wrong product");
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("sensor", "1.0.1", vec![1; 100]).await;
    app.devices("s", 60, "sensor", &[]).await;
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Slow",
                "firmware_id": fw["id"],
                "target": { "device_type": "sensor" },
                "rate_per_minute": 600,
            }),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let action = |what: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.request(
                Method::POST,
                &format!("/api/v1/rollouts/{id}/{what}"),
                Some(&app.admin_token),
                None,
            )
            .await
        }
    };
    eventually_within(
        "a few notifications",
        std::time::Duration::from_secs(20),
        || async { (app.fleet.notifications() >= 5).then_some(()) },
    )
    .await;
    let paused: Value = action("pause").await.json().await.unwrap();
    assert_eq!(paused["state"], "paused");
    assert_error(action("pause").await, StatusCode::CONFLICT, "conflict").await;
    // Let a round in flight finish, then nothing more is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = app.fleet.notifications();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.fleet.notifications(), sent, "notified while paused");
    assert!(sent < 60);
    // Devices already notified finish while paused.
    let r = app
        .wait_rollout(&id, 20, |r| {
            r["counts"]["succeeded"].as_u64() == Some(sent as u64)
        })
        .await;
    assert_eq!(r["state"], "paused");

    let resumed: Value = action("resume").await.json().await.unwrap();
    assert_eq!(resumed["state"], "running");
    assert_error(action("resume").await, StatusCode::CONFLICT, "conflict").await;
    eventually_within(
        "more notifications",
        std::time::Duration::from_secs(20),
        || async { (app.fleet.notifications() >= sent + 5).then_some(()) },
    )
    .await;
    let canceled: Value = action("cancel").await.json().await.unwrap();
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["counts"]["queued"], 0);
    let left = canceled["counts"]["canceled"].as_u64().unwrap();
    assert!(left > 0 && left < 60, "{canceled}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = app.fleet.notifications();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.fleet.notifications(), sent, "notified after cancel");
    for what in ["pause", "resume", "cancel"] {
        assert_error(action(what).await, StatusCode::CONFLICT, "conflict").await;
    }
    // Every execution reached a final state; none is lost.
    let r = app
        .wait_rollout(&id, 20, |r| {
            r["counts"]["succeeded"].as_u64().unwrap() + r["counts"]["canceled"].as_u64().unwrap()
                == 60
        })
        .await;
    assert_eq!(r["total"], 60);
}

#[tokio::test]
async fn a_scheduled_rollout_waits_for_its_start() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("sensor", "1.0.0", vec![1; 100]).await;
    app.devices("s", 3, "sensor", &[]).await;
    // Times are kept to the millisecond; the start is given at that precision.
    let start = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).timestamp_millis(),
    )
    .unwrap();
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Tonight",
                "firmware_id": fw["id"],
                "target": { "device_ids": ["s-0001", "s-0002", "s-0003"] },
                "start_at": start.to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(rollout["state"], "scheduled");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.fleet.notifications(), 0);
    let done = app
        .wait_rollout(rollout["id"].as_str().unwrap(), 20, |r| {
            r["state"] == "completed"
        })
        .await;
    assert_eq!(done["counts"]["succeeded"], 3);
    assert!(
        chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap()
            >= start
    );
}

#[tokio::test]
async fn targets_are_checked_through_device_service() {
    let app = TestApp::builder().workers(0).spawn().await;
    let fw = app.firmware("sensor", "1.0.0", vec![1; 100]).await;
    app.devices("s", 2, "sensor", &["a"]).await;
    app.devices("c", 1, "camera", &["a"]).await;
    let create = |target: Value| {
        app.request(
            Method::POST,
            "/api/v1/rollouts",
            Some(&app.admin_token),
            Some(json!({ "name": "x", "firmware_id": fw["id"], "target": target })),
        )
    };
    for target in [
        json!({ "device_ids": ["s-0001", "ghost"] }),
        json!({ "device_ids": ["c-0001"] }),
        json!({ "device_type": "camera" }),
        json!({ "tag": "nobody-has-this" }),
        json!({ "tag": "a", "device_type": "sensor" }),
        json!({}),
    ] {
        assert_error(
            create(target).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let resp = app
        .request(
            Method::POST,
            "/api/v1/rollouts",
            Some(&app.admin_token),
            Some(json!({ "name": "x", "firmware_id": "fw-missing", "target": { "tag": "a" } })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .request(
            Method::POST,
            "/api/v1/rollouts",
            Some(&app.admin_token),
            Some(json!({ "name": "x", "firmware_id": fw["id"], "target": { "tag": "a" }, "timeout_secs": 0 })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // A device is in one open rollout at a time: explicit ids conflict,
    // tags skip the busy ones.
    let first = app
        .post_json("/api/v1/rollouts", json!({ "name": "one", "firmware_id": fw["id"], "target": { "device_ids": ["s-0001"] } }))
        .await;
    assert_eq!(first["total"], 1);
    assert_error(
        create(json!({ "device_ids": ["s-0001", "s-0002"] })).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let by_tag = app
        .post_json(
            "/api/v1/rollouts",
            json!({ "name": "two", "firmware_id": fw["id"], "target": { "tag": "a" } }),
        )
        .await;
    assert_eq!(by_tag["total"], 1);
    assert_eq!(by_tag["skipped_devices"], json!(["s-0001"]));
    let list = app.get_json("/api/v1/rollouts?state=running").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["name"], "two");
}

#[tokio::test]
async fn upgrade_tasks_and_deleted_devices() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("pump", "7.0.0", vec![9; 4096]).await;
    app.devices("p", 2, "pump", &[]).await;
    app.fleet.script(|device, _| {
        if device == "p-0002" {
            Behaviour::Hang
        } else {
            Behaviour::Download
        }
    });
    let task = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": fw["id"], "device_id": "p-0001" }),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ex-"));
    assert_eq!(task["state"], "queued");
    let done = eventually_within(
        "the task to succeed",
        std::time::Duration::from_secs(20),
        || async {
            let t = app.get_json(&format!("/api/v1/upgrade-tasks/{id}")).await;
            (t["state"] == "succeeded").then_some(t)
        },
    )
    .await;
    assert_eq!(done["reported_version"], "7.0.0");
    assert_eq!(
        states(&done["history"]),
        [
            "queued",
            "notified",
            "downloading",
            "installing",
            "succeeded"
        ]
    );
    let done = eventually_within(
        "the task's rollout to complete",
        std::time::Duration::from_secs(20),
        || async {
            let t = app.get_json(&format!("/api/v1/upgrade-tasks/{id}")).await;
            (t["rollout_state"] == "completed").then_some(t)
        },
    )
    .await;
    assert_eq!(done["firmware_version"], "7.0.0");
    assert_error(
        app.request(
            Method::POST,
            &format!("/api/v1/upgrade-tasks/{id}/cancel"),
            Some(&app.admin_token),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let listed = app.get_json("/api/v1/upgrade-tasks?device_id=p-0001").await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    // Upgrade tasks are not listed as rollouts.
    assert_eq!(app.get_json("/api/v1/rollouts").await["total"], 0);

    // A device deleted while it works on an update: its task is canceled.
    let hung = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": fw["id"], "device_id": "p-0002" }),
        )
        .await;
    let hung_id = hung["id"].as_str().unwrap().to_string();
    eventually_within(
        "the notification",
        std::time::Duration::from_secs(20),
        || async { (!app.fleet.notifications_of("p-0002").is_empty()).then_some(()) },
    )
    .await;
    assert_error(
        app.request(
            Method::POST,
            "/api/v1/upgrade-tasks",
            Some(&app.admin_token),
            Some(json!({ "firmware_id": fw["id"], "device_id": "p-0002" })),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let resp = app
        .client
        .delete(format!("{}/api/v1/devices/p-0002", app.device_base))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let canceled = eventually_within(
        "the deleted device's task to be canceled",
        std::time::Duration::from_secs(20),
        || async {
            let t = app
                .get_json(&format!("/api/v1/upgrade-tasks/{hung_id}"))
                .await;
            (t["state"] == "canceled").then_some(t)
        },
    )
    .await;
    assert_eq!(canceled["error"], "the device was deleted");
    let last = canceled["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "device-service");

    // Canceling a task a device is working on.
    app.devices("q", 1, "pump", &[]).await;
    app.fleet.script(|_, _| Behaviour::Hang);
    let t = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": fw["id"], "device_id": "q-0001", "timeout_secs": 60 }),
        )
        .await;
    let tid = t["id"].as_str().unwrap().to_string();
    eventually_within(
        "the notification",
        std::time::Duration::from_secs(20),
        || async { (!app.fleet.notifications_of("q-0001").is_empty()).then_some(()) },
    )
    .await;
    let c = app
        .post_json(&format!("/api/v1/upgrade-tasks/{tid}/cancel"), json!({}))
        .await;
    assert_eq!(c["state"], "canceled");
    assert_eq!(c["rollout_state"], "canceled");
    // Unknown devices and images of another product are refused.
    for body in [
        json!({ "firmware_id": fw["id"], "device_id": "ghost" }),
        json!({ "firmware_id": "fw-missing", "device_id": "p-0001" }),
    ] {
        assert_error(
            app.request(
                Method::POST,
                "/api/v1/upgrade-tasks",
                Some(&app.admin_token),
                Some(body),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
}
