//! `wf-iot simulate` against a running platform: it fails with a clear
//! error when its broker is not the platform's, refuses to take over the
//! devices of a simulation already running, its devices keep a reported
//! state and apply desired changes (online or when they come back), and
//! they reconnect by themselves after the broker restarts.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TcpProxy, free_port};
use wf_common::testing::eventually_within;
use wf_common::testing::mosquitto::MosquittoServer;
use wf_iot::platform::Platform;
use wf_iot::simulate::{Api, Stats, connect, device_ids};

const PASSWORD: &str = "simulator-test-password";
const BIN: &str = env!("CARGO_BIN_EXE_wf-iot");

fn auth_url(platform: &Platform) -> String {
    format!("http://127.0.0.1:{}", platform.ports.auth_http)
}

fn device_url(platform: &Platform) -> String {
    format!("http://127.0.0.1:{}", platform.ports.device_http)
}

/// `wf-iot simulate` against `platform`, with the broker at `mqtt_port`.
fn simulate(platform: &Platform, mqtt_port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("WF_IOT_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("WF_IOT_SIM_PASSWORD", PASSWORD)
        .env("WF_IOT_LOG__LEVEL", "warn")
        .arg("simulate")
        .args(["--auth-url", &auth_url(platform)])
        .args(["--device-url", &device_url(platform)])
        .args(["--mqtt-host", "127.0.0.1"])
        .args(["--mqtt-port", &mqtt_port.to_string()])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs the command to its end (off the runtime, which keeps serving the
/// platform meanwhile), within `within`.
async fn finish(mut cmd: Command, within: Duration) -> (Output, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wf-iot simulate starts");
    let pid = child.id();
    let out = tokio::time::timeout(
        within,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap_or_else(|_| {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("wf-iot simulate did not end within {within:?}")
    })
    .expect("the wait ran")
    .expect("the output was read");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

async fn login(platform: &Platform) -> Api {
    Api::login(
        &auth_url(platform),
        &device_url(platform),
        "admin",
        PASSWORD,
    )
    .await
    .expect("the admin logs in")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_pointed_at_the_wrong_broker_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
    let api = login(&platform).await;

    // Nothing listens on the port.
    let nowhere = free_port();
    let (out, text) = finish(
        simulate(
            &platform,
            nowhere,
            &["--devices", "3", "--duration", "2", "--prefix", "nowhere"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(!out.status.success(), "it reported success:\n{text}");
    assert!(
        text.contains(&format!(
            "could not connect to the MQTT broker at 127.0.0.1:{nowhere}"
        )),
        "{text}"
    );
    assert!(!text.contains("summary:"), "{text}");

    // A working broker that lets the devices in, but is not this
    // platform's: nothing reaches device-service, and the simulator says so
    // instead of publishing into the void.
    if let Some(other) = MosquittoServer::start_open_or_skip().await {
        let (out, text) = finish(
            simulate(
                &platform,
                other.port,
                &["--devices", "3", "--duration", "2", "--prefix", "elsewhere"],
            ),
            Duration::from_secs(60),
        )
        .await;
        assert!(!out.status.success(), "it reported success:\n{text}");
        assert!(
            text.contains(&format!(
                "3 of 3 devices connected to the MQTT broker at 127.0.0.1:{}, but device-service",
                other.port
            )) && text.contains("does not show them online"),
            "{text}"
        );
        assert!(!text.contains("summary:"), "{text}");
        assert!(
            api.online(&device_ids("elsewhere", 3))
                .await
                .unwrap()
                .is_empty()
        );
    }

    // Pointed at the platform's own broker, the same run succeeds.
    let (out, text) = finish(
        simulate(
            &platform,
            platform.ports.mqtt,
            &["--devices", "3", "--duration", "2", "--prefix", "right"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 devices connected and online"), "{text}");
    assert!(text.contains("summary: 3 devices"), "{text}");
    // The counters add up: every acknowledged message was counted as sent
    // (status messages included).
    let summary = text
        .lines()
        .find(|l| l.contains("summary: 3 devices"))
        .unwrap();
    let number_before = |word: &str| -> u64 {
        let at = summary.find(word).unwrap();
        summary[..at]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|part| !part.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (sent, acked) = (number_before(" messages"), number_before(" acknowledged"));
    assert!(
        sent >= 3 && acked <= sent,
        "sent {sent}, acked {acked}: {summary}"
    );
    platform.stop().await.unwrap();
}

/// Starts `cmd` with its output going to the file `log`.
fn spawn_logged(mut cmd: Command, log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// Ctrl-C to a simulation started by [`spawn_logged`]: it must end
/// cleanly. What it printed.
async fn interrupt(child: Child, log: &std::path::Path) -> String {
    kill(&child, "INT");
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    text
}

/// Sends `signal` to a child process.
fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_simulation_does_not_take_over_the_devices_of_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
    let api = login(&platform).await;
    let ids = device_ids("sim", 3);

    let log = dir.path().join("first.log");
    let mut first = spawn_logged(
        simulate(
            &platform,
            platform.ports.mqtt,
            &["--devices", "3", "--duration", "60"],
        ),
        &log,
    );
    eventually_within(
        "the first simulation's devices online",
        Duration::from_secs(30),
        || async { (api.online(&ids).await.ok()?.len() == 3).then_some(()) },
    )
    .await;

    let (out, text) = finish(
        simulate(
            &platform,
            platform.ports.mqtt,
            &["--devices", "5", "--duration", "2"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("3 of the 5 devices sim-00001..sim-00005 are online")
            && text.contains("another simulation is running with --prefix sim"),
        "{text}"
    );
    // The first simulation keeps its devices: still online, still running,
    // and nothing was provisioned by the refused one.
    assert_eq!(api.online(&ids).await.unwrap(), ids);
    assert!(first.try_wait().unwrap().is_none());
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "{}/api/v1/devices/sim-00005",
            device_url(&platform)
        ))
        .bearer_auth(api.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Ctrl-C ends the first one cleanly.
    let text = interrupt(first, &log).await;
    assert!(text.contains("summary: 3 devices"), "{text}");
    platform.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reconnect_with_backoff_after_the_platform_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
    let api = login(&platform).await;
    let creds = api
        .provision("restart", 4, "simulated-sensor")
        .await
        .unwrap();
    let ids = device_ids("restart", 4);
    // Devices reach the broker through a fixed address, as they would
    // through DNS or a load balancer; the restarted platform's broker
    // listens on another port behind it.
    let mqtt = |p: &Platform| SocketAddr::from((Ipv4Addr::LOCALHOST, p.ports.mqtt));
    let proxy = TcpProxy::start(vec![mqtt(&platform)]).await;
    let stats = Arc::new(Stats::default());
    let mut devices = Vec::new();
    for c in &creds {
        devices.push(
            connect(c, "127.0.0.1", proxy.port, stats.clone(), 0.0, 10)
                .await
                .unwrap(),
        );
    }
    eventually_within("the devices online", Duration::from_secs(20), || async {
        (api.online(&ids).await.ok()?.len() == 4).then_some(())
    })
    .await;

    platform.stop().await.unwrap();
    eventually_within("the devices to notice", Duration::from_secs(20), || async {
        (stats.connected.load(Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    // While the platform is down, every attempt fails; the devices keep
    // trying, further apart each time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 0);
    let failures = stats.errors.load(Ordering::Relaxed);
    // A few attempts per device, not a busy loop: 4 devices retrying
    // without a pause would fail thousands of times in 2 s.
    assert!((8..=40).contains(&failures), "{failures} failed attempts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = stats.errors.load(Ordering::Relaxed) - failures;
    assert!(
        later <= failures,
        "the attempts did not space out: {failures} in the first 2 s, {later} in the next"
    );

    let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
    proxy.point_at(vec![mqtt(&platform)]);
    let api = login(&platform).await;
    eventually_within(
        "the devices back online on the restarted platform",
        Duration::from_secs(30),
        || async { (api.online(&ids).await.ok()?.len() == 4).then_some(()) },
    )
    .await;
    assert_eq!(stats.connected.load(Ordering::Relaxed), 4);
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 4);

    // Subscribed again: a command reaches a device and is answered.
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!(
            "{}/api/v1/devices/restart-00002/commands?wait=true",
            device_url(&platform)
        ))
        .bearer_auth(api.token())
        .json(&json!({ "name": "blink", "timeout_s": 10 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "succeeded", "{answer}");

    for d in &devices {
        let _ = d.client.disconnect().await;
    }
    platform.stop().await.unwrap();
}

/// `path` of device-service read over REST; `None` unless it answers 200
/// (a device that does not exist yet).
async fn read(platform: &Platform, api: &Api, path: &str) -> Option<Value> {
    reqwest::Client::new()
        .get(format!("{}{path}", device_url(platform)))
        .bearer_auth(api.token())
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()
}

/// A device's shadow document.
async fn shadow(platform: &Platform, api: &Api, id: &str) -> Option<Value> {
    read(platform, api, &format!("/api/v1/devices/{id}/shadow")).await
}

/// Sets desired state over REST.
async fn desire(platform: &Platform, api: &Api, id: &str, desired: Value) {
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/api/v1/devices/{id}/shadow",
            device_url(platform)
        ))
        .bearer_auth(api.token())
        .json(&json!({ "desired": desired }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
}

/// How many temperature readings of `id` device-service stored between the
/// two times (ms).
async fn readings(platform: &Platform, api: &Api, id: &str, from: i64, to: i64) -> usize {
    let series = read(
        platform,
        api,
        &format!(
            "/api/v1/devices/{id}/telemetry?metric=temperature&from={from}&to={to}&limit=1000"
        ),
    )
    .await
    .unwrap();
    series["points"].as_array().unwrap().len()
}

/// Two simulated devices, `state-00001` and `state-00002`, at one message
/// a second each, for `duration` seconds.
fn two_devices(platform: &Platform, duration: &str) -> Command {
    simulate(
        platform,
        platform.ports.mqtt,
        &[
            "--devices",
            "2",
            "--rate",
            "2",
            "--duration",
            duration,
            "--prefix",
            "state",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_report_their_state_and_apply_desired_changes() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
    let api = login(&platform).await;
    let [one, two] = ["state-00001", "state-00002"];

    // Two devices at one message a second each.
    let log = dir.path().join("first.log");
    let first = spawn_logged(two_devices(&platform, "60"), &log);
    // Each reports its state when it connects.
    for id in [one, two] {
        eventually_within(
            &format!("{id} to report its state"),
            Duration::from_secs(30),
            || async {
                let doc = shadow(&platform, &api, id).await?;
                (doc["reported"] == json!({"sampling_ms": 1000, "fw_version": "1.0.0"}))
                    .then_some(())
            },
        )
        .await;
    }

    // Past the moment after connecting when the platform sends a device
    // its pending delta (none here), so that each change below reaches
    // each device once and the simulator's counts are exact.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A faster sampling rate, a firmware version (which only an update
    // changes) and a key the simulator echoes.
    desire(
        &platform,
        &api,
        one,
        json!({"sampling_ms": 200, "fw_version": "9.9.9", "mode": "eco"}),
    )
    .await;
    let doc = eventually_within(
        "the device to apply what it can",
        Duration::from_secs(20),
        || async {
            let doc = shadow(&platform, &api, one).await?;
            (doc["reported"]["sampling_ms"] == 200 && doc["reported"]["mode"] == "eco")
                .then_some(doc)
        },
    )
    .await;
    assert_eq!(doc["reported"]["fw_version"], "1.0.0");
    assert_eq!(doc["delta"], json!({"fw_version": "9.9.9"}));
    // An interval out of range is refused: the device reports what it keeps.
    desire(&platform, &api, two, json!({"sampling_ms": 5})).await;
    // The answer changes nothing stored; the simulator counts the refusal.
    eventually_within(
        "the simulator to refuse the interval",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("desired keys applied 2, refused 2")
                .then_some(())
        },
    )
    .await;
    let doc = shadow(&platform, &api, two).await.unwrap();
    assert_eq!(doc["reported"]["sampling_ms"], 1000);
    assert_eq!(doc["delta"], json!({"sampling_ms": 5}));

    // The new interval paces the device's telemetry: about five readings a
    // second against one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = wf_common::now_millis();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let to = wf_common::now_millis();
    let (fast, slow) = (
        readings(&platform, &api, one, from, to).await,
        readings(&platform, &api, two, from, to).await,
    );
    assert!(
        (14..=24).contains(&fast),
        "{fast} readings at 200 ms in 4 s"
    );
    assert!((3..=5).contains(&slow), "{slow} readings at 1000 ms in 4 s");

    let text = interrupt(first, &log).await;
    // The simulator shows what its fleet reports.
    assert!(
        text.contains("reported state: sampling_ms 1 at 200 ms, 1 at 1000 ms; desired keys applied 2, refused 2"),
        "{text}"
    );

    // A change made while the device is away reaches it when it is back.
    desire(&platform, &api, two, json!({"sampling_ms": 300})).await;
    let (out, text) = finish(two_devices(&platform, "4"), Duration::from_secs(60)).await;
    assert!(out.status.success(), "{text}");
    let doc = shadow(&platform, &api, two).await.unwrap();
    assert_eq!(doc["reported"]["sampling_ms"], 300, "{doc}");
    assert_eq!(doc["delta"], json!({}), "{doc}");
    platform.stop().await.unwrap();
}
