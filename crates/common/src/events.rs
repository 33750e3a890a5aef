//! The event bus between services: at-least-once delivery to consumer
//! groups. Every member of a group shares the group's events; every group
//! sees every event. Two implementations behind one trait:
//!
//! - [`InProcessBus`] for the all-in-one mode: bounded queues per group
//!   (publishers wait when a consumer falls behind), and deliveries a
//!   consumer did not acknowledge are handed back when it goes away.
//! - [`RedisBus`] for the distributed mode: one Redis Stream per topic and a
//!   consumer group per service. Unacknowledged entries are re-read by the
//!   same consumer after a restart, and claimed by others once idle.
//!
//! Handlers must be idempotent: a delivery can arrive twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Topic names, as DESIGN.md fixes them.
pub mod topics {
    pub const DEVICE_DATA_RECEIVED: &str = "device.data.received";
    pub const DEVICE_STATUS_CHANGED: &str = "device.status.changed";
    pub const DEVICE_COMMAND_RESPONDED: &str = "device.command.responded";
    pub const DEVICE_OTA_PROGRESS: &str = "device.ota.progress";
    pub const DEVICE_DELETED: &str = "device.deleted";
    pub const MQTT_BROKER_HEARTBEAT: &str = "mqtt.broker.heartbeat";
    /// An operator's change, for auth-service's audit log
    /// ([`crate::audit::AuditEvent`]).
    pub const AUDIT_RECORDED: &str = "audit.recorded";
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("malformed event: {0}")]
    Malformed(String),
}

impl From<redis::RedisError> for BusError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// One event as a consumer receives it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Acknowledge with this id: `{milliseconds}-{sequence}`, the time the
    /// event was published and its place in the stream (Redis Streams ids;
    /// the in-process bus makes them alike).
    pub id: String,
    pub payload: Arc<[u8]>,
}

