//! `TestApp`: the real auth-service and device-service on free ports with
//! fresh databases (device-service with a recording stand-in for
//! mqtt-gateway's gRPC API and an in-process bus the tests publish on), a
//! stand-in firmware-service that records what reaches it, and one or more
//! gateways in front of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_gateway::{Application, Config, RateLimits};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use wf_common::contract::Event;
use wf_common::events::{EventBus, InProcessBus, publish};
use wf_common::jwt::SigningKey;
use wf_common::shutdown::Shutdown;
use wf_proto::mqtt::mqtt_gateway_server::{MqttGateway, MqttGatewayServer};
use wf_proto::mqtt::{
    MqttMessage, PublishMessageRequest, PublishMessageResponse, SubscribeTopicRequest,
    SyncDeviceCredentialsRequest, SyncDeviceCredentialsResponse,
};
use wf_testkit::{Accounts, AuthServer, TestDatabase};

pub use wf_testkit::{ADMIN_PASSWORD, eventually};

/// device-service's view of mqtt-gateway: accepts and forgets.
#[derive(Clone, Default)]
struct QuietMqttGateway;

#[tonic::async_trait]
impl MqttGateway for QuietMqttGateway {
    async fn publish_message(
        &self,
        _request: tonic::Request<PublishMessageRequest>,
    ) -> Result<tonic::Response<PublishMessageResponse>, tonic::Status> {
        Ok(tonic::Response::new(PublishMessageResponse {}))
    }

    type SubscribeTopicStream = tokio_stream::Empty<Result<MqttMessage, tonic::Status>>;

    async fn subscribe_topic(
        &self,
        _request: tonic::Request<SubscribeTopicRequest>,
    ) -> Result<tonic::Response<Self::SubscribeTopicStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used by device-service"))
    }

    async fn sync_device_credentials(
        &self,
        _request: tonic::Request<SyncDeviceCredentialsRequest>,
    ) -> Result<tonic::Response<SyncDeviceCredentialsResponse>, tonic::Status> {
        Ok(tonic::Response::new(SyncDeviceCredentialsResponse {}))
    }
}

/// What reached the stand-in firmware-service.
#[derive(Default)]
pub struct UpstreamLog {
    pub requests: Mutex<Vec<(String, HeaderMap)>>,
    /// Body bytes received so far, counted as they arrive.
    pub received: AtomicU64,
    /// Lets the download send its second half.
    pub release: tokio::sync::Notify,
}

impl UpstreamLog {
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> (String, HeaderMap) {
        self.requests.lock().unwrap().last().cloned().unwrap()
    }
}

/// Bytes the stand-in download sends before and after `release`.
pub const DOWNLOAD_HALF: usize = 1024 * 1024;

async fn spawn_fake_firmware(shutdown: &Shutdown) -> (String, Arc<UpstreamLog>) {
    let log = Arc::new(UpstreamLog::default());
    let app = axum::Router::new()
        .route("/api/v1/firmware/{id}/download", get(download))
        .route("/api/v1/rollouts/slow", get(slow))
        .fallback(record)
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = shutdown.wait();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .unwrap();
    });
    (url, log)
}

/// Records the request and counts its body as it streams in.
async fn record(State(log): State<Arc<UpstreamLog>>, req: Request) -> axum::Json<Value> {
    let path = req.uri().to_string();
    log.requests
        .lock()
        .unwrap()
        .push((path.clone(), req.headers().clone()));
    let mut body = req.into_body().into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return axum::Json(json!({ "error": "body broken", "bytes": total }));
        };
        total += chunk.len() as u64;
        log.received.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    axum::Json(json!({ "path": path, "bytes": total }))
}

/// Half the image, then the rest once the test says so.
async fn download(State(log): State<Arc<UpstreamLog>>, req: Request) -> axum::response::Response {
    log.requests
        .lock()
        .unwrap()
        .push((req.uri().to_string(), req.headers().clone()));
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let log = log.clone();
        async move {
            match step {
                0 => Some((
                    Ok::<_, std::io::Error>(Bytes::from(vec![1u8; DOWNLOAD_HALF])),
                    1,
                )),
                1 => {
                    log.release.notified().await;
                    Some((Ok(Bytes::from(vec![2u8; DOWNLOAD_HALF])), 2))
                }
                _ => None,
            }
        }
    });
    axum::response::Response::new(Body::from_stream(stream))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "too late"
}

/// A TCP server that answers every connection with bytes that are not HTTP.
pub async fn spawn_garbage_server(shutdown: &Shutdown) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = shutdown.wait();
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                accepted = listener.accept() => {
                    let Ok((mut socket, _)) = accepted else { return };
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = [0u8; 1024];
                        let _ = socket.read(&mut buf).await;
                        let _ = socket.write_all(b"SSH-2.0-definitely-not-http\r\n\r\n").await;
                    });
                }
            }
        }
    });
    url
}

/// A loopback URL where nothing listens.
pub async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// The services and a first gateway; also the test's [`Accounts`], managed
/// through that gateway (`app.user(..)`, `app.admin_token`).
pub struct TestApp {
    /// The first gateway.
    pub base: String,
    pub auth: AuthServer,
    pub accounts: Accounts,
    pub device_url: String,
    pub firmware_url: String,
    pub client: reqwest::Client,
    pub bus: Arc<InProcessBus>,
    pub firmware: Arc<UpstreamLog>,
    pub shutdown: Shutdown,
    _db: TestDatabase,
}

