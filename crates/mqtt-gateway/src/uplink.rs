//! The uplink, from devices to the event bus: accepted device messages
//! decoded into events, presence (online / offline), the live feed behind
//! `SubscribeTopic`, and the batcher that publishes to the bus.
//!
//! Both broker modes feed the same [`Ingest`]: the embedded broker from its
//! hooks ([`Ingest::accept`], with connections and last wills), the
//! Mosquitto bridge from its shared subscriptions
//! ([`Ingest::accept_brokered`]).
//!
//! Events go through a bounded queue to the [`Batcher`]. A device's QoS 1
//! or 2 message on the embedded broker is acknowledged only once it is
//! stored ([`Ingest::accept_durable`]): the broker's publish hook queues it
//! in order and hands the broker a gate that opens on the bus's
//! confirmation ([`publish_confirmed`]: in the all-in-one mode,
//! device-service has committed it; on Redis, it is in the stream); the
//! connection reads its next messages meanwhile, and its acknowledgements
//! go out in order as their gates open. Everything else (QoS 0, connections, last wills, messages from
//! an external broker) never waits: when the queue is full it is dropped
//! and counted (`wf_mqtt_events_dropped_total{reason="queue_full"}`) rather
//! than stalling the broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use wf_common::contract::{
    CommandResponded, Event as ContractEvent, OtaProgress, ShadowReported, ShadowRequested,
    StatusChanged, StatusReason, TelemetryBatch, TelemetryMessage,
};
use wf_common::events::{Confirmation, Encoded, EventBus, publish_confirmed};
use wf_common::shutdown::Shutdown;

use crate::Config;
use crate::broker::BrokerLink;
use crate::domain::message::{ReceiptClock, TsSource, TsWindow};
use crate::domain::topic::DEVICES_ROOT;
use crate::domain::{Decoded, Incoming, Malformed, Route, TopicName, decode};

/// Messages a `SubscribeTopic` stream may fall behind by before it is told.
const FEED_CAPACITY: usize = 4096;

/// Devices whose last malformed-message log time is remembered before old
/// entries are swept out.
const LOG_MEMORY: usize = 10_000;

/// A message a device published and the broker accepted.
#[derive(Debug, Clone)]
pub struct DeviceMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// ms since the epoch.
    pub received_at: i64,
}

/// Acknowledges a device message to the broker that delivered it, once
/// its event is on the bus (or once it is clear there will be no event).
pub type Ack = Box<dyn FnOnce() + Send>;

/// An event waiting for the bus, with the broker acknowledgement it
/// releases once published (and confirmed).
struct Queued {
    event: Event,
    ack: Option<Ack>,
    /// A device connection waits on `ack`: flush without lingering.
    waiting: bool,
}

/// Resolves once a message's event is stored, or with why it was not.
pub type Stored = std::pin::Pin<Box<dyn Future<Output = Result<(), NotStored>> + Send>>;

/// Why a device's message was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not stored within `durable_ack_timeout_ms` (the database may be
    /// full or unreachable); it may still be stored later.
    TimedOut,
    /// Dropped before it was stored: the gateway is stopping, or the bus
    /// lost it.
    Dropped,
}

impl NotStored {
    pub fn reason(self) -> &'static str {
        match self {
            Self::TimedOut => "timeout",
            Self::Dropped => "dropped",
        }
    }
}

/// An event waiting for the bus.
enum Event {
    Telemetry(TelemetryMessage),
    Status(StatusChanged),
    CommandResponded(CommandResponded),
    OtaProgress(OtaProgress),
    ShadowReported(ShadowReported),
    ShadowRequested(ShadowRequested),
}

impl Event {
    fn topic(&self) -> &'static str {
        match self {
            Self::Telemetry(_) => TelemetryBatch::TOPIC,
            Self::Status(_) => StatusChanged::TOPIC,
            Self::CommandResponded(_) => CommandResponded::TOPIC,
            Self::OtaProgress(_) => OtaProgress::TOPIC,
            Self::ShadowReported(_) => ShadowReported::TOPIC,
            Self::ShadowRequested(_) => ShadowRequested::TOPIC,
        }
    }
}

