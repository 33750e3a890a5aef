//! `TestApp`: auth-service spawned on free ports with a fresh database —
//! SQLite by default, MariaDB/MySQL when `WF_IOT_TEST_MYSQL_URL` is set
//! (a new database per test, dropped afterwards).

use std::sync::Arc;

use auth_service::{Application, Config, HashingLimit, LoginThrottleConfig, PasswordHashing};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use wf_common::events::EventBus;
use wf_common::jwt::SigningKey;
use wf_common::shutdown::Shutdown;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

pub use wf_common::testing::TestDatabase;

pub struct TestApp {
    pub base: String,
    pub grpc_port: u16,
    pub client: reqwest::Client,
    pub config: Arc<Config>,
    pub admin_token: String,
    shutdown: Shutdown,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

pub struct TestAppBuilder {
    config: Config,
    dir: tempfile::TempDir,
    events: Option<Arc<dyn EventBus>>,
}

impl TestAppBuilder {
    /// `free` failures per (account, client) before a 60 s delay; at most
    /// `per_client` failures per client.
    pub fn throttle(mut self, free: usize, per_client: usize) -> Self {
        self.config.login_throttle = LoginThrottleConfig {
            failures_before_delay: free,
            delay_base_secs: 60,
            delay_max_secs: 600,
            max_failures_per_client: per_client,
            window_secs: 600,
        };
        self
    }

    pub fn hashing(mut self, hashing: PasswordHashing, limit: HashingLimit) -> Self {
        self.config.password_hashing = hashing;
        self.config.password_hashing_limit = limit;
        self
    }

    pub fn refresh_grace(mut self, secs: i64) -> Self {
        self.config.refresh_reuse_grace_secs = secs;
        self
    }

    pub fn trusted_proxies(mut self, ranges: &[&str]) -> Self {
        self.config.trusted_proxies = ranges.iter().map(|r| r.parse().expect("range")).collect();
        self
    }

    /// Consumes `audit.recorded` from `bus`.
    pub fn events(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.events = Some(bus);
        self
    }

    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.config.max_body_bytes = n;
        self
    }

    pub fn access_ttl(mut self, secs: i64) -> Self {
        self.config.access_token_ttl_secs = secs;
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        wf_common::testing::init_logs();
        let db = TestDatabase::new("auth.db");
        self.config.database_url = db.url.clone();
        let config = Arc::new(self.config);
        let mut app = Application::build(config.clone())
            .await
            .expect("auth-service starts");
        if let Some(bus) = self.events {
            app = app.with_events(bus);
        }
        let base = format!("http://127.0.0.1:{}", app.http_port());
        let grpc_port = app.grpc_port();
        app.ensure_admin(Some(ADMIN_PASSWORD.into()))
            .await
            .expect("admin created");
        let shutdown = Shutdown::new();
        tokio::spawn(app.run_until_stopped(shutdown.wait()));
        let client = reqwest::Client::new();
        let mut test = TestApp {
            base,
            grpc_port,
            client,
            config,
            admin_token: String::new(),
            shutdown,
            _db: db,
            _dir: self.dir,
        };
        test.admin_token = test.token("admin", ADMIN_PASSWORD).await;
        test
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            host: "127.0.0.1".parse().expect("ip"),
            http_port: 0,
            grpc_port: 0,
            signing_key_file: dir.path().join("signing.pem"),
            // Cheap hashing keeps the suite fast; production cost is the default.
            password_hashing: PasswordHashing {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            ..Config::default()
        };
        TestAppBuilder {
            config,
            dir,
            events: None,
        }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A channel to this service's gRPC API carrying the internal token,
    /// as the other services call it.
    pub fn grpc_channel(&self) -> wf_common::grpc::InternalChannel {
        wf_common::grpc::internal_channel(&self.grpc_url(), &self.config.internal_token).unwrap()
    }

    /// The key the service signs with, read from its key file.
    pub fn signing_key(&self) -> SigningKey {
        let pem = std::fs::read_to_string(&self.config.signing_key_file).expect("key file");
        SigningKey::from_pkcs8_pem(&pem).expect("key")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "username": username, "password": password })),
        )
        .await
    }

    pub async fn login_tokens(&self, username: &str, password: &str) -> Value {
        let resp = self.login(username, password).await;
        assert_eq!(resp.status(), StatusCode::OK, "login of {username}");
        resp.json().await.expect("token JSON")
    }

    pub async fn token(&self, username: &str, password: &str) -> String {
        self.login_tokens(username, password).await["access_token"]
            .as_str()
            .expect("access token")
            .to_string()
    }

    /// Creates a user with `roles` through the API; returns its id.
    pub async fn create_user(&self, username: &str, password: &str, roles: &[&str]) -> String {
        let resp = self
            .post(
                "/api/v1/users",
                &self.admin_token,
                json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": password,
                    "roles": roles,
                }),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "creating {username}");
        let body: Value = resp.json().await.expect("user JSON");
        body["id"].as_str().expect("id").to_string()
    }

    /// Creates a role holding exactly `permissions`; returns its id.
    pub async fn create_role(&self, name: &str, permissions: &[&str]) -> String {
        let resp = self
            .post(
                "/api/v1/roles",
                &self.admin_token,
                json!({ "name": name, "permissions": permissions }),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "creating role {name}");
        let body: Value = resp.json().await.expect("role JSON");
        body["id"].as_str().expect("id").to_string()
    }

    /// Audit entries with `action`, newest first.
    pub async fn audit(&self, action: &str) -> Vec<Value> {
        let resp = self
            .get(
                &format!("/api/v1/audit-logs?action={action}"),
                &self.admin_token,
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("audit JSON");
        body["items"].as_array().cloned().unwrap_or_default()
    }
}

/// Asserts an error response: status, envelope code, and a request id.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let header_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = resp.json().await.expect("error envelope is JSON");
    assert_eq!(body["error"]["code"], code, "envelope: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        body["error"]["request_id"].as_str().map(str::to_string),
        header_id
    );
    body
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
