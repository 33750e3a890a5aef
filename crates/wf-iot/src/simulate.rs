//! `wf-iot simulate`: a fleet of simulated devices. Provisions (or reuses)
//! devices through the API, connects each over MQTT with its own
//! credentials, publishes telemetry at a steady overall rate, and answers
//! commands, failing a chosen share of them. Each device keeps a reported
//! state and applies desired state (see [`crate::sim_state`]): its sampling
//! interval paces its own telemetry. A device whose connection is lost
//! reconnects with backoff, as real firmware does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, QoS,
};
use serde_json::{Value, json};
use wf_common::retry::Backoff;

use crate::sim_state::DeviceState;

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
    /// Messages written to the broker: telemetry, status, command answers
    /// and update progress alike (every one QoS 1).
    pub sent: AtomicU64,
    /// Their acknowledgements (PUBACK).
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub commands: AtomicU64,
    pub commands_failed: AtomicU64,
    pub connected: AtomicU64,
    /// Connections lost and made again.
    pub reconnects: AtomicU64,
    /// Desired state applied and refused.
    pub state: crate::sim_state::StateStats,
    /// Commands decided so far, and each one's answer (`true`: fails), so a
    /// redelivered command gets the answer it got the first time.
    decided: AtomicU64,
    answers: Mutex<HashMap<String, bool>>,
}

/// How many answers [`Stats`] remembers for redelivered commands.
const REMEMBERED_ANSWERS: usize = 10_000;

impl Stats {
    /// Whether the command with this id is answered with a failure. Of the
    /// first `n` commands decided, exactly `floor(n * fail_pct / 100)` fail,
    /// spread evenly (with 20 %, every fifth), whatever the fleet's size;
    /// a command seen before gets the same answer again.
    pub fn command_fails(&self, command_id: &str, fail_pct: f64) -> bool {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&fails) = answers.get(command_id) {
            return fails;
        }
        let n = self.decided.fetch_add(1, Ordering::Relaxed);
        let fails = nth_fails(n, fail_pct);
        if answers.len() >= REMEMBERED_ANSWERS {
            answers.clear();
        }
        answers.insert(command_id.to_string(), fails);
        fails
    }
}