#[derive(Default)]
struct Presence {
    /// Live connections of the device (two, briefly, while a reconnect
    /// takes over the old session).
    connections: usize,
    /// The broker sent the device's "offline" last will.
    will_sent: bool,
}

pub struct Ingest {
    events: mpsc::Sender<Queued>,
    feed: broadcast::Sender<Arc<DeviceMessage>>,
    max_payload_bytes: usize,
    presence: Mutex<HashMap<String, Presence>>,
    malformed_logged: Mutex<HashMap<String, Instant>>,
    unstored_logged: Mutex<HashMap<String, Instant>>,
    malformed_log_interval: Duration,
    /// Unique receive-time stamps for telemetry without `ts`.
    receipt_clock: ReceiptClock,
    ts_window: TsWindow,
    durable_ack_timeout: Duration,
    /// The embedded broker instance whose connections this gateway holds,
    /// named in every status event it reports (none with an external
    /// broker, or with the heartbeat off).
    broker: Option<String>,
    /// The platform's publish, for refusals a device must hear of.
    downlink: std::sync::OnceLock<Arc<dyn BrokerLink>>,
}

impl Ingest {
    /// The ingest side and the batcher that drains it into `bus`; status
    /// events name `broker` as the instance holding the connections.
    pub fn new(
        config: &Config,
        bus: Arc<dyn EventBus>,
        broker: Option<String>,
    ) -> (Arc<Self>, Batcher) {
        let (events, rx) = mpsc::channel(config.ingest_queue_capacity.max(1));
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        metrics::gauge!("wf_mqtt_connected_devices").set(0.0);
        let ingest = Arc::new(Self {
            events,
            feed,
            max_payload_bytes: config.max_payload_bytes,
            presence: Mutex::new(HashMap::new()),
            malformed_logged: Mutex::new(HashMap::new()),
            unstored_logged: Mutex::new(HashMap::new()),
            malformed_log_interval: Duration::from_secs(config.malformed_log_interval_secs),
            receipt_clock: ReceiptClock::default(),
            ts_window: config.ts_window(),
            durable_ack_timeout: Duration::from_millis(config.durable_ack_timeout_ms.max(1)),
            broker,
            downlink: std::sync::OnceLock::new(),
        });
        let batcher = Batcher {
            rx,
            bus,
            max_messages: config.batch_max_messages.max(1),
            linger: Duration::from_millis(config.batch_linger_ms),
        };
        (ingest, batcher)
    }

    /// Where refusals to devices are published (the broker's link, known
    /// once the broker is built).
    pub fn set_downlink(&self, link: Arc<dyn BrokerLink>) {
        let _ = self.downlink.set(link);
    }

    /// Tells a device on `devices/{id}/shadow/rejected` why the gateway
    /// refused its message on a shadow topic; the document is unchanged.
    fn reject_shadow(&self, device: &str, suffix: &str, reason: Malformed) {
        let Some(link) = self.downlink.get().cloned() else {
            return;
        };
        let (code, message) = match reason {
            Malformed::NotJson => ("not_json", "the state is not JSON".to_string()),
            Malformed::NotObject => ("not_object", "the state must be a JSON object".to_string()),
            Malformed::Oversized => (
                "too_large",
                format!("the message is over {} bytes", self.max_payload_bytes),
            ),
            _ => (
                "not_allowed",
                format!(
                    "devices publish on shadow/reported and shadow/get; \
                     shadow/{} is written by the platform",
                    suffix.trim_start_matches("shadow").trim_start_matches('/')
                ),
            ),
        };
        let Ok(topic) = TopicName::parse(&format!("{DEVICES_ROOT}/{device}/shadow/rejected"))
        else {
            return;
        };
        let payload =
            Bytes::from(serde_json::json!({"code": code, "message": message}).to_string());
        metrics::counter!("wf_shadow_updates_rejected_total", "code" => code).increment(1);
        tokio::spawn(async move {
            if let Err(e) = link.publish(&topic, payload, 1, false).await {
                tracing::warn!(topic = %topic, error = %e, "a shadow refusal could not be sent to the device");
            }
        });
    }

