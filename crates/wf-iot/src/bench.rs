//! `wf-iot bench ...`: throughput and memory measured on this machine, the
//! server in a process of its own (`wf-iot serve`) and the load generated
//! from this one, and the peer a user would pick instead measured in the
//! same run with the same load: a bare Mosquitto for ingest, nginx for the
//! API (each where it is installed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::bench_peers::{BareMosquitto, Nginx, Serve};
use crate::simulate::{Api, Credentials, Device, Stats, connect, device_ids};

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Telemetry from MQTT publish to stored and queryable, all-in-one.
    Ingest(IngestArgs),
    /// An OTA rollout from start until every execution is final, all-in-one.
    Ota(crate::bench_ota::OtaBenchArgs),
    /// Authenticated `GET /api/v1/devices/{id}` through the api-gateway,
    /// straight to device-service, and through nginx, in one run.
    Api(ApiArgs),
    /// Start to ready and resident memory of the all-in-one platform: a
    /// first start, then a start on the existing data directory, idle.
    Start(StartArgs),
    /// A desired state change to a whole connected fleet by one shadow job,
    /// until every device applied it and reported it back.
    Shadow(crate::bench_shadow::ShadowBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Seconds the started platform idles before its memory is read.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
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
    /// Skip the bare Mosquitto measured with the same load.
    #[arg(long)]
    pub no_peer: bool,
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ingest(args) => ingest(args).await,
        Bench::Ota(args) => crate::bench_ota::run(args).await,
        Bench::Api(args) => api(args).await,
        Bench::Start(args) => start(args).await,
        Bench::Shadow(args) => crate::bench_shadow::run(args).await,
    }
}

/// What one broker did with the load: acknowledged, and delivered (stored
/// by wf-iot, relayed to the subscriber by Mosquitto).
struct Delivered {
    sent: u64,
    acked: u64,
    acked_in: Duration,
    delivered: u64,
    delivered_in: Duration,
    errors: u64,
}

impl Delivered {
    fn ack_rate(&self) -> f64 {
        self.acked as f64 / self.acked_in.as_secs_f64()
    }

    fn rate(&self) -> f64 {
        self.delivered as f64 / self.delivered_in.as_secs_f64()
    }
}

/// Connects a device per credential to the broker on `port`.
async fn connect_all(
    creds: &[Credentials],
    port: u16,
    stats: &Arc<Stats>,
    inflight: u16,
) -> anyhow::Result<Vec<Device>> {
    let mut devices = Vec::with_capacity(creds.len());
    for c in creds {
        devices.push(connect(c, "127.0.0.1", port, stats.clone(), 0.0, inflight).await?);
    }
    Ok(devices)
}