/// Whether the `n`th command (from 0) is one of the `fail_pct` percent
/// that fail: the count of failures among the first `n + 1` is
/// `floor((n + 1) * fail_pct / 100)`.
fn nth_fails(n: u64, fail_pct: f64) -> bool {
    let failures = |count: u64| (count as f64 * fail_pct / 100.0 + 1e-9).floor() as u64;
    failures(n + 1) > failures(n)
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
        for (i, id) in device_ids(prefix, count).into_iter().enumerate() {
            let i = i + 1;
            let resp = self
                .client
                .post(format!("{}/api/v1/devices", self.device_url))
                .bearer_auth(&self.token)
                .json(&json!({
                    "id": id,
                    "name": format!("Simulated {i}"),
                    "device_type": device_type,
                    "tags": ["simulated"],
                    "metadata": { "location": location(i) },
                }))
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

/// Where the `i`th simulated device (from 1) stands: around one of a few
/// cities in turn, a few kilometres from its centre, the same on every run.
fn location(i: usize) -> Value {
    const CITIES: [(f64, f64); 8] = [
        (45.764, 4.836),    // Lyon
        (31.230, 121.474),  // Shanghai
        (52.520, 13.405),   // Berlin
        (-23.551, -46.633), // São Paulo
        (41.878, -87.630),  // Chicago
        (1.352, 103.820),   // Singapore
        (-1.292, 36.822),   // Nairobi
        (-33.869, 151.209), // Sydney
    ];
    let (lat, lon) = CITIES[(i - 1) % CITIES.len()];
    // A deterministic spread of up to about 0.1° around the centre.
    let spread = |salt: usize| ((i * 7919 + salt * 104_729) % 2001) as f64 / 10_000.0 - 0.1;
    let round = |v: f64| (v * 100_000.0).round() / 100_000.0;
    json!({ "lat": round(lat + spread(1)), "lon": round(lon + spread(2)) })
}

impl Api {
    /// Which of these devices device-service shows online, in the order
    /// given; devices that do not exist are not online.
    pub async fn online(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let answers: Vec<anyhow::Result<Option<String>>> = futures_util::stream::iter(ids)
            .map(|id| async move {
                let resp = self
                    .client
                    .get(format!("{}/api/v1/devices/{id}", self.device_url))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .with_context(|| format!("reaching {}", self.device_url))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !resp.status().is_success() {
                    bail!("reading {id} failed: {}", error_text(resp).await);
                }
                let body: Value = resp.json().await?;
                Ok((body["online"] == Value::Bool(true)).then(|| id.clone()))
            })
            .buffered(16)
            .collect()
            .await;
        let mut online = Vec::new();
        for answer in answers {
            online.extend(answer?);
        }
        Ok(online)
    }

    /// Waits until device-service shows every one of these devices online;
    /// returns those it still does not show after `within`.
    pub async fn wait_online(
        &self,
        ids: &[String],
        within: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut missing = ids.to_vec();
        loop {
            let online = self.online(&missing).await?;
            missing.retain(|id| !online.contains(id));
            if missing.is_empty() || Instant::now() >= deadline {
                return Ok(missing);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The ids of a simulated fleet: `{prefix}-00001` to `{prefix}-{count}`.
pub fn device_ids(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}-{i:05}")).collect()
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match body["error"]["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// A connected simulated device; a clone is another handle on the same
/// connection.
#[derive(Clone)]
pub struct Device {
    pub id: String,
    pub client: AsyncClient,
    /// Its reported state, when it keeps one.
    pub state: Option<Arc<DeviceState>>,
}

/// How a simulated device behaves beyond telemetry.
pub struct Behaviour {
    /// Percentage of commands answered with a failure.
    pub fail_commands: f64,
    /// QoS 1 messages in flight at most.
    pub inflight: u16,
    /// Accepts over-the-air updates on `devices/{id}/ota`.
    pub ota: Option<Arc<crate::ota::Ota>>,
    /// Keeps a reported state with this sampling interval (ms) and applies
    /// desired state.
    pub sampling_ms: Option<u64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            fail_commands: 0.0,
            inflight: 100,
            ota: None,
            sampling_ms: None,
        }
    }
}

/// How many times a first connection refused with "server unavailable"
/// (the registry did not answer in time) is tried again.
const UNAVAILABLE_RETRIES: u32 = 5;

/// Connects a device that answers commands: its credentials, a last will
/// that marks it offline, its command topic subscribed. The event loop runs
/// on its own task, answering commands and counting acknowledgements; a
/// lost connection is made again with backoff.
pub async fn connect(
    creds: &Credentials,
    host: &str,
    port: u16,
    stats: Arc<Stats>,
    fail_commands: f64,
    inflight: u16,
) -> anyhow::Result<Device> {
    let behaviour = Behaviour {
        fail_commands,
        inflight,
        ..Behaviour::default()
    };
    connect_with(creds, host, port, stats, behaviour).await
}

/// [`connect`], with over-the-air updates and device state as `behaviour`
/// says.
pub async fn connect_with(
    creds: &Credentials,
    host: &str,
    port: u16,
    stats: Arc<Stats>,
    behaviour: Behaviour,
) -> anyhow::Result<Device> {
    let Behaviour {
        fail_commands,
        inflight,
        ota,
        sampling_ms,
    } = behaviour;
    let state = sampling_ms.map(DeviceState::new);
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
    let (client, mut event_loop) = AsyncClient::new(options, usize::from(inflight.max(10)) * 2);
    // Wait for the broker's answer to CONNECT before going on. "Server
    // unavailable" is retried, as a real device would; anything else ends
    // the start with the broker's address in the error.
    let mut attempt = 0;
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable))
                if attempt < UNAVAILABLE_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
            Err(ConnectionError::ConnectionRefused(code)) => {
                bail!(
                    "{} was refused by the MQTT broker at {host}:{port}: {code:?}",
                    creds.id
                )
            }
            Err(e) => bail!(
                "{} could not connect to the MQTT broker at {host}:{port}: {e}",
                creds.id
            ),
        }
    }
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let id = creds.id.clone();
    let fw_version = {
        let ota = ota.clone();
        move |id: &str| {
            ota.as_ref().map_or_else(
                || crate::ota::INITIAL_VERSION.to_string(),
                |o| o.running_version(id),
            )
        }
    };
    let with_ota = ota.is_some();
    subscribe_and_announce(&client, &id, with_ota, state.as_deref(), &fw_version(&id))?;
    let responder = client.clone();
    let device_state = state.clone();
    tokio::spawn(async move {
        let mut up = true;
        let mut backoff = reconnect_backoff();
        loop {
            match event_loop.poll().await {
                // Connected again after a loss: a clean session, so
                // subscribe again and say so.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    up = true;
                    backoff = reconnect_backoff();
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(device = %id, "reconnected");
                    let fw = fw_version(&id);
                    if subscribe_and_announce(
                        &responder,
                        &id,
                        with_ota,
                        device_state.as_deref(),
                        &fw,
                    )
                    .is_err()
                    {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/commands") => {
                    answer_command(&responder, &id, &p.payload, fail_commands, &stats);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/ota") => {
                    if let Some(ota) = &ota {
                        ota.accept(&responder, &id, &p.payload);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let known = device_state.as_deref().is_some_and(|state| {
                        crate::sim_state::receive(
                            &responder,
                            &id,
                            &p.topic,
                            &p.payload,
                            state,
                            &fw_version(&id),
                            &stats.state,
                        )
                    });
                    if !known {
                        tracing::debug!(device = %id, topic = %p.topic, "a message on a topic the device does not use");
                    }
                }
                // After DISCONNECT the event loop would reconnect: drop it
                // instead, which closes the socket.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    if up {
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
                Ok(_) => {}
                // Every client handle is gone: the device was dropped.
                Err(ConnectionError::RequestsDone) => {
                    if up {
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if up {
                        up = false;
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(device = %id, error = %e, "connection lost; reconnecting");
                    } else {
                        tracing::debug!(device = %id, error = %e, "reconnecting failed");
                    }
                    // The next poll connects again.
                    tokio::time::sleep(backoff.next_delay() + jitter()).await;
                }
            }
        }
    });
    Ok(Device {
        id: creds.id.clone(),
        client,
        state,
    })
}

/// Between attempts to reconnect: 250 ms, doubling to 10 s.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(10))
}

/// Up to half a second more, so a fleet cut off at once does not come
/// back in one burst.
fn jitter() -> Duration {
    let [a, b] = wf_common::random::bytes::<2>();
    Duration::from_millis(u64::from(u16::from_le_bytes([a, b])) % 500)
}

/// Subscribes to the device's command (OTA and state) topics and publishes
/// `online`, then its reported state. Queued without waiting, so the event
/// loop can call it.
fn subscribe_and_announce(
    client: &AsyncClient,
    id: &str,
    with_ota: bool,
    state: Option<&DeviceState>,
    fw_version: &str,
) -> anyhow::Result<()> {
    client.try_subscribe(format!("devices/{id}/commands"), QoS::AtLeastOnce)?;
    if with_ota {
        client.try_subscribe(crate::ota::Ota::topic(id), QoS::AtLeastOnce)?;
    }
    if state.is_some() {
        for topic in crate::sim_state::topics(id) {
            client.try_subscribe(topic, QoS::AtLeastOnce)?;
        }
    }
    client.try_publish(
        format!("devices/{id}/status"),
        QoS::AtLeastOnce,
        false,
        "online",
    )?;
    if let Some(state) = state {
        crate::sim_state::announce(client, id, state, fw_version)?;
    }
    Ok(())
}

/// Answers a command. Runs on the device's event loop, so the answer is
/// queued without waiting (waiting there for room in a full queue would
/// never end).
fn answer_command(
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
    let failed = stats.command_fails(&id, fail_pct);
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
        .try_publish(topic, QoS::AtLeastOnce, false, response.to_string())
        .is_err()
    {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long device-service may take to show a fleet online, plus 10 ms a
/// device.
const ONLINE_WITHIN: Duration = Duration::from_secs(10);

/// A telemetry message as a simulated sensor sends it: the `step`-th
/// reading of a device, whose curves are shifted by `phase` so that devices
/// differ. Values drift smoothly from one reading to the next.
pub fn reading(step: u64, phase: u64) -> String {
    let t = step as f64 + phase as f64 * 7.0;
    json!({
        "temperature": 20.0 + (t / 30.0).sin() * 5.0,
        "humidity": 50.0 + (t / 45.0).cos() * 10.0,
        // Discharges from 100 to 20 over 800 readings, then charges back.
        "battery": 100.0 - ((t % 1600.0) - 800.0).abs().mul_add(-0.1, 80.0),
        "ts": wf_common::now_millis(),
    })
    .to_string()
}

/// Publishes a device's telemetry every `sampling_ms` of its state, which a
/// desired change may set at any time (the next message then follows the
/// last by the new interval). The first message goes after `offset`.
async fn publish_telemetry(
    client: AsyncClient,
    id: String,
    state: Arc<DeviceState>,
    phase: u64,
    offset: Duration,
    stats: Arc<Stats>,
) {
    let topic = format!("devices/{id}/telemetry");
    let mut sampling = state.watch_sampling();
    let mut next = tokio::time::Instant::now() + offset;
    let mut last = None;
    let mut step = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                if client.try_publish(&topic, QoS::AtLeastOnce, false, reading(step, phase)).is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                step += 1;
                let now = tokio::time::Instant::now();
                last = Some(now);
                next = now + Duration::from_millis(*sampling.borrow_and_update());
            }
            changed = sampling.changed() => {
                if changed.is_err() {
                    return;
                }
                let interval = Duration::from_millis(*sampling.borrow_and_update());
                if let Some(last) = last {
                    next = last + interval;
                }
            }
        }
    }
}

/// One line on what the fleet reports: how many devices sample at which
/// interval (the three most common), and the desired keys applied and
/// refused so far.
fn state_summary(devices: &[Device], stats: &crate::sim_state::StateStats) -> String {
    let mut by_interval: HashMap<u64, usize> = HashMap::new();
    for state in devices.iter().filter_map(|d| d.state.as_ref()) {
        *by_interval.entry(state.sampling_ms()).or_default() += 1;
    }
    let mut groups: Vec<(u64, usize)> = by_interval.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut shown: Vec<String> = groups
        .iter()
        .take(3)
        .map(|(ms, n)| format!("{n} at {ms} ms"))
        .collect();
    if groups.len() > 3 {
        let rest: usize = groups[3..].iter().map(|(_, n)| n).sum();
        shown.push(format!("{rest} at other intervals"));
    }
    format!(
        "reported state: sampling_ms {}; desired keys applied {}, refused {}",
        shown.join(", "),
        stats.applied.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
    )
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.fail_commands),
        "--fail-commands is a percentage"
    );
    let ota = crate::ota::Ota::new(&args.ota)?;
    // Ctrl-C is taken from the start, so that it always ends the run
    // cleanly, with its summary, whatever it is doing.
    let stop = wf_common::shutdown::Shutdown::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wf_common::shutdown::signal().await;
            stop.trigger();
        }
    });
    let api = Api::login(
        &args.auth_url,
        &args.device_url,
        &args.username,
        &args.password,
    )
    .await?;
    let ids = device_ids(&args.prefix, args.devices);
    // Provisioning gives existing devices a new secret and connecting
    // takes over their client ids: a simulation already running with
    // these devices would lose them.
    let busy = api.online(&ids).await?;
    if let Some(first) = busy.first() {
        bail!(
            "{} of the {} devices {}-00001..{} are online ({first} among them): another \
             simulation is running with --prefix {}, and starting this one would take over its \
             devices. Stop it, or choose another --prefix. (Devices of a simulation that was \
             killed stay online until their keep-alive runs out, about 45 s.)",
            busy.len(),
            ids.len(),
            args.prefix,
            ids[ids.len() - 1],
            args.prefix,
        );
    }
    eprintln!("provisioning {} devices...", args.devices);
    let creds = api
        .provision(&args.prefix, args.devices, &args.device_type)
        .await?;
    ota.assign(&ids);
    if args.ota.ota_fail > 0.0 || args.ota.ota_hang > 0.0 {
        eprintln!("{}", ota.fates_summary());
    }
    let stats = Arc::new(Stats::default());
    // Each device samples at the same interval at first, so that the fleet
    // publishes --rate messages a second in all.
    let sampling_ms = ((args.devices as f64 * 1000.0 / args.rate).round() as u64).max(1);
    let mut devices = Vec::with_capacity(creds.len());
    for c in &creds {
        let behaviour = Behaviour {
            fail_commands: args.fail_commands,
            inflight: 100,
            ota: Some(ota.clone()),
            sampling_ms: Some(sampling_ms),
        };
        devices.push(
            connect_with(c, &args.mqtt_host, args.mqtt_port, stats.clone(), behaviour).await?,
        );
    }
    // A broker that accepts the devices is not proof that it is this
    // platform's: only device-service seeing them online is.
    let within = ONLINE_WITHIN + Duration::from_millis(10 * ids.len() as u64);
    let missing = tokio::select! {
        missing = api.wait_online(&ids, within) => missing?,
        // Stopped before it knew: the summary follows.
        () = stop.wait() => Vec::new(),
    };
    if let Some(first) = missing.first() {
        bail!(
            "{} of {} devices connected to the MQTT broker at {}:{}, but device-service at {} \
             does not show them online after {} s ({first} among them): is that broker the one \
             of this platform (--mqtt-host, --mqtt-port)?",
            missing.len(),
            ids.len(),
            args.mqtt_host,
            args.mqtt_port,
            args.device_url,
            within.as_secs(),
        );
    }
    eprintln!(
        "{} devices connected and online; each publishes every {sampling_ms} ms, {} messages/s \
         in all, until a desired sampling_ms changes it (Ctrl-C stops)",
        devices.len(),
        args.rate
    );

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs(d));
    // Each device publishes on its own clock, the fleet's first messages
    // spread evenly over one interval.
    let mut publishers = tokio::task::JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        let Some(state) = device.state.clone() else {
            continue;
        };
        let offset = Duration::from_secs_f64(i as f64 / args.rate);
        publishers.spawn(publish_telemetry(
            device.client.clone(),
            device.id.clone(),
            state,
            i as u64,
            offset,
            stats.clone(),
        ));
    }
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut last_sent = 0;
    let mut last_state = String::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = report.tick() => {
                let sent = stats.sent.load(Ordering::Relaxed);
                let reconnects = stats.reconnects.load(Ordering::Relaxed);
                eprintln!(
                    "sent {sent} ({}/s)  acked {}  errors {}  commands answered {} ({} failed)  connected {}{}",
                    sent - last_sent,
                    stats.acked.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed),
                    stats.commands.load(Ordering::Relaxed),
                    stats.commands_failed.load(Ordering::Relaxed),
                    stats.connected.load(Ordering::Relaxed),
                    if reconnects > 0 { format!("  reconnects {reconnects}") } else { String::new() },
                );
                last_sent = sent;
                // What the fleet reports, when it changed.
                let state = state_summary(&devices, &stats.state);
                if state != last_state {
                    eprintln!("{state}");
                    last_state = state;
                }
                if ota.stats.received.load(Ordering::Relaxed) > 0 {
                    eprintln!("{}", ota.summary());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    publishers.abort_all();
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
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn readings_drift_smoothly_and_devices_differ() {
        let temperature = |step, phase| -> f64 {
            let v: serde_json::Value = serde_json::from_str(&super::reading(step, phase)).unwrap();
            v["temperature"].as_f64().unwrap()
        };
        let battery = |step, phase| -> f64 {
            let v: serde_json::Value = serde_json::from_str(&super::reading(step, phase)).unwrap();
            v["battery"].as_f64().unwrap()
        };
        for step in 0..5000 {
            let jump = (temperature(step + 1, 3) - temperature(step, 3)).abs();
            assert!(jump < 0.2, "a jump of {jump} at step {step}");
            let drop = (battery(step + 1, 3) - battery(step, 3)).abs();
            assert!(drop < 0.11, "the battery jumped {drop} at step {step}");
            assert!((20.0..=100.0).contains(&battery(step, 3)));
        }
        assert!((temperature(10, 0) - temperature(10, 5)).abs() > 0.5);
    }

    use super::*;

    #[test]
    fn exactly_the_chosen_share_of_commands_fails() {
        let stats = Stats::default();
        let answers: Vec<bool> = (0..50)
            .map(|i| stats.command_fails(&format!("019ab2d1-{i:04}"), 20.0))
            .collect();
        // Every fifth, from the first command on: with five commands sent
        // by hand, one comes back failed.
        assert_eq!(answers.iter().filter(|f| **f).count(), 10);
        assert_eq!(answers[..5], [false, false, false, false, true]);
        // A redelivered command gets the same answer and is not counted again.
        assert!(stats.command_fails("019ab2d1-0004", 20.0));
        assert!(!stats.command_fails("019ab2d1-0005", 20.0));
        assert!(!stats.command_fails("019ab2d1-new", 20.0));

        for (pct, of, expected) in [
            (0.0, 50, 0),
            (100.0, 50, 50),
            (10.0, 50, 5),
            (33.0, 100, 33),
        ] {
            let fails = (0..of).filter(|&n| nth_fails(n, pct)).count();
            assert_eq!(fails, expected, "{pct} % of {of}");
        }
    }

    #[test]
    fn fleet_ids_are_numbered_from_one() {
        assert_eq!(device_ids("sim", 2), ["sim-00001", "sim-00002"]);
    }
}
