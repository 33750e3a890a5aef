//! Telemetry stored from `device.data.received` events, and its queries.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::contract::{Event, MetricName, MetricValue, TelemetryBatch, TelemetryMessage};
use wf_common::events::EventBus;

use crate::helpers::{TestApp, assert_error, eventually};

pub(crate) fn message(device: &str, ts: i64, values: &[(&str, MetricValue)]) -> TelemetryMessage {
    TelemetryMessage {
        device_id: device.into(),
        ts,
        values: values
            .iter()
            .map(|(k, v)| (MetricName::parse(k).unwrap(), v.clone()))
            .collect(),
    }
}

pub(crate) fn batch(messages: Vec<TelemetryMessage>) -> TelemetryBatch {
    TelemetryBatch { messages }
}

const T0: i64 = 1_789_999_980_000; // a whole minute since the epoch

#[tokio::test]
async fn stored_telemetry_answers_latest_raw_and_aggregated_queries() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "th-1", "name": "Thermo" }))
        .await;

    // Two minutes of readings, one every 10 s: temp = 20 + i, plus a
    // boolean and a string that change.
    let readings: Vec<TelemetryMessage> = (0..12)
        .map(|i| {
            message(
                "th-1",
                T0 + i * 10_000,
                &[
                    ("temp", MetricValue::Number(20.0 + i as f64)),
                    ("door_open", MetricValue::Bool(i % 2 == 0)),
                    (
                        "mode",
                        MetricValue::Text(if i < 6 { "eco".into() } else { "boost".into() }),
                    ),
                ],
            )
        })
        .collect();
    let readings = batch(readings);
    app.publish(std::slice::from_ref(&readings)).await;
    let latest = eventually("latest values", || async {
        let l = app
            .get_json("/api/v1/devices/th-1/telemetry/latest", &admin)
            .await;
        (l["values"].as_array().unwrap().len() == 3).then_some(l)
    })
    .await;
    let by_metric = |m: &str| {
        latest["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["metric"] == m)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_metric("temp")["value"], 31.0);
    assert_eq!(by_metric("temp")["ts"], T0 + 110_000);
    assert_eq!(by_metric("door_open")["value"], false);
    assert_eq!(by_metric("mode")["value"], "boost");

    // The same batch again (an at-least-once redelivery) stores nothing twice.
    app.publish(&[readings]).await;
    // An older value does not replace the latest one.
    app.publish(&[batch(vec![message(
        "th-1",
        T0 - 60_000,
        &[("temp", MetricValue::Number(-5.0))],
    )])])
    .await;

    let range = format!("from={}&to={}", T0, T0 + 120_000);
    let raw = eventually("the late value", || async {
        let r = app
            .get_json(
                &format!(
                    "/api/v1/devices/th-1/telemetry?metric=temp&from={}&to={}",
                    T0 - 60_000,
                    T0 + 120_000
                ),
                &admin,
            )
            .await;
        (r["points"].as_array().unwrap().len() == 13).then_some(r)
    })
    .await;
    assert_eq!(raw["points"][0]["value"], -5.0);
    let latest = app
        .get_json("/api/v1/devices/th-1/telemetry/latest", &admin)
        .await;
    assert!(
        latest["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["metric"] == "temp" && v["value"] == 31.0)
    );

    let expect = |agg: &str, first: f64, second: f64| {
        let app = &app;
        let admin = admin.clone();
        let range = range.clone();
        let agg = agg.to_string();
        async move {
            let series = app
                .get_json(
                    &format!(
                        "/api/v1/devices/th-1/telemetry?metric=temp&{range}&interval=1m&agg={agg}"
                    ),
                    &admin,
                )
                .await;
            let points = series["points"].as_array().unwrap();
            assert_eq!(points.len(), 2, "{agg}: {series}");
            assert_eq!(points[0]["ts"], T0);
            assert_eq!(points[1]["ts"], T0 + 60_000);
            assert_eq!(points[0]["value"].as_f64().unwrap(), first, "{agg}");
            assert_eq!(points[1]["value"].as_f64().unwrap(), second, "{agg}");
            assert_eq!(points[0]["count"], 6);
            assert_eq!(series["interval_ms"], 60_000);
        }
    };
    expect("avg", 22.5, 28.5).await;
    expect("min", 20.0, 26.0).await;
    expect("max", 25.0, 31.0).await;
    expect("sum", 135.0, 171.0).await;
    expect("count", 6.0, 6.0).await;
    // Booleans average to the share of true values.
    let doors = app
        .get_json(
            &format!("/api/v1/devices/th-1/telemetry?metric=door_open&{range}&interval=2m"),
            &admin,
        )
        .await;
    assert_eq!(doors["points"][0]["value"].as_f64().unwrap(), 0.5);
    let modes = app
        .get_json(
            &format!("/api/v1/devices/th-1/telemetry?metric=mode&{range}&limit=3"),
            &admin,
        )
        .await;
    assert_eq!(modes["points"].as_array().unwrap().len(), 3);
    assert_eq!(modes["points"][0]["value"], "eco");
}

#[tokio::test]
async fn oversized_and_malformed_queries_get_422() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "q-1", "name": "Q" }))
        .await;
    let get = |q: String| {
        let app = &app;
        let admin = admin.clone();
        async move {
            app.request(
                Method::GET,
                &format!("/api/v1/devices/q-1/telemetry?{q}"),
                Some(&admin),
                None,
            )
            .await
        }
    };
    // A day in one-second buckets is far more than the configured 1000.
    let body = assert_error(
        get(format!(
            "metric=t&from={}&to={}&interval=1s",
            T0,
            T0 + 86_400_000
        ))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the limit is 1000"),
        "{body}"
    );
    // A range across all of i64 in one-millisecond buckets: refused by the
    // same limit (the count used to overflow, which dropped the connection
    // in debug builds and wrapped under the limit in release builds).
    let body = assert_error(
        get(format!(
            "metric=t&from={}&to={}&interval=1ms",
            i64::MIN,
            i64::MAX
        ))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the limit is 1000"),
        "{body}"
    );
    // A `to` within an hour of the smallest time leaves the default start
    // at the smallest time.
    assert_eq!(
        get(format!("metric=t&to={}", i64::MIN + 1)).await.status(),
        StatusCode::OK
    );
    // The same range in ten-minute buckets is fine.
    assert_eq!(
        get(format!(
            "metric=t&from={}&to={}&interval=10m",
            T0,
            T0 + 86_400_000
        ))
        .await
        .status(),
        StatusCode::OK
    );
    for q in [
        "from=0&to=10".to_string(),
        "metric=bad%20name".to_string(),
        "metric=t&interval=1w".to_string(),
        "metric=t&interval=1m&agg=median".to_string(),
        "metric=t&agg=max".to_string(),
        "metric=t&from=yesterday".to_string(),
        format!("metric=t&from={}&to={}", T0 + 10, T0),
        "metric=t&limit=100000".to_string(),
    ] {
        assert_error(
            get(q.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    assert_error(
        get("metric=t&limit=ten".into()).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/none/telemetry?metric=t",
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let empty: Value = app
        .get_json("/api/v1/devices/q-1/telemetry/latest", &admin)
        .await;
    assert_eq!(empty["values"], json!([]));
}

#[tokio::test]
async fn undecodable_events_are_skipped_without_blocking_good_ones() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "g-1", "name": "G" }))
        .await;
    app.bus
        .publish(
            TelemetryBatch::TOPIC,
            vec![b"not json".to_vec(), b"{\"device_id\":1}".to_vec()],
        )
        .await
        .unwrap();
    app.publish(&[batch(vec![message(
        "g-1",
        T0,
        &[("v", MetricValue::Number(1.0))],
    )])])
    .await;
    eventually("the good message", || async {
        let l = app
            .get_json("/api/v1/devices/g-1/telemetry/latest", &admin)
            .await;
        (l["values"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
}

/// Events the gateway would never publish, as a producer elsewhere might:
/// one naming a metric badly does not decode and is skipped whole; text
/// too long for the store is dropped and the rest of its event kept.
#[tokio::test]
async fn values_that_cannot_be_stored_are_dropped_and_the_rest_kept() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "v-1", "name": "V" }))
        .await;
    let bad_name = json!([
        {"device_id": "v-1", "ts": T0, "values": [["m".repeat(100), 1.0], ["lost", 2.0]]},
    ]);
    let too_long = json!([
        {"device_id": "v-1", "ts": T0, "values": [["ok", 2.0]]},
        {"device_id": "v-1", "ts": T0 + 1, "values": [["note", "x".repeat(10_000)]]},
    ]);
    app.bus
        .publish(
            TelemetryBatch::TOPIC,
            vec![bad_name.to_string().into(), too_long.to_string().into()],
        )
        .await
        .unwrap();
    app.publish(&[batch(vec![message(
        "v-1",
        T0 + 2,
        &[("after", MetricValue::Bool(true))],
    )])])
    .await;
    let latest = eventually("the storable values", || async {
        let l = app
            .get_json("/api/v1/devices/v-1/telemetry/latest", &admin)
            .await;
        (l["values"].as_array().unwrap().len() == 2).then_some(l)
    })
    .await;
    let metrics: Vec<&str> = latest["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["metric"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["after", "ok"]);
}

#[tokio::test]
async fn the_widest_possible_range_is_refused_as_too_many_buckets() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "wide-1", "name": "Wide" }))
        .await;
    for q in [
        "metric=t&from=-9223372036854775808&to=9223372036854775807&interval=1d&agg=count",
        "metric=t&from=-9223372036854775808&to=9223372036854775807&interval=1ms",
    ] {
        let resp = app
            .request(
                Method::GET,
                &format!("/api/v1/devices/wide-1/telemetry?{q}"),
                Some(&admin),
                None,
            )
            .await;
        let body = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the limit is 1000"),
            "{q}: {body}"
        );
    }
    // Only `to` at the bottom of the range: the default `from` an hour
    // before it must not wrap around.
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/wide-1/telemetry?metric=t&to=-9223372036854775800",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