impl Delivery {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.payload).map_err(|e| BusError::Malformed(e.to_string()))
    }

    /// When the event was published (milliseconds since the epoch), read
    /// from its id.
    pub fn published_at(&self) -> Option<i64> {
        self.id.split_once('-')?.0.parse().ok()
    }

    /// The event's place in its stream, read from its id.
    fn sequence(&self) -> u64 {
        self.id
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

/// Records how long each event of a fresh batch waited on the bus, as
/// `wf_event_lag_seconds{topic, group}`: the consumer's lag behind its
/// publishers (for `device.data.received`, the ingest lag).
fn record_lag(topic: &'static str, group: &str, batch: &[Delivery]) {
    let now = crate::now_millis();
    let histogram = metrics::histogram!(
        "wf_event_lag_seconds",
        "topic" => topic,
        "group" => group.to_string()
    );
    for d in batch {
        if let Some(at) = d.published_at() {
            histogram.record((now - at).max(0) as f64 / 1000.0);
        }
    }
}

/// Tells when the events of one publish are safe: resolved at once on the
/// Redis bus (the events are in the stream when `XADD` returns), and on the
/// in-process bus once every consumer group has acknowledged every event,
/// that is, once each group's handler has finished with it (device-service
/// has committed the telemetry to its database).
#[must_use]
pub struct Confirmation(Option<oneshot::Receiver<()>>);

impl Confirmation {
    /// Already confirmed.
    pub fn now() -> Self {
        Self(None)
    }

    /// Waits for the confirmation. `Err` when the events were dropped
    /// before every group had handled them (the bus went away, or there
    /// was no room to keep them for a group yet to come).
    pub async fn wait(self) -> Result<(), BusError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.map_err(|_| {
                BusError::Unavailable("the events were dropped before they were handled".into())
            }),
        }
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes events in order.
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), BusError>;
    /// Publishes events in order, and tells when they are safe (see
    /// [`Confirmation`]). By default, once [`EventBus::publish`] returned:
    /// right for a bus that stores what it accepts.
    async fn publish_confirmed(
        &self,
        topic: &str,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Confirmation, BusError> {
        self.publish(topic, payloads).await?;
        Ok(Confirmation::now())
    }
    /// Joins `group` as `consumer` (a name stable across restarts of the
    /// same replica lets it resume its unacknowledged events).
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, BusError>;
    /// Whether the bus is reachable, for readiness.
    async fn ping(&self) -> Result<(), BusError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` events, waiting at most `wait` for the first; empty when
    /// none came.
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
    /// Marks events handled; they will not be delivered again.
    async fn ack(&mut self, ids: &[String]) -> Result<(), BusError>;
}

/// Serializes each item as one event and publishes them.
pub async fn publish_json<T: Serialize>(
    bus: &dyn EventBus,
    topic: &str,
    items: &[T],
) -> Result<(), BusError> {
    let payloads = items
        .iter()
        .map(|i| serde_json::to_vec(i).map_err(|e| BusError::Malformed(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    bus.publish(topic, payloads).await
}

/// Decodes each delivery of a batch, logging and skipping the ones that
/// do not parse (a handler that failed on them would be retried forever).
pub fn decode_all<T: serde::de::DeserializeOwned>(topic: &str, batch: &[Delivery]) -> Vec<T> {
    batch
        .iter()
        .filter_map(|d| match d.decode::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(topic, id = %d.id, error = %e, "skipping an undecodable event");
                None
            }
        })
        .collect()
}

/// Consumes `topic` as a member of `group` until `stop` resolves. Each batch
/// goes to `handle`; on success it is acknowledged, on failure it is retried
/// (with backoff) before anything newer is read, so a database outage delays
/// events but loses none. Handlers skip (and log) payloads they cannot
/// decode rather than failing on them forever.
pub async fn run_consumer<H, Fut>(
    bus: Arc<dyn EventBus>,
    topic: &'static str,
    group: String,
    consumer: String,
    max_batch: usize,
    stop: impl Future<Output = ()> + Send,
    mut handle: H,
) where
    H: FnMut(Vec<Delivery>) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(100);
    let mut subscription: Option<Box<dyn Subscription>> = None;
    let mut pending: Vec<Delivery> = Vec::new();
    loop {
        let sub = match &mut subscription {
            Some(s) => s,
            None => {
                let joined = tokio::select! {
                    () = &mut stop => return,
                    s = bus.subscribe(topic, &group, &consumer) => s,
                };
                match joined {
                    Ok(s) => {
                        backoff = Duration::from_millis(100);
                        subscription.insert(s)
                    }
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "subscribing failed; retrying");
                        if sleep_or_stop(&mut backoff, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        if pending.is_empty() {
            let next = tokio::select! {
                () = &mut stop => return,
                n = sub.next(max_batch, Duration::from_secs(1)) => n,
            };
            match next {
                Ok(batch) => {
                    record_lag(topic, &group, &batch);
                    pending = batch;
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "reading events failed; reconnecting");
                    subscription = None;
                    if sleep_or_stop(&mut backoff, &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
            if pending.is_empty() {
                continue;
            }
        }
        let ids: Vec<String> = pending.iter().map(|d| d.id.clone()).collect();
        match handle(pending.clone()).await {
            Ok(()) => {
                pending.clear();
                backoff = Duration::from_millis(100);
                if let Err(e) = sub.ack(&ids).await {
                    // Not acknowledged: delivered again later, which
                    // idempotent handlers tolerate.
                    tracing::warn!(topic, error = %e, "acknowledging events failed");
                    subscription = None;
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, events = ids.len(), "handling events failed; retrying");
                if sleep_or_stop(&mut backoff, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Waits out `backoff` (then doubles it, up to 10 s); `true` when `stop`
/// resolved first, which must then not be polled again.
async fn sleep_or_stop(
    backoff: &mut Duration,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let stopped = tokio::select! {
        () = stop.as_mut() => true,
        () = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    stopped
}

// ---------------------------------------------------------------------------
// Event payloads

/// A metric value: JSON numbers, booleans and strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// The longest text value stored, in bytes.
pub const MAX_TEXT_VALUE_BYTES: usize = 4096;

/// Whether `name` can name a metric: 1 to 64 letters, digits, `.`, `_` or
/// `-`. The gateway refuses telemetry with any other name, so that what it
/// acknowledges can be stored.
pub fn is_metric_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MetricValue {
    /// Whether the store takes the value (text up to
    /// [`MAX_TEXT_VALUE_BYTES`]).
    pub fn is_storable(&self) -> bool {
        !matches!(self, Self::Text(t) if t.len() > MAX_TEXT_VALUE_BYTES)
    }
}

/// One telemetry message from one device (`devices/{id}/telemetry`).
/// `device.data.received` carries a JSON array of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryMessage {
    pub device_id: String,
    /// The device's timestamp (ms), or the time the gateway received it.
    pub ts: i64,
    pub values: Vec<(String, MetricValue)>,
}

/// `device.status.changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub device_id: String,
    pub online: bool,
    /// When it happened (ms).
    pub at: i64,
    /// `connected`, `disconnected`, `status_message` or `last_will`
    /// from the gateway; `gateway_lost` or `server_restart` from
    /// device-service.
    pub reason: String,
    /// The embedded broker instance that holds the device's connection
    /// (see [`BrokerHeartbeat`]); none with an external broker, whose
    /// connections no gateway instance owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// `device.command.responded`, from `devices/{id}/commands/response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponded {
    pub device_id: String,
    pub command_id: String,
    /// `succeeded` or `failed` (anything else the device says is `failed`).
    pub status: String,
    #[serde(default)]
    pub result: serde_json::Value,
    pub at: i64,
}

