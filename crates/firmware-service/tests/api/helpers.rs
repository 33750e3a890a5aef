//! `TestApp`: firmware-service and its worker on free ports with fresh
//! databases, beside the real auth-service (tokens, JWKS, permissions) and
//! the real device-service (registry, credentials, `device.deleted`), all
//! on one in-process event bus. mqtt-gateway is a recording stand-in that
//! hands OTA notifications to a simulated [`Fleet`], which answers the way
//! devices do: `device.ota.progress` events, as mqtt-gateway would publish
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use wf_common::contract::OtaProgress;
use wf_common::events::{EventBus, InProcessBus, publish};
use wf_common::shutdown::Shutdown;
use wf_proto::mqtt::mqtt_gateway_server::{MqttGateway, MqttGatewayServer};
use wf_proto::mqtt::{
    MqttMessage, PublishMessageRequest, PublishMessageResponse, SubscribeTopicRequest,
    SyncDeviceCredentialsRequest, SyncDeviceCredentialsResponse,
};
use wf_testkit::{Accounts, AuthServer, TestDatabase};

pub use wf_testkit::eventually_within;

/// An OTA notification as a device received it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub device_id: String,
    pub payload: Value,
}

/// The stand-in gateway: hands OTA notifications to the fleet.
#[derive(Clone)]
pub struct RecordingGateway {
    ota: mpsc::UnboundedSender<Notification>,
}

#[tonic::async_trait]
impl MqttGateway for RecordingGateway {
    async fn publish_message(
        &self,
        request: tonic::Request<PublishMessageRequest>,
    ) -> Result<tonic::Response<PublishMessageResponse>, tonic::Status> {
        let req = request.into_inner();
        let parts: Vec<&str> = req.topic.split('/').collect();
        let ["devices", device_id, "ota"] = parts.as_slice() else {
            return Err(tonic::Status::invalid_argument("not an OTA topic"));
        };
        let n = Notification {
            device_id: (*device_id).to_string(),
            payload: serde_json::from_slice(&req.payload).unwrap_or(Value::Null),
        };
        let _ = self.ota.send(n);
        Ok(tonic::Response::new(PublishMessageResponse {}))
    }

    type SubscribeTopicStream = tokio_stream::Empty<Result<MqttMessage, tonic::Status>>;

    async fn subscribe_topic(
        &self,
        _request: tonic::Request<SubscribeTopicRequest>,
    ) -> Result<tonic::Response<Self::SubscribeTopicStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by firmware-service"))
    }

    async fn sync_device_credentials(
        &self,
        _request: tonic::Request<SyncDeviceCredentialsRequest>,
    ) -> Result<tonic::Response<SyncDeviceCredentialsResponse>, tonic::Status> {
        Ok(tonic::Response::new(SyncDeviceCredentialsResponse {}))
    }
}

/// How a simulated device answers an OTA notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// downloading → installing → (restart) → succeeded with the version.
    Succeed,
    /// Like `Succeed`, but downloads the image through the notification's
    /// link first and checks its size and SHA-256.
    Download,
    /// downloading → failed.
    Fail,
    /// Never answers.
    Hang,
    /// Reports success while still running the old version.
    WrongVersion,
    /// Refuses the update.
    Reject,
}

/// Decides each device's answer to its `n`th notification (1-based).
pub type Script = Arc<dyn Fn(&str, usize) -> Behaviour + Send + Sync>;

/// The simulated devices: every notification the gateway forwards is
/// answered by the script's behaviour, through `device.ota.progress`.
#[derive(Clone)]
pub struct Fleet {
    pub received: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    script: Arc<Mutex<Script>>,
    /// Images downloaded through links, by device.
    pub downloads: Arc<Mutex<HashMap<String, usize>>>,
}

impl Fleet {
    /// Replaces the script for notifications from now on.
    pub fn script(&self, f: impl Fn(&str, usize) -> Behaviour + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(f);
    }

    pub fn notifications(&self) -> usize {
        self.received.lock().unwrap().values().map(Vec::len).sum()
    }

