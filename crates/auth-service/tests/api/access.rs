//! The authorization matrix of user and role management: every built-in
//! role and a custom role holding only `user:manage` (or only
//! `role:manage`), against every user- and role-management operation, on
//! accounts holding less, as much and more than the caller.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const PASSWORD: &str = "caller-password-1";

/// An operation on the account `target`.
#[derive(Debug, Clone, Copy)]
enum Op {
    Update,
    ResetPassword,
    SetRoles,
    Disable,
    Enable,
    Delete,
}

const OPS: [Op; 6] = [
    Op::Update,
    Op::ResetPassword,
    Op::SetRoles,
    Op::Disable,
    Op::Enable,
    Op::Delete,
];

async fn apply(app: &TestApp, token: &str, op: Op, target: &str) -> StatusCode {
    let (method, path, body) = match op {
        Op::Update => (
            Method::PATCH,
            format!("/api/v1/users/{target}"),
            Some(json!({ "full_name": "Changed", "email": format!("{target}@changed.example") })),
        ),
        Op::ResetPassword => (
            Method::PUT,
            format!("/api/v1/users/{target}/password"),
            Some(json!({ "new_password": "taken-over-password" })),
        ),
        // A role every manager in the matrix may grant.
        Op::SetRoles => (
            Method::PUT,
            format!("/api/v1/users/{target}/roles"),
            Some(json!({ "roles": ["usermgr"] })),
        ),
        Op::Disable => (
            Method::POST,
            format!("/api/v1/users/{target}/disable"),
            None,
        ),
        Op::Enable => (Method::POST, format!("/api/v1/users/{target}/enable"), None),
        Op::Delete => (Method::DELETE, format!("/api/v1/users/{target}"), None),
    };
    app.request(method, &path, Some(token), body).await.status()
}

fn allowed(op: Op) -> StatusCode {
    match op {
        Op::ResetPassword | Op::Delete => StatusCode::NO_CONTENT,
        _ => StatusCode::OK,
    }
}

#[tokio::test]
async fn nobody_manages_an_account_holding_more_than_they_do() {
    let app = TestApp::spawn().await;
    app.create_role("usermgr", &["user:manage"]).await;
    let callers = [
        ("c-admin", "admin"),
        ("c-operator", "operator"),
        ("c-viewer", "viewer"),
        ("c-usermgr", "usermgr"),
    ];
    let mut tokens = Vec::new();
    for (name, role) in callers {
        app.create_user(name, PASSWORD, &[role]).await;
        tokens.push((name, role, app.token(name, PASSWORD).await));
    }
    // (target role, which caller roles may manage it)
    let matrix: [(&str, &[&str]); 4] = [
        ("admin", &["admin"]),
        ("operator", &["admin"]),
        ("viewer", &["admin"]),
        ("usermgr", &["admin", "usermgr"]),
    ];
    let mut n = 0;
    for (caller, caller_role, token) in &tokens {
        for (target_role, managers) in matrix {
            for op in OPS {
                n += 1;
                let target = app
                    .create_user(&format!("target{n}"), PASSWORD, &[target_role])
                    .await;
                if matches!(op, Op::Enable) {
                    app.request(
                        Method::POST,
                        &format!("/api/v1/users/{target}/disable"),
                        Some(&app.admin_token),
                        None,
                    )
                    .await;
                }
                let expected = if managers.contains(caller_role) {
                    allowed(op)
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(
                    apply(&app, token, op, &target).await,
                    expected,
                    "{caller} ({caller_role}) {op:?} on a {target_role} account"
                );
            }
        }
        // The superuser is touched by superusers only.
        let admin_id = app
            .get("/api/v1/auth/me", &app.admin_token)
            .await
            .json::<Value>()
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        for op in [Op::Update, Op::ResetPassword, Op::SetRoles] {
            assert_eq!(
                apply(&app, token, op, &admin_id).await,
                StatusCode::FORBIDDEN,
                "{caller} {op:?} on the superuser"
            );
        }
    }
    // The escalation of the report: a user:manage holder took over an admin
    // through a password reset and logged in as them. Refused, and the
    // admin's password still works.
    let victim = app.create_user("victim-admin", PASSWORD, &["admin"]).await;
    let usermgr = &tokens[3].2;
    assert_eq!(
        apply(&app, usermgr, Op::ResetPassword, &victim).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.login("victim-admin", PASSWORD).await.status(),
        StatusCode::OK
    );
    let refusals = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refusals.contains("wf_auth_access_refused_total"));
}

