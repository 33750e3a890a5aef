//! Device messages become events on the bus; malformed ones are counted
//! and never block the good ones.

use serde_json::json;
use wf_common::contract::{
    CommandOutcome, CommandResponded, Event, MetricValue, OtaProgress, OtaState, TelemetryBatch,
};
use wf_common::events::EventBus;

use rumqttc::QoS;
use std::time::Duration;

use crate::helpers::{TestApp, metric, values};

#[tokio::test]
async fn telemetry_arrives_on_the_bus_with_its_values_and_timestamp() {
    let app = TestApp::spawn().await;
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;

    let before = wf_common::now_millis();
    let an_hour_ago = before - 3_600_000;
    d1.publish(
        "devices/d1/telemetry",
        json!({"temp": 21.5, "door": "open", "alarm": false, "ts": an_hour_ago}).to_string(),
    )
    .await;
    d1.publish("devices/d1/telemetry", r#"{"temp": 22}"#).await;

    let first = telemetry.next().await;
    assert_eq!(first.device_id, "d1");
    assert_eq!(first.ts, an_hour_ago);
    assert_eq!(
        values(&first),
        [
            ("alarm", MetricValue::Bool(false)),
            ("door", MetricValue::Text("open".into())),
            ("temp", MetricValue::Number(21.5)),
        ]
    );
    let second = telemetry.next().await;
    assert_eq!(values(&second), [("temp", MetricValue::Number(22.0))]);
    assert!(
        second.ts >= before && second.ts <= wf_common::now_millis(),
        "a message without ts is stamped when received"
    );
}

#[tokio::test]
async fn telemetry_is_batched_into_arrays() {
    let app = TestApp::spawn().await;
    let d1 = app.device("d1", "s1").await;
    let mut events = app.events::<TelemetryBatch>().await;
    // At QoS 0 nobody waits for an acknowledgement, so batches linger
    // and fill up.
    for i in 0..200 {
        d1.publish_qos(
            "devices/d1/telemetry",
            format!(r#"{{"n": {i}}}"#),
            QoS::AtMostOnce,
        )
        .await;
    }
    let mut received = Vec::new();
    let mut event_count = 0;
    while received.len() < 200 {
        received.extend(events.next().await.messages);
        event_count += 1;
    }
    assert_eq!(received.len(), 200);
    assert!(
        event_count < 200,
        "{event_count} events for 200 messages: not batched"
    );
    let numbers: Vec<f64> = received
        .iter()
        .map(|t| match t.values[0].1 {
            MetricValue::Number(n) => n,
            _ => panic!("not a number"),
        })
        .collect();
    assert_eq!(
        numbers,
        (0..200).map(f64::from).collect::<Vec<_>>(),
        "order kept"
    );
}

#[tokio::test]
async fn malformed_and_oversized_messages_are_counted_and_dropped() {
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .max_payload_bytes(1024)
        .spawn()
        .await;
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;

    d1.publish("devices/d1/telemetry", "not json").await;
    d1.publish("devices/d1/telemetry", "[1, 2, 3]").await;
    d1.publish("devices/d1/telemetry", r#"{"nested": {"a": 1}}"#)
        .await;
    d1.publish(
        "devices/d1/telemetry",
        format!(r#"{{"big": "{}"}}"#, "x".repeat(2048)),
    )
    .await;
    d1.publish("devices/d1/what/is/this", r#"{"a": 1}"#).await;
    d1.publish("devices/d1/telemetry", r#"{"good": 1}"#).await;

    let next = telemetry.next().await;
    assert_eq!(values(&next), [("good", MetricValue::Number(1.0))]);

    let metrics = app.metrics().await;
    for reason in [
        "not_json",
        "not_object",
        "bad_value",
        "oversized",
        "unknown_topic",
    ] {
        let sample = format!("wf_mqtt_malformed_messages_total{{reason=\"{reason}\"}}");
        assert!(metric(&metrics, &sample) >= 1.0, "{sample} not counted");
    }
    assert!(
        metric(
            &metrics,
            "wf_mqtt_messages_received_total{kind=\"telemetry\"}"
        ) >= 5.0
    );
    assert!(
        metric(
            &metrics,
            "wf_mqtt_events_published_total{topic=\"device.data.received\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn command_responses_become_command_responded_events() {
    let app = TestApp::spawn().await;
    let mut responses = app.events::<CommandResponded>().await;
    let d2 = app.device("d2", "s2").await;

    d2.publish(
        "devices/d2/commands/response",
        json!({"id": "cmd-1", "status": "succeeded", "result": {"uptime": 42}}).to_string(),
    )
    .await;
    d2.publish(
        "devices/d2/commands/response",
        json!({"id": "cmd-2", "status": "exploded"}).to_string(),
    )
    .await;

    let ok = responses.next().await;
    assert_eq!(ok.device_id, "d2");
    assert_eq!(ok.command_id, "cmd-1");
    assert_eq!(ok.status, CommandOutcome::Succeeded);
    assert_eq!(ok.result, json!({"uptime": 42}));
    let failed = responses.next().await;
    assert_eq!(failed.command_id, "cmd-2");
    assert_eq!(failed.status, CommandOutcome::Failed);
}

#[tokio::test]
async fn ota_progress_becomes_ota_progress_events() {
    let app = TestApp::spawn().await;
    let mut progress = app.events::<OtaProgress>().await;
    let d3 = app.device("d3", "s3").await;
    // A state no rollout knows is refused as malformed, not passed on.
    d3.publish(
        "devices/d3/ota/progress",
        json!({"task_id": "t-8", "state": "rebooting"}).to_string(),
    )
    .await;
    d3.publish(
        "devices/d3/ota/progress",
        json!({"task_id": "t-9", "state": "downloading", "progress": 40.0, "version": "1.2.0"})
            .to_string(),
    )
    .await;
    let p = progress.next().await;
    assert_eq!(p.device_id, "d3");
    assert_eq!(p.task_id, "t-9");
    assert_eq!(p.state, OtaState::Downloading);
    assert_eq!(p.progress, Some(40.0));
    assert_eq!(p.version.as_deref(), Some("1.2.0"));
    assert_eq!(p.error, None);
    assert!(
        metric(
            &app.metrics().await,
            "wf_mqtt_malformed_messages_total{reason=\"bad_value\"}"
        ) >= 1.0
    );
    // Said the way some devices say it, passed on in the one form.
    d3.publish(
        "devices/d3/ota/progress",
        json!({"task_id": "t-9", "state": "SUCCESS", "version": "1.2.0"}).to_string(),
    )
    .await;
    assert_eq!(progress.next().await.state, OtaState::Succeeded);
}

#[tokio::test]
async fn a_qos1_message_is_acknowledged_only_once_every_consumer_has_handled_it() {
    let app = TestApp::spawn().await;
    // Two consumer groups: device-service and another reader, say.
    let mut telemetry = app.telemetry().await;
    let mut other = app.telemetry().await;
    let mut d1 = app.device("d1", "s1").await;

    d1.publish("devices/d1/telemetry", r#"{"t": 1}"#).await;
    assert!(
        !d1.puback_within(Duration::from_millis(500)).await,
        "acknowledged before anyone handled it"
    );
    // One group handled (and acknowledged) it; the other has not yet.
    assert_eq!(telemetry.next().await.device_id, "d1");
    assert!(
        !d1.puback_within(Duration::from_millis(500)).await,
        "acknowledged before every group handled it"
    );
    assert_eq!(other.next().await.device_id, "d1");
    assert!(
        d1.puback_within(Duration::from_secs(5)).await,
        "never acknowledged"
    );
}

#[tokio::test]
async fn a_device_sends_on_while_its_messages_wait_and_their_acknowledgements_keep_its_order() {
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .batch_max_messages(1)
        .spawn()
        .await;
    // The only consumer group, read without acknowledging: nothing is
    // stored until the test says so.
    let mut store = app
        .bus
        .subscribe(TelemetryBatch::TOPIC, "store", "c")
        .await
        .unwrap();
    let mut d1 = app.device("d1", "s1").await;
    for n in 0..5 {
        d1.publish("devices/d1/telemetry", json!({ "n": n }).to_string())
            .await;
    }
    // All five reach the bus although the first is not stored: the
    // connection was not held to one message at a time.
    let mut deliveries = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deliveries.len() < 5 && tokio::time::Instant::now() < deadline {
        deliveries.extend(store.next(10, Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(deliveries.len(), 5, "one event per message");
    assert_eq!(d1.puback_id_within(Duration::from_millis(300)).await, None);

    // The last four are stored: still nothing, the first comes first.
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    store.ack(&ids[1..]).await.unwrap();
    assert_eq!(
        d1.puback_id_within(Duration::from_millis(500)).await,
        None,
        "acknowledged out of order"
    );
    // Once the first is stored, all five are acknowledged, in order.
    store.ack(&ids[..1]).await.unwrap();
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(
            d1.puback_id_within(Duration::from_secs(5))
                .await
                .expect("a PUBACK"),
        );
    }
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    assert_eq!(acked, sorted, "PUBACKs out of order");
}

#[tokio::test]
async fn a_message_that_is_not_stored_in_time_is_never_acknowledged() {
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .durable_ack_timeout_ms(300)
        .spawn()
        .await;
    // A consumer group that never handles what it is given.
    let _stuck = app.telemetry().await;
    let mut d1 = app.device("d1", "s1").await;

    d1.publish("devices/d1/telemetry", r#"{"t": 1}"#).await;
    assert!(
        !d1.puback_within(Duration::from_secs(2)).await,
        "acknowledged although never stored"
    );
    assert!(d1.closed().await, "the connection was not closed");
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "wf_mqtt_messages_unacknowledged_total{reason=\"timeout\"}"
        ) >= 1.0,
        "not counted: {metrics}"
    );
}

#[tokio::test]
async fn a_burst_without_timestamps_gets_a_distinct_stamp_per_message() {
    let app = TestApp::spawn().await;
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;
    let before = wf_common::now_millis();
    // QoS 0: nothing waits for storage, so the whole burst is received
    // within a millisecond or two.
    for i in 0..50 {
        d1.publish_qos(
            "devices/d1/telemetry",
            format!(r#"{{"n": {i}}}"#),
            QoS::AtMostOnce,
        )
        .await;
    }
    let mut stamps = Vec::new();
    for _ in 0..50 {
        stamps.push(telemetry.next().await.ts);
    }
    let after = wf_common::now_millis();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "receive stamps must grow strictly per device: {stamps:?}"
    );
    assert!(stamps[0] >= before, "stamped on receipt");
    assert!(
        stamps[49] <= after + 50,
        "stamps stay close to the receive time: {stamps:?}"
    );
}

#[tokio::test]
async fn timestamps_outside_the_accepted_window_are_refused_and_counted() {
    let app = TestApp::spawn().await;
    let mut telemetry = app.telemetry().await;
    let d1 = app.device("d1", "s1").await;
    // Metrics are the process's: other tests count too.
    let refused = |text: &str| {
        metric(
            text,
            "wf_mqtt_malformed_messages_total{reason=\"ts_out_of_range\"}",
        )
    };
    let refused_before = refused(&app.metrics().await);
    let now = wf_common::now_millis();
    let far_future = now + 3_600_000;
    let ancient = 1_000_i64;
    d1.publish(
        "devices/d1/telemetry",
        json!({"t": 1, "ts": far_future}).to_string(),
    )
    .await;
    d1.publish(
        "devices/d1/telemetry",
        json!({"t": 2, "ts": ancient}).to_string(),
    )
    .await;
    d1.publish(
        "devices/d1/telemetry",
        json!({"t": 3, "ts": i64::MAX}).to_string(),
    )
    .await;
    d1.publish(
        "devices/d1/telemetry",
        json!({"t": 4, "ts": now}).to_string(),
    )
    .await;
    let accepted = telemetry.next().await;
    assert_eq!(
        values(&accepted),
        [("t", MetricValue::Number(4.0))],
        "only the value inside the window reaches the bus"
    );
    assert_eq!(accepted.ts, now);
    assert_eq!(refused(&app.metrics().await) - refused_before, 3.0);
}

/// The PUBACK an MQTT 5 device gets for one QoS 1 message.
async fn v5_puback(
    app: &TestApp,
    topic: &str,
    payload: Vec<u8>,
) -> rumqttc::v5::mqttbytes::v5::PubAck {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    // A reconnect right after the previous connection may find the old
    // session still being retired: try again, as a device would.
    for _ in 0..10 {
        let mut options = MqttOptions::new("d1", "127.0.0.1", app.mqtt_port);
        options.set_credentials("d1", "s1");
        options.set_max_packet_size(Some(16 * 1024 * 1024));
        let (client, mut events) = AsyncClient::new(options, 10);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, events.poll())
                .await
                .expect("an answer in time");
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        break;
                    }
                    client
                        .publish(
                            topic,
                            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => return ack,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no PUBACK for {topic}");
}

#[tokio::test]
async fn mqtt5_devices_learn_why_a_message_was_refused() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .max_payload_bytes(1024)
        .spawn()
        .await;
    let mut telemetry = app.telemetry().await;
    let cases = [
        (
            "devices/d1/telemetry",
            b"not json".to_vec(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "devices/d1/telemetry",
            br#"{"a": {"deep": 1}}"#.to_vec(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "devices/d1/telemetry",
            vec![b'1'; 2048],
            PubAckReason::QuotaExceeded,
        ),
        (
            "devices/d2/telemetry",
            br#"{"a": 1}"#.to_vec(),
            PubAckReason::NotAuthorized,
        ),
    ];
    for (topic, payload, reason) in cases {
        let ack = v5_puback(&app, topic, payload).await;
        assert_eq!(ack.reason, reason, "{topic}");
    }
    // A good message is still stored and acknowledged with success.
    let good = tokio::spawn(async move { telemetry.next().await });
    let ack = v5_puback(&app, "devices/d1/telemetry", br#"{"a": 1}"#.to_vec()).await;
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(good.await.unwrap().device_id, "d1");
}
