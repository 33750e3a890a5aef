//! Commands: sent through mqtt-gateway, answered by `device.command.responded`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::contract::{CommandOutcome, CommandResponded, StatusChanged, StatusReason};

use crate::helpers::{TestApp, assert_error, eventually};

fn respond(
    device: &str,
    command_id: &str,
    status: CommandOutcome,
    result: Value,
) -> CommandResponded {
    CommandResponded {
        device_id: device.into(),
        command_id: command_id.into(),
        status,
        result,
        at: wf_common::now_millis(),
    }
}

async fn send(app: &TestApp, device: &str, body: Value, query: &str) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/api/v1/devices/{device}/commands{query}"),
        Some(&app.admin_token),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn a_command_is_sent_and_its_response_recorded() {
    let app = TestApp::spawn().await;
    app.device(&app.admin_token, json!({ "id": "c-1", "name": "C" }))
        .await;
    let resp = send(
        &app,
        "c-1",
        json!({ "name": "set_point", "params": { "value": 21.5 }, "timeout_s": 30 }),
        "",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let command: Value = resp.json().await.unwrap();
    assert_eq!(command["status"], "sent");
    let id = command["id"].as_str().unwrap().to_string();

    let published = app.gateway.0.lock().unwrap().published.clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "devices/c-1/commands");
    assert_eq!(published[0].1["id"], id.as_str());
    assert_eq!(published[0].1["name"], "set_point");
    assert_eq!(published[0].1["params"]["value"], 21.5);
    assert!(published[0].1["expires_at"].is_string());

    app.publish(&[respond(
        "c-1",
        &id,
        CommandOutcome::Succeeded,
        json!({ "applied": true }),
    )])
    .await;
    let done = eventually("the response", || async {
        let c = app
            .get_json(
                &format!("/api/v1/devices/c-1/commands/{id}"),
                &app.admin_token,
            )
            .await;
        (c["status"] == "succeeded").then_some(c)
    })
    .await;
    assert_eq!(done["result"]["applied"], true);
    assert!(done["completed_at"].is_string());

    // A late or repeated response changes nothing.
    app.publish(&[respond("c-1", &id, CommandOutcome::Failed, json!(null))])
        .await;
    let again = app
        .get_json(
            &format!("/api/v1/devices/c-1/commands/{id}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(again["status"], "succeeded");
    // A response naming another device's command is ignored.
    let other = send(&app, "c-1", json!({ "name": "ping" }), "")
        .await
        .json::<Value>()
        .await
        .unwrap();
    app.publish(&[respond(
        "other-device",
        other["id"].as_str().unwrap(),
        CommandOutcome::Succeeded,
        json!(1),
    )])
    .await;
    let history = app
        .get_json("/api/v1/devices/c-1/commands", &app.admin_token)
        .await;
    assert_eq!(history["total"], 2);
    assert_eq!(history["items"][0]["name"], "ping");
    assert_eq!(history["items"][0]["status"], "sent");
    let sent_only = app
        .get_json(
            "/api/v1/devices/c-1/commands?status=succeeded",
            &app.admin_token,
        )
        .await;
    assert_eq!(sent_only["total"], 1);
}

#[tokio::test]
async fn a_device_that_comes_back_gets_its_open_commands_again() {
    let app = TestApp::builder()
        .configure(|c| c.command_redelivery_delay_ms = 50)
        .spawn()
        .await;
    app.device(&app.admin_token, json!({ "id": "back-1", "name": "B" }))
        .await;
    let mut ids = Vec::new();
    for (name, timeout_s) in [("answered", 60), ("open", 60), ("short", 1)] {
        let command: Value = send(
            &app,
            "back-1",
            json!({ "name": name, "timeout_s": timeout_s }),
            "",
        )
        .await
        .json()
        .await
        .unwrap();
        ids.push(command["id"].as_str().unwrap().to_string());
    }
    app.publish(&[respond(
        "back-1",
        &ids[0],
        CommandOutcome::Succeeded,
        json!(null),
    )])
    .await;
    eventually("the answer", || async {
        let c = app
            .get_json(
                &format!("/api/v1/devices/back-1/commands/{}", ids[0]),
                &app.admin_token,
            )
            .await;
        (c["status"] == "succeeded").then_some(())
    })
    .await;
    // "short" expires while the device is away.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let published_ids = |app: &TestApp| -> Vec<String> {
        app.gateway
            .0
            .lock()
            .unwrap()
            .published
            .iter()
            .map(|(_, payload)| payload["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(published_ids(&app).len(), 3);
    app.publish(&[StatusChanged {
        device_id: "back-1".into(),
        online: true,
        at: wf_common::now_millis(),
        reason: StatusReason::Connected,
        broker: None,
    }])
    .await;
    // Only the open, unexpired command goes out again, once.
    eventually("the open command again", || async {
        (published_ids(&app).len() == 4).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(published_ids(&app)[3..], [ids[1].clone()]);
    assert_eq!(
        app.gateway.0.lock().unwrap().published[3].0,
        "devices/back-1/commands"
    );
}

#[tokio::test]
async fn the_fleet_wide_listing_shows_what_the_caller_may_see() {
    let app = TestApp::spawn().await;
    app.role(
        "own-operators",
        "own",
        &["device:read", "device:write", "device:command"],
    )
    .await;
    let alice = app.user("alice", &["own-operators"]).await;
    let viewer = app.user("vera", &["viewer"]).await;
    app.device(&app.admin_token, json!({ "id": "f-admin", "name": "A" }))
        .await;
    app.device(&alice, json!({ "id": "f-alice", "name": "B" }))
        .await;
    let mut ids = Vec::new();
    for (token, device, name) in [
        (&app.admin_token, "f-admin", "first"),
        (&alice, "f-alice", "second"),
        (&app.admin_token, "f-admin", "third"),
    ] {
        let resp = app
            .request(
                Method::POST,
                &format!("/api/v1/devices/{device}/commands"),
                Some(token),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        ids.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    // An administrator (and any role of scope fleet) sees the whole fleet,
    // newest first.
    let all = app.get_json("/api/v1/commands", &app.admin_token).await;
    assert_eq!(all["total"], 3);
    assert_eq!(names(&all), ["third", "second", "first"]);
    let page = app
        .get_json("/api/v1/commands?limit=1&offset=1", &app.admin_token)
        .await;
    assert_eq!(
        (page["total"].as_i64(), names(&page)),
        (Some(3), vec!["second".to_string()])
    );
    let one_device = app
        .get_json("/api/v1/commands?device=f-admin", &app.admin_token)
        .await;
    assert_eq!(names(&one_device), ["third", "first"]);
    // A role of scope own sees the commands to its holder's devices only;
    // naming another owner's device reveals nothing.
    let mine = app.get_json("/api/v1/commands", &alice).await;
    assert_eq!(
        (mine["total"].as_i64(), names(&mine)),
        (Some(1), vec!["second".to_string()])
    );
    let theirs = app
        .get_json("/api/v1/commands?device=f-admin", &alice)
        .await;
    assert_eq!(theirs["total"], 0);
    let fleet = app.get_json("/api/v1/commands", &viewer).await;
    assert_eq!(fleet["total"], 3, "the viewer role reaches the whole fleet");
    // Filtered by status.
    app.publish(&[respond(
        "f-admin",
        &ids[0],
        CommandOutcome::Succeeded,
        json!(null),
    )])
    .await;
    eventually("the answered command", || async {
        let done = app
            .get_json("/api/v1/commands?status=succeeded", &app.admin_token)
            .await;
        (names(&done) == ["first"]).then_some(())
    })
    .await;
    // Bad input and missing credentials.
    for (query, code) in [
        ("?status=finished", "validation_failed"),
        ("?limit=0", "validation_failed"),
        ("?limit=501", "validation_failed"),
        ("?offset=-1", "validation_failed"),
    ] {
        let resp = app
            .request(
                Method::GET,
                &format!("/api/v1/commands{query}"),
                Some(&app.admin_token),
                None,
            )
            .await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    let resp = app
        .request(Method::GET, "/api/v1/commands", None, None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn wait_true_returns_the_answer_or_the_timeout() {
    let app = TestApp::spawn().await;
    app.device(&app.admin_token, json!({ "id": "w-1", "name": "W" }))
        .await;

    // A device that answers failure a moment after the command goes out.
    let gateway = app.gateway.clone();
    let bus = app.bus.clone();
    tokio::spawn(async move {
        loop {
            let sent = gateway.0.lock().unwrap().published.first().cloned();
            if let Some((_, payload)) = sent {
                let id = payload["id"].as_str().unwrap().to_string();
                let event = respond(
                    "w-1",
                    &id,
                    CommandOutcome::Failed,
                    json!({ "reason": "busy" }),
                );
                wf_common::events::publish(bus.as_ref(), &[event])
                    .await
                    .unwrap();
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let resp = send(
        &app,
        "w-1",
        json!({ "name": "reboot", "timeout_s": 10 }),
        "?wait=true",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let answered: Value = resp.json().await.unwrap();
    assert_eq!(answered["status"], "failed");
    assert_eq!(answered["result"]["reason"], "busy");

    // Nobody answers this one.
    let started = std::time::Instant::now();
    let resp = send(
        &app,
        "w-1",
        json!({ "name": "reboot", "timeout_s": 1 }),
        "?wait=true",
    )
    .await;
    let timed_out: Value = resp.json().await.unwrap();
    assert_eq!(timed_out["status"], "timed_out");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// `?wait=true` holds a request at most `command_max_wait_secs`: a command
/// with a longer timeout comes back `202` as it stands, and stays open.
#[tokio::test]
async fn a_wait_never_outlasts_the_longest_wait() {
    let app = TestApp::builder()
        .configure(|c| c.command_max_wait_secs = 1)
        .spawn()
        .await;
    app.device(&app.admin_token, json!({ "id": "w-2", "name": "W" }))
        .await;
    let started = std::time::Instant::now();
    let resp = send(
        &app,
        "w-2",
        json!({ "name": "reboot", "timeout_s": 600 }),
        "?wait=true",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let open: Value = resp.json().await.unwrap();
    assert_eq!(open["status"], "sent");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Still open afterwards: it has not timed out.
    let id = open["id"].as_str().unwrap();
    let again: Value = app
        .request(
            Method::GET,
            &format!("/api/v1/devices/w-2/commands/{id}"),
            Some(&app.admin_token),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "sent");
}

#[tokio::test]
async fn unanswered_commands_time_out_in_the_background() {
    let app = TestApp::spawn().await;
    app.device(&app.admin_token, json!({ "id": "t-1", "name": "T" }))
        .await;
    let command: Value = send(&app, "t-1", json!({ "name": "reboot", "timeout_s": 1 }), "")
        .await
        .json()
        .await
        .unwrap();
    let id = command["id"].as_str().unwrap().to_string();
    eventually("the timeout", || async {
        let c = app
            .get_json(
                &format!("/api/v1/devices/t-1/commands/{id}"),
                &app.admin_token,
            )
            .await;
        (c["status"] == "timed_out").then_some(())
    })
    .await;
    // An answer after the deadline does not revive it.
    app.publish(&[respond("t-1", &id, CommandOutcome::Succeeded, json!(null))])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let c = app
        .get_json(
            &format!("/api/v1/devices/t-1/commands/{id}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(c["status"], "timed_out");
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_same_command() {
    let app = TestApp::spawn().await;
    app.device(&app.admin_token, json!({ "id": "i-1", "name": "I" }))
        .await;
    app.device(&app.admin_token, json!({ "id": "i-2", "name": "I2" }))
        .await;
    let post = |device: &'static str, key: &'static str| {
        app.client
            .post(format!("{}/api/v1/devices/{device}/commands", app.base))
            .bearer_auth(&app.admin_token)
            .header("idempotency-key", key)
            .json(&json!({ "name": "open_valve" }))
            .send()
    };
    let first = post("i-1", "key-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = post("i-1", "key-1").await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(first["id"], retry["id"]);
    assert_eq!(
        app.gateway.0.lock().unwrap().published.len(),
        1,
        "sent once"
    );
    assert_eq!(
        post("i-1", "key-2").await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_error(
        post("i-2", "key-1").await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(
        app.get_json("/api/v1/devices/i-1/commands", &app.admin_token)
            .await["total"],
        2
    );
}

#[tokio::test]
async fn an_unreachable_gateway_fails_the_command_and_bad_input_is_refused() {
    let app = TestApp::spawn().await;
    app.device(&app.admin_token, json!({ "id": "f-1", "name": "F" }))
        .await;
    app.gateway.0.lock().unwrap().refuse = true;
    let failed: Value = send(&app, "f-1", json!({ "name": "reboot" }), "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("could not be delivered")
    );

    for body in [
        json!({ "name": "re boot" }),
        json!({ "name": "reboot", "timeout_s": 0 }),
        json!({ "name": "reboot", "timeout_s": 100000 }),
        json!({ "name": "reboot", "extra": 1 }),
        json!({ "params": {} }),
    ] {
        assert_eq!(
            send(&app, "f-1", body.clone(), "").await.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    assert_error(
        send(&app, "missing", json!({ "name": "reboot" }), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/f-1/commands/nope",
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/f-1/commands?status=lost",
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}
