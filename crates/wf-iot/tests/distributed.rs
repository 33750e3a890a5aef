//! The services run apart, for real: every service is its own `wf-iot
//! serve <service>` process on free ports, against MariaDB (one database
//! per service, created by `wf-iot migrate`), Redis (events, shared rate
//! limits) and a Mosquitto of the test's own with dynamic security. Two
//! replicas each of device-service, mqtt-gateway and the rollout worker sit
//! behind TCP balancers, the way a Kubernetes Service or compose DNS puts
//! them behind one address.
//!
//! The services are started before their dependencies (MariaDB and Redis
//! behind proxies the test holds down, Mosquitto not yet running) and must
//! wait for them rather than exit. The story is then driven through the
//! api-gateway: the admin logs in, creates
//! a role and a user with it; that user registers devices; simulated
//! devices connect, publish telemetry and answer a command; a firmware
//! rollout completes. Redis then goes away for a few seconds under load:
//! every service reports it on `/readyz`, keeps running and recovers by
//! itself, and the telemetry published meanwhile is stored once. Then,
//! while devices publish and a second rollout runs,
//! one replica of each scaled service is killed with SIGKILL. device-service
//! and the worker finish the work with the surviving replica (Redis Streams
//! hands the dead consumer's events over, worker leases run out); the
//! mqtt-gateway replica is restarted, as a supervisor would, because
//! Mosquitto gives the messages in flight to a crashed subscriber to no one
//! else: its durable session holds them until it is back. The databases
//! must show every message stored once and every device upgraded once.
//!
//! Runs only with `WF_IOT_TEST_DISTRIBUTED=1`, `WF_IOT_TEST_MYSQL_URL` and
//! `WF_IOT_TEST_REDIS_URL` set (`.ci/distributed-e2e.sh` sets them); Mosquitto
//! 2 must be installed. Without them it prints why and passes, so `cargo
//! test --workspace` stays self-contained.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rumqttc::QoS;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{TcpProxy, env, free_port, readiness, unique_suffix};
use wf_common::db::Db;
use wf_common::testing::eventually_within;
use wf_common::testing::mosquitto::{
    ADMIN as MOSQUITTO_ADMIN, ADMIN_PASSWORD as MOSQUITTO_ADMIN_PASSWORD, MosquittoServer,
};
use wf_iot::ota::{Ota, OtaArgs};
use wf_iot::simulate::{Api, Behaviour, Credentials, Device, Stats, connect, connect_with};

const BIN: &str = env!("CARGO_BIN_EXE_wf-iot");
const ADMIN_PASSWORD: &str = "e2e-admin-password";
const OPERATOR_PASSWORD: &str = "e2e-operator-password";
const INTERNAL_TOKEN: &str = "e2e-internal-token-0123456789";
const DEVICE_TYPE: &str = "e2e-sensor";
const DEVICES: usize = 10;
/// Metrics in every telemetry message, so rows per message.
const METRICS: i64 = 2;

struct Settings {
    mysql: String,
    redis: String,
}

impl Settings {
    fn from_env() -> Option<Self> {
        let wanted = env("WF_IOT_TEST_DISTRIBUTED").is_some_and(|v| v == "1");
        let mysql = env("WF_IOT_TEST_MYSQL_URL");
        let redis = env("WF_IOT_TEST_REDIS_URL");
        match (wanted, mysql, redis) {
            (true, Some(mysql), Some(redis)) => Some(Self {
                mysql: mysql.trim_end_matches('/').to_string(),
                redis,
            }),
            _ => {
                eprintln!(
                    "skipped: the distributed end-to-end test runs with WF_IOT_TEST_DISTRIBUTED=1, \
                     WF_IOT_TEST_MYSQL_URL (e.g. mysql://root@127.0.0.1:3306) and \
                     WF_IOT_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379); \
                     .ci/distributed-e2e.sh sets them"
                );
                None
            }
        }
    }
}

/// One `wf-iot serve <service>` process.
struct Service {
    name: String,
    target: String,
    env: Vec<(String, String)>,
    http_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Ends the process with SIGKILL, as a crash or an OOM kill would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Every process, server and name of one run; all of it is killed and
/// dropped when the value goes, even when the test panics.
struct Cluster {
    run: String,
    settings: Settings,
    dir: tempfile::TempDir,
    mosquitto: MosquittoServer,
    /// The services reach MariaDB and Redis through these, so the test can
    /// take either away from all of them at once.
    mysql_proxy: TcpProxy,
    redis_proxy: TcpProxy,
    services: Vec<Service>,
    /// device-service's gRPC, through its balancer.
    device_grpc_url: String,
    /// The MQTT port of `mqtt-edge`, an mqtt-gateway with its own embedded
    /// broker beside the Mosquitto ones: the connections there belong to
    /// that process alone.
    edge_mqtt_port: u16,
    /// Balancers in front of the replicas: device-service HTTP and gRPC,
    /// mqtt-gateway gRPC.
    _proxies: Vec<TcpProxy>,
}

impl Cluster {
    /// The service's database as the services reach it (through the proxy).
    fn database_url(&self, service: &str) -> String {
        self.mysql_proxy.through(
            &self.settings.mysql,
            Some(&format!("/{}", self.database(service))),
        )
    }

