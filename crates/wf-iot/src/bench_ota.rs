//! `wf-iot bench ota`: an over-the-air rollout to many simulated devices on
//! the all-in-one platform, timed from the rollout's creation until every
//! execution is final, with the rate limit off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ota::{Ota, OtaArgs};
use crate::platform::Platform;
use crate::simulate::{Api, Behaviour, Stats, connect_with};

#[derive(clap::Args, Debug)]
pub struct OtaBenchArgs {
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// The firmware image's size in KiB; every device downloads it.
    #[arg(long, default_value_t = 256)]
    pub image_kib: usize,
    /// Simulated install time per device, in milliseconds (the restart
    /// takes as long again).
    #[arg(long, default_value_t = 0)]
    pub install_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

const DEVICE_TYPE: &str = "bench-ota";

async fn login(client: &reqwest::Client, auth: &str, password: &str) -> anyhow::Result<String> {
    let body: Value = client
        .post(format!("{auth}/api/v1/auth/login"))
        .json(&json!({ "username": "admin", "password": password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["access_token"]
        .as_str()
        .context("no access token in the login answer")?
        .to_string())
}

/// Uploads a generated image; returns the firmware id.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    kib: usize,
) -> anyhow::Result<String> {
    let image: Vec<u8> = (0..kib * 1024).map(|i| (i % 251) as u8).collect();
    let digest: String = Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("name", "Benchmark image")
        .text("device_type", DEVICE_TYPE)
        .text("version", "2.0.0")
        .text("sha256", digest)
        .part(
            "file",
            reqwest::multipart::Part::bytes(image).file_name("bench.bin"),
        );
    let resp = client
        .post(format!("{base}/api/v1/firmware"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("uploading the image failed: {}", resp.text().await?);
    }
    let body: Value = resp.json().await?;
    Ok(body["id"].as_str().context("no firmware id")?.to_string())
}

pub async fn run(args: OtaBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be positive");
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    let platform = Platform::start_local(dir.path(), &password).await?;
    let ports = platform.ports;
    let auth = format!("http://127.0.0.1:{}", ports.auth_http);
    let firmware = format!("http://127.0.0.1:{}", ports.firmware_http);
    let api = Api::login(
        &auth,
        &format!("http://127.0.0.1:{}", ports.device_http),
        "admin",
        &password,
    )
    .await?;
    eprintln!("provisioning {} devices...", args.devices);
    let creds = api.provision("ota", args.devices, DEVICE_TYPE).await?;
    let stats = Arc::new(Stats::default());
    let ota = Ota::new(&OtaArgs {
        ota_install_ms: args.install_ms,
        ota_restart_ms: args.install_ms,
        ..OtaArgs::default()
    })?;
    let devices: Vec<_> = futures_util::stream::iter(creds.iter())
        .map(|c| {
            let behaviour = Behaviour {
                inflight: 10,
                ota: Some(ota.clone()),
                ..Behaviour::default()
            };
            connect_with(c, "127.0.0.1", ports.mqtt, stats.clone(), behaviour)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!("{} devices connected", devices.len());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = login(&client, &auth, &password).await?;
    let firmware_id = upload(&client, &firmware, &token, args.image_kib).await?;

    let started = Instant::now();
    let resp = client
        .post(format!("{firmware}/api/v1/rollouts"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "Benchmark",
            "firmware_id": firmware_id,
            "target": { "device_type": DEVICE_TYPE },
            "rate_per_minute": 0,
            "timeout_secs": args.timeout,
        }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("creating the rollout failed: {}", resp.text().await?);
    }
    let rollout: Value = resp.json().await?;
    let id = rollout["id"].as_str().context("no rollout id")?.to_string();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut all_notified = None;
    let mut last_report = Instant::now();
    let done = loop {
        let r: Value = client
            .get(format!("{firmware}/api/v1/rollouts/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let counts = &r["counts"];
        if all_notified.is_none() && counts["queued"].as_u64() == Some(0) {
            all_notified = Some(started.elapsed());
        }
        if matches!(
            r["state"].as_str(),
            Some("completed" | "aborted" | "canceled")
        ) {
            break r;
        }
        if Instant::now() >= deadline {
            bail!("the rollout did not finish within {} s: {r}", args.timeout);
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  {:.1} s: queued {} notified {} downloading {} installing {} succeeded {}",
                started.elapsed().as_secs_f64(),
                counts["queued"],
                counts["notified"],
                counts["downloading"],
                counts["installing"],
                counts["succeeded"],
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let succeeded = done["counts"]["succeeded"].as_u64().unwrap_or_default();
    let downloaded = ota
        .stats
        .downloaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "ota benchmark: {} devices, {} KiB image, rate limit off, install {} ms + restart {} ms",
        args.devices, args.image_kib, args.install_ms, args.install_ms
    );
    println!(
        "  every device notified after:   {:.2} s",
        all_notified.unwrap_or(elapsed).as_secs_f64()
    );
    println!(
        "  every execution final after:   {:.2} s = {:.0} devices/s",
        elapsed.as_secs_f64(),
        args.devices as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  rollout {}: {succeeded} succeeded, counts {}",
        done["state"].as_str().unwrap_or_default(),
        done["counts"]
    );
    println!(
        "  downloaded {:.1} MiB ({:.1} MiB/s)",
        downloaded as f64 / 1_048_576.0,
        downloaded as f64 / 1_048_576.0 / elapsed.as_secs_f64()
    );
    for d in &devices {
        let _ = d.client.disconnect().await;
    }
    platform.stop().await?;
    anyhow::ensure!(
        succeeded == args.devices as u64,
        "{} of {} devices were upgraded",
        succeeded,
        args.devices
    );
    Ok(())
}