/// `device.ota.progress`, from `devices/{id}/ota/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaProgress {
    pub device_id: String,
    pub task_id: String,
    pub state: String,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    pub at: i64,
}

/// `mqtt.broker.heartbeat`: an embedded broker instance (one per
/// mqtt-gateway process start) is alive and holds the connections its
/// status events named, until `at + lease_ms`. When the lease lapses with
/// no new heartbeat (a crashed or cut-off gateway), device-service takes
/// that instance's devices offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub broker: String,
    pub at: i64,
    pub lease_ms: i64,
}

/// `device.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDeleted {
    pub device_id: String,
    pub at: i64,
}

// ---------------------------------------------------------------------------
// In-process

/// Events queued per group before publishers wait.
const IN_PROCESS_QUEUE: usize = 16_384;

/// An event in a group's queue, with the receipt of its publish when the
/// publisher waits for a confirmation.
#[derive(Clone)]
struct Entry {
    delivery: Delivery,
    receipt: Option<Arc<Receipt>>,
}

/// Counts the acknowledgements one confirmed publish still waits for.
struct Receipt {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Receipt {
    fn acknowledged(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.give_up(true);
        }
    }

    /// Resolves the confirmation: confirmed, or failed (the sender dropped).
    fn give_up(&self, confirmed: bool) {
        let sender = self.done.lock().ok().and_then(|mut d| d.take());
        if let (Some(tx), true) = (sender, confirmed) {
            let _ = tx.send(());
        }
    }
}

type Queue = (
    mpsc::Sender<Entry>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<Entry>>>,
);