#[tokio::test]
async fn nobody_creates_an_account_with_more_than_they_hold() {
    let app = TestApp::spawn().await;
    app.create_role("usermgr", &["user:manage"]).await;
    let callers = [
        (
            "c-admin",
            "admin",
            &["admin", "operator", "viewer", "usermgr"][..],
        ),
        ("c-operator", "operator", &[][..]),
        ("c-viewer", "viewer", &[][..]),
        ("c-usermgr", "usermgr", &["usermgr"][..]),
    ];
    let mut n = 0;
    for (caller, role, may_grant) in callers {
        app.create_user(caller, PASSWORD, &[role]).await;
        let token = app.token(caller, PASSWORD).await;
        for granted in ["admin", "operator", "viewer", "usermgr"] {
            n += 1;
            let resp = app
                .post(
                    "/api/v1/users",
                    &token,
                    json!({
                        "username": format!("new{n}"),
                        "email": format!("new{n}@example.com"),
                        "password": PASSWORD,
                        "roles": [granted],
                    }),
                )
                .await;
            let expected = if may_grant.contains(&granted) {
                StatusCode::CREATED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(resp.status(), expected, "{caller} creating a {granted}");
        }
    }
    // Nor with the default role (viewer), which carries permissions a
    // user:manage-only caller lacks.
    let token = app.token("c-usermgr", PASSWORD).await;
    let resp = app
        .post(
            "/api/v1/users",
            &token,
            json!({ "username": "plain", "email": "plain@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn nobody_changes_their_own_roles() {
    let app = TestApp::spawn().await;
    app.create_role("usermgr", &["user:manage"]).await;
    for (name, role) in [("c-admin", "admin"), ("c-usermgr", "usermgr")] {
        let id = app.create_user(name, PASSWORD, &[role]).await;
        let token = app.token(name, PASSWORD).await;
        let resp = app
            .request(
                Method::PUT,
                &format!("/api/v1/users/{id}/roles"),
                Some(&token),
                Some(json!({ "roles": [role] })),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{name}");
    }
}

async fn set_permissions(app: &TestApp, token: &str, role: &str, perms: &[&str]) -> StatusCode {
    app.request(
        Method::PUT,
        &format!("/api/v1/roles/{role}/permissions"),
        Some(token),
        Some(json!({ "permissions": perms })),
    )
    .await
    .status()
}

async fn role_id(app: &TestApp, name: &str) -> String {
    let roles: Value = app
        .get("/api/v1/roles", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn role_manage_grants_only_what_its_holder_holds() {
    let app = TestApp::spawn().await;
    let own = app.create_role("rolemgr", &["role:manage"]).await;
    let other = app.create_role("helpers", &["role:manage"]).await;
    app.create_user("c-rolemgr", PASSWORD, &["rolemgr"]).await;
    let token = app.token("c-rolemgr", PASSWORD).await;

    // The report: its holder added every permission to its own role.
    assert_eq!(
        set_permissions(&app, &token, &own, &["role:manage", "user:manage"]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        set_permissions(&app, &token, &own, &["role:manage"]).await,
        StatusCode::FORBIDDEN,
        "nobody changes a role they hold"
    );
    // Another custom role: only permissions the caller holds.
    assert_eq!(
        set_permissions(&app, &token, &other, &["audit:read"]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        set_permissions(&app, &token, &other, &[]).await,
        StatusCode::OK
    );
    // Creating a role: the same rule.
    let create = |perms: Vec<&'static str>, name: &'static str| {
        app.post(
            "/api/v1/roles",
            &token,
            json!({ "name": name, "permissions": perms }),
        )
    };
    assert_eq!(
        create(vec!["device:read"], "readers").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        create(vec!["role:manage"], "managers").await.status(),
        StatusCode::CREATED
    );
    // Built-in roles change by a superuser only, even for an admin.
    app.create_user("c-admin", PASSWORD, &["admin"]).await;
    let admin = app.token("c-admin", PASSWORD).await;
    for builtin in ["viewer", "operator"] {
        let id = role_id(&app, builtin).await;
        for t in [&token, &admin] {
            assert_eq!(
                set_permissions(&app, t, &id, &["device:read"]).await,
                StatusCode::FORBIDDEN,
                "{builtin}"
            );
            let resp = app
                .request(
                    Method::PATCH,
                    &format!("/api/v1/roles/{id}"),
                    Some(t),
                    Some(json!({ "description": "changed" })),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{builtin}");
        }
    }
    let viewer = role_id(&app, "viewer").await;
    assert_eq!(
        set_permissions(
            &app,
            &app.admin_token,
            &viewer,
            &["device:read", "firmware:read"]
        )
        .await,
        StatusCode::OK
    );
    // Deleting a role carrying permissions the caller lacks.
    let wide = app.create_role("wide", &["audit:read"]).await;
    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/roles/{wide}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
