//! Online and offline: on connect, on a polite disconnect, on a dropped
//! socket (last will), on keep-alive expiry, and from status messages.

use std::time::Duration;

use wf_common::contract::{BrokerHeartbeat, StatusChanged};

use crate::helpers::{TestApp, TestDevice, with_will};

async fn status_events(app: &TestApp) -> crate::helpers::Events<StatusChanged> {
    app.events::<StatusChanged>().await
}

fn assert_status(event: &StatusChanged, device: &str, online: bool, reason: &str) {
    assert_eq!(
        (
            event.device_id.as_str(),
            event.online,
            event.reason.as_str()
        ),
        (device, online, reason),
        "{event:?}"
    );
}

#[tokio::test]
async fn online_on_connect_and_offline_on_disconnect() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let d1 = app.device("d1", "s1").await;
    assert_status(&status.next().await, "d1", true, "connected");
    d1.disconnect().await;
    assert_status(&status.next().await, "d1", false, "disconnected");
}

#[tokio::test]
async fn a_dropped_connection_sends_the_last_will() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let opts = with_will(app.options("d1", "s1"), "devices/d1/status");
    let d1 = TestDevice::connect(opts).await.unwrap();
    assert_status(&status.next().await, "d1", true, "connected");
    d1.drop_connection();
    assert_status(&status.next().await, "d1", false, "last_will");
    // One offline event, not two.
    assert!(
        status
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_silent_device_goes_offline_when_its_keep_alive_expires() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let mut opts = app.options("d2", "s2");
    opts.set_keep_alive(Duration::from_secs(1));
    let mut d2 = TestDevice::connect(opts).await.unwrap();
    assert_status(&status.next().await, "d2", true, "connected");
    d2.go_silent();
    assert_status(&status.next().await, "d2", false, "disconnected");
}

#[tokio::test]
async fn a_reconnect_taking_over_the_session_leaves_the_device_online() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let first = app.device("d1", "s1").await;
    assert_status(&status.next().await, "d1", true, "connected");
    let second = app.device("d1", "s1").await;
    let mut events = vec![status.next().await];
    while let Some(e) = status.next_within(Duration::from_millis(300)).await {
        events.push(e);
    }
    // The old session ends while the new one starts; whatever the order,
    // the last word is that the device is online.
    let last = events.last().unwrap();
    assert_status(last, "d1", true, "connected");
    drop(first);
    second.disconnect().await;
    assert_status(&status.next().await, "d1", false, "disconnected");
}

#[tokio::test]
async fn status_messages_are_reported() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let d3 = app.device("d3", "s3").await;
    assert_status(&status.next().await, "d3", true, "connected");
    d3.publish("devices/d3/status", "offline").await;
    assert_status(&status.next().await, "d3", false, "status_message");
    d3.publish("devices/d3/status", "online").await;
    assert_status(&status.next().await, "d3", true, "status_message");
}

#[tokio::test]
async fn shutdown_reports_connected_devices_offline() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let _d1 = app.device("d1", "s1").await;
    assert_status(&status.next().await, "d1", true, "connected");
    app.stop().await;
    assert_status(&status.next().await, "d1", false, "disconnected");
}

#[tokio::test]
async fn a_credential_change_disconnects_the_device_and_marks_it_offline() {
    let app = TestApp::spawn().await;
    let mut status = status_events(&app).await;
    let mut d1 = app.device("d1", "s1").await;
    assert_status(&status.next().await, "d1", true, "connected");
    let mut d2 = app.device("d2", "s2").await;
    assert_status(&status.next().await, "d2", true, "connected");

    // d1's secret is rotated: its connection on the old one ends.
    app.sync("d1", "rotated").await.expect("sync accepted");
    assert!(d1.closed().await, "the session on the old secret was kept");
    let offline = status.next().await;
    assert_eq!((offline.device_id.as_str(), offline.online), ("d1", false));
    assert!(
        app.metrics()
            .await
            .contains("wf_mqtt_sessions_revoked_total 1"),
        "the revocation is counted"
    );

    // d2 is deleted (an empty secret): the same.
    app.sync("d2", "").await.expect("sync accepted");
    assert!(d2.closed().await, "a deleted device stayed connected");
    let offline = status.next().await;
    assert_eq!((offline.device_id.as_str(), offline.online), ("d2", false));

    // A device that is not connected: nothing to do, not an error.
    app.sync("d3", "whatever").await.expect("sync accepted");
}

/// Each gateway process is a broker instance of its own: it renews its
/// lease on the bus, and its status events name it, so that device-service
/// can take its devices offline if it dies without closing them.
#[tokio::test]
async fn an_embedded_broker_announces_its_lease_and_names_itself_in_status_events() {
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .broker_heartbeat_secs(1)
        .spawn()
        .await;
    let mut beats = app.events::<BrokerHeartbeat>().await;
    let first = beats.next().await;
    let second = beats.next().await;
    assert_eq!(first.broker, second.broker);
    assert_eq!(first.lease_ms, 3000);
    assert!(
        second.at - first.at >= 900,
        "heartbeats {} ms apart",
        second.at - first.at
    );
    let mut status = status_events(&app).await;
    let d1 = app.device("d1", "s1").await;
    let online = status.next().await;
    assert_status(&online, "d1", true, "connected");
    assert_eq!(online.broker.as_deref(), Some(first.broker.as_str()));
    // So do the device's own status messages, acknowledged or not.
    for qos in [rumqttc::QoS::AtMostOnce, rumqttc::QoS::AtLeastOnce] {
        d1.publish_qos("devices/d1/status", "online", qos).await;
        let said = status.next().await;
        assert_status(&said, "d1", true, "status_message");
        assert_eq!(said.broker.as_deref(), Some(first.broker.as_str()));
    }
    d1.disconnect().await;
    assert_eq!(
        status.next().await.broker.as_deref(),
        Some(first.broker.as_str())
    );

    // Another gateway process is another instance; with the heartbeat off,
    // status events name none.
    let other = TestApp::builder()
        .with_device("d2", "s2")
        .broker_heartbeat_secs(0)
        .spawn()
        .await;
    let mut status = status_events(&other).await;
    let _d2 = other.device("d2", "s2").await;
    assert_eq!(status.next().await.broker, None);
    let mut none = other.events::<BrokerHeartbeat>().await;
    assert!(
        none.next_within(Duration::from_millis(1500))
            .await
            .is_none()
    );
}
