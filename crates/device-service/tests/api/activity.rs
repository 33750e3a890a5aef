//! The fleet's activity over time (`GET /api/v1/devices/activity`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::contract::{CommandOutcome, CommandResponded, MetricValue, StatusChanged};

use crate::helpers::{TestApp, assert_error, eventually};
use crate::telemetry::{batch, message};

const T0: i64 = 1_789_999_980_000; // a whole minute since the epoch

/// `(messages, online)` of every bucket.
fn counts(activity: &Value) -> Vec<(i64, i64)> {
    activity["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["messages"].as_i64().unwrap(),
                b["online"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The commands of every bucket added up.
fn command_totals(activity: &Value) -> Value {
    let mut totals = [0i64; 4];
    for b in activity["buckets"].as_array().unwrap() {
        for (i, key) in ["succeeded", "failed", "timed_out", "open"]
            .iter()
            .enumerate()
        {
            totals[i] += b["commands"][key].as_i64().unwrap();
        }
    }
    json!({ "succeeded": totals[0], "failed": totals[1], "timed_out": totals[2], "open": totals[3] })
}

#[tokio::test]
async fn activity_counts_messages_online_devices_and_commands_per_bucket() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.role(
        "own-operators",
        "own",
        &["device:read", "device:write", "device:command"],
    )
    .await;
    let alice = app.user("alice", &["own-operators"]).await;
    app.device(&admin, json!({ "id": "act-a", "name": "A" }))
        .await;
    app.device(&alice, json!({ "id": "act-b", "name": "B" }))
        .await;

    // Minute 0: two messages of act-a (one with two metrics, sent twice);
    // minute 1: one of act-b.
    let first = message(
        "act-a",
        T0 + 1_000,
        &[
            ("temp", MetricValue::Number(20.0)),
            ("hum", MetricValue::Number(50.0)),
        ],
    );
    let messages = vec![
        first.clone(),
        first,
        message("act-a", T0 + 2_000, &[("temp", MetricValue::Number(21.0))]),
        message("act-b", T0 + 61_000, &[("temp", MetricValue::Number(5.0))]),
    ];
    app.publish(&[batch(messages)]).await;
    // act-a comes online before the range and leaves in minute 2; act-b
    // comes online in minute 1.
    app.publish(&[
        StatusChanged::plain("act-a", true, T0 - 30_000),
        StatusChanged::plain("act-b", true, T0 + 62_000),
        StatusChanged::plain("act-a", false, T0 + 121_000),
    ])
    .await;

    let path = format!(
        "/api/v1/devices/activity?from={T0}&to={}&interval=1m",
        T0 + 180_000
    );
    let fleet = eventually("the activity of the fleet", || async {
        let a = app.get_json(&path, &admin).await;
        (counts(&a) == [(2, 1), (1, 2), (0, 1)]).then_some(a)
    })
    .await;
    assert_eq!(
        (
            &fleet["from"],
            &fleet["to"],
            &fleet["interval_ms"],
            &fleet["scope"]
        ),
        (
            &json!(T0),
            &json!(T0 + 180_000),
            &json!(60_000),
            &json!("fleet")
        )
    );
    let starts: Vec<i64> = fleet["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, [T0, T0 + 60_000, T0 + 120_000]);

    // A role of scope own counts its holder's devices only.
    let own = app.get_json(&path, &alice).await;
    assert_eq!(own["scope"], "own");
    assert_eq!(counts(&own), [(0, 0), (1, 1), (0, 1)]);

    // Commands, by the status they have now: one answered, one still open.
    let mut sent = Vec::new();
    for (token, device) in [(&admin, "act-a"), (&alice, "act-b")] {
        let resp = app
            .request(
                Method::POST,
                &format!("/api/v1/devices/{device}/commands"),
                Some(token),
                Some(json!({ "name": "reboot" })),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        sent.push(
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    app.publish(&[CommandResponded {
        device_id: "act-a".into(),
        command_id: sent[0].clone(),
        status: CommandOutcome::Succeeded,
        result: json!(null),
        at: wf_common::now_millis(),
    }])
    .await;
    let now = wf_common::now_millis();
    let recent = format!(
        "/api/v1/devices/activity?from={}&to={}&interval=1m",
        now - 120_000,
        now + 60_000
    );
    eventually("the answered command", || async {
        let a = app.get_json(&recent, &admin).await;
        (command_totals(&a) == json!({ "succeeded": 1, "failed": 0, "timed_out": 0, "open": 1 }))
            .then_some(())
    })
    .await;
    assert_eq!(
        command_totals(&app.get_json(&recent, &alice).await),
        json!({ "succeeded": 0, "failed": 0, "timed_out": 0, "open": 1 })
    );

    // Without a range: the last hour in 60 buckets.
    let default = app.get_json("/api/v1/devices/activity", &admin).await;
    assert_eq!(default["interval_ms"], 60_000);
    let n = default["buckets"].as_array().unwrap().len();
    assert!((60..=61).contains(&n), "{n} buckets");
}

#[tokio::test]
async fn activity_refuses_bad_ranges_and_strangers() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    for query in [
        "from=2000&to=1000",
        "from=yesterday",
        "interval=fast",
        "interval=500ms",
        "interval=0s",
        "interval=1s",
        "interval=90s",
        "from=0&to=2764800000&interval=1d",
        "from=-9223372036854775808&to=9223372036854775807&interval=1d",
    ] {
        let resp = app
            .request(
                Method::GET,
                &format!("/api/v1/devices/activity?{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let resp = app
        .request(Method::GET, "/api/v1/devices/activity", None, None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let nobody = app.user("nobody", &[]).await;
    let resp = app
        .request(Method::GET, "/api/v1/devices/activity", Some(&nobody), None)
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // "activity" is not a device id.
    let resp = app
        .request(
            Method::POST,
            "/api/v1/devices",
            Some(&admin),
            Some(json!({ "id": "activity", "name": "x" })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}
