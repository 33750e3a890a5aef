//! The external-broker mode against a real Mosquitto 2 with its
//! dynamic-security plugin: device credentials and ACLs kept in Mosquitto
//! through `SyncDeviceCredentials` and enforced by it, device messages
//! bridged to the event bus, platform publishes delivered, replicas sharing
//! the load, and the connection coming back after the broker restarts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, MqttOptions};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use wf_common::contract::{
    CommandResponded, MetricValue, OtaProgress, StatusChanged, TelemetryMessage,
};
use wf_proto::mqtt::{PublishMessageRequest, SubscribeTopicRequest};

use crate::helpers::{Events, TestApp, TestDevice, WAIT, with_will};
use crate::mosquitto_server::{ADMIN, ADMIN_PASSWORD, MosquittoServer};

async fn gateway(broker: &MosquittoServer) -> TestApp {
    TestApp::builder().mosquitto(broker).spawn().await
}

fn publish(topic: &str, payload: &str) -> PublishMessageRequest {
    PublishMessageRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos: 1,
        retain: false,
    }
}

/// How Mosquitto answers a CONNECT it refuses.
async fn refused(opts: MqttOptions) -> Option<ConnectReturnCode> {
    TestDevice::connect(opts).await.err()
}

fn number(t: &TelemetryMessage) -> f64 {
    match t.values[0].1 {
        MetricValue::Number(n) => n,
        ref other => panic!("not a number: {other:?}"),
    }
}

#[tokio::test]
async fn no_mqtt_port_is_bound_and_the_broker_is_ready() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    assert_eq!((app.mqtt_port, app.ws_port), (broker.port, 0));
    let (ready, body) = app.readiness().await;
    assert!(ready, "{body}");
}

#[tokio::test]
async fn without_dynsec_credential_syncs_are_left_to_the_operator() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = TestApp::builder()
        .mosquitto(&broker)
        .dynsec(false)
        .spawn()
        .await;
    app.sync("d1", "s1").await.expect("accepted");
    assert_eq!(
        refused(app.options("d1", "s1")).await,
        Some(ConnectReturnCode::NotAuthorized),
        "the gateway created a client in Mosquitto"
    );
}

#[tokio::test]
async fn synced_credentials_let_the_device_in_and_nothing_else() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    // Unknown to Mosquitto until synced.
    assert_eq!(
        refused(app.options("d1", "s1")).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    app.sync("d1", "s1").await.expect("synced");
    let _d1 = app.device("d1", "s1").await;
    assert_eq!(
        refused(app.options("d1", "wrong")).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    // d1's credentials under another client id.
    let mut as_d2 = app.options("d2", "s1");
    as_d2.set_credentials("d1", "s1");
    assert_eq!(refused(as_d2).await, Some(ConnectReturnCode::NotAuthorized));
    let anonymous = MqttOptions::new("d1", "127.0.0.1", app.mqtt_port);
    assert!(refused(anonymous).await.is_some());
}

#[tokio::test]
async fn a_new_secret_replaces_the_old_one_and_an_empty_one_locks_the_device_out() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "first").await.unwrap();
    let mut d1 = app.device("d1", "first").await;

    app.sync("d1", "second").await.unwrap();
    assert!(d1.closed().await, "the session on the old secret was kept");
    assert!(refused(app.options("d1", "first")).await.is_some());
    let mut d1 = app.device("d1", "second").await;

    app.sync("d1", "").await.unwrap();
    assert!(d1.closed().await, "the removed device stayed connected");
    assert_eq!(
        refused(app.options("d1", "second")).await,
        Some(ConnectReturnCode::NotAuthorized)
    );
    // Removing again is not an error.
    app.sync("d1", "").await.unwrap();
}

