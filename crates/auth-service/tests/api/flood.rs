//! A login flood: hashing is bounded (memory stays flat, the service keeps
//! answering) and attempts are counted before any hashing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth_service::{HashingLimit, PasswordHashing};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, TestApp};

/// This process's resident memory in KiB (the app runs in-process).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test]
async fn a_login_flood_keeps_memory_flat_and_the_service_answering() {
    // Production hashing cost: 19 MiB per hash.
    let app = TestApp::builder()
        .hashing(
            PasswordHashing::default(),
            HashingLimit {
                max_concurrent: 4,
                queue_timeout_ms: 300,
            },
        )
        .spawn()
        .await;
    let baseline = rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // 64 parallel logins, each from its own address and for its own
    // (unknown) account, so that throttling does not stop them: only the
    // bound on hashing does.
    let attempts = (0..64).map(|i| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({ "username": format!("nobody{i}"), "password": "guess" }))
            .send()
    });
    let responses = futures_util::future::join_all(attempts).await;
    sampling.abort();
    let mut busy = 0;
    for resp in responses {
        let resp = resp.unwrap();
        match resp.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert!(resp.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    // Four hashes at 19 MiB at once; unbounded, 64 of them took more than
    // 1 GiB. The process is this test binary, whose other tests run beside
    // this one and hash passwords too (19 MiB each): the bound leaves room
    // for them and still fails an unbounded flood by half.
    assert!(growth_mib < 600, "resident memory grew by {growth_mib} MiB");
    assert!(busy > 0, "the flood never met the hashing bound");
    // Still answering: health, and the admin's login.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        app.login("admin", ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn parallel_guesses_are_counted_before_hashing() {
    let app = TestApp::builder().throttle(3, 100).spawn().await;
    app.create_user("target", "right-password", &["viewer"])
        .await;
    let attempts = (0..32).map(|_| app.login("target", "guess"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked, 3, "{statuses:?}");
    assert_eq!(throttled, 29, "{statuses:?}");
}
