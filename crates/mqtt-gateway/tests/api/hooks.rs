//! The HTTP side: ops endpoints and the EMQX auth/ACL hooks.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HOOK_SECRET, TestApp};

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    post_with(app, path, body, Some(HOOK_SECRET)).await
}

async fn post_with(
    app: &TestApp,
    path: &str,
    body: Value,
    secret: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(app.http(path));
    if let Some(secret) = secret {
        req = req.header("x-wf-iot-hook-secret", secret);
    }
    let resp = req.json(&body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn emqx_auth_hook_checks_device_credentials() {
    let app = TestApp::spawn().await;
    let auth = |c: &str, u: &str, p: &str| json!({"clientid": c, "username": u, "password": p});
    let cases = [
        (auth("d1", "d1", "s1"), "allow"),
        (auth("d1", "d1", "wrong"), "deny"),
        (auth("d1", "d2", "s2"), "deny"),
        (auth("nobody", "nobody", "x"), "deny"),
        (json!({"clientid": "d1"}), "deny"),
    ];
    for (body, expected) in cases {
        let (status, reply) = post(&app, "/mqtt/auth", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(reply, json!({"result": expected}), "{body}");
    }
}

#[tokio::test]
async fn emqx_acl_hook_applies_the_device_topic_rules() {
    let app = TestApp::spawn().await;
    let acl = |u: &str, topic: &str, action: &str| json!({"clientid": u, "username": u, "topic": topic, "action": action});
    let cases = [
        (acl("d1", "devices/d1/telemetry", "publish"), "allow"),
        (acl("d1", "devices/d1/commands", "subscribe"), "allow"),
        (acl("d1", "devices/d2/telemetry", "publish"), "deny"),
        (acl("d1", "devices/+/telemetry", "subscribe"), "deny"),
        (acl("d1", "#", "subscribe"), "deny"),
        (
            json!({"clientid": "d1", "username": "d2", "topic": "devices/d1/x", "action": "publish"}),
            "deny",
        ),
    ];
    for (body, expected) in cases {
        let (status, reply) = post(&app, "/mqtt/acl", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(reply, json!({"result": expected}), "{body}");
    }
    let (status, _) = post(&app, "/mqtt/acl", acl("d1", "devices/d1/x", "delete")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let resp = reqwest::get(app.http(path)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let _d1 = app.device("d1", "s1").await;
    assert!(app.metrics().await.contains("wf_mqtt_connected_devices"));
}

fn metric(app_body: &str, line_prefix: &str) -> u64 {
    app_body
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_hooks_need_the_shared_secret_and_wrong_guesses_are_throttled() {
    let app = TestApp::builder().with_device("d1", "s1").spawn().await;
    let good = json!({"clientid": "d1", "username": "d1", "password": "s1"});
    let acl = json!({"clientid": "d1", "username": "d1", "topic": "devices/d1/telemetry", "action": "publish"});
    // Without the header, or with a wrong one: 401, nothing answered.
    let (status, reply) = post_with(&app, "/mqtt/auth", good.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply["error"]["code"], "unauthorized");
    let (status, _) = post_with(&app, "/mqtt/acl", acl.clone(), Some("guess")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With it: answered.
    let (status, reply) = post(&app, "/mqtt/auth", good.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"result": "allow"}));
    // Ten failures in the window (two above, eight more), then this address
    // is answered 429, the right secret included.
    for i in 0..8 {
        let (status, _) = post_with(
            &app,
            "/mqtt/auth",
            good.clone(),
            Some(&format!("guess-{i}")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let (status, reply) = post(&app, "/mqtt/auth", good.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");
    let (status, _) = post(&app, "/mqtt/acl", acl).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let metrics = reqwest::get(app.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(
            &metrics,
            "wf_mqtt_hook_refused_total{reason=\"wrong_secret\"} "
        ) >= 10,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "wf_mqtt_hook_refused_total{reason=\"throttled\"} "
        ) >= 2,
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_configured_secret_the_hooks_are_off() {
    let app = TestApp::builder()
        .with_device("d1", "s1")
        .hook_secret("")
        .spawn()
        .await;
    let good = json!({"clientid": "d1", "username": "d1", "password": "s1"});
    for secret in [None, Some(""), Some("anything")] {
        let (status, reply) = post_with(&app, "/mqtt/auth", good.clone(), secret).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("hooks.secret")
        );
    }
    // The ops endpoints on the same port need no secret.
    assert_eq!(
        reqwest::get(app.http("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
}