#[tokio::test]
async fn broker_accounts_wf_iot_does_not_manage_are_left_alone() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    // A device registered under the admin's name must not take it over.
    let err = app.sync(ADMIN, "takeover").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("does not manage"), "{err:?}");
    app.sync(ADMIN, "")
        .await
        .expect("nothing of wf-iot's to remove");
    let mut admin = MqttOptions::new("ops/1", "127.0.0.1", app.mqtt_port);
    admin.set_credentials(ADMIN, ADMIN_PASSWORD);
    TestDevice::connect(admin)
        .await
        .expect("the admin's password is unchanged");
    let err = app.sync("a/b", "x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_device_cannot_reach_other_devices_topics_or_the_broker_itself() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "s1").await.unwrap();
    app.sync("d2", "s2").await.unwrap();
    let mut telemetry = app.telemetry().await;
    let mut d1 = app.device("d1", "s1").await;
    let mut d2 = app.device("d2", "s2").await;
    for filter in [
        "#",
        "devices/#",
        "devices/+/telemetry",
        "devices/d2/commands",
        "$share/g/devices/+/telemetry",
        "$SYS/#",
        "$CONTROL/dynamic-security/#",
    ] {
        assert!(!d1.subscribe(filter).await, "{filter} was granted");
    }
    assert!(d1.subscribe("devices/d1/commands").await);
    assert!(d2.subscribe("devices/d2/#").await);

    // Neither a forged message nor a grant to itself gets through.
    d1.publish(
        "$CONTROL/dynamic-security/v1",
        json!({"commands": [{"command": "createClient", "username": "intruder", "password": "x"}]})
            .to_string(),
    )
    .await;
    d1.publish("devices/d2/telemetry", r#"{"forged": 1}"#).await;
    d1.publish("devices/d1/telemetry", r#"{"genuine": 1}"#)
        .await;
    let first = telemetry.next().await;
    assert_eq!(
        (first.device_id.as_str(), first.values[0].0.as_str()),
        ("d1", "genuine")
    );
    assert!(
        telemetry
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    // d2 sees its own message first: the forged one was never routed.
    d2.publish("devices/d2/status", "online").await;
    assert_eq!(d2.next_message().await.topic, "devices/d2/status");
    assert!(refused(app.options("intruder", "x")).await.is_some());
}

#[tokio::test]
async fn device_messages_become_events() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "s1").await.unwrap();
    let mut telemetry = app.telemetry().await;
    let mut responses = app.events::<CommandResponded>().await;
    let mut progress = app.events::<OtaProgress>().await;
    let d1 = app.device("d1", "s1").await;

    d1.publish("devices/d1/telemetry", "not json").await;
    let ts = wf_common::now_millis() - 60_000;
    d1.publish(
        "devices/d1/telemetry",
        json!({"temp": 21.5, "door": "open", "ts": ts}).to_string(),
    )
    .await;
    d1.publish(
        "devices/d1/commands/response",
        json!({"id": "cmd-1", "status": "succeeded", "result": {"uptime": 42}}).to_string(),
    )
    .await;
    d1.publish(
        "devices/d1/ota/progress",
        json!({"task_id": "t-1", "state": "downloading", "progress": 40.0}).to_string(),
    )
    .await;

    let t = telemetry.next().await;
    assert_eq!(t.device_id, "d1");
    assert_eq!(t.ts, ts);
    assert_eq!(
        crate::helpers::values(&t),
        [
            ("door", MetricValue::Text("open".into())),
            ("temp", MetricValue::Number(21.5)),
        ]
    );
    let r = responses.next().await;
    assert_eq!(
        (
            r.device_id.as_str(),
            r.command_id.as_str(),
            r.status.as_str()
        ),
        ("d1", "cmd-1", "succeeded")
    );
    assert_eq!(r.result, json!({"uptime": 42}));
    let p = progress.next().await;
    assert_eq!((p.task_id.as_str(), p.progress), ("t-1", Some(40.0)));
    let metrics = app.metrics().await;
    assert!(
        crate::helpers::metric(
            &metrics,
            "wf_mqtt_malformed_messages_total{reason=\"not_json\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn status_messages_and_the_last_will_report_online_and_offline() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "s1").await.unwrap();
    let mut status = app.events::<StatusChanged>().await;
    let opts = with_will(app.options("d1", "s1"), "devices/d1/status");
    let d1 = TestDevice::connect(opts).await.unwrap();
    d1.publish("devices/d1/status", "online").await;
    let online = status.next().await;
    assert_eq!(
        (online.device_id.as_str(), online.online),
        ("d1", true),
        "{online:?}"
    );
    // Mosquitto, not a gateway instance, holds the connection.
    assert_eq!(online.broker, None);
    // The socket drops without a DISCONNECT: Mosquitto sends the will.
    d1.drop_connection();
    let offline = status.next().await;
    assert_eq!(
        (offline.device_id.as_str(), offline.online),
        ("d1", false),
        "{offline:?}"
    );
    assert!(
        status
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn platform_publishes_reach_the_device_and_subscribers_see_its_messages() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "s1").await.unwrap();
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/commands").await);
    let mut grpc = app.grpc().await;

    let command = r#"{"id":"c1","name":"reboot","params":{}}"#;
    grpc.publish_message(publish("devices/d1/commands", command))
        .await
        .expect("published");
    let delivered = d1.next_message().await;
    assert_eq!(delivered.topic, "devices/d1/commands");
    assert_eq!(&delivered.payload[..], command.as_bytes());

    // The device's own topics are not the platform's to publish on.
    let err = grpc
        .publish_message(publish("devices/d1/telemetry", r#"{"temp": 99}"#))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut stream = grpc
        .subscribe_topic(SubscribeTopicRequest {
            topic_filter: "devices/+/telemetry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    d1.publish("devices/d1/telemetry", r#"{"temp": 5}"#).await;
    let msg = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream is open")
        .expect("a message, not an error");
    assert_eq!(msg.topic, "devices/d1/telemetry");
    assert_eq!(msg.payload, br#"{"temp": 5}"#);
}

#[tokio::test]
async fn replicas_in_one_shared_group_split_the_messages_without_duplicates() {
    const SENT: usize = 40;
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let a = TestApp::builder()
        .mosquitto(&broker)
        .client_id("wf-iot-gateway/a")
        .spawn()
        .await;
    let b = TestApp::builder()
        .mosquitto(&broker)
        .client_id("wf-iot-gateway/b")
        .spawn()
        .await;
    // Granting the gateway role reconnects every admin session once.
    a.wait_until_ready().await;
    b.wait_until_ready().await;
    a.sync("d1", "s1").await.unwrap();
    let mut from_a = a.telemetry().await;
    let mut from_b = b.telemetry().await;
    let d1 = a.device("d1", "s1").await;
    for n in 0..SENT {
        d1.publish("devices/d1/telemetry", format!(r#"{{"n": {n}}}"#))
            .await;
    }

    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while got_a.len() + got_b.len() < SENT && tokio::time::Instant::now() < deadline {
        let wait = Duration::from_millis(50);
        got_a.extend(take(&mut from_a, wait).await);
        got_b.extend(take(&mut from_b, wait).await);
    }
    // Nothing more arrives later either.
    got_a.extend(take(&mut from_a, Duration::from_millis(300)).await);
    got_b.extend(take(&mut from_b, Duration::from_millis(100)).await);

    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "one replica got everything: a {got_a:?}, b {got_b:?}"
    );
    let mut all: Vec<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(all.len(), SENT, "a {got_a:?}, b {got_b:?}");
    all.sort_unstable();
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), SENT, "duplicates: {all:?}");
    assert_eq!(all, (0..SENT as u64).collect::<Vec<_>>());
}

/// The telemetry numbers available within `wait`.
async fn take(events: &mut Events<TelemetryMessage>, wait: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(t) = events.next_within(wait).await {
        got.push(number(&t) as u64);
    }
    got
}

#[tokio::test]
async fn a_durable_gateway_gets_back_what_it_had_not_passed_on() {
    const CLIENT_ID: &str = "wf-iot-gateway/durable";
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let bus_down = Arc::new(AtomicBool::new(true));
    let first = TestApp::builder()
        .mosquitto(&broker)
        .client_id(CLIENT_ID)
        .durable_session()
        .bus_down_while(bus_down.clone())
        .spawn()
        .await;
    first.sync("d1", "s1").await.unwrap();
    let mut seen = first
        .grpc()
        .await
        .subscribe_topic(SubscribeTopicRequest {
            topic_filter: "devices/d1/telemetry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let d1 = first.device("d1", "s1").await;
    for n in 0..10 {
        d1.publish("devices/d1/telemetry", format!(r#"{{"n": {n}}}"#))
            .await;
    }
    // The gateway has every message, but cannot put its event on the bus.
    for _ in 0..10 {
        tokio::time::timeout(WAIT, seen.next())
            .await
            .expect("the gateway receives the message")
            .expect("the stream is open")
            .expect("a message");
    }
    drop(seen);
    first.stop().await;
    // More while no gateway is connected.
    for n in 10..20 {
        d1.publish("devices/d1/telemetry", format!(r#"{{"n": {n}}}"#))
            .await;
    }

    let second = TestApp::builder()
        .mosquitto(&broker)
        .client_id(CLIENT_ID)
        .durable_session()
        .spawn()
        .await;
    let mut events = second.telemetry().await;
    let mut got = take(&mut events, 2 * WAIT).await;
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_gateway_reconnects_after_the_broker_restarts() {
    let Some(mut broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let app = gateway(&broker).await;
    app.sync("d1", "s1").await.unwrap();

    broker.kill();
    let failing = app.wait_until_not_ready().await;
    assert!(
        failing["failing"]["mqtt_broker"]
            .as_str()
            .is_some_and(|m| m.contains("Mosquitto")),
        "{failing}"
    );
    let mut grpc = app.grpc().await;
    let err = grpc
        .publish_message(publish("devices/d1/commands", "{}"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        app.sync("d1", "s2").await.unwrap_err().code(),
        Code::Unavailable
    );

    broker.launch().await;
    app.wait_until_ready().await;
    // The device's credentials survived in Mosquitto's file; its
    // messages flow through the new connection.
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;
    d1.publish("devices/d1/telemetry", r#"{"after_restart": 1}"#)
        .await;
    assert_eq!(telemetry.next().await.values[0].0, "after_restart");
}

/// What `/readyz` says about the broker once it says something matching.
async fn broker_problem(app: &TestApp, matching: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ready, body) = app.readiness().await;
        assert!(!ready, "the gateway is ready: {body}");
        let problem = body["failing"]["mqtt_broker"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if problem.contains(matching) {
            return problem;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said {matching:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unreachable_or_refusing_broker_is_reported_not_ready() {
    let Some(broker) = MosquittoServer::start_or_skip().await else {
        return;
    };
    let wrong = TestApp::builder()
        .mosquitto_port(broker.port)
        .admin_password("not-the-password")
        .spawn()
        .await;
    let problem = broker_problem(&wrong, "refused the gateway's connection").await;
    assert!(problem.contains("admin_password"), "{problem}");

    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let away = TestApp::builder().mosquitto_port(port).spawn().await;
    broker_problem(
        &away,
        &format!("cannot reach Mosquitto at 127.0.0.1:{port}"),
    )
    .await;
    let err = away.sync("d1", "s1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
