//! wf-iot's test harness, one for every crate's integration tests.
//!
//! Each crate's `tests/api/helpers.rs` has a `TestApp` made by
//! `TestApp::builder()`, whose setters change the service's
//! configuration and whose `spawn()` starts it on free ports. A service
//! that authenticates its callers gets an [`AuthServer`] beside it, started
//! here in one way for all of them, and the accounts and tokens of a test
//! come from its [`Accounts`]. Waiting for what happens in the background
//! is [`eventually`]; `TEST_LOG=debug cargo test ...` shows the services'
//! logs ([`init_logs`]). Databases are fresh per test ([`TestDatabase`]):
//! SQLite files, or databases on the server `WF_IOT_TEST_MYSQL_URL` names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wf_common::grpc::InternalToken;
use wf_common::shutdown::Shutdown;

pub use wf_common::testing::{
    EVENTUALLY, TestDatabase, eventually, eventually_within, init_logs, mosquitto,
};

/// The first administrator's password in every test.
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// The password of the users tests create.
pub const USER_PASSWORD: &str = "user-password-1";

/// The accounts of a test, through an API that serves `/api/v1/auth`,
/// `/api/v1/users` and `/api/v1/roles`: auth-service itself, or the
/// api-gateway in front of it.
#[derive(Clone)]
pub struct Accounts {
    pub client: reqwest::Client,
    /// Where the account API is served (`http://127.0.0.1:port`).
    pub base: String,
    /// The first administrator's access token.
    pub admin_token: String,
}

impl Accounts {
    /// The accounts served at `base`, as the first administrator.
    pub async fn at(base: &str) -> Self {
        let mut accounts = Self {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            admin_token: String::new(),
        };
        accounts.admin_token = accounts.login("admin", ADMIN_PASSWORD).await;
        accounts
    }

    /// An access token of `username`.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .client
            .post(format!("{}/api/v1/auth/login", self.base))
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

    /// Creates a user holding `roles` (password [`USER_PASSWORD`]) and logs in.
    pub async fn user(&self, username: &str, roles: &[&str]) -> String {
        self.create(
            "users",
            json!({
                "username": username,
                "email": format!("{username}@example.com"),
                "password": USER_PASSWORD,
                "roles": roles,
            }),
        )
        .await;
        self.login(username, USER_PASSWORD).await
    }

    /// Creates a role of `scope` (`fleet` or `own`) holding `permissions`.
    pub async fn role(&self, name: &str, scope: &str, permissions: &[&str]) {
        self.create(
            "roles",
            json!({ "name": name, "scope": scope, "permissions": permissions }),
        )
        .await;
    }

    /// `POST /api/v1/{collection}` as the administrator, which must answer 201.
    async fn create(&self, collection: &str, body: Value) {
        let resp = self
            .client
            .post(format!("{}/api/v1/{collection}", self.base))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "creating {collection} {body}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// A user holding `permissions` through a role of `scope` made for
    /// them (`role-<username>`); logs in.
    pub async fn user_scoped(&self, username: &str, scope: &str, permissions: &[&str]) -> String {
        let role = format!("role-{username}");
        self.role(&role, scope, permissions).await;
        self.user(username, &[&role]).await
    }

    /// The user id behind `token`.
    pub async fn user_id(&self, token: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/api/v1/auth/me", self.base))
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
}

/// auth-service running beside the service under test, on free loopback
/// ports, with a first administrator ([`ADMIN_PASSWORD`]) and cheap
/// password hashing. It stops with the `stop` it was started with.
pub struct AuthServer {
    /// Its REST API (`http://127.0.0.1:port`).
    pub base: String,
    /// Its gRPC endpoint, for a service's `auth_grpc_url`.
    pub grpc_url: String,
    /// Its published keys, for a service's `auth_jwks_url`.
    pub jwks_url: String,
    /// The key that signs its tokens.
    pub signing_key_file: PathBuf,
    pub accounts: Accounts,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    /// Starts auth-service answering calls that carry `token`.
    pub async fn start(token: &InternalToken, stop: &Shutdown) -> Self {
        Self::start_with(token, stop, |_| {}).await
    }

    /// [`AuthServer::start`] with its configuration changed by `adjust`.
    pub async fn start_with(
        token: &InternalToken,
        stop: &Shutdown,
        adjust: impl FnOnce(&mut auth_service::Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new("auth.db");
        let signing_key_file = dir.path().join("key.pem");
        let mut config = auth_service::Config {
            internal_token: token.clone(),
            host: "127.0.0.1".parse().unwrap(),
            http_port: 0,
            grpc_port: 0,
            database_url: db.url.clone(),
            signing_key_file: signing_key_file.clone(),
            // Cheap hashing keeps the suites fast; production cost is the default.
            password_hashing: auth_service::PasswordHashing {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            ..auth_service::Config::default()
        };
        adjust(&mut config);
        let auth = auth_service::Application::build(Arc::new(config))
            .await
            .expect("auth-service starts");
        auth.ensure_admin(Some(ADMIN_PASSWORD.into()))
            .await
            .expect("the first administrator is created");
        let base = format!("http://127.0.0.1:{}", auth.http_port());
        let grpc_url = format!("http://127.0.0.1:{}", auth.grpc_port());
        tokio::spawn(auth.run_until_stopped(stop.wait()));
        Self {
            jwks_url: format!("{base}/.well-known/jwks.json"),
            accounts: Accounts::at(&base).await,
            base,
            grpc_url,
            signing_key_file,
            _db: db,
            _dir: dir,
        }
    }
}
