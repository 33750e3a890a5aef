//! Device state: the shadow over REST, from device events and to the
//! gateway; server attributes; fleet shadow jobs; gRPC.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wf_common::contract::{ShadowReported, ShadowRequested, ShadowUpdated, StatusChanged};
use wf_common::events::{EventBus, run_consumer};
use wf_proto::device::device_service_client::DeviceServiceClient;
use wf_proto::device::{GetShadowRequest, UpdateDesiredRequest};

use crate::helpers::{TestApp, assert_error, eventually};

async fn app() -> TestApp {
    app_with(|_| {}).await
}

async fn app_with(adjust: impl FnOnce(&mut device_service::Config)) -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.command_redelivery_delay_ms = 20;
            adjust(c);
        })
        .spawn()
        .await
}

async fn patch(
    app: &TestApp,
    token: &str,
    id: &str,
    body: Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .patch(format!("{}/api/v1/devices/{id}/shadow", app.base))
        .bearer_auth(token)
        .json(&body);
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    req.send().await.unwrap()
}

fn published(app: &TestApp, topic: &str) -> Vec<Value> {
    app.gateway
        .0
        .lock()
        .unwrap()
        .published
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p.clone())
        .collect()
}

async fn online(app: &TestApp, id: &str, online: bool) {
    app.publish(&[StatusChanged::plain(id, online, wf_common::now_millis())])
        .await;
    eventually("the status applied", || async {
        let d = app
            .get_json(&format!("/api/v1/devices/{id}"), &app.admin_token)
            .await;
        (d["online"] == online).then_some(())
    })
    .await;
}

async fn report(app: &TestApp, id: &str, state: Value) {
    app.publish(&[ShadowReported {
        device_id: id.into(),
        state,
        at: wf_common::now_millis(),
    }])
    .await;
}

async fn shadow(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/api/v1/devices/{id}/shadow"), &app.admin_token)
        .await
}