    /// Every accepted device message from now on.
    pub fn feed(&self) -> broadcast::Receiver<Arc<DeviceMessage>> {
        self.feed.subscribe()
    }

    /// Devices with at least one live connection.
    pub fn connected_devices(&self) -> usize {
        self.presence.lock().map(|p| p.len()).unwrap_or_default()
    }

    /// A message `device` published on `topic` that passed the publish
    /// check, or its last will (vetted when it connected).
    pub fn accept(&self, device: &str, topic: &str, payload: &Bytes, qos: u8, last_will: bool) {
        self.accept_acked(device, topic, payload, qos, last_will, None);
    }

    /// [`Ingest::accept`] for a device that waits for its acknowledgement
    /// (QoS 1 and 2 on the embedded broker). Queues the message's event in
    /// the order messages come (waiting for room rather than dropping) and
    /// answers what its acknowledgement waits for: `Ok(Some(stored))`, which
    /// resolves once the event is confirmed, or with why it was not (within
    /// `durable_ack_timeout_ms` of the message's arrival; see
    /// [`Ingest::not_stored`]); `Ok(None)` when it makes no event (relayed
    /// only); `Err` with the reason it is malformed.
    pub async fn accept_durable(
        &self,
        device: &str,
        topic: &str,
        payload: &Bytes,
        qos: u8,
    ) -> Result<Option<Stored>, Malformed> {
        let event = match self.prepare(device, topic, payload, qos, false) {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(None),
            Err(reason) => return Err(reason),
        };
        let deadline = tokio::time::Instant::now() + self.durable_ack_timeout;
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            event: self.owned(event),
            ack: Some(Box::new(move || {
                let _ = tx.send(());
            })),
            waiting: true,
        };
        let queued = match tokio::time::timeout_at(deadline, self.events.send(queued)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NotStored::Dropped),
            Err(_) => Err(NotStored::TimedOut),
        };
        Ok(Some(Box::pin(async move {
            queued?;
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(NotStored::Dropped),
                Err(_) => Err(NotStored::TimedOut),
            }
        })))
    }

    /// Counts and logs a message [`Ingest::accept_durable`] could not
    /// store: its connection is closed without acknowledging it, and the
    /// device sends it again.
    pub fn not_stored(&self, device: &str, topic: &str, why: NotStored) {
        metrics::counter!("wf_mqtt_messages_unacknowledged_total", "reason" => why.reason())
            .increment(1);
        if should_log(&self.unstored_logged, self.malformed_log_interval, device) {
            tracing::warn!(
                device_id = device,
                topic,
                reason = why.reason(),
                "device message not stored; closing the connection without acknowledging it \
                 (the device sends it again; more from this device are not logged for {} s)",
                self.malformed_log_interval.as_secs()
            );
        }
    }

    /// [`Ingest::accept`], running `ack` once the message's event is on the
    /// bus, or at once when the message makes no event (malformed, relayed
    /// only, or dropped because the queue is full).
    fn accept_acked(
        &self,
        device: &str,
        topic: &str,
        payload: &Bytes,
        qos: u8,
        last_will: bool,
        ack: Option<Ack>,
    ) {
        match self.prepare(device, topic, payload, qos, last_will) {
            Ok(Some(event)) => self.enqueue_acked(event, ack),
            Ok(None) | Err(_) => run_ack(ack),
        }
    }

    /// Counts the message, passes it to the live feed and decodes it: the
    /// event it makes, `None` when it makes none (last wills are noted), or
    /// why it is malformed (counted and logged here).
    fn prepare(
        &self,
        device: &str,
        topic: &str,
        payload: &Bytes,
        qos: u8,
        last_will: bool,
    ) -> Result<Option<Event>, Malformed> {
        let Some(suffix) = device_suffix(device, topic) else {
            return Ok(None);
        };
        let route = Route::of(suffix);
        metrics::counter!("wf_mqtt_messages_received_total", "kind" => route.kind()).increment(1);
        let received_at = wf_common::now_millis();
        if payload.len() <= self.max_payload_bytes && self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Arc::new(DeviceMessage {
                topic: topic.to_string(),
                payload: payload.clone(),
                qos,
                received_at,
            }));
        }
        let incoming = Incoming {
            device_id: device,
            route,
            payload,
            received_at,
            last_will,
        };
        let event = match decode(&incoming, self.max_payload_bytes) {
            Ok(Decoded::Telemetry(mut t, TsSource::Receipt)) => {
                t.ts = self.receipt_clock.stamp(device, received_at);
                Some(Event::Telemetry(t))
            }
            Ok(Decoded::Telemetry(t, TsSource::Device)) => {
                self.ts_window
                    .check(t.ts, received_at)
                    .inspect_err(|reason| self.malformed(device, topic, *reason))?;
                Some(Event::Telemetry(t))
            }
            Ok(Decoded::Status(s)) if last_will => {
                if s.online {
                    self.malformed(device, topic, Malformed::BadStatus);
                } else {
                    self.will_sent(device, s);
                }
                None
            }
            Ok(Decoded::Status(s)) => Some(Event::Status(s)),
            Ok(Decoded::CommandResponded(c)) => Some(Event::CommandResponded(c)),
            Ok(Decoded::OtaProgress(p)) => Some(Event::OtaProgress(p)),
            Ok(Decoded::ShadowReported(r)) => Some(Event::ShadowReported(r)),
            Ok(Decoded::ShadowRequested(r)) => Some(Event::ShadowRequested(r)),
            Err(reason) => {
                self.malformed(device, topic, reason);
                if suffix == "shadow" || suffix.starts_with("shadow/") {
                    self.reject_shadow(device, suffix, reason);
                }
                return Err(reason);
            }
        };
        Ok(event)
    }

    /// A message an external broker delivered on a device topic. The
    /// broker's ACL lets only device `{id}` publish on `devices/{id}/...`,
    /// so the topic names the sender. Last wills are not told apart from
    /// other messages there: a will of "offline" on the status topic is
    /// reported like a status message.
    ///
    /// With `ack`, the broker's acknowledgement waits until the message's
    /// event is on the bus (see [`Ingest::accept_acked`]).
    pub fn accept_brokered(&self, topic: &str, payload: &Bytes, qos: u8, ack: Option<Ack>) {
        let Some(device) = TopicName::parse(topic)
            .ok()
            .and_then(|t| t.device_topic().map(|(device, _)| device))
        else {
            tracing::debug!(topic, "message outside the device topics ignored");
            run_ack(ack);
            return;
        };
        self.accept_acked(device.as_str(), topic, payload, qos, false, ack);
    }

    /// A connection of `device` was accepted.
    pub fn connected(&self, device: &str) {
        let Ok(mut presence) = self.presence.lock() else {
            return;
        };
        presence.entry(device.to_string()).or_default().connections += 1;
        // Queued under the lock, so online and offline keep their order.
        self.enqueue(status(device, true, StatusReason::Connected));
        metrics::gauge!("wf_mqtt_connected_devices").set(presence.len() as f64);
    }

    /// A connection of `device` ended, for whatever reason: DISCONNECT
    /// and socket closed, keep-alive expiry, network error, shutdown. The
    /// device goes offline when its last connection ends; a session taken
    /// over by a reconnect does not make it flap.
    pub fn disconnected(&self, device: &str) {
        let Ok(mut presence) = self.presence.lock() else {
            return;
        };
        let Some(entry) = presence.get_mut(device) else {
            return;
        };
        entry.connections = entry.connections.saturating_sub(1);
        let will_sent = std::mem::take(&mut entry.will_sent);
        if entry.connections == 0 {
            presence.remove(device);
            let reason = if will_sent {
                StatusReason::LastWill
            } else {
                StatusReason::Disconnected
            };
            self.enqueue(status(device, false, reason));
        }
        metrics::gauge!("wf_mqtt_connected_devices").set(presence.len() as f64);
    }

    /// The broker published the device's "offline" last will: its
    /// disconnection (which follows) is reported with reason `last_will`.
    fn will_sent(&self, device: &str, offline: StatusChanged) {
        let Ok(mut presence) = self.presence.lock() else {
            return;
        };
        match presence.get_mut(device) {
            Some(entry) => entry.will_sent = true,
            None => self.enqueue(Event::Status(offline)),
        }
    }

    fn enqueue(&self, event: Event) {
        self.enqueue_acked(event, None);
    }

    /// The embedded broker instance named in status events, if any.
    pub fn broker_id(&self) -> Option<&str> {
        self.broker.as_deref()
    }

    /// `event`, a status change naming this gateway's broker instance.
    fn owned(&self, mut event: Event) -> Event {
        if let (Event::Status(status), Some(broker)) = (&mut event, &self.broker) {
            status.broker = Some(broker.clone());
        }
        event
    }

    fn enqueue_acked(&self, event: Event, ack: Option<Ack>) {
        let queued = Queued {
            event: self.owned(event),
            ack,
            waiting: false,
        };
        if let Err(e) = self.events.try_send(queued) {
            let (reason, queued) = match e {
                mpsc::error::TrySendError::Full(q) => ("queue_full", q),
                mpsc::error::TrySendError::Closed(q) => ("stopped", q),
            };
            metrics::counter!(
                "wf_mqtt_events_dropped_total",
                "reason" => reason,
                "topic" => queued.event.topic()
            )
            .increment(1);
            // Counted as dropped; holding the acknowledgement back would
            // only stall the broker's delivery to this gateway.
            run_ack(queued.ack);
        }
    }

    fn malformed(&self, device: &str, topic: &str, reason: Malformed) {
        metrics::counter!("wf_mqtt_malformed_messages_total", "reason" => reason.reason())
            .increment(1);
        if should_log(&self.malformed_logged, self.malformed_log_interval, device) {
            tracing::warn!(
                device_id = device,
                topic,
                reason = reason.reason(),
                "malformed device message dropped (more from this device are not logged for {} s)",
                self.malformed_log_interval.as_secs()
            );
        }
    }
}

