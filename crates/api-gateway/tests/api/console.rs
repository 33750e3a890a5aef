//! The web console: pages, languages, assets and their headers, served by
//! the gateway beside the APIs it never shadows.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, ETAG,
    IF_NONE_MATCH, LOCATION, SET_COOKIE,
};
use wf_common::contract::{MetricName, MetricValue, TelemetryBatch, TelemetryMessage};

use crate::helpers::{EventReader, TestApp, assert_error};

const PAGES: [&str; 13] = [
    "/",
    "/login",
    "/account",
    "/devices",
    "/devices/boiler-01",
    "/shadow-jobs",
    "/shadow-jobs/j-1",
    "/firmware",
    "/rollouts",
    "/rollouts/r-1",
    "/admin/users",
    "/admin/roles",
    "/admin/audit",
];

async fn page(
    app: &TestApp,
    path: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> reqwest::Response {
    let mut req = app.client.get(format!("{}{path}", app.base));
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    req.send().await.unwrap()
}

fn csp(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(CONTENT_SECURITY_POLICY)
        .expect("a Content-Security-Policy")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_is_served_as_html_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    for path in PAGES {
        let resp = page(&app, path, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        let policy = csp(&resp);
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"));
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(resp.headers().contains_key("x-request-id"));
        let html = resp.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{path}");
        assert!(html.contains("<script src=\"/assets/app.js?v="), "{path}");
        assert!(!html.contains("<script>"), "{path}: no inline script");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_language_follows_the_cookie_then_the_browser() {
    let app = TestApp::spawn().await;
    let html = page(&app, "/devices", &[]).await.text().await.unwrap();
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains(">Devices</a>"));

    let html = page(
        &app,
        "/devices",
        &[(ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.5")],
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(html.contains("<html lang=\"zh-CN\">"));
    assert!(html.contains(">设备</a>"), "Chinese navigation");

    let html = page(
        &app,
        "/devices",
        &[(ACCEPT_LANGUAGE, "zh-CN"), (COOKIE, "wf_lang=en")],
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(html.contains("<html lang=\"en\">"), "the cookie wins");

    // Switching sets the cookie and goes back to the page.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(format!("{}/lang/zh-CN?next=/devices%3Ftag%3Da", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/devices?tag=a");
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("wf_lang=zh-CN;"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"));
    let html = page(&app, "/", &[(COOKIE, "wf_lang=zh-CN")])
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("仪表盘"));

    // Never off-site.
    for next in ["//evil.example/", "https://evil.example/"] {
        let resp = no_redirects
            .get(format!("{}/lang/en", app.base))
            .query(&[("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[LOCATION], "/", "{next}");
    }
    let resp = page(&app, "/lang/fr", &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_embedded_and_revalidated_by_etag() {
    let app = TestApp::spawn().await;
    for (name, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let resp = page(&app, &format!("/assets/{name}"), &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        assert_eq!(resp.headers()[CONTENT_TYPE], kind);
        let etag = resp.headers()[ETAG].to_str().unwrap().to_string();
        assert!(resp.headers().contains_key(CONTENT_SECURITY_POLICY));
        assert!(!resp.bytes().await.unwrap().is_empty());
        let again = page(&app, &format!("/assets/{name}"), &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{name}");
        assert!(again.bytes().await.unwrap().is_empty());
        // Pages link the current version.
        let html = page(&app, "/", &[]).await.text().await.unwrap();
        assert!(html.contains(&format!("/assets/{name}?v={}", etag.trim_matches('"'))));
    }
    let js = page(&app, "/assets/app.js", &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(js.contains("/api/v1/auth/refresh"));
    let missing = page(&app, "/assets/nothing.js", &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pages_are_a_readable_404_and_the_apis_keep_their_envelope() {
    let app = TestApp::spawn().await;
    for path in [
        "/devices/a/b",
        "/admin",
        "/admin/nothing",
        "/rollouts/r1/x",
        "/shadow-jobs/j1/x",
    ] {
        let resp = page(&app, path, &[]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(csp(&resp).contains("default-src 'none'"));
        let html = resp.text().await.unwrap();
        assert!(html.contains("Page not found"), "{path}");
    }
    let zh = page(&app, "/admin/nothing", &[(ACCEPT_LANGUAGE, "zh")]).await;
    assert!(zh.text().await.unwrap().contains("页面不存在"));
    // API paths never fall to the console.
    let resp = app.get("/api/v1/nothing", &app.admin_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = page(&app, "/elsewhere", &[]).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = page(&app, "/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key(CONTENT_SECURITY_POLICY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shells_carry_no_data_and_the_server_still_refuses_a_viewer() {
    let app = TestApp::spawn().await;
    // The shell of an administration page is the same for everyone...
    let html = page(&app, "/admin/users", &[]).await.text().await.unwrap();
    assert!(html.contains("id=\"user-rows\""));
    // ...write controls are hidden until the script has checked permissions...
    assert!(html.contains("id=\"new-user\" data-perm=\"user:manage\" hidden"));
    let devices = page(&app, "/devices", &[]).await.text().await.unwrap();
    assert!(devices.contains("id=\"new-device\" data-perm=\"device:write\" hidden"));
    // A device's state: readable by all, its editors for writers only.
    let device = page(&app, "/devices/boiler-01", &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(device.contains("role=\"tab\" id=\"tab-state\""));
    assert!(device.contains("id=\"shadow-card\""));
    assert!(device.contains(
        "id=\"attribute-form\" class=\"form grid-form\" data-perm=\"device:write\" hidden"
    ));
    let jobs = page(&app, "/shadow-jobs", &[]).await.text().await.unwrap();
    assert!(jobs.contains("id=\"new-job\" data-perm=\"device:write\" hidden"));
    assert!(
        jobs.contains(
            "href=\"/shadow-jobs\" data-perm=\"device:read\" hidden aria-current=\"page\""
        )
    );
    // ...and the data behind it needs the permission.
    let anonymous = app
        .request(reqwest::Method::GET, "/api/v1/users", None, None)
        .await;
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let viewer = app.user("vera", &["viewer"]).await;
    let resp = app.get("/api/v1/users", &viewer).await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .request(
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(&viewer),
            Some(serde_json::json!({"name": "nope"})),
        )
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let me: serde_json::Value = app
        .get("/api/v1/auth/me", &viewer)
        .await
        .json()
        .await
        .unwrap();
    let permissions: Vec<&str> = me["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(permissions.contains(&"device:read"));
    assert!(!permissions.contains(&"device:write"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_pages_escape_what_the_address_says() {
    let app = TestApp::spawn().await;
    let html = page(&app, "/devices/%3Cscript%3Ealert(1)%3C%2Fscript%3E", &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>alert"));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_stream_can_report_the_telemetry_rate() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Meter").await;
    let bad = app
        .get("/api/v1/devices/stream?rate_secs=0", &app.admin_token)
        .await;
    assert_error(bad, StatusCode::BAD_REQUEST, "bad_request").await;
    let garbled = app
        .get("/api/v1/devices/stream?rate_secs=often", &app.admin_token)
        .await;
    assert!(garbled.status().is_client_error());
    let body: serde_json::Value = garbled.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    let resp = app
        .get("/api/v1/devices/stream?rate_secs=1", &app.admin_token)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events = EventReader::new(resp);
    events
        .next_named("ready", Duration::from_secs(10))
        .await
        .expect("ready");
    let reading = TelemetryMessage {
        device_id: id.clone(),
        ts: wf_common::now_millis(),
        values: vec![(
            MetricName::parse("temp").unwrap(),
            MetricValue::Number(20.0),
        )],
    };
    let mut seen = 0.0;
    for _ in 0..10 {
        app.publish(&[TelemetryBatch {
            messages: vec![reading.clone(), reading.clone(), reading.clone()],
        }])
        .await;
        let rate = events
            .next_named("rate", Duration::from_secs(5))
            .await
            .expect("a rate event");
        assert_eq!(rate.json()["window_secs"], 1);
        seen = rate.json()["telemetry_per_sec"].as_f64().unwrap();
        if seen > 0.0 {
            break;
        }
    }
    assert!(seen > 0.0, "telemetry per second: {seen}");
}