#[tokio::test]
async fn desired_state_is_versioned_merged_and_guarded_by_if_match() {
    let app = app_with(|c| c.shadow_max_bytes = 2048).await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({"id": "th-1", "name": "thermostat"}))
        .await;

    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/th-1/shadow",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"0\"");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            doc["version"].clone(),
            doc["reported"].clone(),
            doc["delta"].clone(),
            doc["updated_at"].clone()
        ),
        (json!(0), json!({}), json!({}), Value::Null)
    );

    let resp = patch(
        &app,
        &admin,
        "th-1",
        json!({"desired": {"sampling_ms": 500, "led": {"color": "red"}}}),
        Some("\"0\""),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(
        doc["delta"],
        json!({"sampling_ms": 500, "led": {"color": "red"}})
    );
    assert!(doc["metadata"]["desired"]["led"]["color"].is_i64());
    // Offline: nothing sent to the device yet.
    assert!(published(&app, "devices/th-1/shadow/desired").is_empty());

    // A stale version is refused and changes nothing.
    let resp = patch(
        &app,
        &admin,
        "th-1",
        json!({"desired": {"sampling_ms": 1000}}),
        Some("\"0\""),
    )
    .await;
    let body = assert_error(resp, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version 1"),
        "{body}"
    );
    for bad in ["seven", "\"x\""] {
        let resp = patch(
            &app,
            &admin,
            "th-1",
            json!({"desired": {"a": 1}}),
            Some(bad),
        )
        .await;
        assert_error(resp, StatusCode::BAD_REQUEST, "bad_request").await;
    }
    assert_eq!(shadow(&app, "th-1").await["desired"]["sampling_ms"], 500);

    // Deep merge, null deletes; W/ and * are understood.
    let resp = patch(
        &app,
        &admin,
        "th-1",
        json!({"desired": {"led": {"color": null, "level": 2}}}),
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = patch(
        &app,
        &admin,
        "th-1",
        json!({"desired": {"mode": "eco"}}),
        Some("*"),
    )
    .await;
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(
        doc["desired"],
        json!({"sampling_ms": 500, "led": {"level": 2}, "mode": "eco"})
    );
    assert_eq!(doc["version"], 3);

    // Limits and shapes: refused whole, nothing applied.
    let mut deep = json!(1);
    for _ in 0..9 {
        deep = json!({ "k": deep });
    }
    for body in [
        json!({"desired": [1, 2]}),
        json!({"desired": "x"}),
        json!({"desired": deep}),
        json!({"desired": {"blob": "x".repeat(3000)}}),
    ] {
        let resp = patch(&app, &admin, "th-1", body, None).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let resp = patch(&app, &admin, "th-1", json!({"reported": {"a": 1}}), None).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields"
    );
    let resp = app
        .client
        .patch(format!("{}/api/v1/devices/th-1/shadow", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(shadow(&app, "th-1").await["version"], 3);

    let resp = patch(&app, &admin, "nope", json!({"desired": {"a": 1}}), None).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/nope/shadow",
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn devices_report_ask_and_converge_and_offline_devices_catch_up_on_connect() {
    let app = app().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({"id": "s-1", "name": "sensor"}))
        .await;
    let updates: Arc<Mutex<Vec<ShadowUpdated>>> = Arc::default();
    {
        let updates = updates.clone();
        let bus: Arc<dyn EventBus> = app.bus.clone();
        tokio::spawn(run_consumer(
            bus,
            "test".into(),
            "test-1".into(),
            64,
            std::future::pending(),
            move |batch: wf_common::events::Batch<ShadowUpdated>| {
                let updates = updates.clone();
                async move {
                    updates.lock().unwrap().extend(batch.events());
                    Ok::<(), anyhow::Error>(())
                }
            },
        ));
    }

    // Offline: desired waits for the device.
    patch(
        &app,
        &admin,
        "s-1",
        json!({"desired": {"sampling_ms": 250}}),
        None,
    )
    .await;
    report(
        &app,
        "s-1",
        json!({"sampling_ms": 1000, "fw_version": "1.0.0"}),
    )
    .await;
    let doc = eventually("the report merged", || async {
        let doc = shadow(&app, "s-1").await;
        (doc["reported"]["fw_version"] == "1.0.0").then_some(doc)
    })
    .await;
    assert_eq!(doc["delta"], json!({"sampling_ms": 250}));
    assert_eq!(doc["version"], 2);
    assert!(published(&app, "devices/s-1/shadow/desired").is_empty());

    // On connect, the delta goes out.
    online(&app, "s-1", true).await;
    let sent = eventually("the delta sent on connect", || async {
        published(&app, "devices/s-1/shadow/desired").pop()
    })
    .await;
    assert_eq!(sent, json!({"version": 2, "state": {"sampling_ms": 250}}));

    // Connected: a change goes out at once.
    patch(
        &app,
        &admin,
        "s-1",
        json!({"desired": {"mode": "eco"}}),
        None,
    )
    .await;
    let sent = published(&app, "devices/s-1/shadow/desired");
    assert_eq!(
        sent.last().unwrap(),
        &json!({"version": 3, "state": {"sampling_ms": 250, "mode": "eco"}})
    );

    // The device applies and reports back: the delta empties.
    report(&app, "s-1", json!({"sampling_ms": 250, "mode": "eco"})).await;
    eventually("converged", || async {
        let doc = shadow(&app, "s-1").await;
        (doc["delta"] == json!({})).then_some(())
    })
    .await;

    // shadow/get: the whole document on devices/{id}/shadow.
    app.publish(&[ShadowRequested {
        device_id: "s-1".into(),
        at: 1,
    }])
    .await;
    let doc = eventually("the document sent", || async {
        published(&app, "devices/s-1/shadow").pop()
    })
    .await;
    assert_eq!(doc["version"], 4);
    assert_eq!(doc["reported"]["mode"], "eco");

    // Refused reports: the device hears why; nothing changes.
    report(&app, "s-1", json!({"blob": "x".repeat(17 * 1024)})).await;
    let mut deep = json!(1);
    for _ in 0..9 {
        deep = json!({ "k": deep });
    }
    report(&app, "s-1", deep).await;
    let rejected = eventually("both refusals sent", || async {
        let r = published(&app, "devices/s-1/shadow/rejected");
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(rejected[0]["code"], "too_large");
    assert_eq!(rejected[1]["code"], "too_deep");
    assert!(rejected[0]["message"].as_str().unwrap().contains("16384"));
    assert_eq!(shadow(&app, "s-1").await["version"], 4);
    // A report from a device that does not exist stores nothing.
    report(&app, "ghost", json!({"a": 1})).await;

    // History: newest first, who changed what.
    let history = app
        .get_json("/api/v1/devices/s-1/shadow/history?limit=10", &admin)
        .await;
    assert_eq!(history["total"], 4);
    let items = history["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| (
                i["version"].as_i64().unwrap(),
                i["section"].as_str().unwrap(),
                i["source"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            (4, "reported", "device"),
            (3, "desired", "user"),
            (2, "reported", "device"),
            (1, "desired", "user")
        ]
    );
    let admin_id = app.user_id(&admin).await;
    assert_eq!(items[1]["actor"], admin_id.as_str());
    assert_eq!(items[1]["changes"], json!({"mode": "eco"}));
    assert!(items[0]["actor"].is_null());

    // Every change is on the bus.
    let seen = eventually("device.shadow.updated for each change", || async {
        let u = updates.lock().unwrap().clone();
        (u.len() >= 4).then_some(u)
    })
    .await;
    assert_eq!(
        seen.iter().map(|u| u.version).collect::<Vec<_>>()[..4],
        [1, 2, 3, 4]
    );
    assert_eq!(seen[3].delta, json!({}));
    let ghost = app
        .request(
            Method::GET,
            "/api/v1/devices/ghost/shadow",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(ghost.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readers_read_writers_write_and_others_do_not_see_the_device() {
    let app = app().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({"id": "p-1", "name": "pump"}))
        .await;
    let viewer = app.user("vic", &["viewer"]).await;
    app.role("own-ops", "own", &["device:read", "device:write"])
        .await;
    let stranger = app.user("sam", &["own-ops"]).await;

    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices/p-1/shadow",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = patch(&app, &viewer, "p-1", json!({"desired": {"a": 1}}), None).await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/p-1/attributes",
            Some(&viewer),
            Some(json!({"a": 1})),
        )
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    for path in [
        "/api/v1/devices/p-1/shadow",
        "/api/v1/devices/p-1/attributes",
        "/api/v1/devices/p-1/shadow/history",
    ] {
        let resp = app.request(Method::GET, path, Some(&stranger), None).await;
        assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = app.request(Method::GET, path, None, None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = patch(&app, &stranger, "p-1", json!({"desired": {"a": 1}}), None).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(shadow(&app, "p-1").await["version"], 0);
}

#[tokio::test]
async fn server_attributes_are_kept_apart_and_filter_the_device_list() {
    let app = app_with(|c| c.max_body_bytes = 64 * 1024).await;
    let admin = app.admin_token.clone();
    for (id, site) in [("a-1", "lyon"), ("a-2", "lyon"), ("a-3", "paris")] {
        app.device(&admin, json!({"id": id, "name": id})).await;
        let resp = app
            .request(
                Method::PATCH,
                &format!("/api/v1/devices/{id}/attributes"),
                Some(&admin),
                Some(json!({"site": site, "floor": 2, "installed": "2026-11-01"})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/a-2/attributes",
            Some(&admin),
            Some(json!({"installed": null, "floor": 3})),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"device_id": "a-2", "attributes": {"site": "lyon", "floor": 3}})
    );

    let ids = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(app
            .get_json("/api/v1/devices?attr.site=lyon&sort=id", &admin)
            .await),
        ["a-1", "a-2"]
    );
    assert_eq!(
        ids(app
            .get_json("/api/v1/devices?attr.site=lyon&attr.floor=2", &admin)
            .await),
        ["a-1"]
    );
    assert_eq!(
        ids(app
            .get_json("/api/v1/devices?attr.site=berlin", &admin)
            .await),
        Vec::<String>::new()
    );
    // Attributes are never part of the shadow a device sees.
    assert_eq!(shadow(&app, "a-1").await["desired"], json!({}));

    for (body, what) in [
        (json!(["site"]), "not an object"),
        (json!({"bad name": 1}), "a bad name"),
        (json!({"big": "x".repeat(5000)}), "a long value"),
    ] {
        let resp = app
            .request(
                Method::PATCH,
                "/api/v1/devices/a-1/attributes",
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
    }
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let resp = app
        .request(
            Method::PATCH,
            "/api/v1/devices/a-1/attributes",
            Some(&admin),
            Some(Value::Object(many)),
        )
        .await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .request(
            Method::GET,
            "/api/v1/devices?attr.bad%20name=x",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let attrs = app.get_json("/api/v1/devices/a-1/attributes", &admin).await;
    assert_eq!(attrs["attributes"]["site"], "lyon");
    assert_eq!(attrs["attributes"].as_object().unwrap().len(), 3);
}

#[tokio::test]
async fn a_fleet_job_reaches_every_targeted_device_and_completes_when_all_converge() {
    let app = app().await;
    let admin = app.admin_token.clone();
    for id in ["f-1", "f-2", "f-3", "other"] {
        let tags = if id == "other" {
            json!([])
        } else {
            json!(["site-lyon"])
        };
        app.device(&admin, json!({"id": id, "name": id, "tags": tags}))
            .await;
    }
    online(&app, "f-1", true).await;
    online(&app, "f-2", true).await;
    // f-2 already runs at the asked rate.
    report(&app, "f-2", json!({"sampling_ms": 500})).await;
    eventually("f-2's report", || async {
        (shadow(&app, "f-2").await["version"] == 1).then_some(())
    })
    .await;

    let create = |body: Value| {
        let app = &app;
        let admin = admin.clone();
        async move {
            app.request(
                Method::POST,
                "/api/v1/shadow-jobs",
                Some(&admin),
                Some(body),
            )
            .await
        }
    };
    for (body, what) in [
        (json!({"desired": {"a": 1}, "target": {}}), "no filter"),
        (
            json!({"desired": {}, "target": {"tag": "site-lyon"}}),
            "nothing to set",
        ),
        (
            json!({"desired": [1], "target": {"tag": "site-lyon"}}),
            "not an object",
        ),
        (
            json!({"desired": {"a": 1}, "target": {"tag": "nowhere"}}),
            "no device",
        ),
        (
            json!({"desired": {"a": 1}, "target": {"tag": "site-lyon"}, "rate_per_second": 0}),
            "a zero rate",
        ),
        (
            json!({"desired": {"a": 1}, "target": {"colour": "red"}}),
            "an unknown filter",
        ),
    ] {
        let resp = create(body).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
    }

    let resp = create(json!({"desired": {"sampling_ms": 500}, "target": {"tag": "site-lyon"}, "rate_per_second": 100})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["progress"]["targeted"], 3);
    assert_eq!(job["status"], "running");
    let path = format!("/api/v1/shadow-jobs/{id}");

    // f-1 (connected) gets it, f-2 already has it, f-3 is away.
    let job = eventually("the job applied to every device", || async {
        let job = app.get_json(&path, &admin).await;
        (job["progress"]["delivered"] == 2 && job["progress"]["pending"] == 1).then_some(job)
    })
    .await;
    assert_eq!(job["progress"]["converged"], 1);
    assert_eq!(
        published(&app, "devices/f-1/shadow/desired")
            .last()
            .unwrap()["state"],
        json!({"sampling_ms": 500})
    );
    assert_eq!(shadow(&app, "other").await["version"], 0);
    let history = app
        .get_json("/api/v1/devices/f-3/shadow/history", &admin)
        .await;
    assert_eq!(history["items"][0]["source"], "job");
    assert_eq!(history["items"][0]["actor"], id.as_str());

    // Which device is where, by id; a state narrows the list.
    let devices = |query: &'static str| {
        let (app, admin, path) = (&app, admin.clone(), path.clone());
        async move {
            app.get_json(&format!("{path}/devices{query}"), &admin)
                .await
        }
    };
    let all = devices("").await;
    assert_eq!(all["total"], 3, "{all}");
    let states: Vec<(&str, &str)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("f-1", "delivered"),
            ("f-2", "converged"),
            ("f-3", "pending")
        ]
    );
    assert!(all["items"][0]["updated_at"].is_string());
    let pending = devices("?state=pending").await;
    assert_eq!(pending["total"], 1);
    assert_eq!(pending["items"][0]["device_id"], "f-3");
    let page = devices("?limit=1&offset=1").await;
    assert_eq!(
        (page["total"].clone(), page["items"][0]["device_id"].clone()),
        (json!(3), json!("f-2"))
    );
    for query in ["?state=queued", "?state=lost", "?limit=0"] {
        let resp = app
            .request(
                Method::GET,
                &format!("{path}/devices{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let resp = app
        .request(
            Method::GET,
            "/api/v1/shadow-jobs/unknown/devices",
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    report(&app, "f-1", json!({"sampling_ms": 500.0})).await;
    online(&app, "f-3", true).await;
    eventually("f-3 reached on connect", || async {
        let job = app.get_json(&path, &admin).await;
        (job["progress"]["delivered"] == 3).then_some(())
    })
    .await;
    report(&app, "f-3", json!({"sampling_ms": 500})).await;
    let job = eventually("the job completed", || async {
        let job = app.get_json(&path, &admin).await;
        (job["status"] == "completed").then_some(job)
    })
    .await;
    assert_eq!(
        job["progress"],
        json!({"targeted": 3, "delivered": 3, "converged": 3, "pending": 0, "failed": 0})
    );
    assert!(job["finished_at"].is_string());
    assert_eq!(devices("?state=converged").await["total"], 3);
    let resp = app
        .request(Method::POST, &format!("{path}/cancel"), Some(&admin), None)
        .await;
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;

    // A slow job can be cancelled; devices it did not reach keep their state.
    let resp = create(json!({"desired": {"mode": "night"}, "target": {"device_ids": ["f-1", "f-2", "f-3", "other"]}, "rate_per_second": 1})).await;
    let slow: Value = resp.json().await.unwrap();
    let slow_path = format!("/api/v1/shadow-jobs/{}", slow["id"].as_str().unwrap());
    let resp = app
        .request(
            Method::POST,
            &format!("{slow_path}/cancel"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cancelled: Value = resp.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let after = app.get_json(&slow_path, &admin).await;
    assert!(
        after["progress"]["pending"].as_i64().unwrap() >= 3,
        "{after}"
    );

    let list = app.get_json("/api/v1/shadow-jobs", &admin).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["id"], slow["id"]);
    let resp = app
        .request(
            Method::GET,
            "/api/v1/shadow-jobs/unknown",
            Some(&admin),
            None,
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let viewer = app.user("val", &["viewer"]).await;
    let resp = app
        .request(
            Method::POST,
            "/api/v1/shadow-jobs",
            Some(&viewer),
            Some(json!({"desired": {"a": 1}, "target": {"tag": "site-lyon"}})),
        )
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        app.get_json("/api/v1/shadow-jobs", &viewer).await["total"],
        2
    );
}

#[tokio::test]
async fn other_services_read_and_set_state_over_grpc() {
    let app = app().await;
    let admin = app.admin_token.clone();
    app.device(&admin, json!({"id": "g-1", "name": "gauge"}))
        .await;
    let mut client = DeviceServiceClient::new(app.grpc_channel());
    let updated = client
        .update_desired(UpdateDesiredRequest {
            device_id: "g-1".into(),
            desired_json: r#"{"setpoint": 21.5}"#.into(),
            expected_version: 0,
            actor: "rules-engine".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&updated.delta_json).unwrap(),
        json!({"setpoint": 21.5})
    );
    let got = client
        .get_shadow(GetShadowRequest {
            device_id: "g-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.desired_json, r#"{"setpoint":21.5}"#);
    assert!(got.updated_at > 0);

    let stale = client
        .update_desired(UpdateDesiredRequest {
            device_id: "g-1".into(),
            desired_json: r#"{"setpoint": 19}"#.into(),
            expected_version: 7,
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    for bad in ["[1]", "{oops"] {
        let refused = client
            .update_desired(UpdateDesiredRequest {
                device_id: "g-1".into(),
                desired_json: bad.into(),
                expected_version: 0,
                actor: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad}");
    }
    let missing = client
        .get_shadow(GetShadowRequest {
            device_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let history = app
        .get_json("/api/v1/devices/g-1/shadow/history", &admin)
        .await;
    assert_eq!(history["items"][0]["actor"], "rules-engine");
}