    /// Redis as the services reach it (through the proxy).
    fn redis_url(&self) -> String {
        self.redis_proxy.through(&self.settings.redis, None)
    }

    fn database(&self, service: &str) -> String {
        format!("wf_test_e2e_{}_{service}", self.run)
    }

    fn stream_prefix(&self) -> String {
        format!("wf-e2e-{}:", self.run)
    }

    /// The environment every process shares.
    fn common_env(&self, name: &str) -> Vec<(String, String)> {
        let data = self.dir.path().join(name);
        vec![
            ("WF_IOT_DATA_DIR".into(), data.display().to_string()),
            (
                "WF_IOT_LOG__LEVEL".into(),
                "info,rmqtt=warn,sqlx=warn".into(),
            ),
            ("WF_IOT_EVENTS__REDIS_URL".into(), self.redis_url()),
            // The secret of the calls between the services.
            ("WF_IOT_INTERNAL__TOKEN".into(), INTERNAL_TOKEN.into()),
            (
                "WF_IOT_EVENTS__REDIS__STREAM_PREFIX".into(),
                self.stream_prefix(),
            ),
            // A killed replica's events go to the survivor after 2 s.
            ("WF_IOT_EVENTS__REDIS__CLAIM_IDLE_MS".into(), "2000".into()),
            (
                "WF_IOT_AUTH__DATABASE_URL".into(),
                self.database_url("auth"),
            ),
            (
                "WF_IOT_DEVICE__DATABASE_URL".into(),
                self.database_url("device"),
            ),
            (
                "WF_IOT_FIRMWARE__DATABASE_URL".into(),
                self.database_url("firmware"),
            ),
        ]
    }