    pub fn notifications_of(&self, device_id: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .get(device_id)
            .cloned()
            .unwrap_or_default()
    }

    fn start(bus: Arc<InProcessBus>, mut rx: mpsc::UnboundedReceiver<Notification>) -> Self {
        let fleet = Fleet {
            received: Arc::default(),
            script: Arc::new(Mutex::new(Arc::new(|_: &str, _: usize| Behaviour::Succeed))),
            downloads: Arc::default(),
        };
        let f = fleet.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while let Some(n) = rx.recv().await {
                let nth = {
                    let mut received = f.received.lock().unwrap();
                    let list = received.entry(n.device_id.clone()).or_default();
                    list.push(n.payload.clone());
                    list.len()
                };
                let behaviour = (f.script.lock().unwrap().clone())(&n.device_id, nth);
                let bus = bus.clone();
                let http = http.clone();
                let downloads = f.downloads.clone();
                tokio::spawn(async move {
                    answer(&bus, &http, &downloads, n, behaviour).await;
                });
            }
        });
        fleet
    }
}

async fn report(bus: &InProcessBus, n: &Notification, state: &str, extra: Value) {
    let mut body = json!({
        "device_id": n.device_id,
        "task_id": n.payload["task_id"],
        "state": state,
        "at": wf_common::now_millis(),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let event: OtaProgress = serde_json::from_value(body).unwrap();
    publish(bus, &[event]).await.unwrap();
}

async fn answer(
    bus: &InProcessBus,
    http: &reqwest::Client,
    downloads: &Mutex<HashMap<String, usize>>,
    n: Notification,
    behaviour: Behaviour,
) {
    let version = n.payload["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match behaviour {
        Behaviour::Hang => return,
        Behaviour::Reject => {
            report(bus, &n, "rejected", json!({ "error": "wrong product" })).await;
            return;
        }
        _ => {}
    }
    report(bus, &n, "downloading", json!({ "progress": 0.0 })).await;
    if behaviour == Behaviour::Download {
        let url = n.payload["url"].as_str().unwrap();
        let resp = http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "download by {}", n.device_id);
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, n.payload["size"].as_u64().unwrap());
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            n.payload["sha256"].as_str().unwrap()
        );
        *downloads
            .lock()
            .unwrap()
            .entry(n.device_id.clone())
            .or_default() += 1;
    }
    report(bus, &n, "downloading", json!({ "progress": 100.0 })).await;
    if behaviour == Behaviour::Fail {
        report(bus, &n, "failed", json!({ "error": "flash write error" })).await;
        return;
    }
    report(bus, &n, "installing", json!({})).await;
    let running = if behaviour == Behaviour::WrongVersion {
        "0.0.1".to_string()
    } else {
        version
    };
    // "Restarted" into the new image.
    report(bus, &n, "succeeded", json!({ "version": running })).await;
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running worker that can be stopped gracefully or killed.
pub struct WorkerHandle {
    stop: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Aborts the worker wherever it is, as a crash would.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub async fn stop(self) {
        self.stop.trigger();
        self.task.await.unwrap().unwrap();
    }
}

/// firmware-service under test; also its test's [`Accounts`]
/// (`app.user(..)`, `app.admin_token`).
pub struct TestApp {
    pub base: String,
    pub device_base: String,
    pub auth: AuthServer,
    pub grpc_port: u16,
    pub client: reqwest::Client,
    pub bus: Arc<InProcessBus>,
    pub fleet: Fleet,
    pub config: Arc<firmware_service::Config>,
    shutdown: Shutdown,
    workers: Vec<WorkerHandle>,
    _dbs: (TestDatabase, TestDatabase),
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Accounts;

    fn deref(&self) -> &Accounts {
        &self.auth.accounts
    }
}

impl TestApp {
    /// With one worker running.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        let dir = tempfile::tempdir().unwrap();
        let mut config = firmware_service::Config {
            host: "127.0.0.1".parse().unwrap(),
            http_port: 0,
            grpc_port: 0,
            permission_cache_ttl_secs: 1,
            max_firmware_bytes: 4 * 1024 * 1024,
            ..firmware_service::Config::default()
        }
        .with_data_dir(dir.path());
        config.worker.poll_interval_ms = 50;
        config.worker.name = "worker-1".into();
        TestAppBuilder {
            config,
            workers: 1,
            dir,
        }
    }
}

