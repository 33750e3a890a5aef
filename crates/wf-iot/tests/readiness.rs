//! Services started before their database or Redis wait for them instead of
//! exiting, and `/readyz` follows the dependency through an outage and back
//! without a restart. The outage is a proxy between the service and the real
//! server, taken down and brought back by the test.
//!
//! Needs `WF_IOT_TEST_REDIS_URL` (Redis) and `WF_IOT_TEST_MYSQL_URL`
//! (MariaDB, e.g. `mysql://root@127.0.0.1:3306`); each test returns early,
//! saying so, when its variable is not set (`.ci/run` sets both).

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use support::{TcpProxy, env, readiness, unique_suffix};
use wf_common::events::{EventBus, RedisBus, RedisBusConfig};
use wf_common::testing::eventually_within;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Waits until `/readyz` at `base` says `ready`; returns its body.
async fn wait_readiness(client: &reqwest::Client, base: &str, ready: bool) -> serde_json::Value {
    eventually_within(
        &format!("{base}/readyz to say ready = {ready}"),
        Duration::from_secs(30),
        || async {
            match readiness(client, base).await {
                Some((r, body)) if r == ready => Some(body),
                _ => None,
            }
        },
    )
    .await
}

/// The service at `base` is ready; with `proxy` down, `/readyz` says not
/// ready and names `dependency` alone (while `/healthz` still answers);
/// with it back, the service is ready again, without a restart.
async fn ride_out_outage(client: &reqwest::Client, base: &str, proxy: &TcpProxy, dependency: &str) {
    wait_readiness(client, base, true).await;
    proxy.take_down();
    let body = wait_readiness(client, base, false).await;
    let failing = body["failing"].as_object().expect("what is failing");
    assert_eq!(
        failing.keys().collect::<Vec<_>>(),
        vec![dependency],
        "readiness should name {dependency}: {body}"
    );
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(health.status().is_success(), "liveness is not readiness");
    proxy.bring_up();
    wait_readiness(client, base, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_redis_and_follows_its_outages() {
    let Some(redis_url) = env("WF_IOT_TEST_REDIS_URL") else {
        eprintln!("skipped: set WF_IOT_TEST_REDIS_URL to run the Redis readiness test");
        return;
    };
    let proxy = TcpProxy::in_front_of(&redis_url).await;
    let dir = tempfile::tempdir().unwrap();
    let config = device_service::Config {
        host: LOCALHOST,
        http_port: 0,
        grpc_port: 0,
        database_url: String::new(),
        ..device_service::Config::default()
    }
    .with_data_dir(dir.path());
    let bus_config = RedisBusConfig {
        stream_prefix: format!("wf-test-ready-{}:", unique_suffix()),
        max_len: 1000,
        claim_idle_ms: 1000,
    };

    // Redis is "down" when the service starts: it waits rather than exits.
    proxy.take_down();
    let via_proxy = proxy.through(&redis_url, None);
    let starting = tokio::spawn(async move {
        let bus: Arc<dyn EventBus> = Arc::new(
            RedisBus::connect_retrying(&via_proxy, bus_config)
                .await
                .expect("connects once Redis is back"),
        );
        device_service::Application::build(Arc::new(config), bus)
            .await
            .expect("device-service builds")
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !starting.is_finished(),
        "the service gave up (or started) while Redis was unreachable"
    );
    proxy.bring_up();
    let app = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("the service starts once Redis is reachable")
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.http_port());
    let stop = wf_common::shutdown::Shutdown::new();
    let running = tokio::spawn(app.run_until_stopped(stop.wait()));
    let client = reqwest::Client::new();

    ride_out_outage(&client, &base, &proxy, "event_bus").await;

    stop.trigger();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("device-service stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_its_database_and_follows_its_outages() {
    let Some(mysql_url) = env("WF_IOT_TEST_MYSQL_URL") else {
        eprintln!("skipped: set WF_IOT_TEST_MYSQL_URL to run the database readiness test");
        return;
    };
    let proxy = TcpProxy::in_front_of(&mysql_url).await;
    let name = format!("wf_test_ready_{}", unique_suffix());
    let dir = tempfile::tempdir().unwrap();
    let config = auth_service::Config {
        host: LOCALHOST,
        http_port: 0,
        grpc_port: 0,
        database_url: proxy.through(&mysql_url, Some(&format!("/{name}"))),
        database_max_connections: 4,
        ..auth_service::Config::default()
    }
    .with_data_dir(dir.path());

    // The database is "down" when the service starts: it waits.
    proxy.take_down();
    let starting = tokio::spawn(auth_service::Application::build(Arc::new(config)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !starting.is_finished(),
        "the service gave up (or started) while the database was unreachable"
    );
    proxy.bring_up();
    let app = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the service starts once the database is reachable")
        .unwrap()
        .expect("auth-service builds");
    let base = format!("http://127.0.0.1:{}", app.http_port());
    let stop = wf_common::shutdown::Shutdown::new();
    let running = tokio::spawn(app.run_until_stopped(stop.wait()));
    let client = reqwest::Client::new();

    ride_out_outage(&client, &base, &proxy, "database").await;
    // And the service works again, not just its probe.
    let login = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "nobody", "password": "not-a-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::UNAUTHORIZED);

    stop.trigger();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("auth-service stops")
        .unwrap()
        .unwrap();
    drop_database(&mysql_url, &name).await;
}

async fn drop_database(server_url: &str, name: &str) {
    let db = wf_common::db::Db::connect(server_url, 1)
        .await
        .expect("MariaDB reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&db.pool)
    .await
    .expect("the test database is dropped");
}
