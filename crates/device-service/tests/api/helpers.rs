//! `TestApp`: device-service on free ports with a fresh database, the real
//! auth-service beside it (tokens, JWKS, permission checks), an in-process
//! event bus the tests publish device events on, and a recording stand-in
//! for mqtt-gateway's gRPC API (the real gateway is another crate, tested
//! on its own and end to end).

use std::sync::{Arc, Mutex};

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio_stream::wrappers::TcpListenerStream;
use wf_common::contract::Event;
use wf_common::events::{EventBus, InProcessBus, publish};
use wf_common::shutdown::Shutdown;
use wf_proto::mqtt::mqtt_gateway_server::{MqttGateway, MqttGatewayServer};
use wf_proto::mqtt::{
    MqttMessage, PublishMessageRequest, PublishMessageResponse, SubscribeTopicRequest,
    SyncDeviceCredentialsRequest, SyncDeviceCredentialsResponse,
};
use wf_testkit::{Accounts, AuthServer, TestDatabase};

pub use wf_testkit::eventually;

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

/// device-service under test; also its test's [`Accounts`] (`app.user(..)`,
/// `app.admin_token`).
pub struct TestApp {
    pub base: String,
    pub auth: AuthServer,
    pub grpc_port: u16,
    pub internal_token: wf_common::grpc::InternalToken,
    pub client: reqwest::Client,
    pub bus: Arc<InProcessBus>,
    pub gateway: RecordingGateway,
    shutdown: Shutdown,
    _db: TestDatabase,
}

impl std::ops::Deref for TestApp {
    type Target = Accounts;

    fn deref(&self) -> &Accounts {
        &self.auth.accounts
    }
}

/// A [`TestApp`] to be: device-service's configuration, changed by
/// [`configure`](Self::configure) before [`spawn`](Self::spawn).
pub struct TestAppBuilder {
    config: device_service::Config,
}

impl TestAppBuilder {
    pub fn configure(mut self, adjust: impl FnOnce(&mut device_service::Config)) -> Self {
        adjust(&mut self.config);
        self
    }

    /// Starts auth-service, the stand-in gateway and device-service.
    pub async fn spawn(self) -> TestApp {
        wf_testkit::init_logs();
        let shutdown = Shutdown::new();
        // One secret for the calls between the services of this test.
        let internal_token = wf_common::grpc::InternalToken::generate();
        let auth = AuthServer::start(&internal_token, &shutdown).await;

        let gateway = RecordingGateway::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(MqttGatewayServer::new(gateway.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.wait());
        tokio::spawn(server);

        let bus = Arc::new(InProcessBus::new());
        let db = TestDatabase::new("devices.db");
        let config = device_service::Config {
            internal_token: internal_token.clone(),
            database_url: db.url.clone(),
            auth_grpc_url: auth.grpc_url.clone(),
            auth_jwks_url: auth.jwks_url.clone(),
            mqtt_gateway_url: gateway_url,
            ..self.config
        };
        let app =
            device_service::Application::build(Arc::new(config), bus.clone() as Arc<dyn EventBus>)
                .await
                .unwrap();
        let base = format!("http://127.0.0.1:{}", app.http_port());
        let grpc_port = app.grpc_port();
        tokio::spawn(app.run_until_stopped(shutdown.wait()));
        TestApp {
            base,
            auth,
            grpc_port,
            internal_token,
            client: reqwest::Client::new(),
            bus,
            gateway,
            shutdown,
            _db: db,
        }
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            config: device_service::Config {
                host: "127.0.0.1".parse().unwrap(),
                http_port: 0,
                grpc_port: 0,
                permission_cache_ttl_secs: 1,
                max_series_points: 1000,
                max_body_bytes: 4096,
                ..device_service::Config::default()
            },
        }
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

    /// Publishes `events` as their producer would.
    pub async fn publish<E: Event>(&self, events: &[E]) {
        publish(self.bus.as_ref(), events).await.unwrap();
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

/// Asserts an error response's status and envelope code.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}