impl std::ops::Deref for TestApp {
    type Target = Accounts;

    fn deref(&self) -> &Accounts {
        &self.accounts
    }
}

/// A [`TestApp`] to be: its first gateway's configuration, changed by
/// [`configure`](Self::configure) before [`spawn`](Self::spawn).
#[derive(Default)]
pub struct TestAppBuilder {
    configure: Option<Adjust>,
}

/// A change to the first gateway's configuration, applied once the
/// upstreams' addresses are known.
type Adjust = Box<dyn FnOnce(&mut Config)>;

impl TestAppBuilder {
    pub fn configure(mut self, adjust: impl FnOnce(&mut Config) + 'static) -> Self {
        self.configure = Some(Box::new(adjust));
        self
    }

    /// Starts the services and the first gateway.
    pub async fn spawn(self) -> TestApp {
        TestApp::start(self.configure.unwrap_or_else(|| Box::new(|_| {}))).await
    }
}

/// The gateway configuration tests start from: every upstream of `app`,
/// rate limits off (the limit tests turn them on).
pub fn base_config(auth: &str, device: &str, firmware: &str) -> Config {
    Config {
        host: "127.0.0.1".parse().unwrap(),
        http_port: 0,
        auth_url: auth.into(),
        device_url: device.into(),
        firmware_url: firmware.into(),
        instance_id: format!("test-{}", uuid::Uuid::new_v4().simple()),
        rate_limits: RateLimits {
            enabled: false,
            ..RateLimits::default()
        },
        ..Config::default()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    async fn start(configure: Adjust) -> Self {
        wf_testkit::init_logs();
        let shutdown = Shutdown::new();
        let localhost = "127.0.0.1".parse().unwrap();
        // One secret for the calls between the services of this test.
        let internal_token = wf_common::grpc::InternalToken::generate();
        let auth = AuthServer::start(&internal_token, &shutdown).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MqttGatewayServer::new(QuietMqttGateway))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.wait()),
        );

        let bus = Arc::new(InProcessBus::new());
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
                mqtt_gateway_url: mqtt_url,
                permission_cache_ttl_secs: 1,
                ..device_service::Config::default()
            }),
            bus.clone() as Arc<dyn EventBus>,
        )
        .await
        .unwrap();
        let device_url = format!("http://127.0.0.1:{}", device.http_port());
        tokio::spawn(device.run_until_stopped(shutdown.wait()));

        let (firmware_url, firmware) = spawn_fake_firmware(&shutdown).await;

        let mut app = TestApp {
            base: String::new(),
            accounts: auth.accounts.clone(),
            auth,
            device_url,
            firmware_url,
            client: reqwest::Client::new(),
            bus,
            firmware,
            shutdown,
            _db: device_db,
        };
        app.base = app.gateway_with(configure).await;
        app.accounts = Accounts::at(&app.base).await;
        app
    }

    /// This app's default gateway configuration.
    pub fn config(&self) -> Config {
        base_config(&self.auth.base, &self.device_url, &self.firmware_url)
    }

    /// Starts another gateway in front of the same services; returns its URL.
    pub async fn gateway_with(&self, configure: impl FnOnce(&mut Config)) -> String {
        let mut config = self.config();
        configure(&mut config);
        self.start_gateway(config).await
    }

    pub async fn start_gateway(&self, config: Config) -> String {
        let app = Application::build(Arc::new(config), self.bus.clone() as Arc<dyn EventBus>)
            .await
            .unwrap();
        let url = format!("http://127.0.0.1:{}", app.http_port());
        tokio::spawn(app.run_until_stopped(self.shutdown.wait()));
        url
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        request_at(&self.client, &self.base, method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// Creates a device as `token`'s user; returns its id.
    pub async fn device(&self, token: &str, name: &str) -> String {
        let resp = self
            .request(
                Method::POST,
                "/api/v1/devices",
                Some(token),
                Some(json!({ "name": name, "device_type": "sensor" })),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Publishes `events` as their producer would.
    pub async fn publish<E: Event>(&self, events: &[E]) {
        publish(self.bus.as_ref(), events).await.unwrap();
    }

    /// auth-service's signing key, to forge tokens with.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&self.auth.signing_key_file).unwrap())
            .unwrap()
    }

    /// `token`'s claims with `change` applied, signed by `key`.
    pub fn resign(&self, token: &str, key: &SigningKey, change: impl FnOnce(&mut Value)) -> String {
        let mut claims = claims_of(token);
        change(&mut claims);
        key.sign(&claims)
    }

    /// The id of the user `token` belongs to.
    pub fn user_id(&self, token: &str) -> String {
        claims_of(token)["sub"].as_str().unwrap().to_string()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

pub fn now_secs() -> i64 {
    wf_common::now_millis() / 1000
}

pub async fn request_at(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// Asserts an error response's status and envelope code.
pub async fn assert_error(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

/// Reads Server-Sent Events from a response.
pub struct EventReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

impl EventReader {
    pub fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            body: resp.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` when the stream ended
    /// or nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    }
                }
                if has_data || event.event != "message" {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event named `name`, skipping others.
    pub async fn next_named(&mut self, name: &str, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event.event == name {
                return Some(event);
            }
        }
    }
}
