//! The whole platform in one process, used the way a person and their
//! devices use it: REST for people, MQTT for devices.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use wf_common::testing::eventually;
use wf_iot::platform::Platform;
use wf_iot::simulate::{Api, Credentials, Stats, connect};

const PASSWORD: &str = "platform-test-password";

struct Fixture {
    platform: Platform,
    http: reqwest::Client,
    token: String,
    api: Api,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let platform = Platform::start_local(dir.path(), PASSWORD).await.unwrap();
        let auth = format!("http://127.0.0.1:{}", platform.ports.auth_http);
        let http = reqwest::Client::new();
        let token: Value = http
            .post(format!("{auth}/api/v1/auth/login"))
            .json(&json!({ "username": "admin", "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let api = Api::login(&auth, &self_device_url(&platform), "admin", PASSWORD)
            .await
            .unwrap();
        Self {
            token: token["access_token"].as_str().unwrap().to_string(),
            platform,
            http,
            api,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self_device_url(&self.platform)))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn command(&self, device: &str, timeout_s: u32) -> Value {
        self.http
            .post(format!(
                "{}/api/v1/devices/{device}/commands?wait=true",
                self_device_url(&self.platform)
            ))
            .bearer_auth(&self.token)
            .json(&json!({ "name": "blink", "params": { "times": 3 }, "timeout_s": timeout_s }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn self_device_url(platform: &Platform) -> String {
    format!("http://127.0.0.1:{}", platform.ports.device_http)
}

/// Connects a raw MQTT client; returns whether the broker accepted it.
async fn try_connect(port: u16, client_id: &str, username: &str, password: &str) -> bool {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_credentials(username, password);
    // "Server unavailable" means the registry did not answer in time, not
    // a verdict on the credentials: ask again, as a device would.
    for _ in 0..5 {
        let (_client, mut event_loop) = AsyncClient::new(options.clone(), 10);
        match tokio::time::timeout(Duration::from_secs(5), event_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => match ack.code {
                rumqttc::ConnectReturnCode::Success => return true,
                rumqttc::ConnectReturnCode::ServiceUnavailable => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ => return false,
            },
            _ => return false,
        }
    }
    false
}

/// Connects a simulated device. The probe connections above used the same
/// client id; while the broker retires such a session a new connection
/// can be dropped, so try again briefly, as a device would.
async fn connect_device(
    creds: &Credentials,
    port: u16,
    stats: &std::sync::Arc<Stats>,
    fail_commands: f64,
) -> wf_iot::simulate::Device {
    let mut last = None;
    for _ in 0..5 {
        match connect(creds, "127.0.0.1", port, stats.clone(), fail_commands, 10).await {
            Ok(device) => return device,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{} could not connect: {last:?}", creds.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_publish_and_answer_commands_end_to_end() {
    let fx = Fixture::start().await;
    let mqtt_port = fx.platform.ports.mqtt;
    let creds: Vec<Credentials> = fx.api.provision("e2e", 2, "thermostat").await.unwrap();
    let (a, b) = (&creds[0], &creds[1]);

    // Credentials are checked against the registry.
    assert!(!try_connect(mqtt_port, &a.id, &a.id, "wrong-secret").await);
    assert!(!try_connect(mqtt_port, "ghost", "ghost", &a.secret).await);
    assert!(
        !try_connect(mqtt_port, &b.id, &a.id, &a.secret).await,
        "client id must be the username"
    );
    assert!(try_connect(mqtt_port, &a.id, &a.id, &a.secret).await);

    let stats = std::sync::Arc::new(Stats::default());
    let device_a = connect_device(a, mqtt_port, &stats, 0.0).await;
    let _device_b = connect_device(b, mqtt_port, &stats, 100.0).await;
    eventually("both online", || async {
        (fx.get("/api/v1/devices/summary").await["online"] == 2).then_some(())
    })
    .await;

    // Three minutes of readings, one every ten seconds, published over MQTT.
    let t0: i64 = 1_789_999_980_000;
    for i in 0..18i64 {
        let payload = json!({ "temperature": 20 + i, "ts": t0 + i * 10_000 }).to_string();
        device_a
            .client
            .publish(
                format!("devices/{}/telemetry", a.id),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    // A device cannot speak for another one.
    device_a
        .client
        .publish(
            format!("devices/{}/telemetry", b.id),
            QoS::AtLeastOnce,
            false,
            json!({ "temperature": 99 }).to_string(),
        )
        .await
        .unwrap();

    let path = format!(
        "/api/v1/devices/{}/telemetry?metric=temperature&from={t0}&to={}&interval=1m&agg=avg",
        a.id,
        t0 + 180_000
    );
    let series = eventually("18 stored readings", || async {
        let s = fx.get(&path).await;
        let count: i64 = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["count"].as_i64().unwrap())
            .sum();
        (count == 18).then_some(s)
    })
    .await;
    let averages: Vec<f64> = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(averages, vec![22.5, 28.5, 34.5]);
    let b_latest = fx
        .get(&format!("/api/v1/devices/{}/telemetry/latest", b.id))
        .await;
    assert_eq!(
        b_latest["values"],
        json!([]),
        "a forged message was stored for another device"
    );

    // Commands round-trip: A answers success, B (set to fail every command) failure.
    let ok = fx.command(&a.id, 5).await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(ok["result"]["echo"]["times"], 3);
    let failed = fx.command(&b.id, 5).await;
    assert_eq!(failed["status"], "failed", "{failed}");

    // A device that goes away is marked offline, and its commands time out.
    device_a.client.disconnect().await.unwrap();
    eventually("A offline", || async {
        (fx.get(&format!("/api/v1/devices/{}", a.id)).await["online"] == false).then_some(())
    })
    .await;
    let timed_out = fx.command(&a.id, 1).await;
    assert_eq!(timed_out["status"], "timed_out", "{timed_out}");

    // Rotating the secret locks the old one out.
    let rotated = fx.api.provision("e2e", 1, "thermostat").await.unwrap();
    assert!(!try_connect(mqtt_port, &a.id, &a.id, &a.secret).await);
    assert!(try_connect(mqtt_port, &a.id, &a.id, &rotated[0].secret).await);

    fx.platform.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_without_timestamps_is_stored_whole() {
    let fx = Fixture::start().await;
    let creds = fx.api.provision("burst", 1, "meter").await.unwrap();
    let device = &creds[0];
    let stats = std::sync::Arc::new(Stats::default());
    let client = connect_device(device, fx.platform.ports.mqtt, &stats, 0.0).await;
    let before = wf_common::now_millis();
    // Back to back, without `ts`: many land in the same millisecond.
    for i in 0..50 {
        client
            .client
            .publish(
                format!("devices/{}/telemetry", device.id),
                QoS::AtLeastOnce,
                false,
                json!({ "reading": i }).to_string(),
            )
            .await
            .unwrap();
    }
    let path = format!(
        "/api/v1/devices/{}/telemetry?metric=reading&from={}&to={}",
        device.id,
        before - 1,
        before + 600_000
    );
    let points = eventually("50 stored readings", || async {
        let s = fx.get(&path).await;
        let points = s["points"].as_array().unwrap().clone();
        (points.len() == 50).then_some(points)
    })
    .await;
    let mut readings: Vec<i64> = points
        .iter()
        .map(|p| p["value"].as_f64().unwrap() as i64)
        .collect();
    readings.sort_unstable();
    assert_eq!(readings, (0..50).collect::<Vec<_>>(), "every reading once");
}

/// Logs `username` in at auth-service; the access token.
async fn login(fx: &Fixture, username: &str, password: &str) -> String {
    let auth = format!("http://127.0.0.1:{}", fx.platform.ports.auth_http);
    let body: Value = fx
        .http
        .post(format!("{auth}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login of {username}: {body}"))
        .to_string()
}

/// The status of `GET url` with `token`.
async fn status_with(fx: &Fixture, url: &str, token: &str) -> StatusCode {
    fx.http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_or_changed_password_ends_access_on_every_service_within_seconds() {
    let fx = Fixture::start().await;
    let auth = format!("http://127.0.0.1:{}", fx.platform.ports.auth_http);
    let devices = format!("{}/api/v1/devices", self_device_url(&fx.platform));
    let firmware = format!(
        "http://127.0.0.1:{}/api/v1/firmware",
        fx.platform.ports.firmware_http
    );
    let gateway_devices = format!(
        "http://127.0.0.1:{}/api/v1/devices",
        fx.platform.ports.gateway_http
    );
    for name in ["olga", "paul"] {
        let created = fx
            .http
            .post(format!("{auth}/api/v1/users"))
            .bearer_auth(&fx.token)
            .json(&json!({
                "username": name,
                "email": format!("{name}@example.com"),
                "password": "operator-password-1",
                "roles": ["operator"],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "create {name}");
    }
    let users: Value = fx
        .http
        .get(format!("{auth}/api/v1/users?q=o"))
        .bearer_auth(&fx.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_of = |name: &str| {
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap_or_else(|| panic!("{name} in {users}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (olga, paul) = (id_of("olga"), id_of("paul"));
    let olga_token = login(&fx, "olga", "operator-password-1").await;
    let paul_token = login(&fx, "paul", "operator-password-1").await;
    for url in [&devices, &firmware, &gateway_devices] {
        assert_eq!(
            status_with(&fx, url, &olga_token).await,
            StatusCode::OK,
            "{url}"
        );
        assert_eq!(
            status_with(&fx, url, &paul_token).await,
            StatusCode::OK,
            "{url}"
        );
    }

    // An administrator disables one account and resets the other's password.
    let disabled = fx
        .http
        .post(format!("{auth}/api/v1/users/{olga}/disable"))
        .bearer_auth(&fx.token)
        .send()
        .await
        .unwrap();
    assert!(disabled.status().is_success(), "{}", disabled.status());
    let reset = fx
        .http
        .put(format!("{auth}/api/v1/users/{paul}/password"))
        .bearer_auth(&fx.token)
        .json(&json!({ "new_password": "operator-password-2" }))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success(), "{}", reset.status());

    // Within a few seconds every service refuses both old tokens.
    let changed = std::time::Instant::now();
    for url in [&devices, &firmware, &gateway_devices] {
        for token in [&olga_token, &paul_token] {
            eventually("the old token refused", || async {
                (status_with(&fx, url, token).await == StatusCode::UNAUTHORIZED).then_some(())
            })
            .await;
        }
    }
    assert!(
        changed.elapsed() < Duration::from_secs(6),
        "took {:?}",
        changed.elapsed()
    );
    // The new password works everywhere at once.
    let fresh = login(&fx, "paul", "operator-password-2").await;
    for url in [&devices, &firmware, &gateway_devices] {
        assert_eq!(status_with(&fx, url, &fresh).await, StatusCode::OK, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_admin_password_is_reset_from_the_command_line() {
    let fx = Fixture::start().await;
    let devices = format!("{}/api/v1/devices", self_device_url(&fx.platform));
    assert_eq!(status_with(&fx, &devices, &fx.token).await, StatusCode::OK);

    wf_iot::user::run(
        fx.platform.config.clone(),
        wf_iot::user::Action::ResetPassword {
            login: "admin".into(),
            password: Some("a-new-admin-password".into()),
        },
    )
    .await
    .unwrap();
    let unknown = wf_iot::user::run(
        fx.platform.config.clone(),
        wf_iot::user::Action::ResetPassword {
            login: "nobody".into(),
            password: Some("a-new-admin-password".into()),
        },
    )
    .await
    .unwrap_err();
    assert!(unknown.to_string().contains("nobody"), "{unknown}");

    let auth = format!("http://127.0.0.1:{}", fx.platform.ports.auth_http);
    let old = fx
        .http
        .post(format!("{auth}/api/v1/auth/login"))
        .json(&json!({ "username": "admin", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let fresh = login(&fx, "admin", "a-new-admin-password").await;
    assert_eq!(status_with(&fx, &devices, &fresh).await, StatusCode::OK);
    // The sessions from before the reset end.
    eventually("the old session refused", || async {
        (status_with(&fx, &devices, &fx.token).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

/// The client address the test claims through a trusted proxy in front of
/// the api-gateway.
const CLIENT_IP: &str = "203.0.113.7";
const USER_AGENT: &str = "audit-test/1.0";

/// An operator using the platform through the api-gateway, as from
/// [`CLIENT_IP`] behind a proxy the gateway trusts.
struct Operator {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Operator {
    async fn login(base: &str, username: &str, password: &str) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .build()
            .unwrap();
        let body: Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("login of {username}: {body}"))
            .to_string();
        Self {
            http,
            base: base.to_string(),
            token,
        }
    }

    /// Sends `req` with request id `request_id`; answers the status and
    /// the JSON body (null when there is none).
    async fn send(&self, req: reqwest::RequestBuilder, request_id: &str) -> (StatusCode, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .header("x-forwarded-for", CLIENT_IP)
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn upload_firmware(&self, version: &str, request_id: &str) -> (StatusCode, Value) {
        use sha2::Digest;
        let image = format!("image {version}").into_bytes();
        let digest: String = sha2::Sha256::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let form = reqwest::multipart::Form::new()
            .text("name", format!("Audit firmware {version}"))
            .text("device_type", "audit-sensor")
            .text("version", version.to_string())
            .text("sha256", digest)
            .part(
                "file",
                reqwest::multipart::Part::bytes(image).file_name("fw.bin"),
            );
        self.send(
            self.request(reqwest::Method::POST, "/api/v1/firmware")
                .multipart(form),
            request_id,
        )
        .await
    }

    /// The audit entries for `target`, newest first.
    async fn audit_of(&self, target: &str) -> Vec<Value> {
        let (status, body) = self
            .send(
                self.request(reqwest::Method::GET, "/api/v1/audit-logs")
                    .query(&[("target", target), ("limit", "100")]),
                "audit-read",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "audit log: {body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the entry of `action` on `target` from the request
    /// `request_id`, and checks who made it and from where.
    async fn expect_entry(
        &self,
        action: &str,
        target: &str,
        request_id: &str,
        actor: (&str, &str),
        outcome: &str,
    ) -> Value {
        let entry = eventually(&format!("the audit entry {action} of {target}"), || async {
            self.audit_of(target)
                .await
                .into_iter()
                .find(|e| e["action"] == action && e["request_id"] == request_id)
        })
        .await;
        assert_eq!(entry["target"], target, "{entry}");
        assert_eq!(entry["actor_id"], actor.0, "{entry}");
        assert_eq!(entry["actor_username"], actor.1, "{entry}");
        assert_eq!(entry["outcome"], outcome, "{entry}");
        assert_eq!(entry["client_ip"], CLIENT_IP, "{entry}");
        assert_eq!(entry["user_agent"], USER_AGENT, "{entry}");
        entry
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_an_operator_makes_is_in_the_audit_log() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let mut config = wf_iot::config::PlatformConfig::load(None).unwrap();
    // A proxy on this machine fronts the gateway and names the client.
    config.gateway.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let platform = Platform::start_local_with(dir.path(), PASSWORD, config)
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", platform.ports.gateway_http);
    let admin = Operator::login(&base, "admin", PASSWORD).await;
    let (_, me) = admin
        .send(admin.request(Method::GET, "/api/v1/auth/me"), "me")
        .await;
    let admin_id = me["id"].as_str().expect("admin id").to_string();
    let by_admin = (admin_id.as_str(), "admin");

    // device-service
    let (status, device) = admin
        .send(
            admin.request(Method::POST, "/api/v1/devices").json(&json!({
                "name": "Audited sensor", "device_type": "audit-sensor",
            })),
            "req-device-create",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let device_id = device["id"].as_str().unwrap().to_string();
    let created = admin
        .expect_entry(
            "device.create",
            &device_id,
            "req-device-create",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(created["details"]["name"], "Audited sensor", "{created}");

    let (status, body) = admin
        .send(
            admin
                .request(Method::PATCH, &format!("/api/v1/devices/{device_id}"))
                .json(&json!({ "name": "Renamed sensor", "tags": ["lab"] })),
            "req-device-update",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let updated = admin
        .expect_entry(
            "device.update",
            &device_id,
            "req-device-update",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(updated["details"]["name"], "Renamed sensor", "{updated}");
    assert_eq!(updated["details"]["tags"], json!(["lab"]), "{updated}");

    let (status, body) = admin
        .send(
            admin.request(Method::POST, &format!("/api/v1/devices/{device_id}/secret")),
            "req-device-secret",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = admin
        .expect_entry(
            "device.secret_rotate",
            &device_id,
            "req-device-secret",
            by_admin,
            "success",
        )
        .await;
    assert!(
        !rotated
            .to_string()
            .contains(body["credentials"]["secret"].as_str().unwrap()),
        "the secret stays out of the audit log: {rotated}"
    );

    let (status, command) = admin
        .send(
            admin
                .request(
                    Method::POST,
                    &format!("/api/v1/devices/{device_id}/commands"),
                )
                .json(&json!({ "name": "reboot", "params": {} })),
            "req-device-command",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{command}");
    let sent = admin
        .expect_entry(
            "device.command",
            &device_id,
            "req-device-command",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(sent["details"]["name"], "reboot", "{sent}");
    assert_eq!(sent["details"]["command_id"], command["id"], "{sent}");

    // Device state: desired state, server attributes, a fleet job and its
    // cancellation.
    let (status, body) = admin
        .send(
            admin
                .request(
                    Method::PATCH,
                    &format!("/api/v1/devices/{device_id}/shadow"),
                )
                .json(&json!({ "desired": { "sampling_ms": 500, "led": true } })),
            "req-shadow-update",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed = admin
        .expect_entry(
            "device.shadow.update",
            &device_id,
            "req-shadow-update",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(changed["details"]["version"], body["version"], "{changed}");
    assert_eq!(
        changed["details"]["desired_keys"],
        json!(["led", "sampling_ms"]),
        "{changed}"
    );
    let (status, body) = admin
        .send(
            admin
                .request(
                    Method::PATCH,
                    &format!("/api/v1/devices/{device_id}/attributes"),
                )
                .json(&json!({ "site": "lyon" })),
            "req-attributes-update",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let attributes = admin
        .expect_entry(
            "device.attributes.update",
            &device_id,
            "req-attributes-update",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(
        attributes["details"]["names"],
        json!(["site"]),
        "{attributes}"
    );
    let (status, job) = admin
        .send(
            admin
                .request(Method::POST, "/api/v1/shadow-jobs")
                .json(&json!({
                    "desired": { "sampling_ms": 250 },
                    "target": { "attributes": { "site": "lyon" } },
                    "rate_per_second": 1,
                })),
            "req-shadow-job",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job_id = job["id"].as_str().unwrap();
    let created = admin
        .expect_entry(
            "shadow_job.create",
            job_id,
            "req-shadow-job",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(created["details"]["devices"], 1, "{created}");
    let (status, body) = admin
        .send(
            admin.request(
                Method::POST,
                &format!("/api/v1/shadow-jobs/{job_id}/cancel"),
            ),
            "req-shadow-job-cancel",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    admin
        .expect_entry(
            "shadow_job.cancel",
            job_id,
            "req-shadow-job-cancel",
            by_admin,
            "success",
        )
        .await;

    // Handed to another owner, and back.
    for (to, request_id) in [
        ("nobody-such", ""),
        (admin_id.as_str(), "req-device-transfer"),
    ] {
        let (status, body) = admin
            .send(
                admin
                    .request(Method::PUT, &format!("/api/v1/devices/{device_id}/owner"))
                    .json(&json!({ "owner_id": to })),
                if request_id.is_empty() {
                    "req-bad-transfer"
                } else {
                    request_id
                },
            )
            .await;
        if request_id.is_empty() {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        } else {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let transferred = admin
        .expect_entry(
            "device.transfer",
            &device_id,
            "req-device-transfer",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(
        transferred["details"]["to"],
        admin_id.as_str(),
        "{transferred}"
    );

    // firmware-service
    let (status, firmware) = admin.upload_firmware("1.2.0", "req-fw-upload").await;
    assert_eq!(status, StatusCode::CREATED, "{firmware}");
    let firmware_id = firmware["id"].as_str().unwrap().to_string();
    let uploaded = admin
        .expect_entry(
            "firmware.upload",
            &firmware_id,
            "req-fw-upload",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(uploaded["details"]["version"], "1.2.0", "{uploaded}");

    let (status, rollout) = admin
        .send(
            admin
                .request(Method::POST, "/api/v1/rollouts")
                .json(&json!({
                    "name": "Audited rollout",
                    "firmware_id": firmware_id,
                    "target": { "device_ids": [device_id] },
                    "start_at": "2999-01-01T00:00:00Z",
                })),
            "req-rollout-create",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let rollout_id = rollout["id"].as_str().unwrap().to_string();
    let started = admin
        .expect_entry(
            "rollout.create",
            &rollout_id,
            "req-rollout-create",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(started["details"]["target_count"], 1, "{started}");
    assert_eq!(started["details"]["version"], "1.2.0", "{started}");

    for (step, action) in [
        ("pause", "rollout.pause"),
        ("resume", "rollout.resume"),
        ("cancel", "rollout.cancel"),
    ] {
        let request_id = format!("req-rollout-{step}");
        let (status, body) = admin
            .send(
                admin.request(
                    Method::POST,
                    &format!("/api/v1/rollouts/{rollout_id}/{step}"),
                ),
                &request_id,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
        admin
            .expect_entry(action, &rollout_id, &request_id, by_admin, "success")
            .await;
    }

    let (status, task) = admin
        .send(
            admin
                .request(Method::POST, "/api/v1/upgrade-tasks")
                .json(&json!({
                    "device_id": device_id,
                    "firmware_id": firmware_id,
                    "start_at": "2999-01-01T00:00:00Z",
                })),
            "req-task-create",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task_id = task["id"].as_str().unwrap().to_string();
    let queued = admin
        .expect_entry(
            "upgrade_task.create",
            &task_id,
            "req-task-create",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(
        queued["details"]["device_id"],
        device_id.as_str(),
        "{queued}"
    );

    // Deleting another user's firmware with a role that reaches only one's
    // own is refused, and recorded as such.
    let (status, body) = admin.upload_firmware("1.3.0", "req-fw-upload-2").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spare_id = body["id"].as_str().unwrap().to_string();
    let (status, body) = admin
        .send(
            admin.request(Method::POST, "/api/v1/roles").json(&json!({
                "name": "own-operators",
                "scope": "own",
                "permissions": ["device:read", "device:write", "firmware:read", "firmware:write"],
            })),
            "req-role",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin
        .send(
            admin.request(Method::POST, "/api/v1/users").json(&json!({
                "username": "olivia",
                "email": "olivia@example.com",
                "password": "operator-password-1",
                "roles": ["own-operators"],
            })),
            "req-user",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let olivia_id = body["id"].as_str().unwrap().to_string();
    let olivia = Operator::login(&base, "olivia", "operator-password-1").await;
    let (status, body) = olivia
        .send(
            olivia.request(Method::DELETE, &format!("/api/v1/firmware/{spare_id}")),
            "req-fw-delete-denied",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    admin
        .expect_entry(
            "firmware.delete",
            &spare_id,
            "req-fw-delete-denied",
            (&olivia_id, "olivia"),
            "denied",
        )
        .await;
    // An operator without audit:read cannot read the log.
    let (status, _) = olivia
        .send(
            olivia.request(Method::GET, "/api/v1/audit-logs"),
            "req-denied-read",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = admin
        .send(
            admin.request(Method::DELETE, &format!("/api/v1/firmware/{spare_id}")),
            "req-fw-delete",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let deleted = admin
        .expect_entry(
            "firmware.delete",
            &spare_id,
            "req-fw-delete",
            by_admin,
            "success",
        )
        .await;
    assert_eq!(deleted["details"]["version"], "1.3.0", "{deleted}");

    let (status, body) = admin
        .send(
            admin.request(Method::DELETE, &format!("/api/v1/devices/{device_id}")),
            "req-device-delete",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    admin
        .expect_entry(
            "device.delete",
            &device_id,
            "req-device-delete",
            by_admin,
            "success",
        )
        .await;

    // The device's history, exactly: eight changes (a refused transfer records nothing), newest first; a
    // prefix of its id matches nothing.
    let history: Vec<String> = admin
        .audit_of(&device_id)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        history,
        [
            "device.delete",
            "device.transfer",
            "device.attributes.update",
            "device.shadow.update",
            "device.command",
            "device.secret_rotate",
            "device.update",
            "device.create"
        ],
    );
    assert!(
        admin
            .audit_of(&device_id[..device_id.len() - 1])
            .await
            .is_empty()
    );
    let long = "x".repeat(300);
    let (status, body) = admin
        .send(
            admin
                .request(Method::GET, "/api/v1/audit-logs")
                .query(&[("target", long.as_str())]),
            "req-long",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    platform.stop().await.unwrap();
}
