//! From accepted device messages to events: decoding, presence (online /
//! offline), the live feed behind `SubscribeTopic`, and the batcher that
//! publishes to the event bus.
//!
//! Both broker modes feed the same [`Ingest`]: the embedded broker from its
//! hooks ([`Ingest::accept`], with connections and last wills), the
//! Mosquitto bridge from its shared subscriptions
//! ([`Ingest::accept_brokered`]).
//!
//! The broker calls [`Ingest`] from its connection tasks, so nothing here
//! waits on the bus: events go through a bounded queue to the [`Batcher`],
//! and when that queue is full they are dropped and counted
//! (`wf_mqtt_events_dropped_total{reason="queue_full"}`) rather than
//! stalling the devices' connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use wf_common::events::{
    CommandResponded, EventBus, OtaProgress, StatusChanged, TelemetryMessage, topics,
};
use wf_common::shutdown::Shutdown;

use crate::Config;
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

/// An event waiting for the bus.
enum Event {
    Telemetry(TelemetryMessage),
    Status(StatusChanged),
    CommandResponded(CommandResponded),
    OtaProgress(OtaProgress),
}

impl Event {
    fn topic(&self) -> &'static str {
        match self {
            Self::Telemetry(_) => topics::DEVICE_DATA_RECEIVED,
            Self::Status(_) => topics::DEVICE_STATUS_CHANGED,
            Self::CommandResponded(_) => topics::DEVICE_COMMAND_RESPONDED,
            Self::OtaProgress(_) => topics::DEVICE_OTA_PROGRESS,
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
    events: mpsc::Sender<Event>,
    feed: broadcast::Sender<Arc<DeviceMessage>>,
    max_payload_bytes: usize,
    presence: Mutex<HashMap<String, Presence>>,
    malformed_logged: Mutex<HashMap<String, Instant>>,
    malformed_log_interval: Duration,
}

impl Ingest {
    /// The ingest side and the batcher that drains it into `bus`.
    pub fn new(config: &Config, bus: Arc<dyn EventBus>) -> (Arc<Self>, Batcher) {
        let (events, rx) = mpsc::channel(config.ingest_queue_capacity.max(1));
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        metrics::gauge!("wf_mqtt_connected_devices").set(0.0);
        let ingest = Arc::new(Self {
            events,
            feed,
            max_payload_bytes: config.max_payload_bytes,
            presence: Mutex::new(HashMap::new()),
            malformed_logged: Mutex::new(HashMap::new()),
            malformed_log_interval: Duration::from_secs(config.malformed_log_interval_secs),
        });
        let batcher = Batcher {
            rx,
            bus,
            max_messages: config.batch_max_messages.max(1),
            linger: Duration::from_millis(config.batch_linger_ms),
        };
        (ingest, batcher)
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
        let Some(suffix) = device_suffix(device, topic) else {
            return;
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
        match decode(&incoming, self.max_payload_bytes) {
            Ok(Decoded::Telemetry(t)) => self.enqueue(Event::Telemetry(t)),
            Ok(Decoded::Status(s)) if last_will => {
                if s.online {
                    self.malformed(device, topic, Malformed::BadStatus);
                } else {
                    self.will_sent(device, s);
                }
            }
            Ok(Decoded::Status(s)) => self.enqueue(Event::Status(s)),
            Ok(Decoded::CommandResponded(c)) => self.enqueue(Event::CommandResponded(c)),
            Ok(Decoded::OtaProgress(p)) => self.enqueue(Event::OtaProgress(p)),
            Ok(Decoded::Relayed) => {}
            Err(reason) => self.malformed(device, topic, reason),
        }
    }

    /// A message an external broker delivered on a device topic. The
    /// broker's ACL lets only device `{id}` publish on `devices/{id}/...`,
    /// so the topic names the sender. Last wills are not told apart from
    /// other messages there: a will of "offline" on the status topic is
    /// reported like a status message.
    pub fn accept_brokered(&self, topic: &str, payload: &Bytes, qos: u8) {
        let Some(device) = TopicName::parse(topic)
            .ok()
            .and_then(|t| t.device_topic().map(|(device, _)| device))
        else {
            tracing::debug!(topic, "message outside the device topics ignored");
            return;
        };
        self.accept(device.as_str(), topic, payload, qos, false);
    }

    /// A connection of `device` was accepted.
    pub fn connected(&self, device: &str) {
        let Ok(mut presence) = self.presence.lock() else {
            return;
        };
        presence.entry(device.to_string()).or_default().connections += 1;
        // Queued under the lock, so online and offline keep their order.
        self.enqueue(status(device, true, "connected"));
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
                "last_will"
            } else {
                "disconnected"
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
        if let Err(e) = self.events.try_send(event) {
            let (reason, event) = match e {
                mpsc::error::TrySendError::Full(ev) => ("queue_full", ev),
                mpsc::error::TrySendError::Closed(ev) => ("stopped", ev),
            };
            metrics::counter!(
                "wf_mqtt_events_dropped_total",
                "reason" => reason,
                "topic" => event.topic()
            )
            .increment(1);
        }
    }

    fn malformed(&self, device: &str, topic: &str, reason: Malformed) {
        metrics::counter!("wf_mqtt_malformed_messages_total", "reason" => reason.reason())
            .increment(1);
        if self.should_log(device) {
            tracing::warn!(
                device_id = device,
                topic,
                reason = reason.reason(),
                "malformed device message dropped (more from this device are not logged for {} s)",
                self.malformed_log_interval.as_secs()
            );
        }
    }

    /// At most one log line per device per interval.
    fn should_log(&self, device: &str) -> bool {
        let Ok(mut logged) = self.malformed_logged.lock() else {
            return false;
        };
        let now = Instant::now();
        let interval = self.malformed_log_interval;
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
}

/// The part of `topic` after `devices/{device}/`.
fn device_suffix<'t>(device: &str, topic: &'t str) -> Option<&'t str> {
    topic
        .strip_prefix(DEVICES_ROOT)?
        .strip_prefix('/')?
        .strip_prefix(device)?
        .strip_prefix('/')
}

fn status(device: &str, online: bool, reason: &str) -> Event {
    Event::Status(StatusChanged {
        device_id: device.to_string(),
        online,
        at: wf_common::now_millis(),
        reason: reason.to_string(),
    })
}

/// Drains the ingest queue into the event bus: telemetry as
/// `device.data.received` events of up to `batch_max_messages` messages
/// (a JSON array each), everything else one event per message, flushed
/// when a batch is full or `batch_linger_ms` after its first message.
pub struct Batcher {
    rx: mpsc::Receiver<Event>,
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
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.max_messages {
                let room = self.max_messages - batch.len();
                match tokio::time::timeout_at(deadline, self.rx.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            self.flush(&mut batch, &stop).await;
        }
        self.rx.close();
        while let Some(event) = self.rx.recv().await {
            batch.push(event);
            if batch.len() >= self.max_messages {
                self.flush(&mut batch, &stop).await;
            }
        }
        self.flush(&mut batch, &stop).await;
    }

