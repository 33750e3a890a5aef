//! `wf-iot bench ...`: throughput measured end to end on this machine.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::QoS;
use serde_json::json;

use crate::platform::Platform;
use crate::simulate::{Api, Stats, connect};

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Telemetry from MQTT publish to stored and queryable, all-in-one.
    Ingest(IngestArgs),
    /// An OTA rollout from start until every execution is final, all-in-one.
    Ota(crate::bench_ota::OtaBenchArgs),
    /// Authenticated `GET /api/v1/devices/{id}` through the api-gateway and
    /// straight to device-service, in one run.
    Api(ApiArgs),
}

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Messages in all (three metrics each).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Unacknowledged QoS 1 messages per connection.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Give up waiting for stored messages after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ingest(args) => ingest(args).await,
        Bench::Ota(args) => crate::bench_ota::run(args).await,
        Bench::Api(args) => api(args).await,
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices > 0 && args.messages > 0,
        "--devices and --messages must be positive"
    );
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    let platform = Platform::start_local(dir.path(), &password).await?;
    let ports = platform.ports;
    let api = Api::login(
        &format!("http://127.0.0.1:{}", ports.auth_http),
        &format!("http://127.0.0.1:{}", ports.device_http),
        "admin",
        &password,
    )
    .await?;
    let creds = api.provision("bench", args.devices, "bench-sensor").await?;
    let stats = Arc::new(Stats::default());
    let mut devices = Vec::with_capacity(creds.len());
    for c in &creds {
        devices.push(
            connect(
                c,
                "127.0.0.1",
                ports.mqtt,
                stats.clone(),
                0.0,
                args.inflight,
            )
            .await?,
        );
    }
    let store = device_service::store::Store::new(
        device_service::connect_db(&platform.config.device).await?,
    );
    eprintln!(
        "{} devices connected; publishing {} messages (QoS 1, {} in flight per connection)",
        devices.len(),
        args.messages,
        args.inflight
    );
    // Connections published their "online" status; count acknowledgements
    // of telemetry only.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked_before = stats.acked.load(Ordering::Relaxed);
    let sent_before = stats.sent.load(Ordering::Relaxed);

    let started = Instant::now();
    let base_ts = wf_common::now_millis() - 86_400_000;
    let per_device = args.messages / devices.len() as u64;
    let extra = args.messages % devices.len() as u64;
    let mut publishers = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let count = per_device + u64::from((i as u64) < extra);
        let client = device.client.clone();
        let topic = format!("devices/{}/telemetry", device.id);
        let stats = stats.clone();
        publishers.push(tokio::spawn(async move {
            for seq in 0..count {
                // Distinct timestamps per device: (device, metric, ts) is the
                // key that makes redelivery harmless.
                let payload = json!({
                    "temperature": 20.0 + (seq % 100) as f64 / 10.0,
                    "humidity": 40.0 + (seq % 50) as f64,
                    "battery": 100 - (seq % 100) as i64,
                    "ts": base_ts + seq as i64,
                })
                .to_string();
                // Counted as sent by the device's event loop once written.
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    for p in publishers {
        p.await?;
    }
    let target_acks = acked_before + args.messages;
    let deadline = started + Duration::from_secs(args.timeout);
    while stats.acked.load(Ordering::Relaxed) < target_acks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_at = started.elapsed();
    let acked = stats.acked.load(Ordering::Relaxed) - acked_before;

    let mut stored = 0;
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        stored = store
            .count_values("temperature")
            .await
            .context("counting stored messages")? as u64;
        if stored >= args.messages {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("  stored {stored} of {}", args.messages);
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_at = started.elapsed();
    let sent = stats.sent.load(Ordering::Relaxed) - sent_before;
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();

    println!(
        "ingest benchmark: {} devices, {} messages of 3 metrics, QoS 1",
        args.devices, args.messages
    );
    println!(
        "  broker ingress (publish -> PUBACK): {acked} acknowledged in {:.2} s = {:.0} msg/s",
        acked_at.as_secs_f64(),
        rate(acked, acked_at)
    );
    println!(
        "  end to end (publish -> stored):     {stored} stored in {:.2} s = {:.0} msg/s",
        stored_at.as_secs_f64(),
        rate(stored, stored_at)
    );
    println!(
        "  stored / ingress ratio:             {:.2}",
        rate(stored, stored_at) / rate(acked, acked_at)
    );
    println!(
        "  sent {sent}, stored {stored}, lost {}, publish errors {}",
        sent.saturating_sub(stored),
        stats.errors.load(Ordering::Relaxed)
    );
    for d in &devices {
        let _ = d.client.disconnect().await;
    }
    platform.stop().await?;
    anyhow::ensure!(
        stored == sent && sent == args.messages,
        "messages were lost: sent {sent}, stored {stored}"
    );
    Ok(())
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    let mut config = crate::config::PlatformConfig::load(None)?;
    // The limiter stays in the path, with limits no load generator reaches.
    let generous = api_gateway::Limit {
        per_second: 1e9,
        burst: u32::MAX,
    };
    config.gateway.rate_limits.devices = api_gateway::GroupLimits {
        per_user: generous,
        per_ip: generous,
    };
    let platform = Platform::start_local_with(dir.path(), &password, config).await?;
    let ports = platform.ports;
    let api = Api::login(
        &format!("http://127.0.0.1:{}", ports.auth_http),
        &format!("http://127.0.0.1:{}", ports.device_http),
        "admin",
        &password,
    )
    .await?;
    api.provision("bench-api", 1, "bench-sensor").await?;
    let token = api.token().to_string();
    let duration = Duration::from_secs(args.duration);
    let path = "/api/v1/devices/bench-api-00001";
    let through = api_gateway::load_test(
        &format!("http://127.0.0.1:{}{path}", ports.gateway_http),
        &token,
        args.concurrency,
        duration,
    )
    .await?;
    let direct = api_gateway::load_test(
        &format!("http://127.0.0.1:{}{path}", ports.device_http),
        &token,
        args.concurrency,
        duration,
    )
    .await?;
    println!(
        "api benchmark: authenticated GET {path}, {} in flight, {} s each",
        args.concurrency, args.duration
    );
    println!("  through the api-gateway: {through}");
    println!("  straight to device-service: {direct}");
    println!(
        "  gateway / direct throughput: {:.2}",
        through.rps / direct.rps.max(f64::MIN_POSITIVE)
    );
    platform.stop().await?;
    anyhow::ensure!(
        through.errors == 0 && direct.errors == 0,
        "requests failed during the benchmark"
    );
    Ok(())
}