    fn command(&self, name: &str, args: &[&str], extra: &[(String, String)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        // Only what this test sets: nothing from the caller's WF_IOT_*.
        for (key, _) in std::env::vars() {
            if key.starts_with("WF_IOT_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.common_env(name));
        cmd.envs(extra.iter().cloned());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a `wf-iot` command to completion; panics with its output when
    /// it fails.
    fn run_command(&self, args: &[&str], extra: &[(String, String)]) -> String {
        let out = self
            .command("cli", args, extra)
            .output()
            .expect("wf-iot runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "wf-iot {args:?} failed:\n{text}");
        text
    }

    fn spawn(&mut self, name: &str, target: &str, http_port: u16, env: Vec<(String, String)>) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut service = Service {
            name: name.into(),
            target: target.into(),
            env,
            http_port,
            log,
            child: None,
        };
        self.launch(&mut service);
        self.services.push(service);
    }

    fn launch(&self, service: &mut Service) {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&service.log)
            .expect("log file");
        let child = self
            .command(&service.name, &["serve", &service.target], &service.env)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("wf-iot serve starts");
        service.child = Some(child);
    }

    /// Starts a killed service again, with the same identity and settings,
    /// as a supervisor would.
    fn restart(&mut self, name: &str) {
        let i = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        let mut service = std::mem::replace(
            &mut self.services[i],
            Service {
                name: String::new(),
                target: String::new(),
                env: Vec::new(),
                http_port: 0,
                log: PathBuf::new(),
                child: None,
            },
        );
        assert!(service.child.is_none(), "{name} is running");
        self.launch(&mut service);
        self.services[i] = service;
    }

    fn service(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn url(&mut self, name: &str) -> String {
        self.service(name).base()
    }

    /// Waits until every running service answers `/readyz` with 200.
    async fn wait_ready(&mut self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        for i in 0..self.services.len() {
            loop {
                let service = &mut self.services[i];
                if service.child.is_none() {
                    break;
                }
                if let Some(status) = service.exited() {
                    panic!(
                        "{} exited ({status}):\n{}",
                        service.name,
                        service.log_tail(40)
                    );
                }
                let answer = readiness(&client, &service.base()).await;
                if matches!(answer, Some((true, _))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} is not ready after {within:?}: {answer:?}\n{}",
                    service.name,
                    service.log_tail(40)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Fails the test when a process that should run has exited.
    fn assert_running(&mut self) {
        for service in &mut self.services {
            if let Some(status) = service.exited() {
                panic!(
                    "{} exited ({status}):\n{}",
                    service.name,
                    service.log_tail(40)
                );
            }
        }
    }

    /// The test's own connection to a service's database.
    async fn db(&self, service: &str) -> Db {
        Db::connect(
            &format!("{}/{}", self.settings.mysql, self.database(service)),
            2,
        )
        .await
        .expect("the service's database")
    }

    /// Starts everything; returns once every service is ready.
    async fn start(settings: Settings) -> Self {
        let run = unique_suffix();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mosquitto = MosquittoServer::start().await;
        let mysql_proxy = TcpProxy::in_front_of(&settings.mysql).await;
        let redis_proxy = TcpProxy::in_front_of(&settings.redis).await;
        let mut cluster = Self {
            run,
            settings,
            dir,
            mosquitto,
            mysql_proxy,
            redis_proxy,
            services: Vec::new(),
            device_grpc_url: String::new(),
            edge_mqtt_port: free_port(),
            _proxies: Vec::new(),
        };
        eprintln!(
            "run {}: databases {}, {}, {}; Redis streams {}*; Mosquitto on {}; files in {}",
            cluster.run,
            cluster.database("auth"),
            cluster.database("device"),
            cluster.database("firmware"),
            cluster.stream_prefix(),
            cluster.mosquitto.port,
            cluster.dir.path().display(),
        );

        // One database per service, created and migrated by `wf-iot migrate`;
        // the first administrator by `wf-iot user create`.
        let migrated = cluster.run_command(&["migrate", "up"], &[]);
        for service in ["auth", "device", "firmware"] {
            assert!(
                migrated.contains(&format!("{service}: up to date")),
                "{migrated}"
            );
        }
        cluster.run_command(
            &[
                "user",
                "create",
                "--username",
                "admin",
                "--email",
                "admin@e2e.example.com",
                "--admin",
            ],
            &[("WF_IOT_USER_PASSWORD".into(), ADMIN_PASSWORD.into())],
        );

        // The services start before their dependencies: MariaDB, Redis and
        // Mosquitto are all unreachable until every process has had time to
        // give up, which none may do.
        cluster.mysql_proxy.take_down();
        cluster.redis_proxy.take_down();
        cluster.mosquitto.kill();

        let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (auth_http, auth_grpc) = (free_port(), free_port());
        let device_http = [free_port(), free_port()];
        let device_grpc = [free_port(), free_port()];
        let mqtt_http = [free_port(), free_port()];
        let mqtt_grpc = [free_port(), free_port()];
        let (firmware_http, firmware_grpc) = (free_port(), free_port());
        let worker_http = [free_port(), free_port()];
        let gateway_http = free_port();
        let device_http_lb = TcpProxy::start(device_http.map(localhost).to_vec()).await;
        let device_grpc_lb = TcpProxy::start(device_grpc.map(localhost).to_vec()).await;
        let mqtt_grpc_lb = TcpProxy::start(mqtt_grpc.map(localhost).to_vec()).await;
        let device_http_url = device_http_lb.url("http");
        let device_grpc_url = device_grpc_lb.url("http");
        cluster.device_grpc_url = device_grpc_url.clone();
        let mqtt_grpc_url = mqtt_grpc_lb.url("http");
        cluster._proxies = vec![device_http_lb, device_grpc_lb, mqtt_grpc_lb];

        let auth_grpc_url = format!("http://127.0.0.1:{auth_grpc}");
        let jwks_url = format!("http://127.0.0.1:{auth_http}/.well-known/jwks.json");
        let firmware_url = format!("http://127.0.0.1:{firmware_http}");
        let kv = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect()
        };

        cluster.spawn(
            "auth",
            "auth",
            auth_http,
            kv(&[
                ("WF_IOT_AUTH__HOST", "127.0.0.1".into()),
                ("WF_IOT_AUTH__HTTP_PORT", auth_http.to_string()),
                ("WF_IOT_AUTH__GRPC_PORT", auth_grpc.to_string()),
            ]),
        );
        for i in 0..2 {
            cluster.spawn(
                &format!("device-{}", i + 1),
                "device",
                device_http[i],
                kv(&[
                    ("WF_IOT_DEVICE__HOST", "127.0.0.1".into()),
                    ("WF_IOT_DEVICE__HTTP_PORT", device_http[i].to_string()),
                    ("WF_IOT_DEVICE__GRPC_PORT", device_grpc[i].to_string()),
                    ("WF_IOT_DEVICE__AUTH_GRPC_URL", auth_grpc_url.clone()),
                    ("WF_IOT_DEVICE__AUTH_JWKS_URL", jwks_url.clone()),
                    ("WF_IOT_DEVICE__MQTT_GATEWAY_URL", mqtt_grpc_url.clone()),
                    ("WF_IOT_DEVICE__CONSUMER_NAME", format!("device-{}", i + 1)),
                ]),
            );
            cluster.spawn(
                &format!("mqtt-gateway-{}", i + 1),
                "mqtt-gateway",
                mqtt_http[i],
                kv(&[
                    ("WF_IOT_MQTT_GATEWAY__HOST", "127.0.0.1".into()),
                    ("WF_IOT_MQTT_GATEWAY__BROKER", "mosquitto".into()),
                    ("WF_IOT_MQTT_GATEWAY__WS_ENABLED", "false".into()),
                    ("WF_IOT_MQTT_GATEWAY__HTTP_PORT", mqtt_http[i].to_string()),
                    ("WF_IOT_MQTT_GATEWAY__GRPC_PORT", mqtt_grpc[i].to_string()),
                    (
                        "WF_IOT_MQTT_GATEWAY__DEVICE_SERVICE_URL",
                        device_grpc_url.clone(),
                    ),
                    ("WF_IOT_MQTT_GATEWAY__MOSQUITTO__HOST", "127.0.0.1".into()),
                    (
                        "WF_IOT_MQTT_GATEWAY__MOSQUITTO__PORT",
                        cluster.mosquitto.port.to_string(),
                    ),
                    (
                        "WF_IOT_MQTT_GATEWAY__MOSQUITTO__ADMIN_USERNAME",
                        MOSQUITTO_ADMIN.into(),
                    ),
                    (
                        "WF_IOT_MQTT_GATEWAY__MOSQUITTO__ADMIN_PASSWORD",
                        MOSQUITTO_ADMIN_PASSWORD.into(),
                    ),
                    (
                        "WF_IOT_MQTT_GATEWAY__MOSQUITTO__CLIENT_ID",
                        format!("wf-iot-gateway/{}", i + 1),
                    ),
                    // A killed replica gets what it had not passed on when
                    // it comes back.
                    (
                        "WF_IOT_MQTT_GATEWAY__MOSQUITTO__DURABLE_SESSION",
                        "true".into(),
                    ),
                ]),
            );
        }
        // A gateway with an embedded broker of its own, renewing its lease
        // every second (three-second lease).
        let edge_http = free_port();
        cluster.spawn(
            "mqtt-edge",
            "mqtt-gateway",
            edge_http,
            kv(&[
                ("WF_IOT_MQTT_GATEWAY__HOST", "127.0.0.1".into()),
                ("WF_IOT_MQTT_GATEWAY__BROKER", "embedded".into()),
                ("WF_IOT_MQTT_GATEWAY__WS_ENABLED", "false".into()),
                (
                    "WF_IOT_MQTT_GATEWAY__MQTT_PORT",
                    cluster.edge_mqtt_port.to_string(),
                ),
                ("WF_IOT_MQTT_GATEWAY__HTTP_PORT", edge_http.to_string()),
                ("WF_IOT_MQTT_GATEWAY__GRPC_PORT", free_port().to_string()),
                (
                    "WF_IOT_MQTT_GATEWAY__DEVICE_SERVICE_URL",
                    device_grpc_url.clone(),
                ),
                ("WF_IOT_MQTT_GATEWAY__BROKER_HEARTBEAT_SECS", "1".into()),
            ]),
        );
        let firmware_env = |extra: &[(&str, String)]| {
            let mut env = kv(&[
                ("WF_IOT_FIRMWARE__HOST", "127.0.0.1".into()),
                ("WF_IOT_FIRMWARE__HTTP_PORT", firmware_http.to_string()),
                ("WF_IOT_FIRMWARE__GRPC_PORT", firmware_grpc.to_string()),
                ("WF_IOT_FIRMWARE__AUTH_GRPC_URL", auth_grpc_url.clone()),
                ("WF_IOT_FIRMWARE__AUTH_JWKS_URL", jwks_url.clone()),
                (
                    "WF_IOT_FIRMWARE__DEVICE_SERVICE_URL",
                    device_grpc_url.clone(),
                ),
                ("WF_IOT_FIRMWARE__MQTT_GATEWAY_URL", mqtt_grpc_url.clone()),
                ("WF_IOT_FIRMWARE__PUBLIC_URL", firmware_url.clone()),
            ]);
            env.extend(kv(extra));
            env
        };
        cluster.spawn("firmware", "firmware", firmware_http, firmware_env(&[]));
        for (i, http) in worker_http.into_iter().enumerate() {
            cluster.spawn(
                &format!("worker-{}", i + 1),
                "worker",
                http,
                firmware_env(&[
                    ("WF_IOT_FIRMWARE__WORKER__NAME", format!("worker-{}", i + 1)),
                    ("WF_IOT_FIRMWARE__WORKER__HTTP_PORT", http.to_string()),
                    // A killed worker's leases end after 5 s.
                    ("WF_IOT_FIRMWARE__WORKER__LEASE_SECS", "5".into()),
                    ("WF_IOT_FIRMWARE__WORKER__POLL_INTERVAL_MS", "200".into()),
                ]),
            );
        }
        let redis = cluster.redis_url();
        let gateway_prefix = format!("{}gateway:", cluster.stream_prefix());
        cluster.spawn(
            "gateway",
            "gateway",
            gateway_http,
            kv(&[
                ("WF_IOT_GATEWAY__HOST", "127.0.0.1".into()),
                ("WF_IOT_GATEWAY__HTTP_PORT", gateway_http.to_string()),
                (
                    "WF_IOT_GATEWAY__AUTH_URL",
                    format!("http://127.0.0.1:{auth_http}"),
                ),
                ("WF_IOT_GATEWAY__DEVICE_URL", device_http_url),
                ("WF_IOT_GATEWAY__FIRMWARE_URL", firmware_url.clone()),
                ("WF_IOT_GATEWAY__INSTANCE_ID", "gateway-1".into()),
                ("WF_IOT_GATEWAY__REDIS_URL", redis),
                ("WF_IOT_GATEWAY__REDIS_KEY_PREFIX", gateway_prefix),
            ]),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.assert_running();
        let client = reqwest::Client::new();
        for service in &cluster.services {
            let answer = readiness(&client, &service.base()).await;
            assert!(
                !matches!(answer, Some((true, _))),
                "{} is ready without its dependencies: {answer:?}",
                service.name
            );
        }
        eprintln!("every service waits for MariaDB, Redis and Mosquitto");
        cluster.mysql_proxy.bring_up();
        cluster.redis_proxy.bring_up();
        cluster.mosquitto.launch().await;
        cluster.wait_ready(Duration::from_secs(90)).await;
        eprintln!("every service is ready");
        cluster
    }

    /// Events delivered to a consumer of `group` on `topic` and not yet
    /// acknowledged (a dead replica's, until a survivor claims them).
    async fn pending_events(&self, topic: &str, group: &str) -> i64 {
        let client = redis::Client::open(self.settings.redis.as_str()).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis reachable");
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(format!("{}{topic}", self.stream_prefix()))
            .arg(group)
            .query_async(&mut conn)
            .await
            .expect("XPENDING answers");
        match summary {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("unexpected XPENDING answer: {other:?}"),
            },
            other => panic!("unexpected XPENDING answer: {other:?}"),
        }
    }

    /// Drops the run's databases and Redis keys.
    async fn clean_up(&self) {
        if let Ok(db) = Db::connect(&self.settings.mysql, 1).await {
            for service in ["auth", "device", "firmware"] {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{}`",
                    self.database(service)
                )))
                .execute(&db.pool)
                .await;
            }
        }
        if let Ok(client) = redis::Client::open(self.settings.redis.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.stream_prefix()))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for service in &mut self.services {
            service.kill();
            if failed {
                eprintln!(
                    "----- {} (last lines of {})\n{}",
                    service.name,
                    service.log.display(),
                    service.log_tail(30)
                );
            }
        }
        if failed {
            eprintln!("----- mosquitto\n{}", self.mosquitto.log());
        }
        // Clean up on a runtime of its own: this may run inside the test's.
        let cleanup = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|rt| rt.block_on(self.clean_up()))
                })
                .join()
        });
        if cleanup.is_err() {
            eprintln!("cleaning up run {} failed", self.run);
        }
    }
}

/// An HTTP client of the api-gateway, logged in.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn login(base: &str, username: &str, password: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let resp = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "login as {username}");
        let body: Value = resp.json().await.unwrap();
        Self {
            http,
            base: base.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.bearer_auth(&self.token).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// GET that tolerates a failed attempt (a replica going away): `None`
    /// unless it answered 200.
    async fn try_get(&self, path: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        resp.json().await.ok()
    }

    /// Uploads a generated image for the test's device type.
    async fn upload_firmware(&self, version: &str, size: usize) -> String {
        let image: Vec<u8> = (0..size)
            .map(|i| (i % 251) as u8 ^ version.len() as u8)
            .collect();
        let digest: String = Sha256::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let form = reqwest::multipart::Form::new()
            .text("name", format!("Sensor firmware {version}"))
            .text("device_type", DEVICE_TYPE)
            .text("version", version.to_string())
            .text("sha256", digest)
            .part(
                "file",
                reqwest::multipart::Part::bytes(image).file_name("sensor.bin"),
            );
        let (status, body) = self
            .send(
                self.http
                    .post(format!("{}/api/v1/firmware", self.base))
                    .multipart(form),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "firmware upload: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn start_rollout(&self, name: &str, firmware_id: &str, rate_per_minute: u32) -> String {
        let (status, body) = self
            .post(
                "/api/v1/rollouts",
                json!({
                    "name": name,
                    "firmware_id": firmware_id,
                    "target": { "device_type": DEVICE_TYPE },
                    "rate_per_minute": rate_per_minute,
                    "timeout_secs": 60,
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "rollout: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn wait_rollout(&self, id: &str, within: Duration) -> Value {
        eventually_within(&format!("rollout {id} to finish"), within, || async {
            let r = self.try_get(&format!("/api/v1/rollouts/{id}")).await?;
            matches!(
                r["state"].as_str(),
                Some("completed" | "aborted" | "canceled")
            )
            .then_some(r)
        })
        .await
    }
}

/// Connects simulated devices to Mosquitto, retrying while their
/// credentials are still on their way to the broker.
async fn connect_devices(
    creds: &[Credentials],
    port: u16,
    stats: &Arc<Stats>,
    ota: &Arc<Ota>,
) -> Vec<Device> {
    let mut devices = Vec::new();
    for c in creds {
        let device = eventually_within(
            &format!("{} to connect to Mosquitto", c.id),
            Duration::from_secs(20),
            || async {
                // Devices that keep a state, as `wf-iot simulate`'s do.
                let behaviour = Behaviour {
                    ota: Some(ota.clone()),
                    sampling_ms: Some(60_000),
                    ..Behaviour::default()
                };
                connect_with(c, "127.0.0.1", port, stats.clone(), behaviour)
                    .await
                    .ok()
            },
        )
        .await;
        devices.push(device);
    }
    devices
}

/// Publishes `per_device` readings from every device, `interval` apart,
/// timestamps `base_ts + n` (unique per device); returns how many were
/// handed to the MQTT client.
async fn publish_readings(
    devices: &[Device],
    base_ts: i64,
    per_device: u64,
    interval: Duration,
    sent: &AtomicU64,
) {
    for n in 0..per_device {
        for d in devices {
            let payload = json!({
                "temperature": 20.0 + (n % 10) as f64,
                "humidity": 40.0 + (n % 7) as f64,
                "ts": base_ts + n as i64,
            })
            .to_string();
            d.client
                .publish(
                    format!("devices/{}/telemetry", d.id),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("the device's client takes the message");
            sent.fetch_add(1, Ordering::SeqCst);
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
}

async fn count(db: &Db, sql: &'static str, bind: Option<&str>) -> i64 {
    let mut query = sqlx::query_scalar::<_, i64>(sql);
    if let Some(b) = bind {
        query = query.bind(b.to_string());
    }
    query.fetch_one(&db.pool).await.expect("a count")
}

/// Telemetry rows of the test's devices in [from, to).
async fn stored_rows(db: &Db, from: i64, to: i64) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM device_data WHERE device_id LIKE 'e2e-%' AND ts >= ? AND ts < ?",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&db.pool)
    .await
    .expect("a count")
}

/// Waits until exactly `expected` rows are stored in [from, to), then
/// checks they stay that many.
async fn expect_rows(db: &Db, from: i64, to: i64, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    let last = loop {
        let last = stored_rows(db, from, to).await;
        assert!(
            last <= expected,
            "{last} rows stored for {expected} expected"
        );
        if last == expected {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "only {last} of {expected} telemetry rows were stored within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_rows(db, from, to).await, last, "rows kept arriving");
}

/// Every execution of the rollout succeeded, each exactly once, on its
/// first attempt.
async fn expect_executed_once(db: &Db, rollout: &Value) {
    let id = rollout["id"].as_str().unwrap();
    assert_eq!(rollout["state"], "completed", "{rollout}");
    assert_eq!(rollout["counts"]["succeeded"], DEVICES as u64, "{rollout}");
    let tasks = count(
        db,
        "SELECT COUNT(*) FROM firmware_upgrade_tasks WHERE rollout_id = ?",
        Some(id),
    )
    .await;
    assert_eq!(tasks, DEVICES as i64, "one execution per device");
    let succeeded = count(
        db,
        "SELECT COUNT(*) FROM firmware_upgrade_tasks WHERE rollout_id = ? AND state = 'succeeded'",
        Some(id),
    )
    .await;
    assert_eq!(succeeded, DEVICES as i64);
    let retried = count(
        db,
        "SELECT COUNT(*) FROM firmware_upgrade_tasks WHERE rollout_id = ? AND attempts <> 1",
        Some(id),
    )
    .await;
    assert_eq!(retried, 0, "an execution was attempted more than once");
    let successes = count(
        db,
        "SELECT COUNT(*) FROM firmware_upgrade_task_history h \
         JOIN firmware_upgrade_tasks t ON t.id = h.task_id \
         WHERE t.rollout_id = ? AND h.to_state = 'succeeded'",
        Some(id),
    )
    .await;
    assert_eq!(successes, DEVICES as i64, "an execution succeeded twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_run_apart_and_survive_losing_replicas() {
    let Some(settings) = Settings::from_env() else {
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(settings).await;
    let gateway = cluster.url("gateway");

    // People: the admin creates a role and a user holding it.
    let admin = Client::login(&gateway, "admin", ADMIN_PASSWORD).await;
    let (status, role) = admin
        .post(
            "/api/v1/roles",
            json!({
                "name": "fleet-operator",
                "description": "Runs the sensor fleet",
                "permissions": ["device:read", "device:write", "device:command",
                                "firmware:read", "firmware:write", "firmware:deploy"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (status, user) = admin
        .post(
            "/api/v1/users",
            json!({
                "username": "fleet-op",
                "email": "fleet-op@e2e.example.com",
                "password": OPERATOR_PASSWORD,
                "full_name": "Fleet Operator",
                "roles": ["fleet-operator"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let operator = Client::login(&gateway, "fleet-op", OPERATOR_PASSWORD).await;
    let (status, _) = operator.get("/api/v1/users").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the role grants no user:manage"
    );

    // Devices: registered by the operator through the gateway, connected to
    // Mosquitto with the credentials the registry handed out.
    let api = Api::login(&gateway, &gateway, "fleet-op", OPERATOR_PASSWORD)
        .await
        .unwrap();
    let creds = api.provision("e2e", DEVICES, DEVICE_TYPE).await.unwrap();
    let stats = Arc::new(Stats::default());
    let ota = Ota::new(&OtaArgs {
        ota_install_ms: 200,
        ota_restart_ms: 200,
        ..OtaArgs::default()
    })
    .unwrap();
    let devices = connect_devices(&creds, cluster.mosquitto.port, &stats, &ota).await;
    eventually_within("every device online", Duration::from_secs(30), || async {
        let summary = operator.try_get("/api/v1/devices/summary").await?;
        (summary["online"] == DEVICES as u64).then_some(())
    })
    .await;
    eprintln!(
        "{DEVICES} devices online after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A device on the gateway with its own embedded broker goes offline
    // within its lease once that gateway is killed: no one else holds its
    // connection, and nothing said goodbye.
    let edge_creds = api.provision("edge", 1, "edge-sensor").await.unwrap();
    let edge_device = eventually_within(
        "a device to connect to mqtt-edge",
        Duration::from_secs(20),
        || async {
            connect(
                &edge_creds[0],
                "127.0.0.1",
                cluster.edge_mqtt_port,
                stats.clone(),
                0.0,
                100,
            )
            .await
            .ok()
        },
    )
    .await;
    let edge_path = format!("/api/v1/devices/{}", edge_creds[0].id);
    eventually_within(
        "the edge device online",
        Duration::from_secs(20),
        || async {
            let device = operator.try_get(&edge_path).await?;
            (device["online"] == true).then_some(())
        },
    )
    .await;
    cluster.service("mqtt-edge").kill();
    let killed = Instant::now();
    eventually_within(
        "the edge device offline after its gateway died",
        Duration::from_secs(30),
        || async {
            let device = operator.try_get(&edge_path).await?;
            (device["online"] == false).then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    let history = operator
        .try_get(&format!("{edge_path}/status-history"))
        .await
        .expect("status history");
    assert_eq!(history[0]["reason"], "gateway_lost", "{history}");
    assert!(
        took < Duration::from_secs(12),
        "a 3 s lease took {took:?} to release its device"
    );
    drop(edge_device);
    eprintln!(
        "a killed gateway instance's device went offline after {:.1} s",
        took.as_secs_f64()
    );

    // The audit log: device-service published each creation on Redis, and
    // auth-service, another process, stored it under the device's id.
    let entry = eventually_within(
        "the device's creation in the audit log",
        Duration::from_secs(20),
        || async {
            let page = admin
                .try_get("/api/v1/audit-logs?target=e2e-00001&action=device.create")
                .await?;
            page["items"].as_array()?.first().cloned()
        },
    )
    .await;
    assert_eq!(entry["actor_username"], "fleet-op", "{entry}");
    assert_eq!(entry["actor_id"], user["id"], "{entry}");
    assert_eq!(entry["outcome"], "success", "{entry}");
    assert_eq!(entry["client_ip"], "127.0.0.1", "{entry}");
    assert!(
        entry["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{entry}"
    );
    let (status, page) = admin
        .get("/api/v1/audit-logs?target=e2e-00001&action=device.create")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1, "stored once: {page}");

    // Telemetry, stored once per message, queryable through the gateway.
    let device_db = cluster.db("device").await;
    let firmware_db = cluster.db("firmware").await;
    let base_ts = wf_common::now_millis() - 3_600_000;
    let sent = AtomicU64::new(0);
    publish_readings(&devices, base_ts, 30, Duration::from_millis(20), &sent).await;
    let first = sent.load(Ordering::SeqCst) as i64;
    expect_rows(
        &device_db,
        base_ts,
        base_ts + 1_000_000,
        first * METRICS,
        Duration::from_secs(30),
    )
    .await;
    let latest = operator
        .try_get("/api/v1/devices/e2e-00001/telemetry/latest")
        .await
        .expect("latest values");
    assert_eq!(
        latest["values"].as_array().map(Vec::len),
        Some(2),
        "{latest}"
    );
    eprintln!("{first} messages stored once each");

    // A command answered by a device.
    let (status, command) = operator
        .post(
            "/api/v1/devices/e2e-00002/commands?wait=true",
            json!({ "name": "reboot", "params": { "delay": 1 }, "timeout_s": 10 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{command}");
    assert_eq!(command["status"], "succeeded", "{command}");

    // A firmware rollout to every device.
    let v2 = operator.upload_firmware("2.0.0", 64 * 1024).await;
    let rollout = operator.start_rollout("Sensors to 2.0.0", &v2, 0).await;
    let done = operator
        .wait_rollout(&rollout, Duration::from_secs(60))
        .await;
    expect_executed_once(&firmware_db, &done).await;
    eprintln!(
        "rollout to 2.0.0 completed after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A fleet change of device state: device-service publishes the desired
    // sampling interval through mqtt-gateway to Mosquitto, each device
    // applies it and reports it back over the bridge, and the job follows
    // them to convergence. The devices now report the firmware they were
    // updated to.
    let (status, job) = operator
        .post(
            "/api/v1/shadow-jobs",
            json!({ "desired": { "sampling_ms": 500 }, "target": { "type": DEVICE_TYPE } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_path = format!("/api/v1/shadow-jobs/{}", job["id"].as_str().unwrap());
    let job = eventually_within(
        "the shadow job to converge",
        Duration::from_secs(60),
        || async {
            let job = operator.try_get(&job_path).await?;
            (job["status"] == "completed").then_some(job)
        },
    )
    .await;
    assert_eq!(job["progress"]["converged"], DEVICES as u64, "{job}");
    let (_, doc) = operator.get("/api/v1/devices/e2e-00001/shadow").await;
    assert_eq!(
        doc["reported"],
        json!({ "sampling_ms": 500, "fw_version": "2.0.0" }),
        "{doc}"
    );
    assert_eq!(doc["delta"], json!({}), "{doc}");
    eprintln!(
        "shadow job converged on {DEVICES} devices after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Redis goes away for a while under load: every service says so on
    // /readyz and keeps running; once it is back they recover by themselves
    // and what devices published meanwhile is stored, once.
    let base_ts_outage = base_ts + 1_000_000;
    let sent_outage = Arc::new(AtomicU64::new(0));
    let publishing = {
        let sent = sent_outage.clone();
        let devices = devices.to_vec();
        tokio::spawn(async move {
            publish_readings(
                &devices,
                base_ts_outage,
                40,
                Duration::from_millis(100),
                &sent,
            )
            .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.redis_proxy.take_down();
    let client = reqwest::Client::new();
    for name in [
        "device-1",
        "mqtt-gateway-1",
        "firmware",
        "worker-1",
        "gateway",
    ] {
        let base = cluster.url(name);
        let body = eventually_within(
            &format!("{name} to report Redis unreachable"),
            Duration::from_secs(20),
            || async {
                match readiness(&client, &base).await {
                    Some((false, body)) if body["failing"].get("event_bus").is_some() => Some(body),
                    _ => None,
                }
            },
        )
        .await;
        eprintln!("{name} while Redis is away: {}", body["failing"]);
    }
    cluster.assert_running();
    cluster.redis_proxy.bring_up();
    cluster.wait_ready(Duration::from_secs(60)).await;
    eprintln!("every service recovered from the Redis outage");
    publishing.await.unwrap();
    let outage = sent_outage.load(Ordering::SeqCst) as i64;
    expect_rows(
        &device_db,
        base_ts_outage,
        base_ts_outage + 1_000_000,
        outage * METRICS,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("{outage} messages published around the outage stored once each");

    // Losing replicas mid-run: devices keep publishing and a paced rollout
    // runs while one replica each of device-service, mqtt-gateway and the
    // worker is killed.
    let v3 = operator.upload_firmware("3.0.0", 64 * 1024).await;
    let rollout = operator.start_rollout("Sensors to 3.0.0", &v3, 60).await;
    let base_ts2 = base_ts + 2_000_000;
    let sent2 = Arc::new(AtomicU64::new(0));
    let publishing = {
        let sent2 = sent2.clone();
        let devices = devices.to_vec();
        tokio::spawn(async move {
            publish_readings(&devices, base_ts2, 80, Duration::from_millis(100), &sent2).await;
        })
    };
    eventually_within(
        "the second run under way",
        Duration::from_secs(20),
        || async {
            let rows = stored_rows(&device_db, base_ts2, base_ts2 + 1_000_000).await;
            (rows > 0 && sent2.load(Ordering::SeqCst) >= 200).then_some(())
        },
    )
    .await;
    for name in ["device-1", "mqtt-gateway-1", "worker-1"] {
        cluster.service(name).kill();
        eprintln!(
            "killed {name} (SIGKILL) after {} messages of the second run",
            sent2.load(Ordering::SeqCst)
        );
    }
    // device-service and the worker carry on with one replica each. The
    // killed mqtt-gateway replica is restarted, as its supervisor would:
    // Mosquitto hands messages in flight to a crashed subscriber to no one
    // else, so its durable session keeps them (and its share meanwhile)
    // until it is back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart("mqtt-gateway-1");
    eprintln!("restarted mqtt-gateway-1");
    cluster.wait_ready(Duration::from_secs(30)).await;
    publishing.await.unwrap();
    let second = sent2.load(Ordering::SeqCst) as i64;
    let done = operator
        .wait_rollout(&rollout, Duration::from_secs(90))
        .await;
    expect_executed_once(&firmware_db, &done).await;
    eprintln!(
        "rollout to 3.0.0 completed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    expect_rows(
        &device_db,
        base_ts2,
        base_ts2 + 1_000_000,
        second * METRICS,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("{second} messages of the second run stored once each");
    // Nothing is left with the killed replicas: the survivors claimed and
    // acknowledged every event they had taken.
    for (topic, group) in [
        ("device.data.received", "device-service"),
        ("device.status.changed", "device-service"),
        ("device.ota.progress", "firmware-service"),
    ] {
        eventually_within(
            &format!("no {topic} event left pending in {group}"),
            Duration::from_secs(30),
            || async { (cluster.pending_events(topic, group).await == 0).then_some(()) },
        )
        .await;
    }
    cluster.assert_running();

    // The survivors are still ready.
    let client = reqwest::Client::new();
    for name in ["device-2", "mqtt-gateway-1", "mqtt-gateway-2", "worker-2"] {
        let base = cluster.url(name);
        let (ready, body) = readiness(&client, &base).await.expect("an answer");
        assert!(ready, "{name} is not ready: {body}");
    }
    let mut versions = HashMap::new();
    for d in &devices {
        *versions.entry(ota.running_version(&d.id)).or_insert(0) += 1;
    }
    assert_eq!(versions.get("3.0.0"), Some(&DEVICES), "{versions:?}");
    for d in &devices {
        let _ = d.client.disconnect().await;
    }

    // A disabled account loses access on every service and replica within
    // seconds, not when its token expires.
    let user_id = user["id"].as_str().unwrap();
    let (status, _) = admin
        .post(&format!("/api/v1/users/{user_id}/disable"), json!({}))
        .await;
    assert!(status.is_success(), "disable: {status}");
    let disabled = Instant::now();
    for path in ["/api/v1/devices", "/api/v1/firmware", "/api/v1/rollouts"] {
        // Several requests, so that both device-service replicas answer.
        for _ in 0..4 {
            eventually_within(
                &format!("{path} refused to the disabled account"),
                Duration::from_secs(10),
                || async { (operator.get(path).await.0 == StatusCode::UNAUTHORIZED).then_some(()) },
            )
            .await;
        }
    }
    assert!(
        disabled.elapsed() < Duration::from_secs(8),
        "the disabled account kept access for {:?}",
        disabled.elapsed()
    );
    // The services' gRPC ports answer nobody without the internal token.
    let mut grpc = wf_proto::device::device_service_client::DeviceServiceClient::connect(
        cluster.device_grpc_url.clone(),
    )
    .await
    .unwrap();
    let refused = grpc
        .get_device(wf_proto::device::GetDeviceRequest {
            device_id: creds[0].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
