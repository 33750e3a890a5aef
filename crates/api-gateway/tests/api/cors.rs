//! CORS: preflights answered at the edge for the configured origins only.

use reqwest::{Method, StatusCode};

use crate::helpers::TestApp;

const CONSOLE: &str = "https://console.example.com";

async fn app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.cors.allowed_origins = vec![CONSOLE.into()];
            c.cors.allow_credentials = true;
        })
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_at_the_edge() {
    let app = app().await;
    let resp = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/rollouts", app.base))
        .header("origin", CONSOLE)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], CONSOLE);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    assert!(h.contains_key("access-control-max-age"));
    // No token was needed and nothing reached the service.
    assert_eq!(app.firmware.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_get_no_cors_headers() {
    let app = app().await;
    let resp = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/devices", app.base))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    let resp = app
        .client
        .get(format!("{}/api/v1/devices", app.base))
        .header("origin", "https://evil.example")
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_allowed_origins_carry_cors_headers_even_when_refused() {
    let app = app().await;
    let resp = app
        .client
        .get(format!("{}/api/v1/devices", app.base))
        .header("origin", CONSOLE)
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], CONSOLE);
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    // A browser must be able to read a 401 to send its user to the login page.
    let resp = app
        .client
        .get(format!("{}/api/v1/devices", app.base))
        .header("origin", CONSOLE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["access-control-allow-origin"], CONSOLE);
}