/// A [`TestApp`] to be: firmware-service's configuration, changed by
/// [`configure`](Self::configure), and how many workers start beside it.
pub struct TestAppBuilder {
    config: firmware_service::Config,
    workers: usize,
    dir: tempfile::TempDir,
}

impl TestAppBuilder {
    pub fn configure(mut self, adjust: impl FnOnce(&mut firmware_service::Config)) -> Self {
        adjust(&mut self.config);
        self
    }

    /// Workers started with the service (more can be started later); 1
    /// unless set.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Starts the services; the workers stop with the app.
    pub async fn spawn(self) -> TestApp {
        let (mut app, handles) = self.spawn_keeping_workers().await;
        app.workers = handles;
        app
    }

    /// [`TestAppBuilder::spawn`], returning the workers to control.
    pub async fn spawn_keeping_workers(self) -> (TestApp, Vec<WorkerHandle>) {
        wf_testkit::init_logs();
        let Self {
            config,
            workers,
            dir,
        } = self;
        let shutdown = Shutdown::new();
        let localhost = "127.0.0.1".parse().unwrap();
        // One secret for the calls between the services of this test.
        let internal_token = wf_common::grpc::InternalToken::generate();
        let auth = AuthServer::start(&internal_token, &shutdown).await;

        let bus = Arc::new(InProcessBus::new());
        let (ota_tx, ota_rx) = mpsc::unbounded_channel();
        let gateway = RecordingGateway { ota: ota_tx };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MqttGatewayServer::new(gateway.clone()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.wait()),
        );
        let fleet = Fleet::start(bus.clone(), ota_rx);

        let device_db = TestDatabase::new("devices.db");
        let device = device_service::Application::build(
            Arc::new(device_service::Config {
                internal_token: internal_token.clone(),
                host: localhost,
                http_port: 0,
                grpc_port: 0,
                database_url: device_db.url.clone(),
                auth_grpc_url: auth.grpc_url.clone(),
                auth_jwks_url: auth.jwks_url.clone(),
                mqtt_gateway_url: gateway_url.clone(),
                permission_cache_ttl_secs: 60,
                consumer_name: "device-test".into(),
                ..device_service::Config::default()
            }),
            bus.clone() as Arc<dyn EventBus>,
        )
        .await
        .unwrap();
        let device_base = format!("http://127.0.0.1:{}", device.http_port());
        let device_grpc = format!("http://127.0.0.1:{}", device.grpc_port());
        tokio::spawn(device.run_until_stopped(shutdown.wait()));

        let firmware_db = TestDatabase::new("firmware.db");
        let mut config = firmware_service::Config {
            internal_token: internal_token.clone(),
            database_url: firmware_db.url.clone(),
            auth_grpc_url: auth.grpc_url.clone(),
            auth_jwks_url: auth.jwks_url.clone(),
            device_service_url: device_grpc,
            mqtt_gateway_url: gateway_url,
            ..config
        };
        let app = firmware_service::Application::build(
            Arc::new(config.clone()),
            bus.clone() as Arc<dyn EventBus>,
        )
        .await
        .unwrap();
        config.public_url = format!("http://127.0.0.1:{}", app.http_port());
        let base = config.public_url.clone();
        let grpc_port = app.grpc_port();
        tokio::spawn(app.run_until_stopped(shutdown.wait()));

        let test = TestApp {
            base,
            device_base,
            auth,
            grpc_port,
            client: reqwest::Client::new(),
            bus,
            fleet,
            config: Arc::new(config),
            shutdown,
            workers: Vec::new(),
            _dbs: (device_db, firmware_db),
            dir,
        };
        let mut handles = Vec::new();
        for i in 1..=workers {
            handles.push(test.start_worker(&format!("worker-{i}")).await);
        }
        (test, handles)
    }
}

