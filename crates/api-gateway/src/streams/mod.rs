//! The live-update feed: device events from the bus, fanned out in process
//! to every open stream.
//!
//! Each replica consumes `device.data.received`, `device.status.changed`,
//! `device.command.responded` and `device.shadow.updated` in a consumer
//! group of its own, so every
//! replica sees every event. A bounded broadcast channel hands each event,
//! serialized once, to the streams; a stream that falls behind by more than
//! the buffer is told how many events it missed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use wf_common::contract::{
    CommandResponded, Event, MetricValue, ShadowUpdated, StatusChanged, TelemetryBatch,
};
use wf_common::events::{Batch, run_consumer};
use wf_common::{format_millis, now_millis};

use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Telemetry,
    Status,
    CommandResponse,
    /// A change to the device's shadow document.
    Shadow,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Status => "status",
            Self::CommandResponse => "command_response",
            Self::Shadow => "shadow",
        }
    }
}

/// One event for live streams, its JSON made once for every subscriber.
#[derive(Debug)]
pub struct StreamEvent {
    pub device_id: String,
    pub kind: EventKind,
    pub data: String,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<StreamEvent>>,
}

impl Hub {
    pub fn new(buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(16));
        Self { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }

    fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, event: StreamEvent) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(Arc::new(event));
    }
}

/// Consumes the device topics into the hub until the gateway stops.
pub async fn feed(state: AppState) {
    tokio::join!(
        consume::<TelemetryBatch>(state.clone()),
        consume::<StatusChanged>(state.clone()),
        consume::<CommandResponded>(state.clone()),
        consume::<ShadowUpdated>(state),
    );
}

/// Consumes the topic of `E` in this replica's own group.
async fn consume<E: Streamed>(state: AppState) {
    let group = format!("api-gateway-{}", state.instance_id);
    let hub_state = state.clone();
    run_consumer(
        state.bus.clone(),
        group,
        state.instance_id.clone(),
        512,
        state.stop.wait(),
        move |batch: Batch<E>| {
            let state = hub_state.clone();
            async move {
                dispatch(&state, &batch);
                Ok::<(), anyhow::Error>(())
            }
        },
    )
    .await;
}

fn dispatch<E: Streamed>(state: &AppState, batch: &Batch<E>) {
    if !state.hub.has_subscribers() {
        return;
    }
    let max_age = Duration::from_secs(state.config.stream_max_event_age_secs);
    let now = now_millis();
    for event in batch.events_where(|d| !is_stale(&d.id, max_age, now)) {
        for e in event.stream_events() {
            if !state.hub.has_subscribers() {
                return;
            }
            state.hub.publish(e);
        }
    }
}

/// Whether a delivery was published on the bus longer ago than `max_age`.
/// Redis Streams ids start with the milliseconds the entry was added at;
/// the in-process bus keeps no history, and its counters are never stale.
fn is_stale(id: &str, max_age: Duration, now_ms: i64) -> bool {
    if max_age.is_zero() {
        return false;
    }
    let Some((ms, _seq)) = id.split_once('-') else {
        return false;
    };
    ms.parse::<i64>()
        .is_ok_and(|added| now_ms.saturating_sub(added) > max_age.as_millis() as i64)
}

/// A device event live streams show.
trait Streamed: Event {
    /// What streams show of the event: one stream event per device.
    fn stream_events(self) -> Vec<StreamEvent>;
}

impl Streamed for TelemetryBatch {
    fn stream_events(self) -> Vec<StreamEvent> {
        self.messages
            .into_iter()
            .map(|m| {
                let values: Map<String, Value> = m
                    .values
                    .into_iter()
                    .map(|(k, v)| (k.into_string(), metric(v)))
                    .collect();
                StreamEvent {
                    data: json!({
                        "device_id": m.device_id,
                        "ts": format_millis(m.ts),
                        "values": values,
                    })
                    .to_string(),
                    device_id: m.device_id,
                    kind: EventKind::Telemetry,
                }
            })
            .collect()
    }
}