/// At most one log line per device per interval.
fn should_log(logged: &Mutex<HashMap<String, Instant>>, interval: Duration, device: &str) -> bool {
    let Ok(mut logged) = logged.lock() else {
        return false;
    };
    let now = Instant::now();
    if logged
        .get(device)
        .is_some_and(|at| now.duration_since(*at) < interval)
    {
        return false;
    }
    if logged.len() >= LOG_MEMORY {
        logged.retain(|_, at| now.duration_since(*at) < interval);
    }
    logged.insert(device.to_string(), now);
    true
}

fn run_ack(ack: Option<Ack>) {
    if let Some(ack) = ack {
        ack();
    }
}

/// The part of `topic` after `devices/{device}/`.
fn device_suffix<'t>(device: &str, topic: &'t str) -> Option<&'t str> {
    topic
        .strip_prefix(DEVICES_ROOT)?
        .strip_prefix('/')?
        .strip_prefix(device)?
        .strip_prefix('/')
}

fn status(device: &str, online: bool, reason: StatusReason) -> Event {
    Event::Status(StatusChanged {
        device_id: device.to_string(),
        online,
        at: wf_common::now_millis(),
        reason,
        broker: None,
    })
}

/// One topic's part of a flush: its events, and the acknowledgements they
/// release.
struct Outgoing<E> {
    events: Encoded<E>,
    acks: Vec<Ack>,
}

