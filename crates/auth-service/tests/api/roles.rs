//! Roles and permissions.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

#[tokio::test]
async fn seeded_roles_and_permissions() {
    let app = TestApp::spawn().await;
    let roles: Value = app
        .get("/api/v1/roles", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let by_name = |name: &str| -> Value {
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("admin")["permissions"].as_array().unwrap().len(), 9);
    assert_eq!(
        by_name("operator")["permissions"],
        json!([
            "device:command",
            "device:read",
            "device:write",
            "firmware:deploy",
            "firmware:read",
            "firmware:write"
        ])
    );
    assert_eq!(
        by_name("viewer")["permissions"],
        json!(["device:read", "firmware:read"])
    );
    let perms: Value = app
        .get("/api/v1/permissions", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = perms["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    for code in [
        "device:read",
        "device:write",
        "device:command",
        "firmware:read",
        "firmware:write",
        "firmware:deploy",
        "user:manage",
        "role:manage",
        "audit:read",
    ] {
        assert!(codes.contains(&code), "{code} missing");
    }
}

#[tokio::test]
async fn a_custom_role_grants_exactly_its_permissions() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let role_id = app.create_role("auditors", &["audit:read"]).await;
    app.create_user("kim", "kim-password", &["auditors"]).await;
    let kim = app.token("kim", "kim-password").await;
    assert_eq!(
        app.get("/api/v1/audit-logs", &kim).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/users", &kim).await.status(),
        StatusCode::FORBIDDEN
    );

    // Permissions change take effect on the next request, not the next login.
    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/roles/{role_id}/permissions"),
            Some(&admin),
            Some(json!({ "permissions": ["user:manage"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["permissions"],
        json!(["user:manage"])
    );
    assert_eq!(
        app.get("/api/v1/audit-logs", &kim).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/api/v1/users", &kim).await.status(),
        StatusCode::OK
    );

    let resp = app
        .request(
            Method::PATCH,
            &format!("/api/v1/roles/{role_id}"),
            Some(&admin),
            Some(json!({ "name": "people-admins", "description": "Manage people" })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["name"], "people-admins");

    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/roles/{role_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/api/v1/users", &kim).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_error(
        app.get(&format!("/api/v1/roles/{role_id}"), &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn role_conflicts_and_bad_input() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let roles: Value = app.get("/api/v1/roles", &admin).await.json().await.unwrap();
    let id_of = |name: &str| -> String {
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let viewer = id_of("viewer");
    let admin_role = id_of("admin");

    let resp = app
        .post("/api/v1/roles", &admin, json!({ "name": "viewer" }))
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .post("/api/v1/roles", &admin, json!({ "name": "x y" }))
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .post(
            "/api/v1/roles",
            &admin,
            json!({ "name": "ops2", "permissions": ["device:fly"] }),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .post(
            "/api/v1/roles",
            &admin,
            json!({ "name": "ops2", "permissions": ["not a code"] }),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/roles/{viewer}"),
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .request(
            Method::PATCH,
            &format!("/api/v1/roles/{viewer}"),
            Some(&admin),
            Some(json!({ "name": "readers" })),
        )
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/roles/{admin_role}/permissions"),
            Some(&admin),
            Some(json!({ "permissions": [] })),
        )
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    // Built-in roles other than admin can be tuned.
    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/roles/{viewer}/permissions"),
            Some(&admin),
            Some(json!({ "permissions": ["device:read"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = app
        .request(Method::DELETE, "/api/v1/roles/none", Some(&admin), None)
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.audit("role.permissions_set").await.len(), 1);
}
