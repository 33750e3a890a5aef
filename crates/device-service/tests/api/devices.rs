//! The registry: CRUD, listing, ownership, permissions, credentials, gRPC.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::contract::{
    BrokerHeartbeat, DeviceDeleted, Event, OtaProgress, OtaState, StatusChanged, StatusReason,
};
use wf_common::events::EventBus;
use wf_proto::device::device_service_client::DeviceServiceClient;
use wf_proto::device::{AuthenticateDeviceRequest, GetDeviceRequest, ListDevicesRequest};

use crate::helpers::{TestApp, assert_error, eventually};

#[tokio::test]
async fn create_read_update_list_and_delete() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let created = app
        .device(
            &admin,
            json!({
                "id": "boiler-1", "name": "Boiler one", "device_type": "boiler",
                "tags": ["Site-A", "heating"], "metadata": { "floor": 2 }
            }),
        )
        .await;
    assert_eq!(created["id"], "boiler-1");
    assert_eq!(created["tags"], json!(["heating", "site-a"]));
    assert_eq!(created["online"], false);
    assert_eq!(created["credentials"]["client_id"], "boiler-1");
    assert_eq!(created["credentials"]["secret"].as_str().unwrap().len(), 43);
    let generated = app
        .device(
            &admin,
            json!({ "name": "Pump", "device_type": "pump", "tags": ["site-a"] }),
        )
        .await;
    let pump_id = generated["id"].as_str().unwrap().to_string();
    assert!(pump_id.starts_with("dev-"));
    app.device(
        &admin,
        json!({ "id": "fan-9", "name": "Fan", "device_type": "fan" }),
    )
    .await;

    // The secret is never shown again.
    let got = app.get_json("/api/v1/devices/boiler-1", &admin).await;
    assert!(got.get("credentials").is_none() && got.get("secret_hash").is_none());
    assert_eq!(got["metadata"]["floor"], 2);

    let list = app
        .get_json("/api/v1/devices?tag=site-a&sort=name", &admin)
        .await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["name"], "Boiler one");
    let list = app.get_json("/api/v1/devices?type=fan", &admin).await;
    assert_eq!(list["items"][0]["id"], "fan-9");
    let list = app.get_json("/api/v1/devices?name=BOIL", &admin).await;
    assert_eq!(list["total"], 1);
    let list = app
        .get_json("/api/v1/devices?sort=-id&limit=2", &admin)
        .await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][0]["id"], "fan-9");
    assert_eq!(list["items"][1]["id"], pump_id.as_str());
    let list = app.get_json("/api/v1/devices?status=online", &admin).await;
    assert_eq!(list["total"], 0);

    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/boiler-1",
            Some(&admin),
            Some(json!({ "tags": ["site-b"], "metadata": { "floor": 3 } })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["tags"], json!(["site-b"]));
    assert_eq!(updated["name"], "Boiler one");

    let mut deleted = app
        .bus
        .subscribe(DeviceDeleted::TOPIC, "test", "t")
        .await
        .unwrap();
    let resp = app
        .request(
            Method::DELETE,
            "/api/v1/devices/boiler-1",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.request(Method::GET, "/api/v1/devices/boiler-1", Some(&admin), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let events = deleted.next(10, Duration::from_secs(2)).await.unwrap();
    let event: DeviceDeleted = events[0].decode().unwrap();
    assert_eq!(event.device_id, "boiler-1");
    let summary = app.get_json("/api/v1/devices/summary", &admin).await;
    assert_eq!(
        summary,
        json!({ "total": 2, "online": 0, "offline": 2, "scope": "fleet" })
    );
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "dup", "name": "First" }))
        .await;
    let post = |body: Value| app.request(Method::POST, "/api/v1/devices", Some(&admin), Some(body));
    assert_error(
        post(json!({ "id": "dup", "name": "Again" })).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    for (body, what) in [
        (json!({ "id": "a/b", "name": "x" }), "slash in id"),
        (json!({ "id": "a+b", "name": "x" }), "wildcard in id"),
        (json!({ "name": "" }), "empty name"),
        (json!({ "name": "x", "tags": ["has space"] }), "bad tag"),
        (
            json!({ "name": "x", "metadata": [1, 2] }),
            "metadata not an object",
        ),
        (json!({ "name": "x", "owner": "me" }), "unknown field"),
        (json!({ "name": 5 }), "wrong type"),
    ] {
        assert_eq!(
            post(body).await.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}"
        );
    }
    let resp = app
        .client
        .post(format!("{}/api/v1/devices", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    let big = json!({ "name": "x", "metadata": { "blob": "y".repeat(8000) } });
    assert_error(
        post(big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_error(
        app.request(
            Method::GET,
            "/api/v1/devices?status=sleeping",
            Some(&admin),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_error(
        app.request(
            Method::GET,
            "/api/v1/devices?sort=owner",
            Some(&admin),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_error(
        app.request(Method::GET, "/api/v1/devices?limit=0", Some(&admin), None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_error(
        app.request(Method::DELETE, "/api/v1/devices/nope", Some(&admin), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_roles_scope_decides_whose_devices_it_reaches() {
    let app = TestApp::spawn().await;
    app.role(
        "own-operators",
        "own",
        &["device:read", "device:write", "device:command"],
    )
    .await;
    let alice = app.user("alice", &["operator"]).await;
    let bob = app.user("bob", &["own-operators"]).await;
    let carol = app.user("carol", &["own-operators"]).await;
    app.device(&alice, json!({ "id": "alice-1", "name": "Alice's" }))
        .await;
    app.device(&bob, json!({ "id": "bob-1", "name": "Bob's" }))
        .await;
    app.device(&carol, json!({ "id": "carol-1", "name": "Carol's" }))
        .await;

    // The built-in operator role reaches the whole fleet.
    let fleet = app.get_json("/api/v1/devices", &alice).await;
    assert_eq!(fleet["total"], 3);
    let summary = app.get_json("/api/v1/devices/summary", &alice).await;
    assert_eq!(
        (summary["total"].as_i64(), summary["scope"].as_str()),
        (Some(3), Some("fleet"))
    );
    for (method, path) in [
        (Method::GET, "/api/v1/devices/bob-1"),
        (Method::GET, "/api/v1/devices/bob-1/telemetry/latest"),
        (Method::GET, "/api/v1/devices/bob-1/commands"),
    ] {
        let resp = app.request(method.clone(), path, Some(&alice), None).await;
        assert_eq!(resp.status(), StatusCode::OK, "operator {method} {path}");
    }
    // It changes, commands, re-keys and deletes another owner's device,
    // while the built-in viewer role reads the whole fleet and changes none
    // of it.
    let victor = app.user("victor", &["viewer"]).await;
    app.device(&bob, json!({ "id": "bob-2", "name": "Bob's second" }))
        .await;
    let changes = [
        (
            Method::PATCH,
            "/api/v1/devices/bob-2",
            Some(json!({ "name": "renamed by the team" })),
        ),
        (
            Method::POST,
            "/api/v1/devices/bob-2/commands",
            Some(json!({ "name": "reboot" })),
        ),
        (Method::POST, "/api/v1/devices/bob-2/secret", None),
        (Method::DELETE, "/api/v1/devices/bob-2", None),
    ];
    assert_eq!(app.get_json("/api/v1/devices", &victor).await["total"], 4);
    let resp = app
        .request(Method::GET, "/api/v1/devices/bob-2", Some(&victor), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for (method, path, body) in changes.clone() {
        let resp = app.request(method.clone(), path, Some(&victor), body).await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "viewer {method} {path}"
        );
    }
    for (method, path, body) in changes {
        let resp = app.request(method.clone(), path, Some(&alice), body).await;
        assert!(
            resp.status().is_success(),
            "operator {method} {path}: {}",
            resp.status()
        );
    }
    let resp = app
        .request(Method::GET, "/api/v1/devices/bob-2", Some(&bob), None)
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "deleted by the operator"
    );

    // A role of scope own reaches its holder's devices only; another
    // owner's device is answered like an unknown one.
    let mine = app.get_json("/api/v1/devices", &bob).await;
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["items"][0]["id"], "bob-1");
    let summary = app.get_json("/api/v1/devices/summary", &bob).await;
    assert_eq!(
        (summary["total"].as_i64(), summary["scope"].as_str()),
        (Some(1), Some("own"))
    );
    for (method, path) in [
        (Method::GET, "/api/v1/devices/carol-1"),
        (Method::DELETE, "/api/v1/devices/carol-1"),
        (Method::GET, "/api/v1/devices/carol-1/telemetry/latest"),
        (Method::GET, "/api/v1/devices/carol-1/commands"),
        (Method::GET, "/api/v1/devices/carol-1/status-history"),
        (Method::POST, "/api/v1/devices/carol-1/secret"),
    ] {
        let resp = app.request(method.clone(), path, Some(&bob), None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "own {method} {path}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/devices/carol-1/commands",
            json!({ "name": "reboot" }),
        ),
        (
            Method::PATCH,
            "/api/v1/devices/carol-1",
            json!({ "name": "mine now" }),
        ),
    ] {
        let resp = app
            .request(method.clone(), path, Some(&bob), Some(body))
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "own {method} {path}");
    }

    // Only an administrator hands a device to another owner; the new
    // owner's reach follows at once.
    let bob_id = app.user_id(&bob).await;
    let transfer = async |token: &str, device: &str, owner: &str| {
        app.request(
            Method::PUT,
            &format!("/api/v1/devices/{device}/owner"),
            Some(token),
            Some(json!({ "owner_id": owner })),
        )
        .await
    };
    for token in [&alice, &bob] {
        let resp = transfer(token, "carol-1", &bob_id).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    let resp = transfer(&app.admin_token, "carol-1", &bob_id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["owner_id"],
        bob_id.as_str()
    );
    assert_eq!(app.get_json("/api/v1/devices", &bob).await["total"], 2);
    assert_eq!(app.get_json("/api/v1/devices", &carol).await["total"], 0);
    let resp = app
        .request(Method::GET, "/api/v1/devices/carol-1", Some(&carol), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Bad transfers.
    assert_error(
        transfer(&app.admin_token, "carol-1", "no-such-user").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_error(
        transfer(&app.admin_token, "nope", &bob_id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = app
        .request(
            Method::PUT,
            "/api/v1/devices/carol-1/owner",
            Some(&app.admin_token),
            Some(json!({ "owner": bob_id })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn every_endpoint_checks_its_permission() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "d1", "name": "Device" }))
        .await;
    let viewer = app.user("vera", &["viewer"]).await;
    let nobody = app.user("nobody", &[]).await;
    // d1 belongs to the admin; the viewer role reaches the whole fleet.
    let endpoints: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (Method::GET, "/api/v1/devices", None, "device:read"),
        (Method::GET, "/api/v1/devices/summary", None, "device:read"),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({ "name": "new" })),
            "device:write",
        ),
        (Method::GET, "/api/v1/devices/d1", None, "device:read"),
        (
            Method::PATCH,
            "/api/v1/devices/d1",
            Some(json!({ "name": "renamed" })),
            "device:write",
        ),
        (
            Method::PUT,
            "/api/v1/devices/d1/owner",
            Some(json!({ "owner_id": "someone" })),
            "device:write",
        ),
        (Method::DELETE, "/api/v1/devices/d1", None, "device:write"),
        (
            Method::POST,
            "/api/v1/devices/d1/secret",
            None,
            "device:write",
        ),
        (
            Method::GET,
            "/api/v1/devices/d1/status-history",
            None,
            "device:read",
        ),
        (
            Method::GET,
            "/api/v1/devices/d1/telemetry?metric=t",
            None,
            "device:read",
        ),
        (
            Method::GET,
            "/api/v1/devices/d1/telemetry/latest",
            None,
            "device:read",
        ),
        (
            Method::GET,
            "/api/v1/devices/d1/commands",
            None,
            "device:read",
        ),
        (
            Method::POST,
            "/api/v1/devices/d1/commands",
            Some(json!({ "name": "reboot" })),
            "device:command",
        ),
    ];
    for (method, path, body, permission) in &endpoints {
        let resp = app.request(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        let resp = app
            .request(method.clone(), path, Some("not-a-token"), body.clone())
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a forged token"
        );
        let resp = app
            .request(method.clone(), path, Some(&nobody), body.clone())
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} without permissions"
        );
        let viewer_status = app
            .request(method.clone(), path, Some(&viewer), body.clone())
            .await
            .status();
        if *permission == "device:read" {
            assert_eq!(viewer_status, StatusCode::OK, "viewer {method} {path}");
        } else {
            assert_eq!(
                viewer_status,
                StatusCode::FORBIDDEN,
                "viewer {method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn credentials_authenticate_over_grpc_and_rotate() {
    let app = TestApp::spawn().await;
    let created = app
        .device(
            &app.admin_token,
            json!({ "id": "meter-7", "name": "Meter" }),
        )
        .await;
    let secret = created["credentials"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let mut grpc = DeviceServiceClient::new(app.grpc_channel());
    let auth = |device_id: &str, secret: &str| AuthenticateDeviceRequest {
        device_id: device_id.into(),
        secret: secret.into(),
    };
    assert!(
        grpc.authenticate_device(auth("meter-7", &secret))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );
    assert!(
        !grpc
            .authenticate_device(auth("meter-7", "wrong"))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );
    assert!(
        !grpc
            .authenticate_device(auth("nobody", &secret))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );

    let resp = app
        .request(
            Method::POST,
            "/api/v1/devices/meter-7/secret",
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rotated: Value = resp.json().await.unwrap();
    let new_secret = rotated["credentials"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_secret, secret);
    assert!(
        !grpc
            .authenticate_device(auth("meter-7", &secret))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );
    assert!(
        grpc.authenticate_device(auth("meter-7", &new_secret))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );
    let synced = app.gateway.0.lock().unwrap().credentials.clone();
    assert_eq!(
        synced,
        vec![
            ("meter-7".to_string(), secret),
            ("meter-7".to_string(), new_secret)
        ]
    );

    let device = grpc
        .get_device(GetDeviceRequest {
            device_id: "meter-7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(device.name, "Meter");
    let err = grpc
        .get_device(GetDeviceRequest {
            device_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn grpc_lists_devices_by_page_and_filter() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!([])
        };
        app.device(
            &app.admin_token,
            json!({ "id": format!("d{i}"), "name": "n", "device_type": "sensor", "tags": tags }),
        )
        .await;
    }
    let mut grpc = DeviceServiceClient::new(app.grpc_channel());
    let first = grpc
        .list_devices(ListDevicesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first
            .devices
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["d0", "d1"]
    );
    let mut ids: Vec<String> = first.devices.iter().map(|d| d.id.clone()).collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = grpc
            .list_devices(ListDevicesRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.devices.iter().map(|d| d.id.clone()));
        token = page.next_page_token;
    }
    assert_eq!(ids, ["d0", "d1", "d2", "d3", "d4"]);
    let even = grpc
        .list_devices(ListDevicesRequest {
            tag: "even".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.devices.len(), 3);
    let picked = grpc
        .list_devices(ListDevicesRequest {
            device_ids: vec!["d4".into(), "d1".into(), "zz".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        picked
            .devices
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d4"]
    );
    let err = grpc
        .list_devices(ListDevicesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn status_follows_events_in_time_order() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "s1", "name": "Sensor" }))
        .await;
    let change = |online: bool, at: i64, reason: StatusReason| StatusChanged {
        device_id: "s1".into(),
        online,
        at,
        reason,
        broker: None,
    };
    let t0 = wf_common::now_millis();
    app.publish(&[change(true, t0, StatusReason::Connected)])
        .await;
    let device = eventually("online", || async {
        let d = app.get_json("/api/v1/devices/s1", &admin).await;
        (d["online"] == true).then_some(d)
    })
    .await;
    assert!(device["last_seen_at"].is_string());
    assert_eq!(
        app.get_json("/api/v1/devices?status=online", &admin).await["total"],
        1
    );

    // An older event arriving late does not undo the newer one; a repeat is harmless.
    app.publish(&[
        change(false, t0 - 1000, StatusReason::LastWill),
        change(true, t0, StatusReason::Connected),
        change(false, t0 + 500, StatusReason::Disconnected),
    ])
    .await;
    eventually("offline", || async {
        (app.get_json("/api/v1/devices/s1", &admin).await["online"] == false).then_some(())
    })
    .await;
    let history = app
        .get_json("/api/v1/devices/s1/status-history", &admin)
        .await;
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["disconnected", "connected"]);
}

/// A gateway instance that dies without closing its sessions (kill -9, a
/// lost machine) stops renewing its broker's lease; its devices go offline
/// once the lease lapses, and no one else's do.
#[tokio::test]
async fn devices_of_a_gateway_instance_that_stops_renewing_its_lease_go_offline() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    for id in ["on-lost", "on-alive", "on-mosquitto", "moved"] {
        app.device(&admin, json!({ "id": id, "name": id })).await;
    }
    let mut announced = app
        .bus
        .subscribe(StatusChanged::TOPIC, "observer", "t")
        .await
        .unwrap();
    let beat = |broker: &str, lease_ms: i64| BrokerHeartbeat {
        broker: broker.into(),
        at: wf_common::now_millis(),
        lease_ms,
    };
    let online = |device: &str, broker: Option<&str>| StatusChanged {
        device_id: device.into(),
        online: true,
        at: wf_common::now_millis(),
        reason: StatusReason::Connected,
        broker: broker.map(str::to_string),
    };
    app.publish(&[beat("gw-lost", 1500), beat("gw-alive", 120_000)])
        .await;
    app.publish(&[
        online("on-lost", Some("gw-lost")),
        online("moved", Some("gw-lost")),
        online("on-alive", Some("gw-alive")),
        online("on-mosquitto", None),
    ])
    .await;
    eventually("all four online", || async {
        let page = app.get_json("/api/v1/devices?status=online", &admin).await;
        (page["total"] == 4).then_some(())
    })
    .await;
    // One device moves to the live instance before the lost one lapses.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.publish(&[online("moved", Some("gw-alive"))]).await;

    let lapsed = std::time::Instant::now();
    eventually("the lost instance's device offline", || async {
        (app.get_json("/api/v1/devices/on-lost", &admin).await["online"] == false).then_some(())
    })
    .await;
    assert!(
        lapsed.elapsed() < Duration::from_secs(4),
        "took {:?} for a 1.5 s lease",
        lapsed.elapsed()
    );
    let history = app
        .get_json("/api/v1/devices/on-lost/status-history", &admin)
        .await;
    assert_eq!(history[0]["reason"], "gateway_lost");
    assert_eq!(history[0]["online"], false);
    // The change is announced like any other, once.
    let mut lost = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for event in announced
            .next(16, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let change: StatusChanged = event.decode().unwrap();
            if change.reason == StatusReason::GatewayLost {
                lost.push(change.device_id);
            }
        }
    }
    assert_eq!(lost, ["on-lost"]);
    // Devices of the live instance, of the external broker, and the one
    // that moved stay online.
    for id in ["on-alive", "on-mosquitto", "moved"] {
        assert_eq!(
            app.get_json(&format!("/api/v1/devices/{id}"), &admin).await["online"],
            true,
            "{id}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/devices", vec!["get", "post"]),
        ("/api/v1/devices/summary", vec!["get"]),
        ("/api/v1/devices/activity", vec!["get"]),
        ("/api/v1/devices/{id}", vec!["get", "patch", "delete"]),
        ("/api/v1/devices/{id}/secret", vec!["post"]),
        ("/api/v1/devices/{id}/owner", vec!["put"]),
        ("/api/v1/devices/{id}/status-history", vec!["get"]),
        ("/api/v1/devices/{id}/telemetry", vec!["get"]),
        ("/api/v1/devices/{id}/telemetry/latest", vec!["get"]),
        ("/api/v1/devices/{id}/commands", vec!["get", "post"]),
        ("/api/v1/devices/{id}/commands/{command_id}", vec!["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
    assert!(doc["components"]["schemas"]["DeviceDto"].is_object());
}

/// What the operations dashboard reads from device-service: the fleet's size
/// and online count, how far event handling lags behind publishing, and
/// command outcomes (listed from the start, so alerts see the first one).
#[tokio::test]
async fn metrics_report_the_fleet_and_the_event_lag() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "gauged-1", "name": "Gauged" }))
        .await;
    app.publish(&[StatusChanged {
        device_id: "gauged-1".into(),
        online: true,
        at: wf_common::now_millis(),
        reason: StatusReason::Connected,
        broker: None,
    }])
    .await;
    eventually("the gauges and the lag histogram on /metrics", || async {
        let page = app
            .request(Method::GET, "/metrics", None, None)
            .await
            .text()
            .await
            .unwrap();
        let lines: Vec<&str> = page.lines().collect();
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        (has("wf_devices_registered ")
            && has("wf_devices_online ")
            && has("wf_commands_completed_total{status=\"timed_out\"}")
            && has("wf_event_lag_seconds_bucket{")
            && page.contains("topic=\"device.status.changed\""))
        .then_some(())
    })
    .await;
}

/// A device that finishes an update reports the version it restarted into;
/// the registry shows it. Progress reports, failures and unusable versions
/// change nothing.
#[tokio::test]
async fn a_finished_update_records_the_devices_firmware_version() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({ "id": "ota-1", "name": "OTA one" }))
        .await;
    let report = |state: OtaState, version: Option<&str>| OtaProgress {
        device_id: "ota-1".into(),
        task_id: "t1".into(),
        state,
        progress: None,
        error: None,
        version: version.map(Into::into),
        at: wf_common::now_millis(),
    };
    let version = || async {
        let resp = app
            .request(Method::GET, "/api/v1/devices/ota-1", Some(&admin), None)
            .await;
        resp.json::<Value>().await.unwrap()["firmware_version"].clone()
    };
    app.publish(&[report(OtaState::Succeeded, Some("2.1.0"))])
        .await;
    eventually("the new version in the registry", || async {
        (version().await == "2.1.0").then_some(())
    })
    .await;
    // Then reports that must change nothing, an unknown device among them,
    // and last a finished update of a second device: once that one shows,
    // every report before it was handled.
    app.device(&admin, json!({ "id": "ota-2", "name": "OTA two" }))
        .await;
    let mut stray = report(OtaState::Succeeded, Some("3.0.0"));
    stray.device_id = "no-such-device".into();
    app.publish(&[
        report(OtaState::Downloading, Some("9.9.9")),
        report(OtaState::Failed, Some("9.9.8")),
        report(OtaState::Succeeded, Some("bad\"version")),
        report(OtaState::Succeeded, Some(&"1".repeat(65))),
        report(OtaState::Succeeded, None),
        stray,
    ])
    .await;
    // As a gateway of an earlier release published it, the device's own
    // word for the state passed on.
    let other = json!({
        "device_id": "ota-2", "task_id": "t2", "state": "success", "version": "5.0.0",
        "at": wf_common::now_millis(),
    });
    app.bus
        .publish(OtaProgress::TOPIC, vec![other.to_string().into_bytes()])
        .await
        .unwrap();
    eventually("the second device's version", || async {
        let resp = app
            .request(Method::GET, "/api/v1/devices/ota-2", Some(&admin), None)
            .await;
        (resp.json::<Value>().await.unwrap()["firmware_version"] == "5.0.0").then_some(())
    })
    .await;
    assert_eq!(version().await, "2.1.0");
}

/// With devices kept in memory (as in the all-in-one platform), a read
/// that follows a write sees it, whichever path wrote.
#[tokio::test]
async fn reads_through_the_device_cache_follow_every_write() {
    let app = TestApp::builder()
        .configure(|c| c.device_cache_capacity = 16)
        .spawn()
        .await;
    let admin = app.admin_token.clone();
    app.device(
        &admin,
        json!({ "id": "c-1", "name": "Cached", "tags": ["a"] }),
    )
    .await;
    let read = || app.get_json("/api/v1/devices/c-1", &admin);
    // Read twice: the second answer comes from memory.
    assert_eq!(read().await["name"], "Cached");
    assert_eq!(read().await["tags"], json!(["a"]));

    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/c-1",
            Some(&admin),
            Some(json!({ "name": "Renamed", "tags": ["b"] })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = read().await;
    assert_eq!(got["name"], "Renamed");
    assert_eq!(got["tags"], json!(["b"]));

    // Writes from events: status, telemetry (last seen), firmware version.
    let t0 = wf_common::now_millis();
    app.publish(&[StatusChanged {
        device_id: "c-1".into(),
        online: true,
        at: t0,
        reason: StatusReason::Connected,
        broker: None,
    }])
    .await;
    let online = eventually("online", || async {
        let d = read().await;
        (d["online"] == true).then_some(d)
    })
    .await;
    app.publish(&[crate::telemetry::batch(vec![crate::telemetry::message(
        "c-1",
        t0 + 60_000,
        &[("temp", wf_common::contract::MetricValue::Number(1.0))],
    )])])
    .await;
    eventually("last seen moved on", || async {
        (read().await["last_seen_at"] != online["last_seen_at"]).then_some(())
    })
    .await;
    app.publish(&[OtaProgress {
        device_id: "c-1".into(),
        task_id: "t-1".into(),
        state: OtaState::Succeeded,
        progress: None,
        error: None,
        version: Some("4.2.0".into()),
        at: t0,
    }])
    .await;
    eventually("the new firmware version", || async {
        (read().await["firmware_version"] == "4.2.0").then_some(())
    })
    .await;

    let resp = app
        .request(Method::DELETE, "/api/v1/devices/c-1", Some(&admin), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.request(Method::GET, "/api/v1/devices/c-1", Some(&admin), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn names_tags_and_metadata_keys_refuse_control_and_bidi_characters() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    for (body, field) in [
        (json!({ "id": "cc-1", "name": "pump\u{0}room" }), "name"),
        (
            json!({ "id": "cc-1", "name": "invoice\u{202E}fdp.exe" }),
            "name",
        ),
        (json!({ "id": "cc-1", "name": "a\u{2067}b" }), "name"),
        (
            json!({ "id": "cc-1", "name": "ok", "metadata": { "k\u{0}ey": 1 } }),
            "metadata key",
        ),
        (
            json!({ "id": "cc-1", "name": "ok", "metadata": { "\u{202A}x": 1 } }),
            "metadata key",
        ),
        (
            json!({ "id": "cc-1", "name": "ok", "tags": ["a\u{0}b"] }),
            "tag",
        ),
        (
            json!({ "id": "cc-1", "name": "ok", "tags": ["\u{2066}x"] }),
            "tag",
        ),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/api/v1/devices",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        let err = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    // Nothing was created; readable names in any script still are.
    app.device(
        &admin,
        json!({ "id": "cc-1", "name": "Capteur « cuisine » — 2ᵉ" }),
    )
    .await;
    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/cc-1",
            Some(&admin),
            Some(json!({ "name": "x\u{1b}[2J" })),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let device = app.get_json("/api/v1/devices/cc-1", &admin).await;
    assert_eq!(device["name"], "Capteur « cuisine » — 2ᵉ");
}

#[tokio::test]
async fn overlong_list_filters_are_refused_with_422() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    // 60,000 characters do not even fit the request-head limit (16 KiB).
    let resp = app
        .request(
            Method::GET,
            &format!("/api/v1/devices?name={}", "a".repeat(60_000)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let long = "a".repeat(1_000);
    for filter in ["name", "type", "tag", "sort"] {
        let resp = app
            .request(
                Method::GET,
                &format!("/api/v1/devices?{filter}={long}"),
                Some(&admin),
                None,
            )
            .await;
        let err = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 256"),
            "{filter}: {err}"
        );
    }
    let resp = app
        .request(
            Method::GET,
            &format!("/api/v1/devices?name={}", "a".repeat(256)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
