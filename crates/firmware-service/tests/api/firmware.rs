//! The firmware store: upload checks, listing, downloads with ranges and
//! their three kinds of authorization, deletion.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wf_proto::firmware::firmware_service_client::FirmwareServiceClient;
use wf_proto::firmware::{GetFirmwareRequest, ListFirmwareRequest};

use crate::helpers::{Behaviour, TestApp, assert_error, eventually_within, hex};

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn upload_list_read_and_download_with_ranges() {
    let app = TestApp::spawn().await;
    let data = image(100_000, 1);
    let fw = app.firmware("boiler", "v1.2.0", data.clone()).await;
    let id = fw["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("fw-"));
    assert_eq!(fw["version"], "1.2.0");
    assert_eq!(fw["size"], 100_000);
    assert_eq!(fw["sha256"], hex(&Sha256::digest(&data)));
    assert_eq!(fw["signed"], false);
    assert_eq!(fw["release_notes"], "Fixes and improvements");
    // Stored under its generated id, nothing left behind.
    assert_eq!(app.stored_files(), vec![id.clone()]);
    assert_eq!(app.upload_leftovers(), 0);

    app.firmware("boiler", "1.3.0", image(10, 2)).await;
    app.firmware("pump", "1.0.0", image(10, 3)).await;
    let list = app.get_json("/api/v1/firmware?device_type=boiler").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["version"], "1.3.0");
    assert_eq!(app.get_json(&format!("/api/v1/firmware/{id}")).await, fw);
    assert_error(
        app.request(
            Method::GET,
            "/api/v1/firmware/fw-nope",
            Some(&app.admin_token),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let url = format!("{}/api/v1/firmware/{id}/download", app.base);
    let get = |range: Option<&str>| {
        let mut req = app.client.get(&url).bearer_auth(&app.admin_token);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        req.send()
    };
    let whole = get(None).await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[header::ACCEPT_RANGES], "bytes");
    let etag = whole.headers()[header::ETAG].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", fw["sha256"].as_str().unwrap()));
    assert_eq!(whole.bytes().await.unwrap().as_ref(), data.as_slice());

    let part = get(Some("bytes=0-99")).await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 0-99/100000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[..100]);
    // Resuming from the middle, and the tail.
    let part = get(Some("bytes=60000-")).await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()[header::CONTENT_RANGE],
        "bytes 60000-99999/100000"
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[60_000..]);
    let part = get(Some("bytes=-10")).await.unwrap();
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[99_990..]);
    let unsatisfiable = get(Some("bytes=100000-")).await.unwrap();
    assert_eq!(
        unsatisfiable.headers()[header::CONTENT_RANGE],
        "bytes */100000"
    );
    assert_error(
        unsatisfiable,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
    )
    .await;
    // If-Range with another image's tag: the whole image.
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&app.admin_token)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
    // No credentials at all.
    assert_error(
        app.client.get(&url).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // The gRPC view of the same store.
    let mut grpc = FirmwareServiceClient::new(app.grpc_channel());
    let got = grpc
        .get_firmware(GetFirmwareRequest {
            firmware_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.version.as_str(), got.size, got.signed),
        ("1.2.0", 100_000, false)
    );
    let page = grpc
        .list_firmware(ListFirmwareRequest {
            device_type: String::new(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.firmware.len(), 2);
    assert_eq!(page.next_page_token, "2");
    let missing = grpc
        .get_firmware(GetFirmwareRequest {
            firmware_id: "fw-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn devices_download_with_their_credentials_or_their_link() {
    let app = TestApp::spawn().await;
    let data = image(50_000, 9);
    let fw = app.firmware("meter", "2.0.0", data.clone()).await;
    let id = fw["id"].as_str().unwrap();
    let devices = app.devices("meter", 2, "meter", &[]).await;
    let others = app.devices("valve", 1, "valve", &[]).await;
    let url = format!("{}/api/v1/firmware/{id}/download", app.base);

    let (dev, secret) = &devices[0];
    let with_credentials = |user: &str, pass: &str| {
        app.client
            .get(&url)
            .basic_auth(user.to_string(), Some(pass.to_string()))
            .send()
    };
    // A device downloads only an image it has an open upgrade to.
    assert_error(
        with_credentials(dev, secret).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.fleet.script(|d, _| {
        if d.ends_with("0001") {
            Behaviour::Hang
        } else {
            Behaviour::Download
        }
    });
    let open = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": id, "device_id": dev }),
        )
        .await;
    let open_id = open["id"].as_str().unwrap().to_string();
    let notice = eventually_within(
        "the device to be notified",
        std::time::Duration::from_secs(20),
        || async { app.fleet.notifications_of(dev).first().cloned() },
    )
    .await;
    let open_link = notice["url"].as_str().unwrap().to_string();
    let resp = with_credentials(dev, secret).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    // A range with device credentials too.
    let resp = app
        .client
        .get(&url)
        .basic_auth(dev, Some(secret))
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[100..200]);
    assert_eq!(
        app.client.get(&open_link).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_error(
        with_credentials(dev, "wrong").await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        with_credentials("ghost", secret).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Good credentials for an image that does not exist, or that the
    // device has no upgrade to, reveal nothing either way.
    assert_error(
        app.client
            .get(format!("{}/api/v1/firmware/fw-missing/download", app.base))
            .basic_auth(dev, Some(secret))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let (valve, valve_secret) = &others[0];
    assert_error(
        with_credentials(valve, valve_secret).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // Canceling the task revokes its link and the device's access at once,
    // long before the link's expiry.
    let resp = app
        .request(
            Method::POST,
            &format!("/api/v1/upgrade-tasks/{open_id}/cancel"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_error(
        app.client.get(&open_link).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        with_credentials(dev, secret).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // An upgrade task: the device downloads through the link it was sent.
    let task = app
        .post_json(
            "/api/v1/upgrade-tasks",
            json!({ "firmware_id": id, "device_id": devices[1].0 }),
        )
        .await;
    let task_id = task["id"].as_str().unwrap().to_string();
    let done = eventually_within(
        "the upgrade task to succeed",
        std::time::Duration::from_secs(20),
        || async {
            let t = app
                .get_json(&format!("/api/v1/upgrade-tasks/{task_id}"))
                .await;
            (t["state"] == "succeeded").then_some(t)
        },
    )
    .await;
    assert_eq!(done["reported_version"], "2.0.0");
    assert_eq!(app.fleet.downloads.lock().unwrap()[&devices[1].0], 1);
    let notice = &app.fleet.notifications_of(&devices[1].0)[0];
    assert_eq!(notice["task_id"], task_id.as_str());
    assert_eq!(notice["size"], 50_000);
    assert_eq!(notice["sha256"], fw["sha256"]);
    assert_eq!(notice["signature"], Value::Null);
    let link = notice["url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{url}?token=")), "{link}");
    // The task is finished: its link no longer works.
    assert_error(
        app.client.get(&link).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // The link is bound to its image and cannot be altered.
    let other = app.firmware("meter", "2.0.1", image(10, 1)).await;
    let elsewhere = link.replace(id, other["id"].as_str().unwrap());
    assert_error(
        app.client.get(&elsewhere).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let token = link.split("token=").nth(1).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[0] = (parts[0].parse::<i64>().unwrap() + 3600).to_string();
    let extended = format!("{url}?token={}", parts.join("."));
    assert_error(
        app.client.get(&extended).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_digest_mismatch_keeps_nothing() {
    let app = TestApp::spawn().await;
    let data = image(30_000, 4);
    let wrong = hex(&Sha256::digest(b"something else"));
    let body = assert_error(
        app.upload_as(
            &app.admin_token,
            &[
                ("name", "Corrupt"),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
                ("sha256", &wrong),
            ],
            "image.bin",
            data,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "digest_mismatch",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was kept")
    );
    assert_eq!(app.get_json("/api/v1/firmware").await["total"], 0);
    assert!(app.stored_files().is_empty());
    assert_eq!(app.upload_leftovers(), 0);
    // The same version uploads fine with the right digest afterwards.
    app.firmware("boiler", "1.0.0", image(30_000, 4)).await;
}

#[tokio::test]
async fn oversized_uploads_are_refused_whether_announced_or_streamed() {
    let app = TestApp::builder()
        .configure(|c| c.max_firmware_bytes = 64 * 1024)
        .workers(0)
        .spawn()
        .await;
    let fields = [
        ("name", "Big"),
        ("device_type", "boiler"),
        ("version", "1.0.0"),
    ];
    // Content-Length says it all.
    assert_error(
        app.upload_as(&app.admin_token, &fields, "big.bin", image(400 * 1024, 1))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Streamed without a length: refused once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|i| Ok(image(8 * 1024, i))).collect();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k, v);
    }
    let form = form.part(
        "file",
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .file_name("big.bin"),
    );
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&app.admin_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(app.stored_files().is_empty());
    assert_eq!(app.upload_leftovers(), 0);
    // Exactly at the limit is fine.
    app.firmware("boiler", "1.0.0", image(64 * 1024, 7)).await;
}

#[tokio::test]
async fn signatures_are_verified_against_the_configured_keys() {
    let signer = SigningKey::from_bytes(&[42; 32]);
    let stranger = SigningKey::from_bytes(&[43; 32]);
    let pem = signer
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let app = TestApp::builder()
        .configure(move |c| c.signing_public_keys = vec![pem])
        .workers(0)
        .spawn()
        .await;
    let data = image(20_000, 5);
    let digest = Sha256::digest(&data);
    let good = STANDARD.encode(signer.sign(&digest).to_bytes());
    let by_stranger = STANDARD.encode(stranger.sign(&digest).to_bytes());
    let over_other = STANDARD.encode(signer.sign(&Sha256::digest(b"other")).to_bytes());
    for (sig, what) in [
        (by_stranger.as_str(), "unknown key"),
        (over_other.as_str(), "other digest"),
        ("bm90IGEgc2lnbmF0dXJl", "not a signature"),
    ] {
        let body = assert_error(
            app.upload_as(
                &app.admin_token,
                &[
                    ("name", "Signed"),
                    ("device_type", "boiler"),
                    ("version", "3.0.0"),
                    ("signature", sig),
                ],
                "image.bin",
                data.clone(),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_signature",
        )
        .await;
        assert!(body["error"]["message"].is_string(), "{what}");
    }
    assert!(app.stored_files().is_empty());
    let resp = app
        .upload_as(
            &app.admin_token,
            &[
                ("name", "Signed"),
                ("device_type", "boiler"),
                ("version", "3.0.0"),
                ("sha256", &hex(&digest)),
                ("signature", &good),
            ],
            "image.bin",
            data,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let fw: Value = resp.json().await.unwrap();
    assert_eq!(fw["signed"], true);
    assert_eq!(fw["signature"], good.as_str());

    // A service that requires signatures refuses unsigned images.
    let strict = TestApp::builder()
        .configure({
            let key = STANDARD.encode(signer.verifying_key().to_bytes());
            move |c| {
                c.signing_public_keys = vec![key];
                c.require_signature = true;
            }
        })
        .workers(0)
        .spawn()
        .await;
    assert_error(
        strict
            .upload_as(
                &strict.admin_token,
                &[
                    ("name", "Unsigned"),
                    ("device_type", "boiler"),
                    ("version", "1.0.0"),
                ],
                "image.bin",
                image(100, 1),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn file_names_never_reach_the_file_system() {
    let app = TestApp::builder().workers(0).spawn().await;
    let escape = app.dir.path().join("escaped.bin");
    let hostile = format!("../../../../..{}", escape.display());
    let resp = app
        .upload_as(
            &app.admin_token,
            &[
                ("name", "../../etc/passwd"),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
            ],
            &hostile,
            image(1000, 1),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let fw: Value = resp.json().await.unwrap();
    let id = fw["id"].as_str().unwrap();
    assert_eq!(app.stored_files(), vec![id.to_string()]);
    assert!(!escape.exists());
    assert!(!app.dir.path().join("etc").exists());
    // The name is only a label.
    assert_eq!(fw["name"], "../../etc/passwd");
    // Ids in paths are never file names either.
    assert_error(
        app.request(
            Method::GET,
            "/api/v1/firmware/..%2F..%2Fauth.db/download",
            Some(&app.admin_token),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn malformed_forms_are_refused_clearly() {
    let app = TestApp::builder().workers(0).spawn().await;
    let token = app.admin_token.clone();
    let upload = |fields: Vec<(&'static str, &'static str)>, data: Vec<u8>| {
        let app = &app;
        let token = token.clone();
        async move { app.upload_as(&token, &fields, "f.bin", data).await }
    };
    for (fields, code) in [
        (
            vec![("name", "x"), ("device_type", "boiler")],
            "validation_failed",
        ),
        (
            vec![
                ("name", "x"),
                ("device_type", "boiler"),
                ("version", "latest"),
            ],
            "validation_failed",
        ),
        (
            vec![("name", "x"), ("device_type", "a/b"), ("version", "1.0.0")],
            "validation_failed",
        ),
        (
            vec![
                ("name", ""),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
            ],
            "validation_failed",
        ),
        (
            vec![
                ("name", "x"),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
                ("sha256", "abc"),
            ],
            "validation_failed",
        ),
        (
            vec![
                ("name", "x"),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
                ("colour", "red"),
            ],
            "validation_failed",
        ),
    ] {
        assert_error(
            upload(fields, image(10, 1)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        )
        .await;
    }
    // An empty image.
    assert_error(
        upload(
            vec![
                ("name", "x"),
                ("device_type", "boiler"),
                ("version", "1.0.0"),
            ],
            Vec::new(),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // Two file parts.
    let form = reqwest::multipart::Form::new()
        .text("name", "x")
        .text("device_type", "boiler")
        .text("version", "1.0.0")
        .part(
            "file",
            reqwest::multipart::Part::bytes(image(10, 1)).file_name("f.bin"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(image(10, 2)).file_name("g.bin"),
        );
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // A bad field after the file is refused as well, and nothing is kept.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(image(10, 1)).file_name("f.bin"),
        )
        .text("name", "x")
        .text("device_type", "boiler")
        .text("version", "1.0.0")
        .text("sha256", "not-hex");
    let resp = app
        .client
        .post(format!("{}/api/v1/firmware", app.base))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // Not multipart at all.
    assert_error(
        app.request(
            Method::POST,
            "/api/v1/firmware",
            Some(&token),
            Some(json!({})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(app.stored_files().is_empty());
    assert_eq!(app.upload_leftovers(), 0);
    // A version uploaded twice.
    app.firmware("boiler", "1.0.0", image(10, 1)).await;
    assert_error(
        upload(
            vec![
                ("name", "x"),
                ("device_type", "boiler"),
                ("version", "v1.0.0"),
            ],
            image(10, 2),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

/// The file part may come anywhere in the form: first, or between fields,
/// with the digest checked whichever comes first.
#[tokio::test]
async fn parts_are_accepted_in_any_order() {
    let app = TestApp::builder().workers(0).spawn().await;
    let data = image(50_000, 3);
    let digest = hex(&Sha256::digest(&data));
    let send = |form: reqwest::multipart::Form| {
        app.client
            .post(format!("{}/api/v1/firmware", app.base))
            .bearer_auth(&app.admin_token)
            .multipart(form)
            .send()
    };
    let file = |data: &[u8]| reqwest::multipart::Part::bytes(data.to_vec()).file_name("f.bin");
    let resp = send(
        reqwest::multipart::Form::new()
            .part("file", file(&data))
            .text("name", "first")
            .text("device_type", "boiler")
            .text("version", "2.0.0")
            .text("sha256", digest.clone()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sha256"], digest.as_str());
    assert_eq!(body["size"], 50_000);

    // A digest sent after the file still has to match.
    let resp = send(
        reqwest::multipart::Form::new()
            .text("name", "middle")
            .text("device_type", "boiler")
            .part("file", file(&data))
            .text("version", "2.0.1")
            .text("sha256", "0".repeat(64)),
    )
    .await
    .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch").await;
    // And an existing version is refused after the file too.
    let resp = send(
        reqwest::multipart::Form::new()
            .part("file", file(&data))
            .text("name", "again")
            .text("device_type", "boiler")
            .text("version", "2.0.0"),
    )
    .await
    .unwrap();
    assert_error(resp, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(app.stored_files().len(), 1);
    assert_eq!(app.upload_leftovers(), 0);
}

#[tokio::test]
async fn firmware_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let fw = app.firmware("boiler", "1.0.0", image(5000, 1)).await;
    let id = fw["id"].as_str().unwrap().to_string();
    app.devices("boiler", 3, "boiler", &["site-a"]).await;
    let start = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let rollout = app
        .post_json(
            "/api/v1/rollouts",
            json!({
                "name": "Later", "firmware_id": id, "target": { "tag": "site-a" }, "start_at": start
            }),
        )
        .await;
    assert_eq!(rollout["state"], "scheduled");
    let path = format!("/api/v1/firmware/{id}");
    let delete = || app.request(Method::DELETE, &path, Some(&app.admin_token), None);
    assert_error(delete().await, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(app.stored_files(), vec![id.clone()]);

    let rid = rollout["id"].as_str().unwrap();
    let canceled = app
        .post_json(&format!("/api/v1/rollouts/{rid}/cancel"), json!({}))
        .await;
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["counts"]["canceled"], 3);
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    assert!(app.stored_files().is_empty());
    assert_error(delete().await, StatusCode::NOT_FOUND, "not_found").await;
    // The finished rollout still reads, with its version.
    let kept = app.get_json(&format!("/api/v1/rollouts/{rid}")).await;
    assert_eq!(kept["firmware_version"], "1.0.0");
}

/// The same store on an S3-compatible bucket, when one is configured:
/// `WF_IOT_TEST_S3_BUCKET`, `WF_IOT_TEST_S3_ENDPOINT` and the usual
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
#[tokio::test]
async fn an_s3_bucket_stores_and_serves_images() {
    let Ok(bucket) = std::env::var("WF_IOT_TEST_S3_BUCKET") else {
        return;
    };
    let endpoint = std::env::var("WF_IOT_TEST_S3_ENDPOINT").unwrap_or_default();
    let prefix = format!("wf-test-{}/", uuid::Uuid::new_v4().simple());
    let app = TestApp::builder()
        .configure(move |c| {
            c.storage.backend = firmware_service::StorageBackend::S3;
            c.storage.s3.bucket = bucket;
            c.storage.s3.allow_http = endpoint.starts_with("http://");
            c.storage.s3.endpoint = endpoint;
            c.storage.s3.region = "us-east-1".into();
            c.storage.s3.prefix = prefix;
        })
        .workers(0)
        .spawn()
        .await;
    let data = image(300_000, 8);
    let fw = app.firmware("boiler", "1.0.0", data.clone()).await;
    let id = fw["id"].as_str().unwrap();
    assert!(app.stored_files().is_empty(), "nothing on local disk");
    let url = format!("{}/api/v1/firmware/{id}/download", app.base);
    let whole = app
        .client
        .get(&url)
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(whole.bytes().await.unwrap().as_ref(), data.as_slice());
    let part = app
        .client
        .get(&url)
        .bearer_auth(&app.admin_token)
        .header(header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    let resp = app
        .request(
            Method::DELETE,
            &format!("/api/v1/firmware/{id}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn overlong_list_filters_are_refused_with_422() {
    let app = TestApp::spawn().await;
    let long = "a".repeat(1_000);
    for path in [
        format!("/api/v1/firmware?device_type={long}"),
        format!("/api/v1/upgrade-tasks?device_id={long}"),
    ] {
        let resp = app
            .request(Method::GET, &path, Some(&app.admin_token), None)
            .await;
        let body = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 256"),
            "{body}"
        );
    }
}
