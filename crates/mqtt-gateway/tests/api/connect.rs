//! Who may connect, and where a device may publish and subscribe.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::ConnectReturnCode;

use crate::helpers::{TestApp, TestDevice, with_will};

#[tokio::test]
async fn connections_that_never_complete_their_connect_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::builder()
        .with_device("d1", "s1")
        .connect_timeout_secs(1)
        .spawn()
        .await;
    let addr = format!("127.0.0.1:{}", app.mqtt_port);
    // Silent sockets, and sockets that stop in the middle of a CONNECT
    // (fixed header, then part of the protocol name).
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x10, 0x10, 0x00, 0x04, b'M']).await.unwrap();
        }
        idle.push(s);
    }
    // A device connecting meanwhile is served.
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/commands").await);
    let started = std::time::Instant::now();
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("socket {i} still open after 10 s"));
        // Closed (EOF), possibly after a refusing CONNACK, or reset.
        if let Ok(n) = read {
            assert!(n == 0 || buf[0] == 0x20, "socket {i} got {:?}", &buf[..n]);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The device that did connect is not affected.
    assert!(d1.subscribe("devices/d1/commands").await);
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_unanswered_connections() {
    use tokio::io::AsyncReadExt;

    let app = TestApp::builder()
        .with_device("d1", "s1")
        .with_device("d2", "s2")
        .max_unanswered_connections_per_ip(3)
        .spawn()
        .await;
    let addr = format!("127.0.0.1:{}", app.mqtt_port);
    // Connected devices hold nothing.
    let mut d1 = app.device("d1", "s1").await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The fourth unanswered connection of this address is closed at once.
    let mut fourth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf))
        .await
        .expect("the fourth connection was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The silent ones are still open: they wait for their timeout.
    for s in &silent {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), s.readable())
                .await
                .is_err()
        );
    }
    // Once they are gone, devices connect again; the one connected all
    // along was never affected.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d2 = app.device("d2", "s2").await;
    assert!(d2.subscribe("devices/d2/commands").await);
    assert!(d1.subscribe("devices/d1/commands").await);
}

#[tokio::test]
async fn a_device_connects_with_its_id_and_secret() {
    let app = TestApp::spawn().await;
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/commands").await);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() {
    let app = TestApp::spawn().await;
    let refused = |opts| async move { TestDevice::connect(opts).await.err() };
    assert_eq!(
        refused(app.options("d1", "not-the-secret")).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        refused(app.options("unknown", "s1")).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    let anonymous = rumqttc::MqttOptions::new("d1", "127.0.0.1", app.mqtt_port);
    assert_eq!(
        refused(anonymous).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
}

#[tokio::test]
async fn the_client_id_must_be_the_username() {
    let app = TestApp::spawn().await;
    // d2's credentials, presented under d1's client id, would take over
    // d1's session.
    let mut opts = app.options("d1", "s2");
    opts.set_credentials("d2", "s2");
    assert_eq!(
        TestDevice::connect(opts).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let bad_id = app.options("d1/x", "s1");
    assert!(TestDevice::connect(bad_id).await.is_err());
}

#[tokio::test]
async fn a_last_will_on_another_devices_topic_is_refused_at_connect() {
    let app = TestApp::spawn().await;
    let opts = with_will(app.options("d1", "s1"), "devices/d2/status");
    assert_eq!(
        TestDevice::connect(opts).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let opts = with_will(app.options("d1", "s1"), "devices/d1/status");
    assert!(TestDevice::connect(opts).await.is_ok());
}

#[tokio::test]
async fn subscriptions_outside_the_devices_own_topics_are_refused() {
    let app = TestApp::spawn().await;
    let mut d1 = app.device("d1", "s1").await;
    for filter in [
        "#",
        "devices/+/telemetry",
        "devices/#",
        "devices/d2/commands",
        "$SYS/#",
    ] {
        assert!(!d1.subscribe(filter).await, "{filter} was granted");
    }
    assert!(d1.subscribe("devices/d1/#").await);
}

#[tokio::test]
async fn publishing_on_another_devices_topic_reaches_neither_the_bus_nor_that_device() {
    let app = TestApp::spawn().await;
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;
    let mut d2 = app.device("d2", "s2").await;
    assert!(d2.subscribe("devices/d2/#").await);

    d1.publish("devices/d2/telemetry", r#"{"forged": 1}"#).await;
    d1.publish("devices/d1/telemetry", r#"{"genuine": 1}"#)
        .await;
    let first = telemetry.next().await;
    assert_eq!(first.device_id, "d1");
    assert_eq!(first.values[0].0, "genuine");

    // d2 sees its own message first: the forged one was never routed.
    d2.publish("devices/d2/telemetry", r#"{"own": 1}"#).await;
    assert_eq!(telemetry.next().await.device_id, "d2");
    let seen = d2.next_message().await;
    assert_eq!(seen.topic, "devices/d2/telemetry");
}

#[tokio::test]
async fn successful_authentications_are_cached() {
    let app = TestApp::spawn().await;
    app.device("d1", "s1").await.disconnect().await;
    app.device("d1", "s1").await.disconnect().await;
    assert_eq!(app.auth_calls.load(Ordering::SeqCst), 1);
    // A different secret is not served from the cache.
    assert!(
        TestDevice::connect(app.options("d1", "other"))
            .await
            .is_err()
    );
    assert_eq!(app.auth_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn devices_connect_over_websocket_too() {
    let app = TestApp::spawn().await;
    assert_ne!(app.ws_port, 0);
    let mut telemetry = app.telemetry().await;
    let device = TestDevice::connect(app.ws_options("d3", "s3"))
        .await
        .expect("accepted over WebSocket");
    device
        .publish("devices/d3/telemetry", r#"{"rssi": -70}"#)
        .await;
    assert_eq!(telemetry.next().await.device_id, "d3");
    assert!(
        TestDevice::connect(app.ws_options("d3", "wrong"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mqtt_5_devices_follow_the_same_rules() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};

    let app = TestApp::spawn().await;
    let mut telemetry = app.telemetry().await;
    let connect = |id: &str, user: &str, secret: &str| {
        let mut opts = MqttOptions::new(id, "127.0.0.1", app.mqtt_port);
        opts.set_credentials(user, secret);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        async move {
            loop {
                match tokio::time::timeout(crate::helpers::WAIT, eventloop.poll())
                    .await
                    .expect("CONNACK in time")
                {
                    Ok(Event::Incoming(V5Packet::ConnAck(_))) => return Ok((client, eventloop)),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("connecting failed: {e}"),
                }
            }
        }
    };
    assert_eq!(
        connect("d1", "d1", "wrong").await.err(),
        Some(V5Code::BadUserNamePassword)
    );
    assert_eq!(
        connect("d1", "d2", "s2").await.err(),
        Some(V5Code::NotAuthorized)
    );
    let (client, mut eventloop) = connect("d1", "d1", "s1").await.expect("accepted");
    client
        .publish(
            "devices/d2/telemetry",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"x": 1}"#,
        )
        .await
        .unwrap();
    client
        .publish(
            "devices/d1/telemetry",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"v5": 1}"#,
        )
        .await
        .unwrap();
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let received = telemetry.next().await;
    assert_eq!(received.device_id, "d1");
    assert_eq!(received.values[0].0, "v5");
    pump.abort();
}
