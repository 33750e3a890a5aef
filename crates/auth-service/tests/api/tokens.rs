//! Access-token verification and refresh-token rotation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::jwt::{ACCESS_TOKEN_TYPE, AccessClaims, SigningKey};

use crate::helpers::{ADMIN_PASSWORD, TestApp, assert_error};

fn claims_of(token: &str) -> AccessClaims {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn every_bad_token_shape_is_refused() {
    let app = TestApp::spawn().await;
    let good = app.admin_token.clone();
    let claims = claims_of(&good);
    let key = app.signing_key();
    let now = chrono_now();

    let expired = key.sign(&AccessClaims {
        iat: now - 3600,
        exp: now - 60,
        ..claims.clone()
    });
    let other_key = SigningKey::generate().sign(&claims);
    // A token signed by another key but claiming the service's key id.
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": key.kid() });
    let forged_kid = {
        let signed = SigningKey::generate().sign(&claims);
        let sig = signed.rsplit('.').next().unwrap().to_string();
        format!(
            "{}.{}.{sig}",
            b64(&header),
            b64(&serde_json::to_value(&claims).unwrap())
        )
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT", "kid": key.kid() })),
        b64(&serde_json::to_value(&claims).unwrap())
    );
    let hs256 = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&json!({ "alg": "HS256", "typ": "JWT", "kid": key.kid() })),
        b64(&serde_json::to_value(&claims).unwrap())
    );
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let mut c = serde_json::to_value(&claims).unwrap();
        c["username"] = json!("root");
        parts[1] = b64(&c);
        parts.join(".")
    };
    let wrong_issuer = key.sign(&AccessClaims {
        iss: "someone-else".into(),
        ..claims.clone()
    });
    let wrong_type = key.sign(&AccessClaims {
        typ: "refresh".into(),
        ..claims.clone()
    });
    let unknown_user = key.sign(&AccessClaims {
        sub: "00000000-0000-0000-0000-000000000000".into(),
        ..claims.clone()
    });

    for (name, token) in [
        ("expired", expired),
        ("other key", other_key),
        ("forged kid", forged_kid),
        ("alg none", alg_none),
        ("HS256", hs256),
        ("tampered", tampered),
        ("wrong issuer", wrong_issuer),
        ("wrong type", wrong_type),
        ("unknown user", unknown_user),
        ("garbage", "not.a.token".into()),
        ("empty", String::new()),
    ] {
        let resp = app.get("/api/v1/auth/me", &token).await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{name} token accepted"
        );
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let resp = app
        .request(Method::GET, "/api/v1/auth/me", None, None)
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/v1/auth/me", &good).await.status(),
        StatusCode::OK
    );
    assert_eq!(claims.typ, ACCESS_TOKEN_TYPE);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn refresh(app: &TestApp, token: &Value) -> reqwest::Response {
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": token })),
    )
    .await
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::builder().refresh_grace(0).spawn().await;
    let first = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let other_session = app.login_tokens("admin", ADMIN_PASSWORD).await;

    let resp = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second: Value = resp.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(
        app.get("/api/v1/auth/me", second["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    // The spent token comes back: someone copied it. Refuse it, and revoke
    // the token that was rotated from it too.
    assert_error(
        refresh(&app, &first["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(
        refresh(&app, &second["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let reuse = app.audit("auth.refresh_reuse").await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["outcome"], "denied");

    // Another login's family is untouched.
    assert_eq!(
        refresh(&app, &other_session["refresh_token"])
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        refresh(&app, &json!("made-up-token")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn without_a_grace_window_concurrent_use_yields_one_pair() {
    let app = TestApp::builder().refresh_grace(0).spawn().await;
    let tokens = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let attempts = (0..6).map(|_| refresh(&app, &tokens["refresh_token"]));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(ok <= 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test]
async fn an_expired_access_token_is_refused_and_refresh_still_works() {
    let app = TestApp::builder().access_ttl(1).spawn().await;
    let tokens = app.login_tokens("admin", ADMIN_PASSWORD).await;
    // Past the one-second lifetime and the verifier's five-second leeway.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let resp = app
        .get("/api/v1/auth/me", tokens["access_token"].as_str().unwrap())
        .await;
    let body = assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert_eq!(
        refresh(&app, &tokens["refresh_token"]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn parallel_refreshes_within_the_grace_window_keep_the_session() {
    let app = TestApp::spawn().await;
    let tokens = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let attempts = (0..10).map(|_| refresh(&app, &tokens["refresh_token"]));
    let responses = futures_util::future::join_all(attempts).await;
    let mut pairs = Vec::new();
    for resp in responses {
        assert_eq!(resp.status(), StatusCode::OK);
        pairs.push(resp.json::<Value>().await.unwrap());
    }
    // Nothing was revoked: every pair works, access and refresh.
    for pair in &pairs {
        assert_eq!(
            app.get("/api/v1/auth/me", pair["access_token"].as_str().unwrap())
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            refresh(&app, &pair["refresh_token"]).await.status(),
            StatusCode::OK
        );
    }
    assert!(app.audit("auth.refresh_reuse").await.is_empty());
}

#[tokio::test]
async fn reuse_after_the_grace_window_still_revokes_the_family() {
    let app = TestApp::builder().refresh_grace(1).spawn().await;
    let first = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let resp = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second: Value = resp.json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        refresh(&app, &first["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &second["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.audit("auth.refresh_reuse").await.len(), 1);
}

#[tokio::test]
async fn a_logged_out_token_gets_no_grace() {
    let app = TestApp::spawn().await;
    let first = app.login_tokens("admin", ADMIN_PASSWORD).await;
    let second: Value = refresh(&app, &first["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({ "refresh_token": second["refresh_token"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Within the grace window, but the family is revoked.
    assert_eq!(
        refresh(&app, &first["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