impl TestApp {
    /// Starts a worker named `name` on the same database and bus.
    pub async fn start_worker(&self, name: &str) -> WorkerHandle {
        let mut config = (*self.config).clone();
        config.worker.name = name.to_string();
        let worker = firmware_service::worker::Worker::build(
            Arc::new(config),
            self.bus.clone() as Arc<dyn EventBus>,
        )
        .await
        .unwrap();
        let stop = Shutdown::new();
        let both = {
            let app = self.shutdown.wait();
            let own = stop.wait();
            async move {
                tokio::select! {
                    () = app => {},
                    () = own => {},
                }
            }
        };
        WorkerHandle {
            stop,
            task: tokio::spawn(worker.run_until_stopped(both)),
        }
    }

    /// A user holding `permissions` through a fleet-wide role made for
    /// them; logs in.
    pub async fn user_with(&self, username: &str, permissions: &[&str]) -> String {
        self.user_scoped(username, "fleet", permissions).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .request(Method::GET, path, Some(&self.admin_token), None)
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Value {
        let resp = self
            .request(Method::POST, path, Some(&self.admin_token), Some(body))
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Uploads through the multipart form: `fields` in order, then the file.
    pub async fn upload_as(
        &self,
        token: &str,
        fields: &[(&str, &str)],
        file_name: &str,
        data: Vec<u8>,
    ) -> Response {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(file_name.to_string()),
        );
        self.client
            .post(format!("{}/api/v1/firmware", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads `data` as `device_type` `version` (admin); returns the record.
    pub async fn firmware(&self, device_type: &str, version: &str, data: Vec<u8>) -> Value {
        let digest = hex(&Sha256::digest(&data));
        let resp = self
            .upload_as(
                &self.admin_token,
                &[
                    ("name", "Controller firmware"),
                    ("device_type", device_type),
                    ("version", version),
                    ("release_notes", "Fixes and improvements"),
                    ("sha256", &digest),
                ],
                "image.bin",
                data,
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Registers devices `{prefix}-NNNN` of `device_type` with `tags`
    /// through device-service, owned by the administrator; returns their
    /// ids and secrets.
    pub async fn devices(
        &self,
        prefix: &str,
        count: usize,
        device_type: &str,
        tags: &[&str],
    ) -> Vec<(String, String)> {
        self.devices_as(&self.admin_token, prefix, count, device_type, tags)
            .await
    }

    /// Like `devices`, owned by the holder of `token`.
    pub async fn devices_as(
        &self,
        token: &str,
        prefix: &str,
        count: usize,
        device_type: &str,
        tags: &[&str],
    ) -> Vec<(String, String)> {
        let ids: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i:04}")).collect();
        let created = futures_util::stream::iter(ids)
            .map(|id| async move {
                let resp = self
                    .client
                    .post(format!("{}/api/v1/devices", self.device_base))
                    .bearer_auth(token)
                    .json(
                        &json!({ "id": id, "name": id, "device_type": device_type, "tags": tags }),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let body: Value = resp.json().await.unwrap();
                (
                    id,
                    body["credentials"]["secret"].as_str().unwrap().to_string(),
                )
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let mut created = created;
        created.sort();
        created
    }

    /// Polls a rollout until `done` accepts it (up to `secs`).
    pub async fn wait_rollout(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/v1/rollouts/{id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.get_json(&path).await;
            if done(&r) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rollout {id} did not get there in {secs} s: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A channel to this service's gRPC API carrying the internal token,
    /// as the other services call it.
    pub fn grpc_channel(&self) -> wf_common::grpc::InternalChannel {
        wf_common::grpc::internal_channel(&self.grpc_url(), &self.config.internal_token).unwrap()
    }

    /// Files in the firmware storage directory.
    pub fn stored_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.config.storage.local_dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Files left in the upload directory.
    pub fn upload_leftovers(&self) -> usize {
        std::fs::read_dir(&self.config.upload_dir)
            .map(|d| d.count())
            .unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Asserts an error response's status and envelope code.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}
