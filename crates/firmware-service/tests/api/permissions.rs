//! Who may do what: firmware:read, firmware:write and firmware:deploy,
//! checked through auth-service.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[tokio::test]
async fn permission_matrix() {
    let app = TestApp::builder().workers(0).spawn().await;
    let fw = app.firmware("boiler", "1.0.0", vec![7; 1000]).await;
    let id = fw["id"].as_str().unwrap().to_string();
    app.devices("boiler", 2, "boiler", &["site"]).await;
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({ "name": "r", "firmware_id": id, "target": { "device_ids": ["boiler-0001"] } }),
        )
        .await;
    let rid = rollout["id"].as_str().unwrap().to_string();

    let nobody = app.user_with("nobody", &[]).await;
    let reader = app.user_with("reader", &["firmware:read"]).await;
    let writer = app.user_with("writer", &["firmware:write"]).await;
    let deployer = app.user_with("deployer", &["firmware:deploy"]).await;
    let users = [
        ("nobody", nobody.as_str()),
        ("reader", reader.as_str()),
        ("writer", writer.as_str()),
        ("deployer", deployer.as_str()),
    ];

    // (method, path, body, who may)
    let cases: Vec<(Method, String, Option<serde_json::Value>, &str)> = vec![
        (Method::GET, "/api/v1/firmware".into(), None, "reader"),
        (
            Method::GET,
            format!("/api/v1/firmware/{id}"),
            None,
            "reader",
        ),
        (
            Method::GET,
            format!("/api/v1/firmware/{id}/download"),
            None,
            "reader",
        ),
        (Method::GET, "/api/v1/rollouts".into(), None, "reader"),
        (
            Method::GET,
            format!("/api/v1/rollouts/{rid}"),
            None,
            "reader",
        ),
        (
            Method::GET,
            format!("/api/v1/rollouts/{rid}/executions"),
            None,
            "reader",
        ),
        (Method::GET, "/api/v1/upgrade-tasks".into(), None, "reader"),
        (
            Method::POST,
            "/api/v1/rollouts".into(),
            Some(
                json!({ "name": "r2", "firmware_id": id, "target": { "device_ids": ["boiler-0002"] } }),
            ),
            "deployer",
        ),
        (
            Method::POST,
            format!("/api/v1/rollouts/{rid}/pause"),
            Some(json!({})),
            "deployer",
        ),
        (
            Method::POST,
            format!("/api/v1/rollouts/{rid}/resume"),
            Some(json!({})),
            "deployer",
        ),
    ];
    for (method, path, body, allowed) in &cases {
        for (who, token) in users {
            let resp = app
                .request(method.clone(), path, Some(token), body.clone())
                .await;
            if who == *allowed {
                // The permission passes; the resources are the
                // administrator's, so ownership may still hide them (404,
                // or 422 for a target device): see ownership.rs.
                assert!(
                    resp.status().is_success()
                        || resp.status() == StatusCode::NOT_FOUND
                        || resp.status() == StatusCode::UNPROCESSABLE_ENTITY,
                    "{who} {method} {path}: {}",
                    resp.status()
                );
            } else {
                assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
            }
        }
        let anonymous = app.request(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            anonymous.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }

    // Uploading and deleting need firmware:write.
    for (who, token) in users {
        let resp = app
            .upload_as(
                token,
                &[
                    ("name", "x"),
                    ("device_type", "boiler"),
                    ("version", "9.9.9"),
                ],
                "f.bin",
                vec![1; 100],
            )
            .await;
        if who == "writer" {
            assert_eq!(resp.status(), StatusCode::CREATED);
        } else {
            assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    let spare = app.get_json("/api/v1/firmware?device_type=boiler").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (who, token) in users.iter().filter(|(w, _)| *w != "writer") {
        assert_error(
            app.request(
                Method::DELETE,
                &format!("/api/v1/firmware/{spare}"),
                Some(token),
                None,
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        let _ = who;
    }
    assert_eq!(
        app.request(
            Method::DELETE,
            &format!("/api/v1/firmware/{spare}"),
            Some(&writer),
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );

    // Upgrade tasks and cancel need firmware:deploy.
    let body = json!({ "firmware_id": id, "device_id": "boiler-0002" });
    for token in [&nobody, &reader, &writer] {
        assert_error(
            app.request(
                Method::POST,
                "/api/v1/upgrade-tasks",
                Some(token),
                Some(body.clone()),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_error(
            app.request(
                Method::POST,
                &format!("/api/v1/rollouts/{rid}/cancel"),
                Some(token),
                None,
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    // A deployer whose role reaches only their own passes the permission
    // check, but the rollout is the administrator's: not theirs to see.
    let own_deployer = app
        .user_scoped("own-deployer", "own", &["firmware:deploy"])
        .await;
    let resp = app
        .request(
            Method::POST,
            &format!("/api/v1/rollouts/{rid}/cancel"),
            Some(&own_deployer),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app
        .request(
            Method::POST,
            &format!("/api/v1/rollouts/{rid}/cancel"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
