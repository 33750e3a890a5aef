//! Tokens at the edge: every refused shape gets a 401 envelope and never
//! reaches a service; public routes need none.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::json;
use wf_common::jwt::SigningKey;

use crate::helpers::{TestApp, assert_error, now_secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_token_shape_is_a_401_that_goes_no_further() {
    let app = TestApp::spawn().await;
    let real = app.signing_key();
    let admin = app.admin_token.clone();

    let expired = app.resign(&admin, &real, |c| {
        c["iat"] = json!(now_secs() - 7200);
        c["exp"] = json!(now_secs() - 3600);
    });
    let parts: Vec<&str> = admin.split('.').collect();
    let mut forged_claims = crate::helpers::claims_of(&admin);
    forged_claims["username"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    let other_key = app.resign(&admin, &SigningKey::generate(), |_| {});
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            real.kid()
        )),
        parts[1]
    );
    let wrong_issuer = app.resign(&admin, &real, |c| c["iss"] = json!("someone-else"));
    let refresh_kind = app.resign(&admin, &real, |c| c["typ"] = json!("refresh"));

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("Bearer not.a.token".into())),
        ("basic auth", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("tampered", Some(format!("Bearer {tampered}"))),
        ("other key", Some(format!("Bearer {other_key}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("wrong issuer", Some(format!("Bearer {wrong_issuer}"))),
        (
            "not an access token",
            Some(format!("Bearer {refresh_kind}")),
        ),
    ];
    for (what, authorization) in cases {
        for path in ["/api/v1/rollouts", "/api/v1/devices", "/api/v1/users"] {
            let mut req = app.client.get(format!("{}{path}", app.base));
            if let Some(a) = &authorization {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what} on {path}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        }
    }
    assert_eq!(
        app.firmware.count(),
        0,
        "a refused request reached a service"
    );

    // Claiming an identity in headers gets nowhere without a token.
    let resp = app
        .client
        .get(format!("{}/api/v1/rollouts", app.base))
        .header("x-user-id", app.user_id(&admin))
        .header("x-username", "admin")
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // The genuine token works.
    let resp = app.get("/api/v1/rollouts", &admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.firmware.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tokens_are_for_streams_only() {
    let app = TestApp::spawn().await;
    let resp = app
        .request(
            Method::GET,
            &format!("/api/v1/devices?access_token={}", app.admin_token),
            None,
            None,
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_need_no_token() {
    let app = TestApp::spawn().await;
    // Login, refresh and logout (auth-service decides on their bodies).
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "admin", "password": crate::helpers::ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let login: serde_json::Value = resp.json().await.unwrap();
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": login["refresh_token"]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // A device fetching an image.
    let resp = app
        .request(Method::GET, "/api/v1/firmware/fw-9/download", None, None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    app.firmware.release.notify_one();
    // The gateway's own health.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = app.request(Method::GET, path, None, None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // The same firmware path with another method is not public.
    let resp = app
        .request(Method::DELETE, "/api/v1/firmware/fw-9/download", None, None)
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cannot_be_checked_while_the_keys_are_out_of_reach() {
    let app = TestApp::spawn().await;
    let down = crate::helpers::closed_url().await;
    let gateway = app
        .gateway_with(|c| c.jwks_url = format!("{down}/.well-known/jwks.json"))
        .await;
    let resp = crate::helpers::request_at(
        &app.client,
        &gateway,
        Method::GET,
        "/api/v1/devices",
        Some(&app.admin_token),
        None,
    )
    .await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}
