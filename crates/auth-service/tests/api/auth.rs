//! Login, logout, the caller's own account, throttling, malformed requests.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, TestApp, assert_error};

#[tokio::test]
async fn login_by_username_or_email_returns_a_token_pair() {
    let app = TestApp::spawn().await;
    for login in ["admin", "ADMIN", "admin@localhost.localdomain"] {
        let tokens = app.login_tokens(login, ADMIN_PASSWORD).await;
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["expires_in"], 900);
        assert_eq!(tokens["refresh_expires_in"], 7 * 24 * 3600);
        assert!(tokens["refresh_token"].as_str().unwrap().len() >= 40);
        let me: Value = app
            .get("/api/v1/auth/me", tokens["access_token"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["username"], "admin");
        assert_eq!(me["is_superuser"], true);
        assert!(
            me["permissions"]
                .as_array()
                .unwrap()
                .contains(&json!("audit:read"))
        );
    }
    let logins = app.audit("auth.login").await;
    assert!(logins.len() >= 3);
    assert_eq!(logins[0]["actor_username"], "admin");
    assert_eq!(logins[0]["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let app = TestApp::spawn().await;
    let a = assert_error(
        app.login("admin", "wrong-password").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let b = assert_error(
        app.login("nobody", "wrong-password").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(a["error"]["message"], b["error"]["message"]);
    let failures = app.audit("auth.login_failed").await;
    assert_eq!(failures.len(), 2);
    let reasons: Vec<&str> = failures
        .iter()
        .map(|f| f["details"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"bad_password") && reasons.contains(&"unknown_user"));
}

/// A login attempt from `ip` (the test client is a trusted proxy).
async fn login_from(app: &TestApp, ip: &str, user: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_slow_down_the_failing_client_only() {
    let app = TestApp::builder().throttle(3, 100).spawn().await;
    app.create_user("mallory-target", "right-password", &["viewer"])
        .await;
    // A username and its e-mail count as one account: 2 + 1 failures.
    for login in [
        "mallory-target",
        "Mallory-Target",
        "mallory-target@example.com",
    ] {
        assert_eq!(
            app.login(login, "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login("mallory-target@example.com", "guess")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The failing client waits, even with the right password...
    let resp = app.login("mallory-target", "right-password").await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // ...but the account is not locked: a client that has not been
    // failing logs in with the right password.
    assert_eq!(
        login_from(&app, "198.51.100.20", "mallory-target", "right-password")
            .await
            .status(),
        StatusCode::OK
    );
    // Other accounts are unaffected from the failing client too.
    assert_eq!(
        app.login("admin", ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
    let throttled = app.audit("auth.login_throttled").await;
    assert_eq!(throttled.len(), 2);
    assert_eq!(throttled[0]["actor_username"], "mallory-target");
    assert_eq!(throttled[0]["details"]["limit"], "account_client");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // The test client (127.0.0.1) is not a trusted proxy here: its
    // X-Forwarded-For is ignored, so rotating it does not escape the limit.
    let app = TestApp::builder()
        .throttle(100, 5)
        .trusted_proxies(&["10.0.0.0/8"])
        .spawn()
        .await;
    for i in 0..5 {
        assert_eq!(
            login_from(&app, &format!("203.0.113.{i}"), &format!("u{i}"), "guess")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&app, "203.0.113.99", "u99", "guess")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let failures = app.audit("auth.login_failed").await;
    assert!(failures.iter().all(|f| f["client_ip"] == "127.0.0.1"));

    // A trusted range (CIDR) is believed.
    let app = TestApp::builder()
        .throttle(100, 5)
        .trusted_proxies(&["127.0.0.0/8"])
        .spawn()
        .await;
    for i in 0..8 {
        assert_eq!(
            login_from(&app, &format!("203.0.113.{i}"), &format!("u{i}"), "guess")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let failures = app.audit("auth.login_failed").await;
    assert!(failures.iter().any(|f| f["client_ip"] == "203.0.113.7"));
}

#[tokio::test]
async fn repeated_failures_from_one_client_are_throttled() {
    let app = TestApp::builder().throttle(100, 3).spawn().await;
    let attempt = |user: &'static str, ip: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({ "username": user, "password": "guess" }))
            .send()
    };
    for user in ["u1", "u2", "u3"] {
        assert_eq!(
            attempt(user, "203.0.113.7").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        attempt("u4", "203.0.113.7").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        attempt("u4", "198.51.100.1").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let failures = app.audit("auth.login_failed").await;
    assert!(failures.iter().any(|f| f["client_ip"] == "203.0.113.7"));
}

#[tokio::test]
async fn logout_ends_the_refresh_token() {
    let app = TestApp::spawn().await;
    let tokens = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let refresh = tokens["refresh_token"].clone();
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Logging out again is harmless.
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.audit("auth.logout").await.len(), 2);
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() {
    let app = TestApp::spawn().await;
    app.create_user("carol", "carol-password", &["viewer"])
        .await;
    let old = app.login_tokens("carol", "carol-password").await;
    let old_access = old["access_token"].as_str().unwrap();

    let resp = app
        .request(
            Method::PUT,
            "/api/v1/auth/me/password",
            Some(old_access),
            Some(json!({ "current_password": "not-it", "new_password": "carol-new-password" })),
        )
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .request(
            Method::PUT,
            "/api/v1/auth/me/password",
            Some(old_access),
            Some(json!({ "current_password": "carol-password", "new_password": "short" })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .request(
            Method::PUT,
            "/api/v1/auth/me/password",
            Some(old_access),
            Some(json!({ "current_password": "carol-password", "new_password": "carol-new-password" })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    assert_error(
        app.get("/api/v1/auth/me", old_access).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": old["refresh_token"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login("carol", "carol-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh = app.token("carol", "carol-new-password").await;
    assert_eq!(
        app.get("/api/v1/auth/me", &fresh).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let app = TestApp::builder().max_body_bytes(1024).spawn().await;
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = app.client.post(app.url("/api/v1/auth/login")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let resp = send("{\"username\": ", Some("application/json"))
        .await
        .unwrap();
    assert_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let resp = send(
        "{\"username\": 5, \"password\": []}",
        Some("application/json"),
    )
    .await
    .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = send(
        "{\"user\": \"admin\", \"password\": \"x\"}",
        Some("application/json"),
    )
    .await
    .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = send("{}", None).await.unwrap();
    assert_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let big = json!({ "username": "admin", "password": "x".repeat(4096) });
    let resp = app
        .request(Method::POST, "/api/v1/auth/login", None, Some(big))
        .await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    assert_error(
        app.get("/api/v1/nothing-here", &app.admin_token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = app
        .request(Method::DELETE, "/api/v1/auth/login", None, None)
        .await;
    assert_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    let body = assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(body["error"]["request_id"], "trace-me-42");

    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn health_readiness_metrics_and_jwks() {
    let app = TestApp::spawn().await;
    let ok = |path: &'static str| app.client.get(app.url(path)).send();
    assert_eq!(ok("/healthz").await.unwrap().status(), StatusCode::OK);
    let ready: Value = ok("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = ok("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wf_http_requests_total"), "{metrics}");

    let jwks: Value = ok("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["kid"], app.signing_key().kid());
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::sync::Arc::new(auth_service::Config {
        host: "127.0.0.1".parse().unwrap(),
        http_port: 0,
        grpc_port: 0,
        database_url: format!("sqlite://{}", dir.path().join("auth.db").display()),
        signing_key_file: dir.path().join("key.pem"),
        ..auth_service::Config::default()
    });
    let start = || async {
        let app = auth_service::Application::build(config.clone())
            .await
            .unwrap();
        app.ensure_admin(Some(ADMIN_PASSWORD.into())).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.http_port());
        let stop = wf_common::shutdown::Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(stop.wait()));
        (base, stop, task)
    };
    let client = reqwest::Client::new();
    let (base, stop, task) = start().await;
    let tokens: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stop.trigger();
    task.await.unwrap().unwrap();

    let (base, stop, _task) = start().await;
    let me = client
        .get(format!("{base}/api/v1/auth/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let refreshed = client
        .post(format!("{base}/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": tokens["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );
    stop.trigger();
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/auth/login", vec!["post"]),
        ("/api/v1/auth/refresh", vec!["post"]),
        ("/api/v1/auth/logout", vec!["post"]),
        ("/api/v1/auth/me", vec!["get"]),
        ("/api/v1/auth/me/password", vec!["put"]),
        ("/.well-known/jwks.json", vec!["get"]),
        ("/api/v1/users", vec!["get", "post"]),
        ("/api/v1/users/{id}", vec!["get", "patch", "delete"]),
        ("/api/v1/users/{id}/enable", vec!["post"]),
        ("/api/v1/users/{id}/disable", vec!["post"]),
        ("/api/v1/users/{id}/password", vec!["put"]),
        ("/api/v1/users/{id}/roles", vec!["put"]),
        ("/api/v1/roles", vec!["get", "post"]),
        ("/api/v1/roles/{id}", vec!["get", "patch", "delete"]),
        ("/api/v1/roles/{id}/permissions", vec!["put"]),
        ("/api/v1/permissions", vec!["get"]),
        ("/api/v1/audit-logs", vec!["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
