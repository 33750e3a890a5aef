//! Rate limits per user and per client address, in process and shared
//! between two gateways through Redis.

use reqwest::{Method, StatusCode};
use serde_json::json;

use api_gateway::{GroupLimits, Limit};

use crate::helpers::{ADMIN_PASSWORD, TestApp, assert_error, closed_url, request_at};

/// A bucket of `burst` that practically never refills during a test.
fn tight(burst: u32) -> Limit {
    Limit::new(0.001, burst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_bucket_of_their_own() {
    let app = TestApp::spawn().await;
    let bob = app.user("bob", &["operator"]).await;
    let gateway = app
        .gateway_with(|c| {
            c.rate_limits.enabled = true;
            c.rate_limits.devices = GroupLimits::new(tight(3), Limit::UNLIMITED);
        })
        .await;
    let get = |token: String| {
        let client = app.client.clone();
        let gateway = gateway.clone();
        async move {
            request_at(
                &client,
                &gateway,
                Method::GET,
                "/api/v1/devices",
                Some(&token),
                None,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(get(app.admin_token.clone()).await.status(), StatusCode::OK);
    }
    let refused = get(app.admin_token.clone()).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Same address, another user: untouched.
    assert_eq!(get(bob.clone()).await.status(), StatusCode::OK);
    // Other route groups have their own buckets.
    let resp = request_at(
        &app.client,
        &gateway,
        Method::GET,
        "/api/v1/auth/me",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_address_has_a_bucket_of_its_own() {
    let app = TestApp::spawn().await;
    // Requests come through a trusted proxy that names the client.
    let gateway = app
        .gateway_with(|c| {
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.rate_limits.enabled = true;
            c.rate_limits.auth = GroupLimits::new(Limit::UNLIMITED, tight(2));
        })
        .await;
    let login = |client_ip: &'static str| {
        let client = app.client.clone();
        let url = format!("{gateway}/api/v1/auth/login");
        async move {
            client
                .post(url)
                .header("x-forwarded-for", client_ip)
                .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(login("203.0.113.7").await.status(), StatusCode::OK);
    assert_eq!(login("203.0.113.7").await.status(), StatusCode::OK);
    let refused = login("203.0.113.7").await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(login("203.0.113.8").await.status(), StatusCode::OK);

    // Refused tokens are charged to their address too.
    let guess = |n: u32| {
        let client = app.client.clone();
        let url = format!("{gateway}/api/v1/auth/me");
        async move {
            client
                .get(url)
                .header("x-forwarded-for", "198.51.100.1")
                .bearer_auth(format!("guess-{n}"))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(guess(1).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(guess(2).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(guess(3).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_guesses_does_not_refuse_another_accounts_login() {
    let app = TestApp::spawn().await;
    let gateway = app
        .gateway_with(|c| {
            c.rate_limits.enabled = true;
            c.rate_limits.auth = GroupLimits::new(Limit::UNLIMITED, tight(2));
        })
        .await;
    let login = |username: &'static str, password: &'static str| {
        let client = app.client.clone();
        let url = format!("{gateway}/api/v1/auth/login");
        async move {
            client
                .post(url)
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    // Guesses at one account from this address meet the limit...
    assert_eq!(
        login("victim", "guess-1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("victim", "guess-2").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("victim", "guess-3").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but the administrator's right password from the same address
    // still goes through, twice.
    assert_eq!(
        login("admin", ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        login("ADMIN", ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        login("admin", ADMIN_PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_cannot_pick_their_address() {
    let app = TestApp::spawn().await;
    let gateway = app
        .gateway_with(|c| {
            c.rate_limits.enabled = true;
            c.rate_limits.auth = GroupLimits::new(Limit::UNLIMITED, tight(2));
        })
        .await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let resp = app
            .client
            .post(format!("{gateway}/api/v1/auth/login"))
            .header("x-forwarded-for", format!("192.0.2.{n}"))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

fn redis_url() -> Option<String> {
    std::env::var("WF_IOT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_through_redis() {
    let Some(redis) = redis_url() else { return };
    let app = TestApp::spawn().await;
    let prefix = format!("wf-test-{}:", uuid::Uuid::new_v4().simple());
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let mut config = app.config();
        config.redis_url = redis.clone();
        config.redis_key_prefix = prefix.clone();
        config.redis_timeout_ms = 2000;
        config.rate_limits.enabled = true;
        config.rate_limits.devices = GroupLimits::new(tight(4), Limit::UNLIMITED);
        gateways.push(app.start_gateway(config).await);
    }
    let mut statuses = Vec::new();
    for n in 0..6 {
        let resp = request_at(
            &app.client,
            &gateways[n % 2],
            Method::GET,
            "/api/v1/devices",
            Some(&app.admin_token),
            None,
        )
        .await;
        statuses.push(resp.status().as_u16());
    }
    // Four in all, not four per gateway.
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_gateway_still_enforces_the_limit() {
    let app = TestApp::spawn().await;
    let down = closed_url().await.replace("http://", "redis://");
    let gateway = app
        .gateway_with(|c| {
            c.redis_url = down;
            c.redis_timeout_ms = 200;
            c.rate_limits.enabled = true;
            c.rate_limits.devices = GroupLimits::new(tight(2), Limit::UNLIMITED);
        })
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = request_at(
            &app.client,
            &gateway,
            Method::GET,
            "/api/v1/devices",
            Some(&app.admin_token),
            None,
        )
        .await;
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let metrics = app
        .client
        .get(format!("{gateway}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("wf_gateway_rate_limit_backend_errors_total"));
    assert!(metrics.contains("wf_gateway_rate_limited_total"));
}