/// The all-in-one bus. Events published before any group subscribed to a
/// topic are kept (up to the queue size) for the first group that does.
#[derive(Default)]
pub struct InProcessBus {
    topics: Mutex<HashMap<String, TopicState>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct TopicState {
    groups: HashMap<String, Queue>,
    backlog: Vec<Entry>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes; with `confirm`, every event carries a receipt that every
    /// group present (or the first to come) must acknowledge.
    async fn publish_entries(
        &self,
        topic: &str,
        payloads: Vec<Vec<u8>>,
        confirm: bool,
    ) -> Result<Confirmation, BusError> {
        if payloads.is_empty() {
            return Ok(Confirmation::now());
        }
        let deliveries: Vec<Delivery> = payloads
            .into_iter()
            .map(|p| Delivery {
                id: format!(
                    "{}-{}",
                    crate::now_millis(),
                    self.next_id.fetch_add(1, Ordering::Relaxed)
                ),
                payload: p.into(),
            })
            .collect();
        let mut confirmation = Confirmation::now();
        let (entries, senders) = {
            let mut topics = self
                .topics
                .lock()
                .map_err(|_| BusError::Unavailable("poisoned".into()))?;
            let state = topics.entry(topic.to_string()).or_default();
            let receipt = confirm.then(|| {
                let (tx, rx) = oneshot::channel();
                confirmation = Confirmation(Some(rx));
                Arc::new(Receipt {
                    remaining: AtomicUsize::new(deliveries.len() * state.groups.len().max(1)),
                    done: Mutex::new(Some(tx)),
                })
            });
            let entries = deliveries.into_iter().map(|delivery| Entry {
                delivery,
                receipt: receipt.clone(),
            });
            if state.groups.is_empty() {
                let room = IN_PROCESS_QUEUE.saturating_sub(state.backlog.len());
                let count = entries.len();
                if count > room {
                    tracing::warn!(
                        topic,
                        dropped = count - room,
                        "no consumer for topic; backlog full"
                    );
                    if let Some(receipt) = &receipt {
                        receipt.give_up(false);
                    }
                }
                state.backlog.extend(entries.take(room));
                return Ok(confirmation);
            }
            let senders: Vec<mpsc::Sender<Entry>> =
                state.groups.values().map(|(tx, _)| tx.clone()).collect();
            (entries.collect::<Vec<_>>(), senders)
        };
        for tx in senders {
            for e in &entries {
                tx.send(e.clone())
                    .await
                    .map_err(|_| BusError::Unavailable("consumer group closed".into()))?;
            }
        }
        Ok(confirmation)
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), BusError> {
        self.publish_entries(topic, payloads, false).await.map(drop)
    }

    /// Confirmed once every consumer group has acknowledged every event:
    /// nothing in memory is left to lose.
    async fn publish_confirmed(
        &self,
        topic: &str,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Confirmation, BusError> {
        self.publish_entries(topic, payloads, true).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        _consumer: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let mut topics = self
            .topics
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?;
        let state = topics.entry(topic.to_string()).or_default();
        let first_group = state.groups.is_empty();
        let (tx, rx) = state
            .groups
            .entry(group.to_string())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(IN_PROCESS_QUEUE);
                (tx, Arc::new(tokio::sync::Mutex::new(rx)))
            })
            .clone();
        if first_group {
            for e in std::mem::take(&mut state.backlog) {
                let _ = tx.try_send(e);
            }
        }
        Ok(Box::new(InProcessSubscription {
            tx,
            rx,
            in_flight: HashMap::new(),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct InProcessSubscription {
    tx: mpsc::Sender<Entry>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Entry>>>,
    in_flight: HashMap<String, Entry>,
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut rx = match tokio::time::timeout(wait, self.rx.lock()).await {
            Ok(rx) => rx,
            Err(_) => return Ok(Vec::new()),
        };
        let mut entries = Vec::new();
        if let Ok(0) = tokio::time::timeout(wait, rx.recv_many(&mut entries, max.max(1))).await {
            return Err(BusError::Unavailable("bus closed".into()));
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(e.delivery.clone());
            self.in_flight.insert(e.delivery.id.clone(), e);
        }
        Ok(out)
    }

    async fn ack(&mut self, ids: &[String]) -> Result<(), BusError> {
        for id in ids {
            if let Some(Entry {
                receipt: Some(receipt),
                ..
            }) = self.in_flight.remove(id)
            {
                receipt.acknowledged();
            }
        }
        Ok(())
    }
}

impl Drop for InProcessSubscription {
    /// Unacknowledged deliveries go back to the group.
    fn drop(&mut self) {
        let mut pending: Vec<Entry> = self.in_flight.drain().map(|(_, e)| e).collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|e| e.delivery.sequence());
        let tx = self.tx.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for e in pending {
                    let _ = tx.send(e).await;
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Redis Streams

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisBusConfig {
    /// Prefix of every stream key.
    pub stream_prefix: String,
    /// Streams are trimmed to about this many entries.
    pub max_len: usize,
    /// Unacknowledged entries idle this long are claimed by another consumer.
    pub claim_idle_ms: u64,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            stream_prefix: "wf-iot:".into(),
            max_len: 1_000_000,
            claim_idle_ms: 30_000,
        }
    }
}

/// The distributed bus on Redis Streams.
pub struct RedisBus {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    config: RedisBusConfig,
}

/// The field holding an event's payload in a stream entry.
const FIELD: &str = "p";

impl RedisBus {
    pub async fn connect(url: &str, config: RedisBusConfig) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            client,
            conn,
            config,
        })
    }

    /// [`RedisBus::connect`], waiting with capped exponential backoff while
    /// Redis cannot be reached (a malformed URL fails at once). Once
    /// connected, the bus reconnects by itself after an outage.
    pub async fn connect_retrying(url: &str, config: RedisBusConfig) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let conn = crate::retry::until_ok(
            "redis (event bus)",
            crate::retry::Backoff::default(),
            |_: &redis::RedisError| false,
            || redis::aio::ConnectionManager::new(client.clone()),
        )
        .await?;
        Ok(Self {
            client,
            conn,
            config,
        })
    }

    fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.config.stream_prefix)
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), BusError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let key = self.key(topic);
        let mut pipe = redis::pipe();
        for p in payloads {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.max_len)
                .arg("*")
                .arg(FIELD)
                .arg(p)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let key = self.key(topic);
        let mut conn = self.conn.clone();
        // From the start of the stream, so events published before the
        // group first existed are not lost.
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Box::new(RedisSubscription {
            client: self.client.clone(),
            conn: None,
            key,
            group: group.to_string(),
            consumer: consumer.to_string(),
            own_pending_done: false,
            claim_idle_ms: self.config.claim_idle_ms,
            last_claim: None,
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

struct RedisSubscription {
    client: redis::Client,
    /// Its own connection: a blocking read would stall a shared one.
    conn: Option<redis::aio::MultiplexedConnection>,
    key: String,
    group: String,
    consumer: String,
    /// Entries delivered to this consumer before a restart are read first.
    own_pending_done: bool,
    claim_idle_ms: u64,
    last_claim: Option<Instant>,
}

impl RedisSubscription {
    async fn conn(&mut self) -> Result<redis::aio::MultiplexedConnection, BusError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    async fn read(
        &mut self,
        id: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(id);
        let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
            cmd.query_async(&mut conn).await;
        match reply {
            Ok(reply) => Ok(reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .filter_map(to_delivery)
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) => {
                self.conn = None;
                Err(e.into())
            }
        }
    }

    async fn claim(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
            redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut conn)
                .await;
        match reply {
            Ok(r) => Ok(r.claimed.into_iter().filter_map(to_delivery).collect()),
            Err(e) => {
                self.conn = None;
                Err(e.into())
            }
        }
    }
}

fn to_delivery(entry: redis::streams::StreamId) -> Option<Delivery> {
    let payload = match entry.map.get(FIELD)? {
        redis::Value::BulkString(b) => b.clone(),
        _ => return None,
    };
    Some(Delivery {
        id: entry.id,
        payload: payload.into(),
    })
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let max = max.max(1);
        if !self.own_pending_done {
            let pending = self.read("0", max, None).await?;
            if !pending.is_empty() {
                return Ok(pending);
            }
            self.own_pending_done = true;
        }
        let claim_every = Duration::from_millis(self.claim_idle_ms.max(100));
        if self.last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            self.last_claim = Some(Instant::now());
            let claimed = self.claim(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        self.read(">", max, Some(wait)).await
    }

    async fn ack(&mut self, ids: &[String]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(ids)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_values_cross_the_bus_bit_for_bit() {
        // Doubles whose shortest decimal form the default JSON parser reads
        // back one unit in the last place off.
        let values = [
            1.0715660391465826e-75,
            -1.81996730402717e-179,
            -1.603964615428183e143,
        ];
        let msg = TelemetryMessage {
            device_id: "d1".into(),
            ts: 1,
            values: values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("m{i}"), MetricValue::Number(*v)))
                .collect(),
        };
        let back: TelemetryMessage =
            serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
        for ((_, got), want) in back.values.iter().zip(values) {
            let MetricValue::Number(got) = got else {
                panic!("{got:?} is not a number")
            };
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{want:e} came back as {got:e}"
            );
        }
    }

    async fn drain(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n && Instant::now() < deadline {
            got.extend(
                sub.next(n - got.len(), Duration::from_millis(200))
                    .await
                    .unwrap(),
            );
        }
        got
    }

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|i| i.to_string().into_bytes()).collect()
    }

    fn numbers(d: &[Delivery]) -> Vec<u32> {
        d.iter()
            .map(|d| std::str::from_utf8(&d.payload).unwrap().parse().unwrap())
            .collect()
    }

    /// Every group sees every event; members of one group share them; what a
    /// consumer did not acknowledge comes back after it goes away.
    async fn bus_contract(bus: &dyn EventBus, topic: &str) {
        let mut a1 = bus.subscribe(topic, "a", "a1").await.unwrap();
        let mut b1 = bus.subscribe(topic, "b", "b1").await.unwrap();
        bus.publish(topic, payloads(0..10)).await.unwrap();

        let got_b = drain(&mut b1, 10).await;
        assert_eq!(numbers(&got_b), (0..10).collect::<Vec<_>>());
        b1.ack(&got_b.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();

        let got_a = drain(&mut a1, 10).await;
        assert_eq!(got_a.len(), 10);
        // Acknowledge the first half only, then "crash".
        a1.ack(&got_a[..5].iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
        drop(a1);
        let mut a1 = bus.subscribe(topic, "a", "a1").await.unwrap();
        let again = drain(&mut a1, 5).await;
        assert_eq!(numbers(&again), (5..10).collect::<Vec<_>>());
        a1.ack(&again.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(
            a1.next(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            b1.next(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Every delivery tells when it was published (what the lag metric is
    /// computed from), and events come back in publication order after a
    /// consumer goes away.
    async fn publish_times(bus: &dyn EventBus, topic: &str) {
        let before = crate::now_millis();
        bus.publish(topic, payloads(0..4)).await.unwrap();
        let after = crate::now_millis();
        let mut sub = bus.subscribe(topic, "lag", "l1").await.unwrap();
        let got = drain(&mut sub, 4).await;
        assert_eq!(numbers(&got), vec![0, 1, 2, 3]);
        for d in &got {
            let at = d.published_at().unwrap();
            assert!(
                (before - 1000..=after + 1000).contains(&at),
                "{} at {at}",
                d.id
            );
        }
    }

    #[tokio::test]
    async fn in_process_bus_keeps_the_contract() {
        let bus = InProcessBus::new();
        bus_contract(&bus, "t").await;
    }

    #[tokio::test]
    async fn in_process_deliveries_carry_their_publish_time() {
        publish_times(&InProcessBus::new(), "lag").await;
        let d = Delivery {
            id: "1795651234567-12".into(),
            payload: Arc::from(&b"{}"[..]),
        };
        assert_eq!(d.published_at(), Some(1_795_651_234_567));
        assert_eq!(d.sequence(), 12);
    }

    #[tokio::test]
    async fn in_process_confirmation_waits_for_every_group_to_acknowledge() {
        let bus = InProcessBus::new();
        let mut a = bus.subscribe("c", "a", "a1").await.unwrap();
        let mut b = bus.subscribe("c", "b", "b1").await.unwrap();
        let confirmation = bus.publish_confirmed("c", payloads(0..3)).await.unwrap();
        let waiting = tokio::spawn(confirmation.wait());

        let got_a = drain(&mut a, 3).await;
        a.ack(&got_a.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
        let got_b = drain(&mut b, 3).await;
        b.ack(&[got_b[0].id.clone(), got_b[1].id.clone()])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "confirmed before b handled all");

        // b goes away without acknowledging the last one: it comes back,
        // and the confirmation follows the acknowledgement of it.
        drop(b);
        let mut b = bus.subscribe("c", "b", "b2").await.unwrap();
        let again = drain(&mut b, 1).await;
        assert_eq!(numbers(&again), vec![2]);
        assert!(!waiting.is_finished());
        b.ack(&[again[0].id.clone()]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("confirmed")
            .unwrap()
            .unwrap();

        // Kept for the first group to come, confirmed when it handles it.
        let early = bus
            .publish_confirmed("later", payloads(0..1))
            .await
            .unwrap();
        let mut g = bus.subscribe("later", "g", "g1").await.unwrap();
        let got = drain(&mut g, 1).await;
        g.ack(&[got[0].id.clone()]).await.unwrap();
        early.wait().await.unwrap();
    }

    /// A bus that cannot be reached.
    struct Unreachable;

    #[async_trait]
    impl EventBus for Unreachable {
        async fn publish(&self, _: &str, _: Vec<Vec<u8>>) -> Result<(), BusError> {
            Err(BusError::Unavailable("unreachable".into()))
        }
        async fn subscribe(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<Box<dyn Subscription>, BusError> {
            Err(BusError::Unavailable("unreachable".into()))
        }
        async fn ping(&self) -> Result<(), BusError> {
            Err(BusError::Unavailable("unreachable".into()))
        }
    }

    #[tokio::test]
    async fn a_consumer_stopped_while_it_waits_to_retry_ends() {
        let stop = crate::shutdown::Shutdown::new();
        let consumer = tokio::spawn(run_consumer(
            Arc::new(Unreachable),
            "t",
            "g".into(),
            "c".into(),
            10,
            stop.wait(),
            |_| async { Ok(()) },
        ));
        // Within its first backoff (100 ms), after a failed subscribe.
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(2), consumer)
            .await
            .expect("the consumer ended")
            .expect("without a panic");
    }

    #[tokio::test]
    async fn in_process_confirmation_fails_when_the_events_are_dropped() {
        let bus = InProcessBus::new();
        bus.publish("full", payloads(0..IN_PROCESS_QUEUE as u32))
            .await
            .unwrap();
        let dropped = bus.publish_confirmed("full", payloads(0..1)).await.unwrap();
        assert!(dropped.wait().await.is_err());
    }

    #[tokio::test]
    async fn in_process_bus_keeps_events_published_before_anyone_listens() {
        let bus = InProcessBus::new();
        bus.publish("early", payloads(0..3)).await.unwrap();
        let mut sub = bus.subscribe("early", "g", "c").await.unwrap();
        assert_eq!(numbers(&drain(&mut sub, 3).await), vec![0, 1, 2]);
    }

    fn redis_url() -> Option<String> {
        std::env::var("WF_IOT_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
    }

    fn redis_config() -> RedisBusConfig {
        RedisBusConfig {
            stream_prefix: format!("wf-test-{}:", uuid::Uuid::new_v4().simple()),
            max_len: 10_000,
            claim_idle_ms: 200,
        }
    }

    #[tokio::test]
    async fn redis_deliveries_carry_their_publish_time() {
        let Some(url) = redis_url() else { return };
        let bus = RedisBus::connect(&url, redis_config()).await.unwrap();
        publish_times(&bus, "lag").await;
    }

    #[tokio::test]
    async fn redis_bus_keeps_the_contract() {
        let Some(url) = redis_url() else { return };
        let bus = RedisBus::connect(&url, redis_config()).await.unwrap();
        bus.ping().await.unwrap();
        bus_contract(&bus, "t").await;
    }

    #[tokio::test]
    async fn redis_bus_hands_a_dead_consumers_events_to_another() {
        let Some(url) = redis_url() else { return };
        let bus = RedisBus::connect(&url, redis_config()).await.unwrap();
        // Events published before the group exists are delivered too.
        bus.publish("t", payloads(0..20)).await.unwrap();
        let mut dead = bus.subscribe("t", "g", "replica-1").await.unwrap();
        let taken = drain(&mut dead, 20).await;
        assert_eq!(taken.len(), 20);
        drop(dead); // killed without acknowledging anything

        let mut survivor = bus.subscribe("t", "g", "replica-2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let claimed = drain(&mut survivor, 20).await;
        let mut got = numbers(&claimed);
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        survivor
            .ack(&claimed.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
}
