//! Starting and stopping `wf-iot serve`: the start names the console, a
//! configuration with problems or a held port stops it before anything
//! says ready, naming the fix; while it
//! drains it says what it waits for, and a second signal ends it at once;
//! after a crash, a restart shows no device online that is not connected.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::free_port;
use wf_common::testing::eventually_within;

const BIN: &str = env!("CARGO_BIN_EXE_wf-iot");
const PASSWORD: &str = "shutdown-test-password";

/// `wf-iot serve` on free loopback ports, with its data and log in `dir`.
fn serve(dir: &Path, auth_http: u16, device_http: u16) -> Child {
    serve_with_mqtt(dir, auth_http, device_http, 0)
}

fn serve_with_mqtt(dir: &Path, auth_http: u16, device_http: u16, mqtt: u16) -> Child {
    serve_command(dir, auth_http, device_http, mqtt)
        .spawn()
        .expect("wf-iot serve starts")
}

/// The `wf-iot serve` command of [`serve_with_mqtt`], to adjust.
fn serve_command(dir: &Path, auth_http: u16, device_http: u16, mqtt: u16) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("WF_IOT_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .expect("log file");
    cmd.arg("serve")
        .env("WF_IOT_DATA_DIR", dir.join("data"))
        .env("WF_IOT_ADMIN_PASSWORD", PASSWORD)
        .env(
            "WF_IOT_LOG__LEVEL",
            "info,rmqtt=warn,rmqtt_net=warn,sqlx=warn",
        )
        .env("WF_IOT_AUTH__HOST", "127.0.0.1")
        .env("WF_IOT_AUTH__HTTP_PORT", auth_http.to_string())
        .env("WF_IOT_AUTH__GRPC_PORT", "0")
        .env("WF_IOT_DEVICE__HOST", "127.0.0.1")
        .env("WF_IOT_DEVICE__HTTP_PORT", device_http.to_string())
        .env("WF_IOT_DEVICE__GRPC_PORT", "0")
        .env("WF_IOT_MQTT_GATEWAY__HOST", "127.0.0.1")
        .env("WF_IOT_MQTT_GATEWAY__MQTT_PORT", mqtt.to_string())
        .env("WF_IOT_MQTT_GATEWAY__WS_ENABLED", "false")
        .env("WF_IOT_MQTT_GATEWAY__HTTP_PORT", "0")
        .env("WF_IOT_MQTT_GATEWAY__GRPC_PORT", "0")
        .env("WF_IOT_FIRMWARE__HOST", "127.0.0.1")
        .env("WF_IOT_FIRMWARE__HTTP_PORT", "0")
        .env("WF_IOT_FIRMWARE__GRPC_PORT", "0")
        .env("WF_IOT_GATEWAY__HOST", "127.0.0.1")
        .env("WF_IOT_GATEWAY__HTTP_PORT", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    cmd
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

/// Kills the server when a test fails half way.
struct Server {
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, failing the test after `limit`.
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after the signal:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs in as the admin once the platform answers.
async fn login(http: &reqwest::Client, auth: &str) -> String {
    eventually_within(
        "the platform to answer",
        Duration::from_secs(60),
        || async {
            let resp = http
                .post(format!("{auth}/api/v1/auth/login"))
                .json(&json!({ "username": "admin", "password": PASSWORD }))
                .send()
                .await
                .ok()?;
            let body: Value = resp.json().await.ok()?;
            body["access_token"].as_str().map(str::to_string)
        },
    )
    .await
}

/// Whether device-service shows `crash-1` online.
async fn online(http: &reqwest::Client, devices: &str, token: &str) -> Option<bool> {
    let url = format!("{devices}/api/v1/devices/crash-1");
    let body: Value = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["online"].as_bool()
}

/// `crash-1`'s status history, newest first.
async fn status_history(http: &reqwest::Client, devices: &str, token: &str) -> Value {
    http.get(format!("{devices}/api/v1/devices/crash-1/status-history"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_restart_shows_no_device_online_that_is_not_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (auth_http, device_http, mqtt) = (free_port(), free_port(), free_port());
    let mut server = Server {
        child: serve_with_mqtt(dir.path(), auth_http, device_http, mqtt),
        log: dir.path().join("serve.log"),
    };
    let http = reqwest::Client::new();
    let auth = format!("http://127.0.0.1:{auth_http}");
    let devices = format!("http://127.0.0.1:{device_http}");
    let token = login(&http, &auth).await;
    let created: Value = http
        .post(format!("{devices}/api/v1/devices"))
        .bearer_auth(&token)
        .json(
            &json!({ "id": "crash-1", "name": "Connected at the crash", "device_type": "sensor" }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["credentials"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();

    let mut options = rumqttc::MqttOptions::new("crash-1", "127.0.0.1", mqtt);
    options.set_credentials("crash-1", secret.clone());
    let (_client, mut event_loop) = rumqttc::AsyncClient::new(options, 10);
    let polling = tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    eventually_within("the device online", Duration::from_secs(20), || async {
        (online(&http, &devices, &token).await == Some(true)).then_some(())
    })
    .await;

    // A crash: no offline status is recorded for the connected device.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    polling.abort();
    // On other ports: the old ones may linger in TIME_WAIT.
    let (auth_http, device_http) = (free_port(), free_port());
    let (auth, devices) = (
        format!("http://127.0.0.1:{auth_http}"),
        format!("http://127.0.0.1:{device_http}"),
    );
    let mqtt = free_port();
    server.child = serve_with_mqtt(dir.path(), auth_http, device_http, mqtt);
    let token = login(&http, &auth).await;
    assert_eq!(
        online(&http, &devices, &token).await,
        Some(false),
        "{}",
        server.log()
    );
    let history = status_history(&http, &devices, &token).await;
    let latest = &history[0];
    assert_eq!(
        (latest["online"].as_bool(), latest["reason"].as_str()),
        (Some(false), Some("server_restart")),
        "{history}"
    );

    // A clean stop with the device connected: its disconnection is
    // recorded before the services behind the gateway stop, so the next
    // start has nothing to correct.
    let mut options = rumqttc::MqttOptions::new("crash-1", "127.0.0.1", mqtt);
    options.set_credentials("crash-1", secret);
    let (_client, mut event_loop) = rumqttc::AsyncClient::new(options, 10);
    let polling = tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    eventually_within(
        "the device online again",
        Duration::from_secs(20),
        || async { (online(&http, &devices, &token).await == Some(true)).then_some(()) },
    )
    .await;
    signal(&server.child, "TERM");
    assert!(server.exit_within(Duration::from_secs(30)).await.success());
    polling.abort();
    let (auth_http, device_http) = (free_port(), free_port());
    let (auth, devices) = (
        format!("http://127.0.0.1:{auth_http}"),
        format!("http://127.0.0.1:{device_http}"),
    );
    server.child = serve_with_mqtt(dir.path(), auth_http, device_http, free_port());
    let token = login(&http, &auth).await;
    let history = status_history(&http, &devices, &token).await;
    let reasons: Vec<(Option<bool>, Option<&str>)> = history
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|h| (h["online"].as_bool(), h["reason"].as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some(false), Some("disconnected")),
            (Some(true), Some("connected"))
        ],
        "{history}\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_what_it_waits_for_and_a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (auth_http, device_http) = (free_port(), free_port());
    let mut server = Server {
        child: serve(dir.path(), auth_http, device_http),
        log: dir.path().join("serve.log"),
    };
    let http = reqwest::Client::new();
    let auth = format!("http://127.0.0.1:{auth_http}");
    let devices = format!("http://127.0.0.1:{device_http}");

    let token = login(&http, &auth).await;
    let resp = http
        .post(format!("{devices}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&json!({ "id": "quiet-1", "name": "Never connects", "device_type": "sensor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // A command to a device that never connects, waited for: the request
    // stays open until the wait ends (30 s).
    let waiting = tokio::spawn({
        let (http, token, devices) = (http.clone(), token.clone(), devices.clone());
        async move {
            http.post(format!(
                "{devices}/api/v1/devices/quiet-1/commands?wait=true"
            ))
            .bearer_auth(&token)
            .json(&json!({ "name": "reboot", "timeout_s": 120 }))
            .send()
            .await
        }
    });
    eventually_within(
        "the command to be created",
        Duration::from_secs(10),
        || async {
            let body: Value = http
                .get(format!("{devices}/api/v1/devices/quiet-1/commands"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["items"].as_array()?.len() == 1).then_some(())
        },
    )
    .await;
    assert!(!waiting.is_finished());

    signal(&server.child, "TERM");
    let line = eventually_within(
        "a log line naming the request shutdown waits for",
        Duration::from_secs(15),
        || async {
            server
                .log()
                .lines()
                .find(|l| {
                    l.contains("shutting down: still waiting")
                        && l.contains("device-service: HTTP POST /api/v1/devices/quiet-1/commands")
                })
                .map(str::to_string)
        },
    )
    .await;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "it stopped already"
    );

    signal(&server.child, "TERM");
    let status = server.exit_within(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(143), "{}", server.log());
    assert!(
        server
            .log()
            .contains("second signal: exiting without waiting"),
        "{}",
        server.log()
    );
    // The client sees its connection closed, not an answer.
    assert!(waiting.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_in_flight_one_signal_stops_the_platform_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (auth_http, device_http) = (free_port(), free_port());
    let mut server = Server {
        child: serve(dir.path(), auth_http, device_http),
        log: dir.path().join("serve.log"),
    };
    let http = reqwest::Client::new();
    eventually_within(
        "the platform to answer",
        Duration::from_secs(60),
        || async {
            let resp = http
                .get(format!("http://127.0.0.1:{device_http}/healthz"))
                .send()
                .await
                .ok()?;
            resp.status().is_success().then_some(())
        },
    )
    .await;
    signal(&server.child, "INT");
    let status = server.exit_within(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}:\n{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_port_stops_the_start_naming_the_fix_before_anything_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    // A port below the kernel's ephemeral range, held by another program.
    let held = (20_000..30_000)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free port");
    let port = held.local_addr().unwrap().port();
    let mut server = Server {
        child: serve_command(dir.path(), 0, 0, 0)
            .args(["--mqtt-port", &port.to_string()])
            .spawn()
            .expect("wf-iot serve starts"),
        log: dir.path().join("serve.log"),
    };
    let status = server.exit_within(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = server.log();
    for named in [
        &format!("port {port}"),
        "--mqtt-port",
        "mqtt_gateway.mqtt_port",
        "wf-iot.toml",
        "WF_IOT_MQTT_GATEWAY__MQTT_PORT",
    ] {
        assert!(log.contains(named), "{named:?} is not named:\n{log}");
    }
    assert!(!log.contains(" ready"), "something said ready:\n{log}");
    assert!(
        !log.contains("wf-iot is running"),
        "the banner came out:\n{log}"
    );
    assert!(
        !log.contains("created the first administrator"),
        "an administrator was created:\n{log}"
    );
    drop(held);
    // Nothing was created, so a start on a free port makes the first
    // administrator and shows its banner.
    let mut server = Server {
        child: serve_command(dir.path(), 0, 0, 0)
            .spawn()
            .expect("wf-iot serve starts"),
        log: dir.path().join("serve.log"),
    };
    eventually_within(
        "the first administrator",
        Duration::from_secs(60),
        || async {
            let log = server.log();
            (log.contains("created the first administrator")
                && log.contains("wf-iot user reset-password admin"))
            .then_some(())
        },
    )
    .await;
    signal(&server.child, "TERM");
    assert!(server.exit_within(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_names_the_console_and_wf_iot_toml_makes_a_moved_port_stick() {
    let dir = tempfile::tempdir().unwrap();
    let console = free_port();
    std::fs::write(
        dir.path().join("wf-iot.toml"),
        format!("[gateway]\nhttp_port = {console}\n"),
    )
    .unwrap();
    let mut cmd = serve_command(dir.path(), 0, 0, 0);
    cmd.env_remove("WF_IOT_GATEWAY__HTTP_PORT")
        .current_dir(dir.path());
    let server = Server {
        child: cmd.spawn().expect("wf-iot serve starts"),
        log: dir.path().join("serve.log"),
    };
    let banner = format!("console        http://localhost:{console}/");
    eventually_within("the banner", Duration::from_secs(60), || async {
        server.log().contains(&banner).then_some(())
    })
    .await;
    let log = server.log();
    assert!(
        log.contains(&format!("API docs       http://localhost:{console}/docs")),
        "{log}"
    );
    assert!(log.contains("MQTT           mqtt://localhost:"), "{log}");
    let page = reqwest::get(format!("http://127.0.0.1:{console}/login"))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_with_problems_is_refused_naming_every_setting_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let shared = free_port();
    let mut cmd = serve_command(dir.path(), shared, shared, 0);
    cmd.env("WF_IOT_AUTH__ISSUER", "acme-iot")
        .env("WF_IOT_FIRMWARE__ISSUER", "someone-else");
    let mut server = Server {
        child: cmd.spawn().expect("wf-iot serve starts"),
        log: dir.path().join("serve.log"),
    };
    let status = server.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", server.log());
    let log = server.log();
    for named in [
        "the configuration has 2 problems",
        &format!("auth.http_port and device.http_port are both {shared}"),
        "firmware.issuer \"someone-else\" differs from auth.issuer \"acme-iot\"",
    ] {
        assert!(log.contains(named), "{named:?} is not named:\n{log}");
    }
    // Nothing was created: no database, no key, no administrator.
    assert!(!dir.path().join("data").exists(), "{log}");

    // `wf-iot config --check` says the same without starting anything, for
    // the whole platform or a service run alone.
    let check = |service: &str, envs: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("WF_IOT_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(dir.path())
            .args(["config", "--check", "--service", service])
            .envs(envs.iter().copied())
            .output()
            .expect("wf-iot config runs")
    };
    let fine = check("all", &[]);
    assert!(fine.status.success(), "{fine:?}");
    assert!(String::from_utf8_lossy(&fine.stdout).contains("is usable"));
    let alone = check("device", &[("WF_IOT_DEVICE__COMMAND_MAX_WAIT_SECS", "0")]);
    assert_eq!(alone.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&alone.stderr);
    for named in [
        "the configuration has 3 problems",
        "device.command_max_wait_secs: must be at least 1, not 0",
        "WF_IOT_INTERNAL__TOKEN",
        "events.redis_url",
    ] {
        assert!(errors.contains(named), "{named:?} is not named:\n{errors}");
    }
    let ready = check(
        "device",
        &[
            (
                "WF_IOT_INTERNAL__TOKEN",
                "an-internal-token-of-32-characters",
            ),
            ("WF_IOT_EVENTS__REDIS_URL", "redis://127.0.0.1:6379"),
        ],
    );
    assert!(ready.status.success(), "{ready:?}");
}
