//! `wf-iot simulate`: a fleet of simulated devices. Provisions (or reuses)
//! devices through the API, connects each over MQTT with its own
//! credentials, publishes telemetry at a steady overall rate, and answers
//! commands, failing a chosen share of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Telemetry messages per second, across all devices.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Percentage of commands answered with a failure.
    #[arg(long, default_value_t = 0.0)]
    pub fail_commands: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Device ids are `{prefix}-00001`, `{prefix}-00002`, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// The device type the simulated devices are registered with.
    #[arg(long, default_value = "simulated-sensor")]
    pub device_type: String,
    /// auth-service's base URL (login).
    #[arg(long, default_value = "http://127.0.0.1:8101")]
    pub auth_url: String,
    /// device-service's base URL (provisioning).
    #[arg(long, default_value = "http://127.0.0.1:8102")]
    pub device_url: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// The account that provisions the devices (needs device:write).
    #[arg(long, default_value = "admin")]
    pub username: String,
    #[arg(long, env = "WF_IOT_SIM_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Over-the-air updates.
    #[command(flatten)]
    pub ota: crate::ota::OtaArgs,
}

/// Counters shared by every simulated device.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub commands: AtomicU64,
    pub commands_failed: AtomicU64,
    pub connected: AtomicU64,
}

/// A device's id and MQTT secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: String,
    pub secret: String,
}

/// Talks to the platform's REST API.
pub struct Api {
    client: reqwest::Client,
    device_url: String,
    token: String,
}

