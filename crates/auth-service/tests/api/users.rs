//! User administration.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, TestApp, assert_error};

#[tokio::test]
async fn create_read_update_list_and_delete_a_user() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let resp = app
        .post(
            "/api/v1/users",
            &admin,
            json!({
                "username": "Dave.Ops",
                "email": "Dave@Example.com",
                "password": "dave-password",
                "full_name": "Dave Ops",
                "roles": ["operator"]
            }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let dave: Value = resp.json().await.unwrap();
    let id = dave["id"].as_str().unwrap().to_string();
    assert_eq!(dave["username"], "dave.ops");
    assert_eq!(dave["email"], "dave@example.com");
    assert_eq!(dave["roles"][0]["name"], "operator");
    assert!(dave.get("password_hash").is_none());

    let got: Value = app
        .get(&format!("/api/v1/users/{id}"), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["full_name"], "Dave Ops");

    let resp = app
        .request(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(&admin),
            Some(json!({ "full_name": "David Ops" })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["full_name"], "David Ops");
    assert_eq!(updated["email"], "dave@example.com");

    app.create_user("erin", "erin-password", &["viewer"]).await;
    let list: Value = app
        .get("/api/v1/users?limit=2", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 3);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let search: Value = app
        .get("/api/v1/users?q=david", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(search["total"], 1);
    assert_eq!(search["items"][0]["id"], id.as_str());
    let none: Value = app
        .get("/api/v1/users?q=%25", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0, "LIKE wildcards in the search are literal");

    // The operator can log in with the e-mail address.
    assert_eq!(
        app.login("DAVE@example.com", "dave-password")
            .await
            .status(),
        StatusCode::OK
    );

    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/users/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get(&format!("/api/v1/users/{id}"), &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        app.login("dave.ops", "dave-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let actions: Vec<String> = app
        .audit("user.delete")
        .await
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, vec![id]);
}

#[tokio::test]
async fn duplicates_and_invalid_input_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.create_user("frank", "frank-password", &["viewer"])
        .await;
    let create = |body: Value| app.post("/api/v1/users", &admin, body);

    let resp = create(
        json!({ "username": "FRANK", "email": "other@example.com", "password": "password-1" }),
    )
    .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = create(
        json!({ "username": "frank2", "email": "frank@example.com", "password": "password-1" }),
    )
    .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    for (body, what) in [
        (
            json!({ "username": "x", "email": "x@example.com", "password": "password-1" }),
            "short username",
        ),
        (
            json!({ "username": "gina", "email": "not-an-email", "password": "password-1" }),
            "bad e-mail",
        ),
        (
            json!({ "username": "gina", "email": "gina@example.com", "password": "short" }),
            "short password",
        ),
        (
            json!({ "username": "gina", "email": "gina@example.com", "password": "password-1", "roles": ["wizard"] }),
            "unknown role",
        ),
        (
            json!({ "username": "gina", "email": "gina@example.com" }),
            "missing password",
        ),
        (
            json!({ "username": "gina", "email": "gina@example.com", "password": "password-1", "admin": true }),
            "unknown field",
        ),
    ] {
        let resp = create(body).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
    }
    for path in [
        "/api/v1/users/no-such-id",
        "/api/v1/users/00000000-0000-0000-0000-000000000000",
    ] {
        assert_error(
            app.get(path, &admin).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/users/no-such-id",
            Some(&admin),
            Some(json!({ "full_name": "x" })),
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app.get("/api/v1/users?limit=100000", &admin).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app.get("/api/v1/users?limit=ten", &admin).await;
    assert_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
}

#[tokio::test]
async fn disabling_a_user_blocks_login_and_their_tokens() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let id = app.create_user("hank", "hank-password", &["viewer"]).await;
    let tokens = app.login_tokens("hank", "hank-password").await;
    let access = tokens["access_token"].as_str().unwrap();

    let resp = app
        .post(&format!("/api/v1/users/{id}/disable"), &admin, json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["is_active"], false);
    assert_eq!(
        app.get("/api/v1/auth/me", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("hank", "hank-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = app
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": tokens["refresh_token"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = app
        .post(&format!("/api/v1/users/{id}/enable"), &admin, json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        app.login("hank", "hank-password").await.status(),
        StatusCode::OK
    );
    // A token from before the account was disabled stays dead.
    assert_eq!(
        app.get("/api/v1/auth/me", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_admin_resets_a_password_and_assigns_roles() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let id = app.create_user("ivy", "ivy-password", &["viewer"]).await;
    let old = app.token("ivy", "ivy-password").await;

    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{id}/password"),
            Some(&admin),
            Some(json!({ "new_password": "ivy-new-password" })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/api/v1/auth/me", &old).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("ivy", "ivy-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let token = app.token("ivy", "ivy-new-password").await;

    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{id}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["operator", "viewer"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me: Value = app
        .get("/api/v1/auth/me", &token)
        .await
        .json()
        .await
        .unwrap();
    let perms = me["permissions"].as_array().unwrap();
    assert!(perms.contains(&json!("firmware:deploy")));
    assert!(!perms.contains(&json!("user:manage")));
    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{id}/roles"),
            Some(&admin),
            Some(json!({ "roles": ["ghost"] })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .request(
            Method::PUT,
            "/api/v1/users/nobody/roles",
            Some(&admin),
            Some(json!({ "roles": ["viewer"] })),
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.audit("user.password_reset").await.len(), 1);
    assert_eq!(app.audit("user.roles_set").await.len(), 1);
}

#[tokio::test]
async fn administrators_cannot_lock_themselves_out() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let me: Value = app
        .get("/api/v1/auth/me", &admin)
        .await
        .json()
        .await
        .unwrap();
    let my_id = me["id"].as_str().unwrap();
    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/users/{my_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .post(&format!("/api/v1/users/{my_id}/disable"), &admin, json!({}))
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;

    // A user manager who is not a superuser cannot remove the last superuser
    // nor mint superusers.
    let role = app.create_role("user-admins", &["user:manage"]).await;
    assert!(!role.is_empty());
    app.create_user("judy", "judy-password", &["user-admins"])
        .await;
    let judy = app.token("judy", "judy-password").await;
    let resp = app
        .post(&format!("/api/v1/users/{my_id}/disable"), &judy, json!({}))
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .post("/api/v1/users", &judy, json!({ "username": "root2", "email": "root2@example.com", "password": "password-1", "is_superuser": true }))
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{my_id}/password"),
            Some(&judy),
            Some(json!({ "new_password": "taken-over" })),
        )
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        app.login("admin", ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn overlong_user_and_audit_filters_are_refused_with_422() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let long = "a".repeat(1_000);
    for path in [
        format!("/api/v1/users?q={long}"),
        format!("/api/v1/audit-logs?action={long}"),
        format!("/api/v1/audit-logs?actor={long}"),
        format!("/api/v1/audit-logs?outcome={long}"),
    ] {
        let resp = app.request(Method::GET, &path, Some(&admin), None).await;
        let body = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 256"),
            "{body}"
        );
    }
    let resp = app
        .request(
            Method::GET,
            &format!("/api/v1/users?q={}", "a".repeat(256)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
