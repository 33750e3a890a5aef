//! Device state over MQTT: reports and requests become events; what the
//! gateway cannot take is refused on `shadow/rejected`, and the
//! connection stays up.

use std::time::Duration;

use rumqttc::QoS;
use serde_json::{Value, json};
use wf_common::contract::{ShadowReported, ShadowRequested};

use crate::helpers::{TestApp, metric};

#[tokio::test]
async fn reports_and_requests_reach_the_bus_and_bad_ones_are_refused_to_the_device() {
    let app = TestApp::spawn().await;
    let mut reports = app.events::<ShadowReported>().await;
    let mut requests = app.events::<ShadowRequested>().await;
    let mut d1 = app.device("d1", "s1").await;
    assert!(d1.subscribe("devices/d1/shadow/rejected").await);

    d1.publish(
        "devices/d1/shadow/reported",
        json!({"fw_version": "1.0.0", "net": {"rssi": -70}}).to_string(),
    )
    .await;
    let report = reports.next().await;
    assert_eq!(report.device_id, "d1");
    assert_eq!(
        report.state,
        json!({"fw_version": "1.0.0", "net": {"rssi": -70}})
    );
    d1.publish("devices/d1/shadow/get", "").await;
    assert_eq!(requests.next().await.device_id, "d1");

    for (topic, payload, code) in [
        ("devices/d1/shadow/reported", &b"{not json"[..], "not_json"),
        ("devices/d1/shadow/reported", &b"[1, 2]"[..], "not_object"),
        (
            "devices/d1/shadow/desired",
            &br#"{"version": 9, "state": {}}"#[..],
            "not_allowed",
        ),
    ] {
        d1.publish_qos(topic, payload.to_vec(), QoS::AtMostOnce)
            .await;
        let refusal = d1.next_message().await;
        assert_eq!(refusal.topic, "devices/d1/shadow/rejected");
        let body: Value = serde_json::from_slice(&refusal.payload).unwrap();
        assert_eq!(body["code"], code, "{topic}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(
        reports
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing refused reached the bus"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"wf_shadow_updates_rejected_total{code="not_json"}"#
        ),
        1.0
    );

    // Another device's shadow is out of reach; the connection stays up.
    d1.publish("devices/d2/shadow/reported", r#"{"a": 1}"#)
        .await;
    d1.publish("devices/d1/shadow/reported", r#"{"ok": true}"#)
        .await;
    let next = reports.next().await;
    assert_eq!(
        (next.device_id.as_str(), next.state.clone()),
        ("d1", json!({"ok": true}))
    );
}