    async fn flush(&self, batch: &mut Vec<Event>, stop: &Shutdown) {
        let mut telemetry = Vec::new();
        let mut by_topic: [(&'static str, Vec<Vec<u8>>); 4] = [
            (topics::DEVICE_DATA_RECEIVED, Vec::new()),
            (topics::DEVICE_STATUS_CHANGED, Vec::new()),
            (topics::DEVICE_COMMAND_RESPONDED, Vec::new()),
            (topics::DEVICE_OTA_PROGRESS, Vec::new()),
        ];
        for event in batch.drain(..) {
            let encoded = match event {
                Event::Telemetry(t) => {
                    telemetry.push(t);
                    continue;
                }
                Event::Status(s) => (1, serde_json::to_vec(&s)),
                Event::CommandResponded(c) => (2, serde_json::to_vec(&c)),
                Event::OtaProgress(p) => (3, serde_json::to_vec(&p)),
            };
            if let (i, Ok(payload)) = encoded {
                by_topic[i].1.push(payload);
            }
        }
        for chunk in telemetry.chunks(self.max_messages) {
            if let Ok(payload) = serde_json::to_vec(chunk) {
                by_topic[0].1.push(payload);
            }
        }
        for (topic, payloads) in by_topic {
            if !payloads.is_empty() {
                self.publish(topic, payloads, stop).await;
            }
        }
    }

    /// Publishes, retrying with backoff while the bus is unavailable; once
    /// shutdown is under way a failed publish is dropped and counted.
    async fn publish(&self, topic: &'static str, payloads: Vec<Vec<u8>>, stop: &Shutdown) {
        let count = payloads.len() as u64;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.bus.publish(topic, payloads.clone()).await {
                Ok(()) => {
                    metrics::counter!("wf_mqtt_events_published_total", "topic" => topic)
                        .increment(count);
                    return;
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
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