impl<E: ContractEvent> Outgoing<E> {
    fn new() -> Self {
        Self {
            events: Encoded::new(),
            acks: Vec::new(),
        }
    }

    /// Adds `event` and the acknowledgement it releases. An event that
    /// fails validation is not passed on (the decoder never makes one);
    /// its message is acknowledged with the others all the same.
    fn push(&mut self, event: &E, ack: Option<Ack>) {
        if let Err(e) = self.events.push(event) {
            tracing::error!(error = %e, "an event failed validation and was not published");
        }
        self.acks.extend(ack);
    }
}

/// Drains the ingest queue into the event bus: telemetry as
/// `device.data.received` events of up to `batch_max_messages` messages
/// (a JSON array each), everything else one event per message, flushed
/// when a batch is full or `batch_linger_ms` after its first message.
pub struct Batcher {
    rx: mpsc::Receiver<Queued>,
    bus: Arc<dyn EventBus>,
    max_messages: usize,
    linger: Duration,
}

impl Batcher {
    /// Runs until `stop` is triggered, then publishes what is still queued.
    pub async fn run(mut self, stop: Shutdown) {
        let mut batch = Vec::with_capacity(self.max_messages);
        let stopped = stop.wait();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, self.max_messages) => if n == 0 { break },
                () = &mut stopped => break,
            }
            // A device waiting for its acknowledgement sends nothing more
            // until it has it: lingering would only add to its wait.
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.max_messages && !batch.iter().any(|q| q.waiting) {
                let room = self.max_messages - batch.len();
                match tokio::time::timeout_at(deadline, self.rx.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            self.flush(&mut batch, &stop).await;
        }
        self.rx.close();
        while let Some(queued) = self.rx.recv().await {
            batch.push(queued);
            if batch.len() >= self.max_messages {
                self.flush(&mut batch, &stop).await;
            }
        }
        self.flush(&mut batch, &stop).await;
    }

    /// Publishes the batch; then, once the bus confirms a topic's events
    /// (see [`publish_confirmed`]), acknowledges the messages that
    /// made them to the broker, without holding up the next batch. Messages whose events
    /// are not confirmed are never acknowledged: an external broker's
    /// durable session delivers them again, and a device on the embedded
    /// broker sends them again.
    async fn flush(&self, batch: &mut Vec<Queued>, stop: &Shutdown) {
        let mut telemetry = Vec::new();
        let mut telemetry_acks = Vec::new();
        let mut status = Outgoing::<StatusChanged>::new();
        let mut responses = Outgoing::<CommandResponded>::new();
        let mut progress = Outgoing::<OtaProgress>::new();
        let mut reports = Outgoing::<ShadowReported>::new();
        let mut requests = Outgoing::<ShadowRequested>::new();
        for Queued { event, ack, .. } in batch.drain(..) {
            match event {
                Event::Telemetry(t) => {
                    telemetry.push(t);
                    telemetry_acks.extend(ack);
                }
                Event::Status(s) => status.push(&s, ack),
                Event::CommandResponded(c) => responses.push(&c, ack),
                Event::OtaProgress(p) => progress.push(&p, ack),
                Event::ShadowReported(r) => reports.push(&r, ack),
                Event::ShadowRequested(r) => requests.push(&r, ack),
            }
        }
        let mut batches = Outgoing::<TelemetryBatch>::new();
        let mut telemetry = telemetry.into_iter().peekable();
        while telemetry.peek().is_some() {
            let messages = telemetry.by_ref().take(self.max_messages).collect();
            batches.push(&TelemetryBatch { messages }, None);
        }
        batches.acks = telemetry_acks;
        self.release(batches, stop).await;
        self.release(status, stop).await;
        self.release(responses, stop).await;
        self.release(progress, stop).await;
        self.release(reports, stop).await;
        self.release(requests, stop).await;
    }

    /// Publishes one topic's part of a flush; once the bus confirms it,
    /// acknowledges its messages, in a task of their own.
    async fn release<E: ContractEvent>(&self, outgoing: Outgoing<E>, stop: &Shutdown) {
        let Outgoing { events, acks } = outgoing;
        if events.is_empty() {
            // Nothing to pass on (an event that did not pass validation).
            acks.into_iter().for_each(|ack| ack());
            return;
        }
        let Some(confirmation) = self.publish(&events, stop).await else {
            return;
        };
        if acks.is_empty() {
            return;
        }
        tokio::spawn(async move {
            match confirmation.wait().await {
                Ok(()) => acks.into_iter().for_each(|ack| ack()),
                Err(e) => tracing::warn!(
                    topic = E::TOPIC,
                    error = %e,
                    messages = acks.len(),
                    "events not confirmed; their messages stay unacknowledged"
                ),
            }
        });
    }

    /// Publishes, retrying with backoff while the bus is unavailable; once
    /// shutdown is under way a failed publish is dropped and counted.
    /// The bus's confirmation, or `None` when the events are not on it.
    async fn publish<E: ContractEvent>(
        &self,
        events: &Encoded<E>,
        stop: &Shutdown,
    ) -> Option<Confirmation> {
        let topic = E::TOPIC;
        let count = events.len() as u64;
        let mut backoff = Duration::from_millis(50);
        loop {
            match publish_confirmed(self.bus.as_ref(), events).await {
                Ok(confirmation) => {
                    metrics::counter!("wf_mqtt_events_published_total", "topic" => topic)
                        .increment(count);
                    return Some(confirmation);
                }
                Err(e) => {
                    tracing::warn!(topic, events = count, error = %e, "publishing events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.wait() => {
                            tracing::error!(topic, events = count, "event bus unavailable at shutdown; events dropped");
                            metrics::counter!(
                                "wf_mqtt_events_dropped_total",
                                "reason" => "bus_unavailable",
                                "topic" => topic
                            )
                            .increment(count);
                            return None;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use wf_common::events::{BusError, Subscription};

    /// A bus that refuses the first `failures` publishes.
    struct FlakyBus {
        failures: AtomicUsize,
        published: AtomicUsize,
    }

    #[async_trait]
    impl EventBus for FlakyBus {
        async fn publish(&self, _: &str, payloads: Vec<Vec<u8>>) -> Result<(), BusError> {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(BusError::Unavailable("down".into()));
            }
            self.published.fetch_add(payloads.len(), Ordering::SeqCst);
            Ok(())
        }
        async fn subscribe(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<Box<dyn Subscription>, BusError> {
            Err(BusError::Unavailable("not in this test".into()))
        }
        async fn ping(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn counter(acks: &Arc<AtomicUsize>) -> Option<Ack> {
        let acks = acks.clone();
        Some(Box::new(move || {
            acks.fetch_add(1, Ordering::SeqCst);
        }))
    }

    #[tokio::test]
    async fn brokered_messages_are_acknowledged_once_their_events_are_on_the_bus() {
        let bus = Arc::new(FlakyBus {
            failures: AtomicUsize::new(2),
            published: AtomicUsize::new(0),
        });
        let (ingest, batcher) = Ingest::new(&Config::default(), bus.clone(), None);
        let stop = Shutdown::new();
        let running = tokio::spawn(batcher.run(stop.clone()));
        let acks = Arc::new(AtomicUsize::new(0));

        // Nothing to pass on: acknowledged at once.
        ingest.accept_brokered(
            "devices/d1/telemetry",
            &Bytes::from_static(b"not json"),
            1,
            counter(&acks),
        );
        assert_eq!(acks.load(Ordering::SeqCst), 1);

        for i in 0..3 {
            let payload = Bytes::from(format!("{{\"t\": {i}}}"));
            ingest.accept_brokered("devices/d1/telemetry", &payload, 1, counter(&acks));
        }
        // The bus refuses twice (retried after 50 ms, then 100 ms): no
        // acknowledgement before the events are on it.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(bus.published.load(Ordering::SeqCst), 0);
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while acks.load(Ordering::SeqCst) < 4 {
            assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(bus.published.load(Ordering::SeqCst), 1, "one batch");
        stop.trigger();
        running.await.unwrap();
    }
}
