//! Routing, header handling, streaming bodies and upstream failures.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    DOWNLOAD_HALF, TestApp, assert_error, closed_url, eventually, request_at, spawn_garbage_server,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_routes_pass_through() {
    let app = TestApp::spawn().await;
    let me: Value = app
        .get("/api/v1/auth/me", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "admin");
    for path in [
        "/api/v1/users",
        "/api/v1/roles",
        "/api/v1/permissions",
        "/api/v1/audit-logs",
    ] {
        let resp = app.get(path, &app.admin_token).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // The published keys need no token.
    let jwks: Value = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], app.signing_key().kid());
    // auth-service's own refusals come back as they are.
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_service_routes_pass_through() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Boiler").await;
    let device: Value = app
        .get(&format!("/api/v1/devices/{id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(device["name"], "Boiler");
    let listed: Value = app
        .get("/api/v1/devices?limit=5", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);
    let resp = app
        .get("/api/v1/devices/no-such-device", &app.admin_token)
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_not_found() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/nothing", "/api/v2/devices", "/elsewhere"] {
        let resp = app.get(path, &app.admin_token).await;
        let body = assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        assert!(body["error"]["request_id"].is_string());
        let anonymous = app.request(Method::GET, path, None, None).await;
        assert_error(anonymous, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.firmware.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_verified_identity_and_the_request_id() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(format!("{}/api/v1/rollouts?state=running", app.base))
        .bearer_auth(&app.admin_token)
        .header("x-request-id", "trace-abc-123")
        .header("x-user-id", "someone-else")
        .header("x-username", "root")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let (path, headers) = app.firmware.last();
    assert_eq!(path, "/api/v1/rollouts?state=running");
    assert_eq!(headers["x-request-id"], "trace-abc-123");
    assert_eq!(headers["x-user-id"], app.user_id(&app.admin_token).as_str());
    assert_eq!(headers.get_all("x-user-id").iter().count(), 1);
    assert_eq!(headers["x-username"], "admin");
    assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(headers.get("x-private").is_none());
    // The token goes on: the services verify it themselves.
    assert_eq!(
        headers["authorization"],
        format!("Bearer {}", app.admin_token).as_str()
    );

    // Without a usable id of its own, the request gets one; the client and
    // the service see the same.
    let resp = app
        .client
        .get(format!("{}/api/v1/rollouts", app.base))
        .bearer_auth(&app.admin_token)
        .header("x-request-id", "has spaces in it")
        .send()
        .await
        .unwrap();
    let given = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(given, "has spaces in it");
    assert_eq!(given.len(), 36);
    assert_eq!(app.firmware.last().1["x-request-id"], given.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_through_without_being_buffered() {
    const MIB: usize = 1024 * 1024;
    const TOTAL: usize = 50;
    let app = TestApp::spawn().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let client = app.client.clone();
    let url = format!("{}/api/v1/firmware", app.base);
    let token = app.admin_token.clone();
    let upload = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    });
    for _ in 0..8 {
        tx.send(Ok(Bytes::from(vec![7u8; MIB]))).await.unwrap();
    }
    // The upload is still open, and the service already has most of it.
    eventually("the first megabytes to reach the service", || async {
        (app.firmware.received.load(Ordering::SeqCst) >= 4 * MIB as u64).then_some(())
    })
    .await;
    assert!(!upload.is_finished());
    for _ in 8..TOTAL {
        tx.send(Ok(Bytes::from(vec![7u8; MIB]))).await.unwrap();
    }
    drop(tx);
    let resp = upload.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["bytes"], (TOTAL * MIB) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stream_back_as_they_come() {
    let app = TestApp::spawn().await;
    // Public: devices download with their own credentials.
    let resp = app
        .client
        .get(format!("{}/api/v1/firmware/fw-1/download", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut received = 0usize;
    // The first half arrives while the service is still holding the second.
    while received < DOWNLOAD_HALF {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first half should stream through")
            .unwrap()
            .unwrap();
        received += chunk.len();
    }
    assert_eq!(received, DOWNLOAD_HALF);
    app.firmware.release.notify_one();
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, 2 * DOWNLOAD_HALF);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    // Small sizes: the gateway answers before reading the whole body, and
    // bodies this small are already in hand when it does.
    let app = TestApp::builder()
        .configure(|c| {
            c.max_upload_bytes = 2000;
            c.max_body_bytes = 1000;
        })
        .spawn()
        .await;
    // Declared too large: refused before anything is sent on.
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&app.admin_token)
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(app.firmware.count(), 0);
    // Streamed without a length: cut off at the limit.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1000]))),
    );
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&app.admin_token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Within the limit it goes through; other routes have the general limit.
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&app.admin_token)
        .body(vec![0u8; 1500])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .client
        .post(format!("{}/api/v1/devices", app.base))
        .bearer_auth(&app.admin_token)
        .body(vec![b' '; 1500])
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_gives_a_quick_503() {
    let app = TestApp::spawn().await;
    let down = closed_url().await;
    let gateway = app.gateway_with(|c| c.firmware_url = down).await;
    let started = Instant::now();
    let resp = request_at(
        &app.client,
        &gateway,
        Method::GET,
        "/api/v1/rollouts",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert!(resp.headers().contains_key("retry-after"));
    let body = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(body["error"]["request_id"].is_string());
    // Routes of the services that are up still work.
    let resp = request_at(
        &app.client,
        &gateway,
        Method::GET,
        "/api/v1/devices",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_gives_504_and_a_broken_one_502() {
    let app = TestApp::spawn().await;
    let slow = app.gateway_with(|c| c.upstream_timeout_secs = 1).await;
    let started = Instant::now();
    let resp = request_at(
        &app.client,
        &slow,
        Method::GET,
        "/api/v1/rollouts/slow",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert_error(resp, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout").await;
    assert!(started.elapsed() < Duration::from_secs(4));

    let garbage = spawn_garbage_server(&app.shutdown).await;
    let broken = app.gateway_with(|c| c.firmware_url = garbage).await;
    let resp = request_at(
        &app.client,
        &broken,
        Method::GET,
        "/api/v1/rollouts",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert_error(resp, StatusCode::BAD_GATEWAY, "bad_gateway").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_group() {
    let app = TestApp::spawn().await;
    app.get("/api/v1/devices", &app.admin_token).await;
    app.get("/api/v1/nothing", &app.admin_token).await;
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("wf_gateway_requests_total")
                && l.contains(r#"group="devices""#)
                && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(text.contains("wf_gateway_request_duration_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_throughput_and_latency() {
    let app = TestApp::spawn().await;
    let id = app.device(&app.admin_token, "Target").await;
    let report = api_gateway::load_test(
        &format!("{}/api/v1/devices/{id}", app.base),
        &app.admin_token,
        4,
        Duration::from_millis(700),
    )
    .await
    .unwrap();
    assert!(report.requests >= 10, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.p50 > Duration::ZERO && report.p99 >= report.p50);
    assert!(report.rps > 0.0);
    // A refused token counts as errors, not successes.
    let refused = api_gateway::load_test(
        &format!("{}/api/v1/devices/{id}", app.base),
        "not-a-token",
        2,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert!(refused.requests > 0);
    assert_eq!(refused.errors, refused.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merged_openapi_document_and_the_docs_page_are_public() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(
        paths.contains_key("/api/v1/auth/login"),
        "auth-service's paths are merged in"
    );
    assert!(
        paths.contains_key("/api/v1/devices/{id}/commands"),
        "device-service's paths are merged in"
    );
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());

    let page = app
        .client
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("SwaggerUIBundle"));
    let bundle = app
        .client
        .get(format!("{}/docs/swagger-ui-bundle.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    // Other /docs-looking paths are not a way around the token check.
    let sneaky = app
        .client
        .get(format!("{}/api/v1/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_ne!(sneaky.status(), 200);
}
