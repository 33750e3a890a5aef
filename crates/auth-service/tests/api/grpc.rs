//! The gRPC API other services use, plus health and reflection.

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use wf_proto::auth::auth_service_client::AuthServiceClient;
use wf_proto::auth::{CheckPermissionRequest, GetUserByIdRequest, ValidateTokenRequest};

use crate::helpers::TestApp;

async fn channel(app: &TestApp) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(app.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects")
}

async fn client(app: &TestApp) -> AuthServiceClient<wf_common::grpc::InternalChannel> {
    AuthServiceClient::new(app.grpc_channel())
}

#[tokio::test]
async fn validate_token_returns_the_identity() {
    let app = TestApp::spawn().await;
    let id = app
        .create_user("lena", "lena-password", &["operator"])
        .await;
    let token = app.token("lena", "lena-password").await;
    let mut grpc = client(&app).await;
    let identity = grpc
        .validate_token(ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(identity.user_id, id);
    assert_eq!(identity.username, "lena");
    assert_eq!(identity.roles, vec!["operator".to_string()]);
    assert!(identity.permissions.contains(&"device:command".to_string()));
    assert!(!identity.is_superuser);
    assert!(identity.expires_at > 0);

    let err = grpc
        .validate_token(ValidateTokenRequest {
            token: format!("{token}x"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = grpc
        .validate_token(ValidateTokenRequest {
            token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn check_permission_follows_roles_and_the_superuser_flag() {
    let app = TestApp::spawn().await;
    let viewer = app.create_user("mike", "mike-password", &["viewer"]).await;
    let me: serde_json::Value = app
        .get("/api/v1/auth/me", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let admin_id = me["id"].as_str().unwrap().to_string();
    let mut grpc = client(&app).await;
    let check = |user: &str, permission: &str| CheckPermissionRequest {
        user_id: user.into(),
        permission: permission.into(),
    };
    assert!(
        grpc.check_permission(check(&viewer, "device:read"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !grpc
            .check_permission(check(&viewer, "device:write"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        grpc.check_permission(check(&admin_id, "anything:else"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let err = grpc
        .check_permission(check("no-such-user", "device:read"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = grpc
        .check_permission(check(&viewer, "not a permission"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    app.post(
        &format!("/api/v1/users/{viewer}/disable"),
        &app.admin_token,
        serde_json::json!({}),
    )
    .await;
    assert!(
        !grpc
            .check_permission(check(&viewer, "device:read"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
}

#[tokio::test]
async fn get_user_by_id() {
    let app = TestApp::spawn().await;
    let id = app.create_user("nina", "nina-password", &["viewer"]).await;
    let mut grpc = client(&app).await;
    let user = grpc
        .get_user_by_id(GetUserByIdRequest {
            user_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.id, id);
    assert_eq!(user.email, "nina@example.com");
    assert_eq!(user.roles, vec!["viewer".to_string()]);
    assert!(user.is_active);
    let err = grpc
        .get_user_by_id(GetUserByIdRequest {
            user_id: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(channel(&app).await);
    for service in ["", "wfiot.auth.v1.AuthService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(app.grpc_channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"wfiot.auth.v1.AuthService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn calls_without_the_internal_token_are_refused() {
    let app = TestApp::spawn().await;
    let id = app
        .create_user("mira", "mira-password", &["operator"])
        .await;
    let check = || CheckPermissionRequest {
        user_id: id.clone(),
        permission: "device:read".into(),
    };
    // No token at all: the port alone is not enough.
    let err = AuthServiceClient::new(channel(&app).await)
        .check_permission(check())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A token of another deployment.
    let forged = wf_common::grpc::InternalToken::parse("not-this-platforms-token").unwrap();
    let err = AuthServiceClient::new(
        wf_common::grpc::internal_channel(&app.grpc_url(), &forged).unwrap(),
    )
    .get_user_by_id(GetUserByIdRequest {
        user_id: id.clone(),
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Reflection tells nothing either.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let err = ServerReflectionClient::new(channel(&app).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // With the platform's token the same call is answered.
    assert!(
        client(&app)
            .await
            .check_permission(check())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
}

/// How far a permission reaches: the scope of the roles carrying it, the
/// widest one per permission when several do.
#[tokio::test]
async fn a_roles_scope_decides_how_far_each_permission_reaches() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let resp = app
        .post(
            "/api/v1/roles",
            &admin,
            serde_json::json!({
                "name": "own-operators",
                "scope": "own",
                "permissions": ["device:read", "device:write"],
            }),
        )
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let role: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(role["scope"], "own");
    let roles: serde_json::Value = app.get("/api/v1/roles", &admin).await.json().await.unwrap();
    for builtin in ["admin", "operator", "viewer"] {
        let found = roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == builtin)
            .unwrap();
        assert_eq!(found["scope"], "fleet", "{builtin} reaches the fleet");
    }

    let own = app
        .create_user("olga", "olga-password", &["own-operators"])
        .await;
    let mixed = app
        .create_user("max", "max-password", &["own-operators", "viewer"])
        .await;
    let mut grpc = client(&app).await;
    let mut reach = async |user: &str, permission: &str| {
        let answer = grpc
            .check_permission(CheckPermissionRequest {
                user_id: user.into(),
                permission: permission.into(),
            })
            .await
            .unwrap()
            .into_inner();
        (answer.allowed, answer.fleet)
    };
    assert_eq!(reach(&own, "device:read").await, (true, false));
    assert_eq!(reach(&own, "device:write").await, (true, false));
    assert_eq!(reach(&own, "device:command").await, (false, false));
    // viewer brings device:read on the fleet; device:write stays own.
    assert_eq!(reach(&mixed, "device:read").await, (true, true));
    assert_eq!(reach(&mixed, "device:write").await, (true, false));

    // Widening the role reaches its holders at once.
    let role_id = role["id"].as_str().unwrap();
    let resp = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/roles/{role_id}"),
            Some(&admin),
            Some(serde_json::json!({ "scope": "fleet" })),
        )
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(reach(&own, "device:write").await, (true, true));
}

#[tokio::test]
async fn scopes_are_validated_and_never_widen_beyond_the_callers_own() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let bad = app
        .post(
            "/api/v1/roles",
            &admin,
            serde_json::json!({ "name": "x", "scope": "team", "permissions": [] }),
        )
        .await;
    assert_eq!(bad.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let roles: serde_json::Value = app.get("/api/v1/roles", &admin).await.json().await.unwrap();
    let admin_role = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/roles/{admin_role}"),
            Some(&admin),
            Some(serde_json::json!({ "scope": "own" })),
        )
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);

    // A role manager who holds device:read on their own devices only may
    // hand it on with that scope, not on the whole fleet.
    let resp = app
        .post(
            "/api/v1/roles",
            &admin,
            serde_json::json!({
                "name": "leads",
                "scope": "own",
                "permissions": ["device:read", "role:manage", "user:manage"],
            }),
        )
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    app.create_user("lea", "lea-password", &["leads"]).await;
    let lea = app.token("lea", "lea-password").await;
    let wide = app
        .post(
            "/api/v1/roles",
            &lea,
            serde_json::json!({ "name": "wide", "scope": "fleet", "permissions": ["device:read"] }),
        )
        .await;
    assert_eq!(wide.status(), reqwest::StatusCode::FORBIDDEN);
    let narrow = app
        .post(
            "/api/v1/roles",
            &lea,
            serde_json::json!({ "name": "narrow", "scope": "own", "permissions": ["device:read"] }),
        )
        .await;
    assert_eq!(narrow.status(), reqwest::StatusCode::CREATED);
    let narrow: serde_json::Value = narrow.json().await.unwrap();
    let widen = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/roles/{}", narrow["id"].as_str().unwrap()),
            Some(&lea),
            Some(serde_json::json!({ "scope": "fleet" })),
        )
        .await;
    assert_eq!(widen.status(), reqwest::StatusCode::FORBIDDEN);
    // Nor may they give anyone a role carrying device:read on the fleet.
    app.create_role("fleet-readers", &["device:read"]).await;
    let user = |role: &str, name: &str| {
        serde_json::json!({
            "username": name, "email": format!("{name}@example.com"),
            "password": "vic-password", "roles": [role],
        })
    };
    let resp = app
        .post("/api/v1/users", &lea, user("fleet-readers", "vic"))
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::FORBIDDEN);
    let resp = app.post("/api/v1/users", &lea, user("narrow", "val")).await;
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
}
