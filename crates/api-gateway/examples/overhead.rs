#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::time::Duration;

use api_gateway::{Application, Config, GroupLimits, Limit};
use serde_json::{Value, json};
use wf_common::events::{EventBus, InProcessBus};

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let localhost = "127.0.0.1".parse().unwrap();
    let auth = auth_service::Application::build(Arc::new(auth_service::Config {
        host: localhost,
        http_port: 0,
        grpc_port: 0,
        database_url: format!("sqlite://{}", dir.path().join("auth.db").display()),
        signing_key_file: dir.path().join("key.pem"),
        ..auth_service::Config::default()
    }))
    .await
    .unwrap();
    auth.ensure_admin(Some("admin-password-1".into()))
        .await
        .unwrap();
    let auth_url = format!("http://127.0.0.1:{}", auth.http_port());
    let auth_grpc = format!("http://127.0.0.1:{}", auth.grpc_port());
    tokio::spawn(auth.run_until_stopped(std::future::pending()));
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new());
    let device = device_service::Application::build(
        Arc::new(device_service::Config {
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: format!("sqlite://{}", dir.path().join("d.db").display()),
            auth_grpc_url: auth_grpc,
            auth_jwks_url: format!("{auth_url}/.well-known/jwks.json"),
            ..device_service::Config::default()
        }),
        bus.clone(),
    )
    .await
    .unwrap();
    let device_url = format!("http://127.0.0.1:{}", device.http_port());
    tokio::spawn(device.run_until_stopped(std::future::pending()));
    let mut config = Config {
        host: localhost,
        http_port: 0,
        auth_url: auth_url.clone(),
        device_url: device_url.clone(),
        ..Config::default()
    };
    let huge = Limit::new(1e9, 1_000_000_000);
    config.rate_limits.devices = GroupLimits::new(huge, huge);
    if let Ok(url) = std::env::var("REDIS") {
        config.redis_url = url;
    }
    let gw = Application::build(Arc::new(config), bus).await.unwrap();
    let gw_url = format!("http://127.0.0.1:{}", gw.http_port());
    tokio::spawn(gw.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{auth_url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "admin-password-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();
    let created: Value = client
        .post(format!("{device_url}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&json!({"name": "b", "device_type": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    for (name, base) in [
        ("direct", &device_url),
        ("gateway", &gw_url),
        ("direct", &device_url),
        ("gateway", &gw_url),
    ] {
        let r = api_gateway::load_test(
            &format!("{base}/api/v1/devices/{id}"),
            &token,
            32,
            Duration::from_secs(4),
        )
        .await
        .unwrap();
        println!("{name}: {r}");
    }
}
