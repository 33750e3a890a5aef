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
//!
//! What travels is the event contract ([`crate::contract`]): services
//! publish payload types with [`publish`] (or [`Encoded`] and
//! [`publish_confirmed`]), each on its own topic and validated first, and
//! consume them with [`run_consumer`], which hands out [`Batch`]es of one
//! payload type. The [`EventBus`] trait itself moves bytes on named topics,
//! for the implementations of the bus.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::contract::Event;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("malformed event: {0}")]
    Malformed(String),
    /// An event its producer was about to publish failed
    /// [`Event::validate`]; nothing was published.
    #[error("invalid {topic} event: {reason}")]
    Invalid { topic: &'static str, reason: String },
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
    /// The payload as an event of type `E` (see [`crate::contract`] for
    /// what decoding checks and what it leaves to the consumer).
    pub fn decode<E: Event>(&self) -> Result<E, BusError> {
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

/// Events of one payload type, validated and serialized, ready for their
/// topic. A retry publishes the same bytes again.
pub struct Encoded<E> {
    payloads: Vec<Vec<u8>>,
    event: PhantomData<fn(&E)>,
}

impl<E: Event> Encoded<E> {
    pub fn new() -> Self {
        Self {
            payloads: Vec::new(),
            event: PhantomData,
        }
    }

    /// `events`, all of them or none: the first that fails validation is
    /// the error.
    pub fn of(events: &[E]) -> Result<Self, BusError> {
        let mut encoded = Self::new();
        for event in events {
            encoded.push(event)?;
        }
        Ok(encoded)
    }

    /// Adds `event` after the others once it passes [`Event::validate`];
    /// `Err` leaves the rest as they were.
    pub fn push(&mut self, event: &E) -> Result<(), BusError> {
        event.validate().map_err(|reason| BusError::Invalid {
            topic: E::TOPIC,
            reason,
        })?;
        let payload = serde_json::to_vec(event).map_err(|e| BusError::Malformed(e.to_string()))?;
        self.payloads.push(payload);
        Ok(())
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

impl<E: Event> Default for Encoded<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Publishes `events` in order on their topic, each as one event, once
/// every one of them passes [`Event::validate`]: when one does not,
/// nothing is published.
pub async fn publish<E: Event>(bus: &dyn EventBus, events: &[E]) -> Result<(), BusError> {
    let encoded = Encoded::of(events)?;
    bus.publish(E::TOPIC, encoded.payloads).await
}

/// Publishes `events` in order on their topic and tells when they are safe
/// (see [`Confirmation`]).
pub async fn publish_confirmed<E: Event>(
    bus: &dyn EventBus,
    events: &Encoded<E>,
) -> Result<Confirmation, BusError> {
    bus.publish_confirmed(E::TOPIC, events.payloads.clone())
        .await
}

/// A batch of deliveries from the topic of `E`, as [`run_consumer`] hands
/// them to its handler.
pub struct Batch<E> {
    deliveries: Vec<Delivery>,
    event: PhantomData<fn() -> E>,
}

impl<E: Event> Batch<E> {
    pub fn new(deliveries: Vec<Delivery>) -> Self {
        Self {
            deliveries,
            event: PhantomData,
        }
    }

    /// How many deliveries, whether they decode or not.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The events of the batch, in order. Deliveries that do not decode are
    /// logged and skipped (a handler that failed on them would be retried
    /// forever).
    pub fn events(&self) -> Vec<E> {
        self.events_where(|_| true)
    }

    /// [`Batch::events`] of the deliveries `keep` selects, looked at before
    /// they are decoded.
    pub fn events_where(&self, mut keep: impl FnMut(&Delivery) -> bool) -> Vec<E> {
        self.deliveries
            .iter()
            .filter(|d| keep(d))
            .filter_map(|d| match d.decode::<E>() {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(topic = E::TOPIC, id = %d.id, error = %e, "skipping an undecodable event");
                    None
                }
            })
            .collect()
    }
}

/// Consumes the topic of `E` as a member of `group` until `stop` resolves.
/// Each batch goes to `handle`; on success it is acknowledged, on failure it
/// is retried (with backoff) before anything newer is read, so a database
/// outage delays events but loses none. [`Batch::events`] skips (and logs)
/// payloads that do not decode rather than failing on them forever.
pub async fn run_consumer<E, H, Fut>(
    bus: Arc<dyn EventBus>,
    group: String,
    consumer: String,
    max_batch: usize,
    stop: impl Future<Output = ()> + Send,
    mut handle: H,
) where
    E: Event,
    H: FnMut(Batch<E>) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let topic = E::TOPIC;
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
                () = &mut stop => {
                    handle_queued(sub.as_mut(), topic, max_batch, &mut handle).await;
                    return;
                }
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
        match handle(Batch::new(pending.clone())).await {
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

/// How long a stopping consumer goes on handling what is already queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A consumer stopped while it waited for events still handles those
/// already queued for it (for at most [`DRAIN_LIMIT`]), so that what
/// services stopped before it published (the offline events of a stopping
/// gateway's devices) is not left behind; with the in-process bus it would
/// be lost. What it cannot handle stays unacknowledged.
async fn handle_queued<E, H, Fut>(
    sub: &mut dyn Subscription,
    topic: &'static str,
    max_batch: usize,
    handle: &mut H,
) where
    E: Event,
    H: FnMut(Batch<E>) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    let mut handled = 0;
    loop {
        let read =
            tokio::time::timeout_at(deadline, sub.next(max_batch, Duration::from_millis(50))).await;
        let batch = match read {
            Ok(Ok(batch)) if !batch.is_empty() => batch,
            Ok(Ok(_)) => break,
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, "reading the last events failed");
                break;
            }
            Err(_) => {
                tracing::warn!(topic, handled, "stopped with events still queued");
                break;
            }
        };
        let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
        match tokio::time::timeout_at(deadline, handle(Batch::new(batch))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, "handling the last events failed");
                break;
            }
            Err(_) => {
                tracing::warn!(topic, handled, "stopped while handling the last events");
                break;
            }
        }
        handled += ids.len();
        if let Err(e) = sub.ack(&ids).await {
            tracing::warn!(topic, error = %e, "acknowledging the last events failed");
            break;
        }
    }
    if handled > 0 {
        tracing::info!(topic, handled, "handled the events queued before the stop");
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
    use crate::contract::{DeviceDeleted, StatusChanged, StatusReason, topics};

    fn deleted(device: &str) -> DeviceDeleted {
        DeviceDeleted {
            device_id: device.into(),
            at: 1,
        }
    }

    #[tokio::test]
    async fn an_invalid_event_is_refused_and_nothing_reaches_the_bus() {
        let bus = InProcessBus::new();
        let mut sub = bus
            .subscribe(topics::DEVICE_DELETED, "g", "c")
            .await
            .unwrap();
        let refused = publish(&bus, &[deleted("d1"), deleted("")]).await;
        assert!(
            matches!(
                refused,
                Err(BusError::Invalid {
                    topic: topics::DEVICE_DELETED,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(
            sub.next(10, Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty(),
            "part of a refused publish reached the bus"
        );

        let mut encoded = Encoded::new();
        encoded.push(&deleted("d1")).unwrap();
        assert!(encoded.push(&deleted("")).is_err());
        assert_eq!(encoded.len(), 1);
        let confirmation = publish_confirmed(&bus, &encoded).await.unwrap();
        let got = drain(&mut sub, 1).await;
        assert_eq!(got[0].decode::<DeviceDeleted>().unwrap(), deleted("d1"));
        sub.ack(&[got[0].id.clone()]).await.unwrap();
        confirmation.wait().await.unwrap();
    }

    #[tokio::test]
    async fn events_go_out_on_their_own_topic_and_come_back_as_their_type() {
        let bus = Arc::new(InProcessBus::new());
        let mut status = bus
            .subscribe(topics::DEVICE_STATUS_CHANGED, "g", "c")
            .await
            .unwrap();
        bus.publish(topics::DEVICE_DELETED, vec![b"not json".to_vec()])
            .await
            .unwrap();
        publish(bus.as_ref(), &[deleted("d1"), deleted("d2")])
            .await
            .unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = crate::shutdown::Shutdown::new();
        let consumer = tokio::spawn(run_consumer::<DeviceDeleted, _, _>(
            bus.clone(),
            "g".into(),
            "c".into(),
            10,
            stop.wait(),
            move |batch| {
                let _ = tx.send((batch.len(), batch.events()));
                async { Ok(()) }
            },
        ));
        let (deliveries, events) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deliveries, 3);
        // The undecodable one is skipped.
        assert_eq!(events, [deleted("d1"), deleted("d2")]);
        stop.trigger();
        consumer.await.unwrap();
        assert!(
            status
                .next(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );

        publish(
            bus.as_ref(),
            &[StatusChanged {
                device_id: "d1".into(),
                online: true,
                at: 1,
                reason: StatusReason::Connected,
                broker: None,
            }],
        )
        .await
        .unwrap();
        let got = drain(&mut status, 1).await;
        let wire: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"device_id": "d1", "online": true, "at": 1, "reason": "connected"})
        );
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
        let consumer = tokio::spawn(run_consumer::<DeviceDeleted, _, _>(
            Arc::new(Unreachable),
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
    async fn a_consumer_stopped_while_it_waits_handles_what_was_queued_before_the_stop() {
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new());
        let stop = crate::shutdown::Shutdown::new();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let seen = handled.clone();
        let consumer = tokio::spawn(run_consumer::<DeviceDeleted, _, _>(
            bus.clone(),
            "g".into(),
            "c".into(),
            1,
            stop.wait(),
            move |batch| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.extend(batch.events().into_iter().map(|e| e.device_id));
                    Ok(())
                }
            },
        ));
        // The consumer waits for its first event.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deleted: Vec<DeviceDeleted> = (0..20)
            .map(|i| DeviceDeleted {
                device_id: format!("d-{i}"),
                at: 1,
            })
            .collect();
        // Queued and stopped at once, as a gateway's last offline events
        // are just before the services behind it stop: one at a time, each
        // would otherwise race the stop.
        publish(bus.as_ref(), &deleted).await.unwrap();
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(10), consumer)
            .await
            .expect("the consumer ended")
            .expect("without a panic");
        let expected: Vec<String> = (0..20).map(|i| format!("d-{i}")).collect();
        assert_eq!(*handled.lock().unwrap(), expected);
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
