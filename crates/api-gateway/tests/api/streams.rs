//! Live device streams (Server-Sent Events) fed by the event bus.

use std::time::Duration;

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use wf_common::contract::{
    CommandOutcome, CommandResponded, MetricName, MetricValue, ShadowSection, ShadowSource,
    ShadowUpdated, StatusChanged, TelemetryBatch, TelemetryMessage,
};
use wf_common::events::EventBus;
use wf_common::shutdown::Shutdown;

use crate::helpers::{EventReader, TestApp, assert_error, now_secs};

const WAIT: Duration = Duration::from_secs(10);

async fn open(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn name(metric: &str) -> MetricName {
    MetricName::parse(metric).unwrap()
}

fn status(device_id: &str, online: bool) -> StatusChanged {
    StatusChanged::plain(device_id, online, wf_common::now_millis())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stream_delivers_its_events_as_they_happen() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Boiler").await;
    let other = app.device(&app.admin_token, "Pump").await;
    let mut events = EventReader::new(
        open(
            &app,
            &format!("/api/v1/devices/{id}/stream"),
            &app.admin_token,
        )
        .await,
    );
    let ready = events.next_named("ready", WAIT).await.expect("ready");
    assert_eq!(ready.json()["device_id"], id.as_str());

    let reading = |device: &str, temp: f64| TelemetryMessage {
        device_id: device.into(),
        ts: wf_common::now_millis(),
        values: vec![
            (name("temp"), MetricValue::Number(temp)),
            (name("burner"), MetricValue::Bool(true)),
        ],
    };
    // Another device's reading comes first and must not show up.
    app.publish(&[TelemetryBatch {
        messages: vec![reading(&other, 99.0), reading(&id, 21.5)],
    }])
    .await;
    let telemetry = events.next(WAIT).await.expect("telemetry");
    assert_eq!(telemetry.event, "telemetry");
    let data = telemetry.json();
    assert_eq!(data["device_id"], id.as_str());
    assert_eq!(data["values"], json!({"temp": 21.5, "burner": true}));

    app.publish(&[status(&id, true)]).await;
    let online = events.next(WAIT).await.expect("status");
    assert_eq!(online.event, "status");
    assert_eq!(online.json()["online"], true);

    app.publish(&[CommandResponded {
        device_id: id.clone(),
        command_id: "cmd-1".into(),
        status: CommandOutcome::Succeeded,
        result: json!({"rebooted": true}),
        at: wf_common::now_millis(),
    }])
    .await;
    let answer = events.next(WAIT).await.expect("command response");
    assert_eq!(answer.event, "command_response");
    assert_eq!(answer.json()["command_id"], "cmd-1");
    assert_eq!(answer.json()["result"], json!({"rebooted": true}));

    app.publish(&[ShadowUpdated {
        device_id: id.clone(),
        version: 4,
        section: ShadowSection::Desired,
        source: ShadowSource::User,
        actor: Some("u-1".into()),
        changes: json!({"sampling_ms": 500}),
        delta: json!({"sampling_ms": 500}),
        at: wf_common::now_millis(),
    }])
    .await;
    let shadow = events.next(WAIT).await.expect("shadow change");
    assert_eq!(shadow.event, "shadow");
    let data = shadow.json();
    assert_eq!(
        (
            data["version"].clone(),
            data["section"].clone(),
            data["source"].clone()
        ),
        (json!(4), json!("desired"), json!("user"))
    );
    assert_eq!(data["delta"], json!({"sampling_ms": 500}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stream_accepts_the_token_in_the_query() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Boiler").await;
    let resp = app
        .client
        .get(format!(
            "{}/api/v1/devices/{id}/stream?access_token={}",
            app.base, app.admin_token
        ))
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(resp);
    assert!(events.next_named("ready", WAIT).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stream_is_refused_to_those_who_may_not_see_the_device() {
    let app = TestApp::spawn().await;
    app.role("own-operators", "own", &["device:read", "device:write"])
        .await;
    let alice = app.user("alice", &["own-operators"]).await;
    let bob = app.user("bob", &["own-operators"]).await;
    let vera = app.user("vera", &["viewer"]).await;
    let nobody = app.user("nobody", &[]).await;
    let id = app.device(&alice, "Alice's boiler").await;

    // Another owner's device does not exist for bob, whose role reaches
    // his own devices only, as in the REST API.
    let resp = open(&app, &format!("/api/v1/devices/{id}/stream"), &bob).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    // Without device:read: forbidden.
    let resp = open(&app, &format!("/api/v1/devices/{id}/stream"), &nobody).await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    // Without a token: unauthorized.
    let resp = app
        .client
        .get(format!("{}/api/v1/devices/{id}/stream", app.base))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The owner, the admin and a role reaching the fleet may watch.
    for token in [&alice, &app.admin_token, &vera] {
        let mut events =
            EventReader::new(open(&app, &format!("/api/v1/devices/{id}/stream"), token).await);
        assert!(events.next_named("ready", WAIT).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stream_shows_each_user_the_devices_their_role_reaches() {
    let app = TestApp::spawn().await;
    app.role("own-operators", "own", &["device:read", "device:write"])
        .await;
    let alice = app.user("alice", &["own-operators"]).await;
    let vera = app.user("vera", &["viewer"]).await;
    let nobody = app.user("nobody", &[]).await;
    let hers = app.device(&alice, "Alice's boiler").await;
    let admins = app.device(&app.admin_token, "Admin's pump").await;

    let mut alice_events = EventReader::new(open(&app, "/api/v1/devices/stream", &alice).await);
    let mut admin_events =
        EventReader::new(open(&app, "/api/v1/devices/stream", &app.admin_token).await);
    let mut vera_events = EventReader::new(open(&app, "/api/v1/devices/stream", &vera).await);
    assert!(alice_events.next_named("ready", WAIT).await.is_some());
    assert!(admin_events.next_named("ready", WAIT).await.is_some());
    assert!(vera_events.next_named("ready", WAIT).await.is_some());

    app.publish(&[status(&admins, true), status(&hers, true)])
        .await;
    // Telemetry is not part of the fleet stream.
    app.publish(&[TelemetryBatch {
        messages: vec![TelemetryMessage {
            device_id: hers.clone(),
            ts: wf_common::now_millis(),
            values: vec![(name("temp"), MetricValue::Number(1.0))],
        }],
    }])
    .await;
    let first = alice_events.next(WAIT).await.expect("alice's status");
    assert_eq!(first.event, "status");
    assert_eq!(first.json()["device_id"], hers.as_str());

    for events in [&mut admin_events, &mut vera_events] {
        let a = events.next(WAIT).await.expect("first on the fleet");
        let b = events.next(WAIT).await.expect("second on the fleet");
        assert_eq!(a.json()["device_id"], admins.as_str());
        assert_eq!(b.json()["device_id"], hers.as_str());
    }

    // A device created after the stream opened shows up too.
    let newer = app.device(&alice, "Alice's new sensor").await;
    app.publish(&[status(&admins, false), status(&newer, true)])
        .await;
    let next = alice_events
        .next(WAIT)
        .await
        .expect("the new device's status");
    assert_eq!(next.event, "status");
    assert_eq!(next.json()["device_id"], newer.as_str());

    // Without device:read there is no fleet stream.
    let resp = open(&app, "/api/v1/devices/stream", &nobody).await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Boiler").await;
    let short = app.resign(&app.admin_token, &app.signing_key(), |c| {
        c["exp"] = json!(now_secs() + 2);
    });
    let mut events =
        EventReader::new(open(&app, &format!("/api/v1/devices/{id}/stream"), &short).await);
    let ready = events.next_named("ready", WAIT).await.expect("ready");
    assert!(ready.json()["expires_in_secs"].as_u64().unwrap() <= 2);
    let expired = events.next(WAIT).await.expect("expired");
    assert_eq!(expired.event, "expired");
    assert!(events.next(Duration::from_secs(3)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_access_is_withdrawn() {
    let app = TestApp::builder()
        .configure(|c| c.stream_recheck_secs = 1)
        .spawn()
        .await;
    let alice = app.user("alice", &["operator"]).await;
    let id = app.device(&alice, "Alice's boiler").await;
    let mut events =
        EventReader::new(open(&app, &format!("/api/v1/devices/{id}/stream"), &alice).await);
    assert!(events.next_named("ready", WAIT).await.is_some());
    let resp = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert!(resp.status().is_success());
    let revoked = events.next_named("revoked", WAIT).await.expect("revoked");
    assert_eq!(revoked.json()["status"], 404);
    assert!(events.next(Duration::from_secs(3)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_gateway_ends_open_streams() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Boiler").await;
    let gateway = api_gateway::Application::build(
        Arc::new(app.config()),
        app.bus.clone() as Arc<dyn EventBus>,
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", gateway.http_port());
    let stop = Shutdown::new();
    let running = tokio::spawn(gateway.run_until_stopped(stop.wait()));
    let resp = app
        .client
        .get(format!("{base}/api/v1/devices/{id}/stream"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(resp);
    assert!(events.next_named("ready", WAIT).await.is_some());
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the gateway should stop while a stream is open")
        .unwrap()
        .unwrap();
    assert!(events.next(Duration::from_secs(2)).await.is_none());
}
