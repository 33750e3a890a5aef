//! The permission matrix: every protected endpoint, called by a user holding
//! each single permission, by a user holding none, and with no token.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

const ALL: [&str; 9] = [
    "device:read",
    "device:write",
    "device:command",
    "firmware:read",
    "firmware:write",
    "firmware:deploy",
    "user:manage",
    "role:manage",
    "audit:read",
];

/// Method, path, body and the permissions that allow it. `{user}` and
/// `{role}` are replaced by a fresh user and role (holding nothing, so that
/// the single-permission holders may manage them) for each call, `{n}` by a
/// unique number.
const ENDPOINTS: &[(&str, &str, Option<&str>, &[&str])] = &[
    ("GET", "/api/v1/users", None, &["user:manage"]),
    (
        "POST",
        "/api/v1/users",
        Some(
            r#"{"username":"new{n}","email":"new{n}@example.com","password":"password-{n}","roles":[]}"#,
        ),
        &["user:manage"],
    ),
    ("GET", "/api/v1/users/{user}", None, &["user:manage"]),
    (
        "PATCH",
        "/api/v1/users/{user}",
        Some(r#"{"full_name":"Renamed"}"#),
        &["user:manage"],
    ),
    ("DELETE", "/api/v1/users/{user}", None, &["user:manage"]),
    (
        "POST",
        "/api/v1/users/{user}/disable",
        Some("{}"),
        &["user:manage"],
    ),
    (
        "POST",
        "/api/v1/users/{user}/enable",
        Some("{}"),
        &["user:manage"],
    ),
    (
        "PUT",
        "/api/v1/users/{user}/password",
        Some(r#"{"new_password":"another-password"}"#),
        &["user:manage"],
    ),
    (
        "PUT",
        "/api/v1/users/{user}/roles",
        Some(r#"{"roles":[]}"#),
        &["user:manage"],
    ),
    (
        "GET",
        "/api/v1/roles",
        None,
        &["role:manage", "user:manage"],
    ),
    (
        "GET",
        "/api/v1/roles/{role}",
        None,
        &["role:manage", "user:manage"],
    ),
    (
        "POST",
        "/api/v1/roles",
        Some(r#"{"name":"role-{n}"}"#),
        &["role:manage"],
    ),
    (
        "PATCH",
        "/api/v1/roles/{role}",
        Some(r#"{"description":"changed"}"#),
        &["role:manage"],
    ),
    (
        "PUT",
        "/api/v1/roles/{role}/permissions",
        Some(r#"{"permissions":[]}"#),
        &["role:manage"],
    ),
    ("DELETE", "/api/v1/roles/{role}", None, &["role:manage"]),
    (
        "GET",
        "/api/v1/permissions",
        None,
        &["role:manage", "user:manage"],
    ),
    ("GET", "/api/v1/audit-logs", None, &["audit:read"]),
];

struct Fixture<'a> {
    app: &'a TestApp,
    n: u32,
}

impl Fixture<'_> {
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> StatusCode {
        self.n += 1;
        let mut path = path.replace("{n}", &self.n.to_string());
        if path.contains("{user}") {
            let id = self
                .app
                .create_user(&format!("target{}", self.n), "target-password", &[])
                .await;
            path = path.replace("{user}", &id);
        }
        if path.contains("{role}") {
            let id = self
                .app
                .create_role(&format!("target-role-{}", self.n), &[])
                .await;
            path = path.replace("{role}", &id);
        }
        let body: Option<Value> =
            body.map(|b| serde_json::from_str(&b.replace("{n}", &self.n.to_string())).unwrap());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        self.app.request(method, &path, token, body).await.status()
    }
}

#[tokio::test]
async fn every_endpoint_checks_its_permission() {
    let app = TestApp::spawn().await;
    let mut fx = Fixture { app: &app, n: 0 };

    app.create_user("nobody", "nobody-password", &[]).await;
    let nobody = app.token("nobody", "nobody-password").await;
    for (method, path, body, _) in ENDPOINTS {
        assert_eq!(
            fx.call(method, path, *body, None).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(
            fx.call(method, path, *body, Some(&nobody)).await,
            StatusCode::FORBIDDEN,
            "{method} {path} without permissions"
        );
    }

    for permission in ALL {
        let role = format!("only-{}", permission.replace(':', "-"));
        app.create_role(&role, &[permission]).await;
        let user = format!("holder-{}", permission.replace(':', "-"));
        app.create_user(&user, "holder-password", &[role.as_str()])
            .await;
        let token = app.token(&user, "holder-password").await;
        for (method, path, body, allowed) in ENDPOINTS {
            let status = fx.call(method, path, *body, Some(&token)).await;
            if allowed.contains(&permission) {
                assert!(
                    status.is_success(),
                    "{permission} should allow {method} {path}, got {status}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{permission} should not allow {method} {path}"
                );
            }
        }
    }

    // Every caller may see and manage their own account.
    assert_eq!(
        fx.call("GET", "/api/v1/auth/me", None, Some(&nobody)).await,
        StatusCode::OK
    );
}
