//! The platform's gRPC API: trusted publish to devices, live subscriptions,
//! credential sync, health and reflection.

use std::sync::atomic::Ordering;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;
use wf_proto::mqtt::{PublishMessageRequest, SubscribeTopicRequest, SyncDeviceCredentialsRequest};

use crate::helpers::{TestApp, WAIT};

async fn client(app: &TestApp) -> MqttGatewayClient<wf_common::grpc::InternalChannel> {
    MqttGatewayClient::new(app.grpc_channel())
}

fn publish(topic: &str, payload: &str, qos: u32) -> PublishMessageRequest {
    PublishMessageRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos,
        retain: false,
    }
}

#[tokio::test]
async fn publish_message_reaches_the_subscribed_device() {
    let app = TestApp::spawn().await;
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/commands").await);
    let command = r#"{"id":"c1","name":"reboot","params":{}}"#;
    client(&app)
        .await
        .publish_message(publish("devices/d1/commands", command, 1))
        .await
        .expect("published");
    let delivered = d1.next_message().await;
    assert_eq!(delivered.topic, "devices/d1/commands");
    assert_eq!(&delivered.payload[..], command.as_bytes());
}

#[tokio::test]
async fn a_caller_without_the_internal_token_cannot_command_devices() {
    let app = TestApp::spawn().await;
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/commands").await);
    let refused = |text: &str| {
        crate::helpers::metric(
            text,
            "wf_grpc_unauthenticated_total{service=\"mqtt-gateway\"}",
        )
    };
    let refused_before = refused(&app.metrics().await);
    let plain = tonic::transport::Endpoint::from_shared(app.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let command = r#"{"id":"c1","name":"unlock","params":{}}"#;
    let err = MqttGatewayClient::new(plain.clone())
        .publish_message(publish("devices/d1/commands", command, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let forged = wf_common::grpc::InternalToken::parse("guessed-internal-token").unwrap();
    let err = MqttGatewayClient::new(
        wf_common::grpc::internal_channel(&app.grpc_url(), &forged).unwrap(),
    )
    .subscribe_topic(SubscribeTopicRequest {
        topic_filter: "devices/+/telemetry".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), d1.next_message())
            .await
            .is_err(),
        "the refused command reached the device"
    );
    // Health checks stay open to probes.
    let status = HealthClient::new(plain)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    assert_eq!(refused(&app.metrics().await) - refused_before, 2.0);
}

#[tokio::test]
async fn publish_message_refuses_anything_but_device_topics() {
    let app = TestApp::builder().max_payload_bytes(64).spawn().await;
    let mut grpc = client(&app).await;
    for topic in [
        "$SYS/broker",
        "alerts",
        "devices/d1",
        "devices/+/commands",
        "devices/d/1/#",
        "",
        // The device's own upstream topics.
        "devices/d1/telemetry",
        "devices/d1/status",
        "devices/d1/commands/response",
    ] {
        let err = grpc
            .publish_message(publish(topic, "x", 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{topic:?}");
    }
    let err = grpc
        .publish_message(publish("devices/d1/commands", "x", 3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = grpc
        .publish_message(publish("devices/d1/commands", &"x".repeat(65), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn subscribe_topic_streams_matching_device_messages() {
    let app = TestApp::spawn().await;
    let mut stream = client(&app)
        .await
        .subscribe_topic(SubscribeTopicRequest {
            topic_filter: "devices/+/telemetry".into(),
        })
        .await
        .expect("subscribed")
        .into_inner();
    let d1 = app.device("d1", "s1").await;
    let d2 = app.device("d2", "s2").await;
    d1.publish("devices/d1/status", "online").await;
    d2.publish("devices/d2/telemetry", r#"{"temp": 5}"#).await;

    let msg = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream is open")
        .expect("a message, not an error");
    assert_eq!(msg.topic, "devices/d2/telemetry");
    assert_eq!(msg.payload, br#"{"temp": 5}"#);
    assert_eq!(msg.qos, 1);
    assert!(msg.received_at > 0);

    let err = client(&app)
        .await
        .subscribe_topic(SubscribeTopicRequest {
            topic_filter: "devices/#/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn sync_device_credentials_drops_remembered_authentications() {
    let app = TestApp::spawn().await;
    app.device("d1", "s1").await.disconnect().await;
    assert_eq!(app.auth_calls.load(Ordering::SeqCst), 1);
    let mut grpc = client(&app).await;
    grpc.sync_device_credentials(SyncDeviceCredentialsRequest {
        device_id: "d1".into(),
        secret: "new".into(),
    })
    .await
    .expect("accepted");
    // The next CONNECT asks device-service again.
    app.device("d1", "s1").await.disconnect().await;
    assert_eq!(app.auth_calls.load(Ordering::SeqCst), 2);
    let err = grpc
        .sync_device_credentials(SyncDeviceCredentialsRequest {
            device_id: "a/b".into(),
            secret: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn health_reports_serving() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects");
    let mut health = HealthClient::new(channel);
    let reply = health
        .check(HealthCheckRequest {
            service: "wfiot.mqtt.v1.MqttGateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);
}