impl Streamed for StatusChanged {
    fn stream_events(self) -> Vec<StreamEvent> {
        vec![StreamEvent {
            data: json!({
                "device_id": self.device_id,
                "online": self.online,
                "at": format_millis(self.at),
                "reason": self.reason,
            })
            .to_string(),
            device_id: self.device_id,
            kind: EventKind::Status,
        }]
    }
}

impl Streamed for CommandResponded {
    fn stream_events(self) -> Vec<StreamEvent> {
        vec![StreamEvent {
            data: json!({
                "device_id": self.device_id,
                "command_id": self.command_id,
                "status": self.status,
                "result": self.result,
                "at": format_millis(self.at),
            })
            .to_string(),
            device_id: self.device_id,
            kind: EventKind::CommandResponse,
        }]
    }
}

impl Streamed for ShadowUpdated {
    fn stream_events(self) -> Vec<StreamEvent> {
        vec![StreamEvent {
            data: json!({
                "device_id": self.device_id,
                "version": self.version,
                "section": self.section,
                "source": self.source,
                "changes": self.changes,
                "delta": self.delta,
                "at": format_millis(self.at),
            })
            .to_string(),
            device_id: self.device_id,
            kind: EventKind::Shadow,
        }]
    }
}

fn metric(v: MetricValue) -> Value {
    match v {
        MetricValue::Bool(b) => Value::Bool(b),
        MetricValue::Number(n) => json!(n),
        MetricValue::Text(s) => Value::String(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wf_common::events::Delivery;

    /// What streams show of one event of type `E` on the bus.
    fn events_of<E: Streamed>(payload: Value) -> Vec<StreamEvent> {
        let delivery = Delivery {
            id: "1".into(),
            payload: serde_json::to_vec(&payload).unwrap().into(),
        };
        Batch::<E>::new(vec![delivery])
            .events()
            .into_iter()
            .flat_map(Streamed::stream_events)
            .collect()
    }

    #[test]
    fn telemetry_becomes_one_event_per_message() {
        let events = events_of::<TelemetryBatch>(json!([
            {"device_id": "d1", "ts": 0, "values": [["temp", 21.5], ["on", true]]},
            {"device_id": "d2", "ts": 1000, "values": [["mode", "eco"]]},
        ]));
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].device_id, "d1");
        assert_eq!(events[0].kind, EventKind::Telemetry);
        let data: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(data["values"], json!({"temp": 21.5, "on": true}));
        assert_eq!(data["ts"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn status_and_command_answers_keep_their_fields() {
        let e = events_of::<StatusChanged>(
            json!({"device_id": "d1", "online": true, "at": 0, "reason": "connected"}),
        );
        let data: Value = serde_json::from_str(&e[0].data).unwrap();
        assert_eq!(data["online"], true);
        assert_eq!(data["reason"], "connected");
        let e = events_of::<CommandResponded>(
            json!({"device_id": "d1", "command_id": "c1", "status": "succeeded", "result": {"x": 1}, "at": 0}),
        );
        assert_eq!(e[0].kind, EventKind::CommandResponse);
        let data: Value = serde_json::from_str(&e[0].data).unwrap();
        assert_eq!(data["status"], "succeeded");
        assert_eq!(data["result"], json!({"x": 1}));
        assert!(events_of::<StatusChanged>(json!("x")).is_empty());
    }

    #[test]
    fn only_old_redis_entries_are_stale() {
        let minute = Duration::from_secs(60);
        let now = 1_700_000_100_000;
        assert!(is_stale("1700000000000-0", minute, now));
        assert!(!is_stale("1700000090000-3", minute, now));
        assert!(!is_stale("42", minute, now));
        assert!(!is_stale("1700000000000-0", Duration::ZERO, now));
    }

    #[tokio::test]
    async fn slow_subscribers_learn_they_lagged() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        for i in 0..20 {
            hub.publish(StreamEvent {
                device_id: "d".into(),
                kind: EventKind::Status,
                data: i.to_string(),
            });
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(4))
        ));
        assert_eq!(rx.recv().await.unwrap().data, "4");
    }
}
