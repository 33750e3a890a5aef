//! Device state on simulated devices: what each one reports about itself
//! and how it applies desired state, as firmware does. A device reports
//! `{"sampling_ms", "fw_version"}` (plus any keys it echoed) whenever it
//! connects, asks for its document (`shadow/get`), and applies every delta
//! it gets on `shadow/desired` or in that document:
//!
//! - `sampling_ms`, a whole number from 100 to 3,600,000, becomes the time
//!   between two telemetry messages of that device;
//! - `fw_version` cannot be set that way (an over-the-air update changes
//!   it), so the device reports the version it runs and the delta stays;
//! - any other key is taken as it is and reported back (an echo).
//!
//! Each answer is a partial report with the keys of the delta, so the delta
//! empties for what the device accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, QoS};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// The range a desired `sampling_ms` must fall in to be applied.
pub const SAMPLING_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// One simulated device's state.
pub struct DeviceState {
    /// The time between two telemetry messages, in ms; the publishing task
    /// watches it.
    sampling_ms: watch::Sender<u64>,
    /// Desired keys the device has no meaning for, reported back as given.
    echoed: Mutex<Map<String, Value>>,
}

/// Counters across a simulated fleet.
#[derive(Default)]
pub struct StateStats {
    /// Desired keys applied (a changed sampling interval or an echo).
    pub applied: AtomicU64,
    /// Desired keys refused (out of range, or not settable).
    pub refused: AtomicU64,
}

impl DeviceState {
    pub fn new(sampling_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            sampling_ms: watch::Sender::new(sampling_ms.max(1)),
            echoed: Mutex::new(Map::new()),
        })
    }

    /// The time between two telemetry messages now, in ms.
    pub fn sampling_ms(&self) -> u64 {
        *self.sampling_ms.borrow()
    }

    /// Follows changes of [`Self::sampling_ms`].
    pub fn watch_sampling(&self) -> watch::Receiver<u64> {
        self.sampling_ms.subscribe()
    }

    /// The whole reported state, as sent on every connection.
    pub fn reported(&self, fw_version: &str) -> Value {
        let mut reported = self.echoed.lock().map(|e| e.clone()).unwrap_or_default();
        reported.insert("sampling_ms".into(), json!(self.sampling_ms()));
        reported.insert("fw_version".into(), json!(fw_version));
        Value::Object(reported)
    }

    /// Applies a delta; returns the partial report that answers it (every
    /// key of the delta, with the value the device now has), or `None` for
    /// an empty or malformed delta.
    pub fn apply(&self, delta: &Value, fw_version: &str, stats: &StateStats) -> Option<Value> {
        let delta = delta.as_object().filter(|d| !d.is_empty())?;
        let mut answer = Map::new();
        for (key, value) in delta {
            match key.as_str() {
                "sampling_ms" => match value.as_u64().filter(|ms| SAMPLING_MS.contains(ms)) {
                    Some(ms) => {
                        self.sampling_ms.send_replace(ms);
                        stats.applied.fetch_add(1, Ordering::Relaxed);
                        answer.insert(key.clone(), json!(ms));
                    }
                    None => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        answer.insert(key.clone(), json!(self.sampling_ms()));
                    }
                },
                "fw_version" => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    answer.insert(key.clone(), json!(fw_version));
                }
                _ => {
                    if let Ok(mut echoed) = self.echoed.lock() {
                        echoed.insert(key.clone(), value.clone());
                    }
                    stats.applied.fetch_add(1, Ordering::Relaxed);
                    answer.insert(key.clone(), value.clone());
                }
            }
        }
        Some(Value::Object(answer))
    }
}

/// The topics a device subscribes to for its state.
pub fn topics(device_id: &str) -> [String; 2] {
    [
        format!("devices/{device_id}/shadow/desired"),
        format!("devices/{device_id}/shadow"),
    ]
}