impl Api {
    pub async fn login(
        auth_url: &str,
        device_url: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let resp = client
            .post(format!(
                "{}/api/v1/auth/login",
                auth_url.trim_end_matches('/')
            ))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .with_context(|| format!("reaching {auth_url}"))?;
        if !resp.status().is_success() {
            bail!(
                "logging in as {username} failed: {}",
                error_text(resp).await
            );
        }
        let body: Value = resp.json().await?;
        let token = body["access_token"]
            .as_str()
            .context("no access token in the login answer")?
            .to_string();
        Ok(Self {
            client,
            device_url: device_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The access token this client holds.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Creates `{prefix}-NNNNN` devices; ones that exist already get a new
    /// secret, so a simulation can be rerun with the same ids.
    pub async fn provision(
        &self,
        prefix: &str,
        count: usize,
        device_type: &str,
    ) -> anyhow::Result<Vec<Credentials>> {
        let mut out = Vec::with_capacity(count);
        for i in 1..=count {
            let id = format!("{prefix}-{i:05}");
            let resp = self
                .client
                .post(format!("{}/api/v1/devices", self.device_url))
                .bearer_auth(&self.token)
                .json(&json!({ "id": id, "name": format!("Simulated {i}"), "device_type": device_type, "tags": ["simulated"] }))
                .send()
                .await?;
            let resp = if resp.status() == reqwest::StatusCode::CONFLICT {
                self.client
                    .post(format!("{}/api/v1/devices/{id}/secret", self.device_url))
                    .bearer_auth(&self.token)
                    .send()
                    .await?
            } else {
                resp
            };
            if !resp.status().is_success() {
                bail!("provisioning {id} failed: {}", error_text(resp).await);
            }
            let body: Value = resp.json().await?;
            let secret = body["credentials"]["secret"]
                .as_str()
                .context("no secret in the answer")?
                .to_string();
            out.push(Credentials { id, secret });
        }
        Ok(out)
    }
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match body["error"]["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// A connected simulated device.
pub struct Device {
    pub id: String,
    pub client: AsyncClient,
}

/// Connects a device: its credentials, a last will that marks it offline,
/// its command topic subscribed. The event loop runs on its own task,
/// answering commands and counting acknowledgements.
pub async fn connect(
    creds: &Credentials,
    host: &str,
    port: u16,
    stats: Arc<Stats>,
    fail_commands: f64,
    inflight: u16,
) -> anyhow::Result<Device> {
    connect_with_ota(creds, host, port, stats, fail_commands, inflight, None).await
}

/// [`connect`], and with `ota` the device also accepts over-the-air
/// updates on `devices/{id}/ota`.
pub async fn connect_with_ota(
    creds: &Credentials,
    host: &str,
    port: u16,
    stats: Arc<Stats>,
    fail_commands: f64,
    inflight: u16,
    ota: Option<Arc<crate::ota::Ota>>,
) -> anyhow::Result<Device> {
    let mut options = MqttOptions::new(creds.id.clone(), host, port);
    options
        .set_credentials(creds.id.clone(), creds.secret.clone())
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(inflight.max(1))
        .set_last_will(LastWill::new(
            format!("devices/{}/status", creds.id),
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
    // Wait for the broker's answer to CONNECT before going on. "Server
    // unavailable" (the registry did not answer in time) is retried, as a
    // real device would.
    let mut attempt = 0;
    let (client, mut event_loop) = loop {
        let (client, mut event_loop) =
            AsyncClient::new(options.clone(), usize::from(inflight.max(10)) * 2);
        let code = loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => break ack.code,
                Ok(_) => {}
                Err(e) => bail!("{} could not connect: {e}", creds.id),
            }
        };
        match code {
            rumqttc::ConnectReturnCode::Success => break (client, event_loop),
            rumqttc::ConnectReturnCode::ServiceUnavailable if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            other => bail!("{} was refused: {other:?}", creds.id),
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let id = creds.id.clone();
    client
        .subscribe(format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await?;
    if ota.is_some() {
        client
            .subscribe(crate::ota::Ota::topic(&id), QoS::AtLeastOnce)
            .await?;
    }
    client
        .publish(
            format!("devices/{id}/status"),
            QoS::AtLeastOnce,
            false,
            "online",
        )
        .await?;
    let responder = client.clone();
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/commands") => {
                    answer_command(&responder, &id, &p.payload, fail_commands, &stats).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/ota") => {
                    if let Some(ota) = &ota {
                        ota.accept(&responder, &id, &p.payload);
                    }
                }
                // After DISCONNECT the event loop would reconnect: drop it
                // instead, which closes the socket.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(device = %id, error = %e, "connection lost");
                    return;
                }
            }
        }
    });
    Ok(Device {
        id: creds.id.clone(),
        client,
    })
}

/// Whether the command with this id is one of the `fail_pct` percent that
/// fail (decided by its id, so a retried command gets the same answer).
fn fails(command_id: &str, fail_pct: f64) -> bool {
    let bucket = command_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 10_000;
    f64::from(bucket) < fail_pct * 100.0
}

async fn answer_command(
    client: &AsyncClient,
    device_id: &str,
    payload: &[u8],
    fail_pct: f64,
    stats: &Stats,
) {
    let Ok(command) = serde_json::from_slice::<Value>(payload) else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let id = command["id"].as_str().unwrap_or_default().to_string();
    let failed = fails(&id, fail_pct);
    let response = if failed {
        json!({ "id": id, "status": "failed", "result": { "error": "simulated failure" } })
    } else {
        json!({ "id": id, "status": "succeeded", "result": { "echo": command["params"], "name": command["name"] } })
    };
    stats.commands.fetch_add(1, Ordering::Relaxed);
    if failed {
        stats.commands_failed.fetch_add(1, Ordering::Relaxed);
    }
    let topic = format!("devices/{device_id}/commands/response");
    if client
        .publish(topic, QoS::AtLeastOnce, false, response.to_string())
        .await
        .is_err()
    {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A telemetry message as a simulated sensor sends it.
pub fn reading(seq: u64) -> String {
    let t = seq as f64;
    json!({
        "temperature": 20.0 + (t / 10.0).sin() * 5.0,
        "humidity": 50.0 + (t / 7.0).cos() * 10.0,
        "battery": 100.0 - (t % 1000.0) / 10.0,
        "ts": wf_common::now_millis(),
    })
    .to_string()
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.fail_commands),
        "--fail-commands is a percentage"
    );
    let api = Api::login(
        &args.auth_url,
        &args.device_url,
        &args.username,
        &args.password,
    )
    .await?;
    eprintln!("provisioning {} devices...", args.devices);
    let creds = api
        .provision(&args.prefix, args.devices, &args.device_type)
        .await?;
    let stats = Arc::new(Stats::default());
    let ota = crate::ota::Ota::new(&args.ota)?;
    let mut devices = Vec::with_capacity(creds.len());
    for c in &creds {
        devices.push(
            connect_with_ota(
                c,
                &args.mqtt_host,
                args.mqtt_port,
                stats.clone(),
                args.fail_commands,
                100,
                Some(ota.clone()),
            )
            .await?,
        );
    }
    eprintln!(
        "{} devices connected; publishing {} messages/s (Ctrl-C stops)",
        devices.len(),
        args.rate
    );

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs(d));
    let mut tick = tokio::time::interval(
        Duration::from_secs_f64(1.0 / args.rate).max(Duration::from_micros(50)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let stop = wf_common::shutdown::signal();
    tokio::pin!(stop);
    let mut seq: u64 = 0;
    let mut last_sent = 0;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = report.tick() => {
                let sent = stats.sent.load(Ordering::Relaxed);
                eprintln!(
                    "sent {sent} ({}/s)  acked {}  errors {}  commands answered {} ({} failed)  connected {}",
                    sent - last_sent,
                    stats.acked.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed),
                    stats.commands.load(Ordering::Relaxed),
                    stats.commands_failed.load(Ordering::Relaxed),
                    stats.connected.load(Ordering::Relaxed),
                );
                last_sent = sent;
                if ota.stats.received.load(Ordering::Relaxed) > 0 {
                    eprintln!("{}", ota.summary());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            _ = tick.tick() => {
                let device = &devices[(seq as usize) % devices.len()];
                let topic = format!("devices/{}/telemetry", device.id);
                match device.client.try_publish(topic, QoS::AtLeastOnce, false, reading(seq)) {
                    Ok(()) => { stats.sent.fetch_add(1, Ordering::Relaxed); }
                    Err(_) => { stats.errors.fetch_add(1, Ordering::Relaxed); }
                }
                seq += 1;
            }
        }
    }
    for d in &devices {
        let _ = d
            .client
            .publish(
                format!("devices/{}/status", d.id),
                QoS::AtLeastOnce,
                false,
                "offline",
            )
            .await;
        let _ = d.client.disconnect().await;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = stats.sent.load(Ordering::Relaxed);
    println!(
        "summary: {} devices, {sent} messages in {secs:.1} s ({:.0}/s), {} acknowledged, {} errors, {} commands answered ({} failed)",
        devices.len(),
        sent as f64 / secs,
        stats.acked.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        stats.commands.load(Ordering::Relaxed),
        stats.commands_failed.load(Ordering::Relaxed),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_share_follows_the_percentage() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("cmd-{i}")).collect();
        let share =
            |pct: f64| ids.iter().filter(|id| fails(id, pct)).count() as f64 / ids.len() as f64;
        assert_eq!(share(0.0), 0.0);
        assert_eq!(share(100.0), 1.0);
        assert!((share(30.0) - 0.30).abs() < 0.03, "{}", share(30.0));
    }
}
