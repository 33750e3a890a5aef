//! The HTTP side: ops endpoints and the EMQX auth/ACL hooks.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(app.http(path))
        .json(&body)
        .send()
        .await
        .unwrap();
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
