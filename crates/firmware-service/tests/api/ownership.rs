//! The authorization matrix of rollouts, upgrade tasks and firmware: every
//! built-in role (each reaching the whole fleet), operators whose role
//! reaches only what they own, and a custom role holding only
//! `user:manage`, against every operation, on resources of their own and of
//! another owner.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Behaviour, TestApp};

fn upload_fields<'a>(device_type: &'a str, version: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("name", "Shared image"),
        ("device_type", device_type),
        ("version", version),
    ]
}

async fn status(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> StatusCode {
    app.request(method, path, Some(token), body).await.status()
}

async fn body(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let resp = app.request(method, path, Some(token), body).await;
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create(app: &TestApp, token: &str, fw: &str, target: Value) -> (StatusCode, Value) {
    body(
        app,
        token,
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({ "name": "r", "firmware_id": fw, "target": target })),
    )
    .await
}

#[tokio::test]
async fn rollouts_tasks_and_firmware_follow_the_scope_of_roles() {
    let app = TestApp::spawn().await;
    // Devices stay notified, so rollouts and tasks stay open.
    app.fleet.script(|_, _| Behaviour::Hang);
    let admin = app.user("c-admin", &["admin"]).await;
    const OPERATOR: [&str; 6] = [
        "device:read",
        "device:write",
        "device:command",
        "firmware:read",
        "firmware:write",
        "firmware:deploy",
    ];
    let op_a = app.user_scoped("op-a", "own", &OPERATOR).await;
    let op_b = app.user_scoped("op-b", "own", &OPERATOR).await;
    let op_f = app.user("op-f", &["operator"]).await;
    let viewer = app.user("c-viewer", &["viewer"]).await;
    let usermgr = app.user_with("c-usermgr", &["user:manage"]).await;

    let fw = app.firmware("meter", "2.0.0", vec![7; 4096]).await;
    let fw_id = fw["id"].as_str().unwrap().to_string();
    let theirs = app.devices("meter", 3, "meter", &["site-1"]).await;
    let mine = app.devices_as(&op_a, "mine", 2, "meter", &["site-1"]).await;

    // The superuser's rollout and task on their own devices.
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({ "name": "theirs", "firmware_id": fw_id, "target": { "device_ids": [theirs[0].0] } }),
        )
        .await;
    let rollout_id = rollout["id"].as_str().unwrap().to_string();
    let task = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": fw_id, "device_id": theirs[1].0 }),
        )
        .await;
    let task_id = task["id"].as_str().unwrap().to_string();
    let executions = app
        .get_json(&format!("/api/v1/rollouts/{rollout_id}/executions"))
        .await;
    let execution_id = executions["items"][0]["id"].as_str().unwrap().to_string();

    // Reading another owner's rollout, its executions and task.
    let reads = [
        format!("/api/v1/rollouts/{rollout_id}"),
        format!("/api/v1/rollouts/{rollout_id}/executions"),
        format!("/api/v1/rollouts/{rollout_id}/executions/{execution_id}"),
        format!("/api/v1/upgrade-tasks/{task_id}"),
    ];
    for path in &reads {
        for (who, token, expected) in [
            ("admin", &admin, StatusCode::OK),
            ("fleet operator", &op_f, StatusCode::OK),
            ("own operator a", &op_a, StatusCode::NOT_FOUND),
            ("own operator b", &op_b, StatusCode::NOT_FOUND),
            ("viewer", &viewer, StatusCode::OK),
            ("user:manage", &usermgr, StatusCode::FORBIDDEN),
        ] {
            assert_eq!(
                status(&app, token, Method::GET, path, None).await,
                expected,
                "{who} GET {path}"
            );
        }
    }
    // Listings show every owner's on the fleet, the caller's own otherwise.
    for (who, token, rollouts, tasks) in [
        ("admin", &admin, 1, 1),
        ("fleet operator", &op_f, 1, 1),
        ("own operator b", &op_b, 0, 0),
        ("viewer", &viewer, 1, 1),
    ] {
        let (s, list) = body(&app, token, Method::GET, "/api/v1/rollouts", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], rollouts, "{who} rollouts");
        let (s, list) = body(&app, token, Method::GET, "/api/v1/upgrade-tasks", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], tasks, "{who} tasks");
    }
    // Controlling another owner's rollout and task.
    let controls = [
        format!("/api/v1/rollouts/{rollout_id}/pause"),
        format!("/api/v1/rollouts/{rollout_id}/resume"),
        format!("/api/v1/rollouts/{rollout_id}/cancel"),
        format!("/api/v1/upgrade-tasks/{task_id}/cancel"),
    ];
    for path in &controls {
        for (who, token, expected) in [
            ("own operator a", &op_a, StatusCode::NOT_FOUND),
            ("own operator b", &op_b, StatusCode::NOT_FOUND),
            ("viewer", &viewer, StatusCode::FORBIDDEN),
            ("user:manage", &usermgr, StatusCode::FORBIDDEN),
        ] {
            assert_eq!(
                status(&app, token, Method::POST, path, None).await,
                expected,
                "{who} POST {path}"
            );
        }
    }
    let still = app
        .get_json(&format!("/api/v1/rollouts/{rollout_id}"))
        .await;
    assert_eq!(still["state"], "running");
    // A fleet operator controls another owner's rollout.
    for step in ["pause", "resume"] {
        let path = format!("/api/v1/rollouts/{rollout_id}/{step}");
        assert_eq!(
            status(&app, &op_f, Method::POST, &path, None).await,
            StatusCode::OK,
            "fleet operator {step}"
        );
    }

    // Targets: another owner's device is answered exactly like an unknown
    // one, and tags and types reach only the caller's devices.
    let fw = fw_id.as_str();
    let (s_foreign, foreign) =
        create(&app, &op_b, fw, json!({ "device_ids": [theirs[2].0] })).await;
    let (s_unknown, unknown) =
        create(&app, &op_b, fw, json!({ "device_ids": ["meter-9999"] })).await;
    assert_eq!(s_foreign, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s_unknown, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        foreign["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&theirs[2].0, "X"),
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .replace("meter-9999", "X"),
    );
    let (s, _) = create(&app, &op_b, fw, json!({ "tag": "site-1" })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "op-b owns no device");
    let (s, _) = create(&app, &op_b, fw, json!({ "device_type": "meter" })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = create(&app, &viewer, fw, json!({ "device_ids": [mine[0].0] })).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = create(&app, &usermgr, fw, json!({ "device_ids": [mine[0].0] })).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A fleet operator targets any owner's device.
    let (s, fleet) = create(&app, &op_f, fw, json!({ "device_ids": [theirs[2].0] })).await;
    assert_eq!(s, StatusCode::CREATED, "{fleet}");
    // Operator a reaches its own devices only: a tag rollout takes both of
    // its devices and none of the administrator's.
    let (s, own) = create(&app, &op_a, fw, json!({ "tag": "site-1" })).await;
    assert_eq!(s, StatusCode::CREATED, "{own}");
    assert_eq!(own["total"], 2);
    let own_id = own["id"].as_str().unwrap().to_string();
    let (s, _) = body(
        &app,
        &op_a,
        Method::GET,
        &format!("/api/v1/rollouts/{own_id}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = body(&app, &op_a, Method::GET, "/api/v1/rollouts", None).await;
    assert_eq!(list["total"], 1);
    // Upgrade tasks: the same rule.
    assert_eq!(
        status(
            &app,
            &op_b,
            Method::POST,
            "/api/v1/upgrade-tasks",
            Some(json!({ "firmware_id": fw_id, "device_id": theirs[2].0 })),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // The administrator sees and controls the operator's rollout.
    assert_eq!(
        status(
            &app,
            &admin,
            Method::POST,
            &format!("/api/v1/rollouts/{own_id}/cancel"),
            None
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &app,
            &admin,
            Method::POST,
            &format!("/api/v1/rollouts/{rollout_id}/pause"),
            None
        )
        .await,
        StatusCode::OK
    );

    // Firmware is a shared catalogue: every firmware:read holder reads an
    // image; only its uploader or firmware:write on the fleet deletes it.
    let path = format!("/api/v1/firmware/{fw_id}");
    for (who, token, expected) in [
        ("admin", &admin, StatusCode::OK),
        ("own operator b", &op_b, StatusCode::OK),
        ("viewer", &viewer, StatusCode::OK),
        ("user:manage", &usermgr, StatusCode::FORBIDDEN),
    ] {
        assert_eq!(
            status(&app, token, Method::GET, &path, None).await,
            expected,
            "{who}"
        );
    }
    let (_, list) = body(&app, &viewer, Method::GET, "/api/v1/firmware", None).await;
    assert_eq!(list["total"], 1);
    let resp = app
        .upload_as(
            &op_a,
            &upload_fields("meter", "3.0.0"),
            "a.bin",
            vec![1; 100],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let mine_fw: Value = resp.json().await.unwrap();
    let mine_path = format!("/api/v1/firmware/{}", mine_fw["id"].as_str().unwrap());
    for (who, token, expected) in [
        ("own operator b", &op_b, StatusCode::FORBIDDEN),
        ("viewer", &viewer, StatusCode::FORBIDDEN),
        ("user:manage", &usermgr, StatusCode::FORBIDDEN),
    ] {
        assert_eq!(
            status(&app, token, Method::DELETE, &mine_path, None).await,
            expected,
            "{who} deleting operator a's image"
        );
        assert_eq!(
            status(&app, token, Method::DELETE, &path, None).await,
            expected,
            "{who} deleting the administrator's image"
        );
    }
    assert_eq!(
        status(&app, &op_a, Method::DELETE, &path, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&app, &op_a, Method::DELETE, &mine_path, None).await,
        StatusCode::NO_CONTENT
    );
    let resp = app
        .upload_as(
            &op_b,
            &upload_fields("meter", "3.0.1"),
            "b.bin",
            vec![2; 100],
        )
        .await;
    let b_fw: Value = resp.json().await.unwrap();
    assert_eq!(
        status(
            &app,
            &op_f,
            Method::DELETE,
            &format!("/api/v1/firmware/{}", b_fw["id"].as_str().unwrap()),
            None
        )
        .await,
        StatusCode::NO_CONTENT
    );
}