/// Disconnects every device and waits (up to 10 s) until each connection
/// is closed, so that none keeps reconnecting in the background of the
/// next measurement.
async fn disconnect_all(devices: Vec<Device>, stats: &Stats) {
    for d in &devices {
        let _ = d.client.disconnect().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.connected.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(devices);
}

/// Publishes `messages` telemetry messages of three metrics at QoS 1,
/// spread over `devices`, and waits for their acknowledgements; then for
/// `delivered()` to reach `messages` (polled). Each message has a distinct
/// per-device timestamp: (device, metric, timestamp) is the storage key,
/// so a redelivered message is never counted twice.
async fn drive<F, Fut>(
    devices: &[Device],
    stats: &Arc<Stats>,
    messages: u64,
    timeout: Duration,
    mut delivered: F,
) -> anyhow::Result<Delivered>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    // The connections published their "online" status: count telemetry only.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked_before = stats.acked.load(Ordering::Relaxed);
    let sent_before = stats.sent.load(Ordering::Relaxed);
    let started = Instant::now();
    let base_ts = wf_common::now_millis() - 86_400_000;
    let per_device = messages / devices.len() as u64;
    let extra = messages % devices.len() as u64;
    let mut publishers = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let count = per_device + u64::from((i as u64) < extra);
        let client = device.client.clone();
        let topic = format!("devices/{}/telemetry", device.id);
        let stats = stats.clone();
        publishers.push(tokio::spawn(async move {
            for seq in 0..count {
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
    let deadline = started + timeout;
    while stats.acked.load(Ordering::Relaxed) < acked_before + messages && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_in = started.elapsed();
    let acked = stats.acked.load(Ordering::Relaxed) - acked_before;
    let mut count = 0;
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        count = delivered().await?;
        if count >= messages {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("  delivered {count} of {messages}");
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Delivered {
        sent: stats.sent.load(Ordering::Relaxed) - sent_before,
        acked,
        acked_in,
        delivered: count,
        delivered_in: started.elapsed(),
        errors: stats.errors.load(Ordering::Relaxed),
    })
}

/// The same load through a bare Mosquitto to one subscriber of every
/// device's telemetry: what a user relaying MQTT without storing anything
/// would get on this machine, now.
async fn relay_with_mosquitto(
    dir: &std::path::Path,
    args: &IngestArgs,
) -> anyhow::Result<Option<Delivered>> {
    let Some(broker) = BareMosquitto::start(dir, args.inflight.max(20)).await? else {
        eprintln!("mosquitto is not installed: no peer measured (apt-get install mosquitto)");
        return Ok(None);
    };
    let received = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("bench-subscriber", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (subscriber, mut events) = AsyncClient::new(options, 1024);
    subscriber
        .subscribe("devices/+/telemetry", QoS::AtLeastOnce)
        .await?;
    loop {
        match events.poll().await? {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let creds: Vec<Credentials> = device_ids("bench", args.devices)
        .into_iter()
        .map(|id| Credentials {
            id,
            secret: "anonymous".into(),
        })
        .collect();
    let stats = Arc::new(Stats::default());
    let devices = connect_all(&creds, broker.port, &stats, args.inflight).await?;
    eprintln!(
        "bare Mosquitto: {} devices connected; publishing {} messages",
        devices.len(),
        args.messages
    );
    let figures = drive(
        &devices,
        &stats,
        args.messages,
        Duration::from_secs(args.timeout),
        || {
            let n = received.load(Ordering::Relaxed);
            async move { Ok(n) }
        },
    )
    .await?;
    disconnect_all(devices, &stats).await;
    let _ = subscriber.disconnect().await;
    reader.abort();
    broker.stop().await?;
    Ok(Some(figures))
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices > 0 && args.messages > 0,
        "--devices and --messages must be positive"
    );
    let dir = tempfile::tempdir()?;
    let peer = if args.no_peer {
        None
    } else {
        relay_with_mosquitto(dir.path(), &args).await?
    };

    let password = wf_common::random::password();
    let server = Serve::start(dir.path(), &password, &[]).await?;
    let idle = server.resident_bytes()?;
    let api = Api::login(&server.auth_url(), &server.device_url(), "admin", &password).await?;
    let creds = api.provision("bench", args.devices, "bench-sensor").await?;
    let stats = Arc::new(Stats::default());
    let devices = connect_all(&creds, server.ports.mqtt, &stats, args.inflight).await?;
    // What the server stored, read from its database by this process.
    let database = device_service::Config {
        database_url: format!("sqlite://{}", server.data_dir.join("devices.db").display()),
        database_max_connections: 1,
        ..Default::default()
    };
    let store = device_service::store::Store::new(device_service::connect_db(&database).await?);
    eprintln!(
        "wf-iot serve (pid {}): {} devices connected; publishing {} messages \
         (QoS 1, {} in flight per connection)",
        server.pid(),
        devices.len(),
        args.messages,
        args.inflight
    );
    let figures = drive(
        &devices,
        &stats,
        args.messages,
        Duration::from_secs(args.timeout),
        || async {
            Ok(store
                .count_values("temperature")
                .await
                .context("counting stored messages")? as u64)
        },
    )
    .await?;
    let loaded = server.resident_bytes()?;
    disconnect_all(devices, &stats).await;
    server.stop().await?;

    println!(
        "ingest benchmark: {} devices, {} messages of 3 metrics, QoS 1, {} in flight per \
         connection; the load from this process, the server in its own",
        args.devices, args.messages, args.inflight
    );
    // wf-iot acknowledges a message only once it is committed: the last
    // PUBACK is the time the last message was stored, which the count read
    // from the database afterwards confirms.
    if let Some(peer) = &peer {
        println!(
            "  wf-iot stored / bare Mosquitto relayed:    {:.2}",
            figures.ack_rate() / peer.rate()
        );
    }
    println!(
        "  wf-iot (all-in-one), publish -> stored:    {} in {:.2} s = {:.0} msg/s \
         (the last PUBACK, sent once stored; {} counted in the database after)",
        figures.acked,
        figures.acked_in.as_secs_f64(),
        figures.ack_rate(),
        figures.delivered,
    );
    if let Some(peer) = &peer {
        println!(
            "  bare Mosquitto, publish -> subscriber:     {} in {:.2} s = {:.0} msg/s",
            peer.delivered,
            peer.delivered_in.as_secs_f64(),
            peer.rate()
        );
        println!(
            "  bare Mosquitto, publish -> PUBACK:         {} in {:.2} s = {:.0} msg/s",
            peer.acked,
            peer.acked_in.as_secs_f64(),
            peer.ack_rate()
        );
    }
    println!(
        "  wf-iot memory: {:.1} MiB idle after start, {:.1} MiB after the load",
        mib(idle),
        mib(loaded)
    );
    println!(
        "  sent {}, stored {}, lost {}, publish errors {}",
        figures.sent,
        figures.delivered,
        figures.sent.saturating_sub(figures.delivered),
        figures.errors
    );
    anyhow::ensure!(
        figures.delivered == figures.sent && figures.sent == args.messages,
        "messages were lost: sent {}, stored {}",
        figures.sent,
        figures.delivered
    );
    if let Some(peer) = peer {
        anyhow::ensure!(
            peer.delivered >= args.messages,
            "the bare Mosquitto relayed {} of {} messages",
            peer.delivered,
            args.messages
        );
    }
    Ok(())
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    // The limiter stays in the path, with limits no load generator reaches.
    let generous: Vec<(String, String)> = ["PER_USER", "PER_IP"]
        .into_iter()
        .flat_map(|who| {
            let key = |what: &str| format!("WF_IOT_GATEWAY__RATE_LIMITS__DEVICES__{who}__{what}");
            [
                (key("PER_SECOND"), "1000000000".to_string()),
                (key("BURST"), u32::MAX.to_string()),
            ]
        })
        .collect();
    let server = Serve::start(dir.path(), &password, &generous).await?;
    let api = Api::login(&server.auth_url(), &server.device_url(), "admin", &password).await?;
    api.provision("bench-api", 1, "bench-sensor").await?;
    let token = api.token().to_string();
    let duration = Duration::from_secs(args.duration);
    let path = "/api/v1/devices/bench-api-00001";
    let nginx = Nginx::start(
        dir.path(),
        &format!("127.0.0.1:{}", server.ports.device_http),
    )
    .await?;
    let measure = async |base: &str| {
        api_gateway::load_test(&format!("{base}{path}"), &token, args.concurrency, duration).await
    };
    // A first pass through each path warms its connections and caches.
    let warm = async |base: &str| {
        api_gateway::load_test(
            &format!("{base}{path}"),
            &token,
            args.concurrency,
            Duration::from_secs(1),
        )
        .await
    };
    warm(&server.gateway_url()).await?;
    warm(&server.device_url()).await?;
    if let Some(nginx) = &nginx {
        warm(&format!("http://127.0.0.1:{}", nginx.port)).await?;
    }
    let through = measure(&server.gateway_url()).await?;
    let proxied = match &nginx {
        Some(nginx) => Some(measure(&format!("http://127.0.0.1:{}", nginx.port)).await?),
        None => {
            eprintln!("nginx is not installed: no peer measured (apt-get install nginx)");
            None
        }
    };
    let direct = measure(&server.device_url()).await?;
    if let Some(nginx) = nginx {
        nginx.stop().await?;
    }
    server.stop().await?;
    let ratio = |a: &api_gateway::LoadReport, b: &api_gateway::LoadReport| {
        a.rps / b.rps.max(f64::MIN_POSITIVE)
    };
    println!(
        "api benchmark: authenticated GET {path}, {} in flight, {} s each; the load from \
         this process, the server in its own",
        args.concurrency, args.duration
    );
    if let Some(proxied) = &proxied {
        println!(
            "  api-gateway / nginx (plain proxy, same upstream): {:.2}",
            ratio(&through, proxied)
        );
    }
    println!(
        "  api-gateway / straight to device-service:          {:.2}",
        ratio(&through, &direct)
    );
    println!("  through the api-gateway (token checked, rate limits on): {through}");
    if let Some(proxied) = &proxied {
        println!("  through nginx (nothing checked):                     {proxied}");
    }
    println!("  straight to device-service:                          {direct}");
    anyhow::ensure!(
        through.errors == 0 && direct.errors == 0 && proxied.is_none_or(|p| p.errors == 0),
        "requests failed during the benchmark"
    );
    Ok(())
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    let first = Serve::start(dir.path(), &password, &[]).await?;
    let first_start = first.start_to_ready;
    first.stop().await?;
    let again = Serve::start(dir.path(), &password, &[]).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let idle = again.resident_bytes()?;
    let restart = again.start_to_ready;
    again.stop().await?;
    println!("start benchmark: wf-iot serve, every service in one process");
    println!(
        "  first start (new data directory) to ready: {:.3} s",
        first_start.as_secs_f64()
    );
    println!(
        "  start on the existing data directory to ready: {:.3} s",
        restart.as_secs_f64()
    );
    println!(
        "  resident memory, idle {} s after that start: {:.1} MiB",
        args.settle,
        mib(idle)
    );
    Ok(())
}
