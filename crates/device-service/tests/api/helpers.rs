//! `TestApp`: device-service on free ports with a fresh database, the real
//! auth-service beside it (tokens, JWKS, permission checks), an in-process
//! event bus the tests publish device events on, and a recording stand-in
//! for mqtt-gateway's gRPC API (the real gateway is another crate, tested
//! on its own and end to end).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use wf_common::events::{EventBus, InProcessBus, publish_json};
use wf_common::shutdown::Shutdown;
use wf_common::testing::TestDatabase;
use wf_proto::mqtt::mqtt_gateway_server::{MqttGateway, MqttGatewayServer};
use wf_proto::mqtt::{
    MqttMessage, PublishMessageRequest, PublishMessageResponse, SubscribeTopicRequest,
    SyncDeviceCredentialsRequest, SyncDeviceCredentialsResponse,
};

pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// What the stand-in gateway was asked to do.
#[derive(Default)]
pub struct GatewayLog {
    pub published: Vec<(String, Value)>,
    pub credentials: Vec<(String, String)>,
    /// When set, publishing fails as if the broker were down.
    pub refuse: bool,
}

#[derive(Clone, Default)]
pub struct RecordingGateway(pub Arc<Mutex<GatewayLog>>);

#[tonic::async_trait]
impl MqttGateway for RecordingGateway {
    async fn publish_message(
        &self,
        request: tonic::Request<PublishMessageRequest>,
    ) -> Result<tonic::Response<PublishMessageResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut log = self.0.lock().unwrap();
        if log.refuse {
            return Err(tonic::Status::unavailable("broker down"));
        }
        let payload: Value = serde_json::from_slice(&req.payload).unwrap_or(Value::Null);
        log.published.push((req.topic, payload));
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
        request: tonic::Request<SyncDeviceCredentialsRequest>,
    ) -> Result<tonic::Response<SyncDeviceCredentialsResponse>, tonic::Status> {
        let req = request.into_inner();
        self.0
            .lock()
            .unwrap()
            .credentials
            .push((req.device_id, req.secret));
        Ok(tonic::Response::new(SyncDeviceCredentialsResponse {}))
    }
}

pub struct TestApp {
    pub base: String,
    pub auth_base: String,
    pub grpc_port: u16,
    pub internal_token: wf_common::grpc::InternalToken,
    pub client: reqwest::Client,
    pub bus: Arc<InProcessBus>,
    pub gateway: RecordingGateway,
    pub admin_token: String,
    shutdown: Shutdown,
    _dbs: (TestDatabase, TestDatabase),
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// [`TestApp::spawn`] with device-service's configuration changed by
    /// `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut device_service::Config)) -> Self {
        let shutdown = Shutdown::new();
        let dir = tempfile::tempdir().unwrap();
        let localhost = "127.0.0.1".parse().unwrap();
        // One secret for the calls between the services of this test.
        let internal_token = wf_common::grpc::InternalToken::generate();

        let auth_db = TestDatabase::new("auth.db");
        let auth = auth_service::Application::build(Arc::new(auth_service::Config {
            internal_token: internal_token.clone(),
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: auth_db.url.clone(),
            signing_key_file: dir.path().join("key.pem"),
            password_hashing: auth_service::PasswordHashing {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            ..auth_service::Config::default()
        }))
        .await
        .unwrap();
        auth.ensure_admin(Some(ADMIN_PASSWORD.into()))
            .await
            .unwrap();
        let auth_base = format!("http://127.0.0.1:{}", auth.http_port());
        let auth_grpc = format!("http://127.0.0.1:{}", auth.grpc_port());
        tokio::spawn(auth.run_until_stopped(shutdown.wait()));

        let gateway = RecordingGateway::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(MqttGatewayServer::new(gateway.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.wait());
        tokio::spawn(server);

        let bus = Arc::new(InProcessBus::new());
        let device_db = TestDatabase::new("devices.db");
        let mut config = device_service::Config {
            internal_token: internal_token.clone(),
            host: localhost,
            http_port: 0,
            grpc_port: 0,
            database_url: device_db.url.clone(),
            auth_grpc_url: auth_grpc,
            auth_jwks_url: format!("{auth_base}/.well-known/jwks.json"),
            mqtt_gateway_url: gateway_url,
            permission_cache_ttl_secs: 1,
            max_series_points: 1000,
            max_body_bytes: 4096,
            ..device_service::Config::default()
        };
        adjust(&mut config);
        let app =
            device_service::Application::build(Arc::new(config), bus.clone() as Arc<dyn EventBus>)
                .await
                .unwrap();
        let base = format!("http://127.0.0.1:{}", app.http_port());
        let grpc_port = app.grpc_port();
        tokio::spawn(app.run_until_stopped(shutdown.wait()));

        let mut test = TestApp {
            base,
            auth_base,
            grpc_port,
            internal_token,
            client: reqwest::Client::new(),
            bus,
            gateway,
            admin_token: String::new(),
            shutdown,
            _dbs: (auth_db, device_db),
            _dir: dir,
        };
        test.admin_token = test.login("admin", ADMIN_PASSWORD).await;
        test
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .client
            .post(format!("{}/api/v1/auth/login", self.auth_base))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "login of {username}");
        resp.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a user with the given roles (through auth-service) and logs in.
    pub async fn user(&self, username: &str, roles: &[&str]) -> String {
        let resp = self
            .client
            .post(format!("{}/api/v1/users", self.auth_base))
            .bearer_auth(&self.admin_token)
            .json(&json!({
                "username": username,
                "email": format!("{username}@example.com"),
                "password": "user-password-1",
                "roles": roles,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        self.login(username, "user-password-1").await
    }

    /// Creates a role (through auth-service) with `scope` (`fleet` or
    /// `own`) and `permissions`.
    pub async fn role(&self, name: &str, scope: &str, permissions: &[&str]) {
        let resp = self
            .client
            .post(format!("{}/api/v1/roles", self.auth_base))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "name": name, "scope": scope, "permissions": permissions }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "creating role {name}");
    }

    /// The user id behind `token`.
    pub async fn user_id(&self, token: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/api/v1/auth/me", self.auth_base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
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

    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let resp = self.request(Method::GET, path, Some(token), None).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    /// Creates a device as `token`'s user; returns the answer (with secret).
    pub async fn device(&self, token: &str, body: Value) -> Value {
        let resp = self
            .request(Method::POST, "/api/v1/devices", Some(token), Some(body))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    pub async fn publish<T: serde::Serialize>(&self, topic: &str, items: &[T]) {
        publish_json(self.bus.as_ref(), topic, items).await.unwrap();
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A channel to this service's gRPC API carrying the internal token,
    /// as the other services call it.
    pub fn grpc_channel(&self) -> wf_common::grpc::InternalChannel {
        wf_common::grpc::internal_channel(&self.grpc_url(), &self.internal_token).unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Polls `check` until it returns `Some`, for up to five seconds.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..100 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Asserts an error response's status and envelope code.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}