/// On every connection: the whole reported state, then a request for the
/// document, whose delta the device applies when it arrives. Queued without
/// waiting, so the event loop can call it.
pub fn announce(
    client: &AsyncClient,
    device_id: &str,
    state: &DeviceState,
    fw_version: &str,
) -> Result<(), rumqttc::ClientError> {
    client.try_publish(
        format!("devices/{device_id}/shadow/reported"),
        QoS::AtLeastOnce,
        false,
        state.reported(fw_version).to_string(),
    )?;
    client.try_publish(
        format!("devices/{device_id}/shadow/get"),
        QoS::AtLeastOnce,
        false,
        "",
    )
}

/// Handles a message on one of [`topics`]: `shadow/desired` carries
/// `{"version", "state": delta}`, `shadow` the whole document with its
/// `delta`. Whatever the device applied or refused is reported back.
/// Returns whether the message was one of the device's state topics.
pub fn receive(
    client: &AsyncClient,
    device_id: &str,
    topic: &str,
    payload: &[u8],
    state: &DeviceState,
    fw_version: &str,
    stats: &StateStats,
) -> bool {
    let [desired, document] = topics(device_id);
    let field = if topic == desired {
        "state"
    } else if topic == document {
        "delta"
    } else {
        return false;
    };
    let delta = serde_json::from_slice::<Value>(payload)
        .map(|mut v| v[field].take())
        .unwrap_or(Value::Null);
    if let Some(answer) = state.apply(&delta, fw_version, stats) {
        let _ = client.try_publish(
            format!("devices/{device_id}/shadow/reported"),
            QoS::AtLeastOnce,
            false,
            answer.to_string(),
        );
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_is_applied_where_it_can_be_and_answered_key_by_key() {
        let state = DeviceState::new(2000);
        let stats = StateStats::default();
        assert_eq!(
            state.reported("1.0.0"),
            json!({"sampling_ms": 2000, "fw_version": "1.0.0"})
        );
        let answer = state
            .apply(
                &json!({"sampling_ms": 250, "fw_version": "2.0.0", "led": {"on": true}}),
                "1.0.0",
                &stats,
            )
            .unwrap();
        assert_eq!(
            answer,
            json!({"sampling_ms": 250, "fw_version": "1.0.0", "led": {"on": true}})
        );
        assert_eq!(state.sampling_ms(), 250);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 2);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // Echoed keys stay in what the device reports on its next connection.
        assert_eq!(
            state.reported("1.0.0"),
            json!({"sampling_ms": 250, "fw_version": "1.0.0", "led": {"on": true}})
        );
    }

    #[test]
    fn a_sampling_interval_out_of_range_or_not_a_whole_number_is_refused() {
        let state = DeviceState::new(1000);
        let stats = StateStats::default();
        for bad in [
            json!(99),
            json!(3_600_001),
            json!(-5),
            json!(1.5),
            json!("fast"),
        ] {
            let answer = state
                .apply(&json!({"sampling_ms": bad}), "1.0.0", &stats)
                .unwrap();
            assert_eq!(answer, json!({"sampling_ms": 1000}), "{bad}");
        }
        assert_eq!(state.sampling_ms(), 1000);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 5);
        for edge in [100, 3_600_000] {
            state
                .apply(&json!({"sampling_ms": edge}), "1.0.0", &stats)
                .unwrap();
            assert_eq!(state.sampling_ms(), edge);
        }
    }

    #[test]
    fn an_empty_or_malformed_delta_gets_no_answer() {
        let state = DeviceState::new(1000);
        let stats = StateStats::default();
        for delta in [json!({}), json!(null), json!([1, 2]), json!("x")] {
            assert_eq!(state.apply(&delta, "1.0.0", &stats), None, "{delta}");
        }
    }

    #[test]
    fn the_sampling_interval_is_watched() {
        let state = DeviceState::new(1000);
        let mut watch = state.watch_sampling();
        state.apply(
            &json!({"sampling_ms": 500}),
            "1.0.0",
            &StateStats::default(),
        );
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), 500);
    }
}
