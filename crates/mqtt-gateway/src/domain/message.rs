//! What a device says on its topics, decoded into the platform's events.
//! Anything that does not fit is [`Malformed`], with a reason for the
//! metrics; nothing here panics on device input.

use serde::Deserialize;
use serde_json::Value;
use wf_common::contract::{
    CommandOutcome, CommandResponded, MetricName, MetricValue, OtaProgress, OtaState,
    ShadowReported, ShadowRequested, StatusChanged, StatusReason, TelemetryMessage,
};

/// The device topics (`devices/{id}/{suffix}`) the gateway understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Telemetry,
    Status,
    CommandResponse,
    OtaProgress,
    /// A partial reported state, merged into the device's shadow.
    ShadowReported,
    /// The device asks for its whole shadow document.
    ShadowGet,
    Unknown,
}

impl Route {
    /// The topic suffixes devices publish on (after `devices/{id}/`): the
    /// gateway takes these in, and the platform never publishes on them.
    pub const UPSTREAM_SUFFIXES: [&'static str; 6] = [
        "telemetry",
        "status",
        "commands/response",
        "ota/progress",
        "shadow/reported",
        "shadow/get",
    ];

    /// Whether this is a route devices publish on.
    pub fn is_upstream(self) -> bool {
        !matches!(self, Self::Unknown)
    }

    /// The route of a device topic, from the part after `devices/{id}/`.
    pub fn of(suffix: &str) -> Self {
        match suffix {
            "telemetry" => Self::Telemetry,
            "status" => Self::Status,
            "commands/response" => Self::CommandResponse,
            "ota/progress" => Self::OtaProgress,
            "shadow/reported" => Self::ShadowReported,
            "shadow/get" => Self::ShadowGet,
            _ => Self::Unknown,
        }
    }

    /// The `kind` label of the received-messages metric.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Status => "status",
            Self::CommandResponse => "command_response",
            Self::OtaProgress => "ota_progress",
            Self::ShadowReported => "shadow_reported",
            Self::ShadowGet => "shadow_get",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a device message was not turned into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Oversized,
    NotJson,
    NotObject,
    BadValue,
    /// A telemetry key that cannot name a metric.
    BadMetricName,
    NoValues,
    MissingField,
    BadStatus,
    UnknownTopic,
    /// A device timestamp outside the accepted window around the receive time.
    TsOutOfRange,
}

impl Malformed {
    /// The `reason` label of the malformed-messages metric.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::BadValue => "bad_value",
            Self::BadMetricName => "bad_metric_name",
            Self::NoValues => "no_values",
            Self::MissingField => "missing_field",
            Self::BadStatus => "bad_status",
            Self::UnknownTopic => "unknown_topic",
            Self::TsOutOfRange => "ts_out_of_range",
        }
    }
}

/// Where a telemetry message's timestamp came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsSource {
    /// The device sent `ts`: a redelivered message keeps its key.
    Device,
    /// No `ts`: the receive time stands in, to be made unique per device
    /// with a [`ReceiptClock`] before the message is stored.
    Receipt,
}

/// A device message decoded for the event bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Telemetry(TelemetryMessage, TsSource),
    Status(StatusChanged),
    CommandResponded(CommandResponded),
    OtaProgress(OtaProgress),
    ShadowReported(ShadowReported),
    ShadowRequested(ShadowRequested),
}

/// One message from `device_id` on the route `route`.
pub struct Incoming<'a> {
    pub device_id: &'a str,
    pub route: Route,
    pub payload: &'a [u8],
    /// When the gateway received it (ms since the epoch).
    pub received_at: i64,
    /// Sent by the broker as the device's last will.
    pub last_will: bool,
}

/// Decodes a device message, refusing payloads over `max_payload_bytes`.
pub fn decode(msg: &Incoming<'_>, max_payload_bytes: usize) -> Result<Decoded, Malformed> {
    if msg.payload.len() > max_payload_bytes {
        return Err(Malformed::Oversized);
    }
    let at = msg.received_at;
    let device_id = msg.device_id.to_string();
    match msg.route {
        Route::Telemetry => telemetry(device_id, msg.payload, at)
            .map(|(message, source)| Decoded::Telemetry(message, source)),
        Route::Status => {
            let online = status(msg.payload)?;
            Ok(Decoded::Status(StatusChanged {
                device_id,
                online,
                at,
                reason: if msg.last_will {
                    StatusReason::LastWill
                } else {
                    StatusReason::StatusMessage
                },
                broker: None,
            }))
        }
        Route::CommandResponse => {
            #[derive(Deserialize)]
            struct Body {
                id: Option<String>,
                status: Option<String>,
                #[serde(default)]
                result: Value,
            }
            let body: Body = object(msg.payload)?;
            let (Some(id), Some(status)) = (body.id.filter(|i| !i.is_empty()), body.status) else {
                return Err(Malformed::MissingField);
            };
            Ok(Decoded::CommandResponded(CommandResponded {
                device_id,
                command_id: id,
                status: CommandOutcome::from_device(&status),
                result: body.result,
                at,
            }))
        }
        Route::OtaProgress => {
            #[derive(Deserialize)]
            struct Body {
                task_id: Option<String>,
                state: Option<String>,
                progress: Option<f64>,
                error: Option<String>,
                version: Option<String>,
            }
            let body: Body = object(msg.payload)?;
            let (Some(task_id), Some(state)) = (
                body.task_id.filter(|t| !t.is_empty()),
                body.state.filter(|s| !s.is_empty()),
            ) else {
                return Err(Malformed::MissingField);
            };
            // A state no rollout knows moves nothing: refused like any
            // value the gateway cannot read.
            let state = OtaState::from_device(&state).ok_or(Malformed::BadValue)?;
            Ok(Decoded::OtaProgress(OtaProgress {
                device_id,
                task_id,
                state,
                progress: body.progress,
                error: body.error,
                version: body.version,
                at,
            }))
        }
        Route::ShadowReported => match serde_json::from_slice::<Value>(msg.payload) {
            Ok(state @ Value::Object(_)) => Ok(Decoded::ShadowReported(ShadowReported {
                device_id,
                state,
                at,
            })),
            Ok(_) => Err(Malformed::NotObject),
            Err(_) => Err(Malformed::NotJson),
        },
        Route::ShadowGet => Ok(Decoded::ShadowRequested(ShadowRequested { device_id, at })),
        Route::Unknown => Err(Malformed::UnknownTopic),
    }
}

/// `{"temp": 21.5, "door": "open", "ok": true, "ts": 1735689600000}`: flat
/// values only; `ts` (ms since the epoch) is optional and defaults to the
/// time of receipt.
fn telemetry(
    device_id: String,
    payload: &[u8],
    received_at: i64,
) -> Result<(TelemetryMessage, TsSource), Malformed> {
    let Value::Object(map) = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?
    else {
        return Err(Malformed::NotObject);
    };
    let mut ts = received_at;
    let mut source = TsSource::Receipt;
    let mut values = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key == "ts" {
            ts = match value.as_f64() {
                Some(ms) if ms.is_finite() && ms >= 0.0 && ms <= i64::MAX as f64 => ms as i64,
                _ => return Err(Malformed::BadValue),
            };
            source = TsSource::Device;
            continue;
        }
        let name = MetricName::try_from(key).map_err(|_| Malformed::BadMetricName)?;
        let value = match value {
            Value::Bool(b) => MetricValue::Bool(b),
            Value::String(s) => MetricValue::Text(s),
            Value::Number(n) => MetricValue::Number(n.as_f64().ok_or(Malformed::BadValue)?),
            Value::Null | Value::Array(_) | Value::Object(_) => return Err(Malformed::BadValue),
        };
        // Refused whole: what is acknowledged is stored in full.
        if !value.is_storable() {
            return Err(Malformed::BadValue);
        }
        values.push((name, value));
    }
    if values.is_empty() {
        return Err(Malformed::NoValues);
    }
    Ok((
        TelemetryMessage {
            device_id,
            ts,
            values,
        },
        source,
    ))
}

/// How far a device's own `ts` may lie from the time the gateway received
/// the message. Values outside are refused: a far-future `ts` would
/// otherwise hold a metric's latest value for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsWindow {
    /// The oldest accepted `ts`, in ms before the receive time.
    pub max_age_ms: i64,
    /// The newest accepted `ts`, in ms after the receive time (clock skew).
    pub max_ahead_ms: i64,
}

impl TsWindow {
    pub fn check(&self, ts: i64, received_at: i64) -> Result<(), Malformed> {
        let oldest = received_at.saturating_sub(self.max_age_ms);
        let newest = received_at.saturating_add(self.max_ahead_ms);
        if (oldest..=newest).contains(&ts) {
            Ok(())
        } else {
            Err(Malformed::TsOutOfRange)
        }
    }
}

/// Shards of the [`ReceiptClock`], so that connections on different
/// threads rarely wait for each other.
const CLOCK_SHARDS: usize = 16;

/// Receive-time stamps that never repeat for a device: a message without
/// `ts` is stamped with the receive time, or 1 ms after the device's
/// previous stamp when that is not earlier. A burst of messages in one
/// millisecond is thus stored whole instead of collapsing onto one
/// (device, metric, ts) key.
///
/// Only devices stamped within the last millisecond need remembering (an
/// older stamp is below any new receive time), so the memory stays bounded
/// by the devices publishing right now.
pub struct ReceiptClock {
    shards: Vec<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Entries a shard holds before it forgets the stale ones.
    shard_capacity: usize,
}

impl Default for ReceiptClock {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl ReceiptClock {
    pub fn new(shard_capacity: usize) -> Self {
        Self {
            shards: (0..CLOCK_SHARDS).map(|_| Default::default()).collect(),
            shard_capacity: shard_capacity.max(1),
        }
    }

    /// The stamp for a message of `device` received at `now` (ms).
    pub fn stamp(&self, device: &str, now: i64) -> i64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let shard =
            BuildHasherDefault::<DefaultHasher>::default().hash_one(device) as usize % CLOCK_SHARDS;
        let Ok(mut last) = self.shards[shard].lock() else {
            return now;
        };
        if let Some(previous) = last.get_mut(device) {
            let ts = now.max(previous.saturating_add(1));
            *previous = ts;
            return ts;
        }
        if last.len() >= self.shard_capacity {
            last.retain(|_, previous| *previous >= now);
        }
        last.insert(device.to_string(), now);
        now
    }

    /// Devices remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or_default())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `online` or `offline`, surrounding whitespace ignored.
fn status(payload: &[u8]) -> Result<bool, Malformed> {
    match std::str::from_utf8(payload).map(str::trim) {
        Ok("online") => Ok(true),
        Ok("offline") => Ok(false),
        _ => Err(Malformed::BadStatus),
    }
}

/// A JSON object of the shape `T`.
fn object<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Malformed> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
    if !value.is_object() {
        return Err(Malformed::NotObject);
    }
    serde_json::from_value(value).map_err(|_| Malformed::BadValue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1024;

    fn incoming(route: Route, payload: &[u8]) -> Incoming<'_> {
        Incoming {
            device_id: "d1",
            route,
            payload,
            received_at: 1_000,
            last_will: false,
        }
    }

    fn decode_json(route: Route, v: Value) -> Result<Decoded, Malformed> {
        let bytes = serde_json::to_vec(&v).unwrap();
        decode(&incoming(route, &bytes), MAX)
    }

    #[test]
    fn routes_come_from_the_topic_suffix() {
        assert_eq!(Route::of("telemetry"), Route::Telemetry);
        assert_eq!(Route::of("status"), Route::Status);
        assert_eq!(Route::of("commands/response"), Route::CommandResponse);
        assert_eq!(Route::of("ota/progress"), Route::OtaProgress);
        assert_eq!(Route::of("shadow/reported"), Route::ShadowReported);
        assert_eq!(Route::of("commands"), Route::Unknown);
        assert_eq!(Route::of("telemetry/extra"), Route::Unknown);
    }

    #[test]
    fn the_upstream_suffixes_are_exactly_the_known_routes() {
        for suffix in Route::UPSTREAM_SUFFIXES {
            assert!(Route::of(suffix).is_upstream(), "{suffix}");
        }
        for downstream in ["commands", "ota", "shadow/desired", "x"] {
            assert!(!Route::of(downstream).is_upstream(), "{downstream}");
        }
    }

    #[test]
    fn telemetry_keeps_flat_values_and_the_device_timestamp() {
        let Ok(Decoded::Telemetry(t, TsSource::Device)) = decode_json(
            Route::Telemetry,
            json!({"temp": 21.5, "door": "open", "ok": true, "count": 3, "ts": 1_735_689_600_000_i64}),
        ) else {
            panic!("not telemetry with the device's ts")
        };
        assert_eq!(t.device_id, "d1");
        assert_eq!(t.ts, 1_735_689_600_000);
        assert_eq!(
            t.values,
            [
                ("count", MetricValue::Number(3.0)),
                ("door", MetricValue::Text("open".into())),
                ("ok", MetricValue::Bool(true)),
                ("temp", MetricValue::Number(21.5)),
            ]
            .map(|(name, value)| (MetricName::parse(name).unwrap(), value))
        );
    }

    #[test]
    fn telemetry_the_store_would_not_take_is_refused_whole() {
        let long_text = "x".repeat(wf_common::contract::MAX_TEXT_VALUE_BYTES + 1);
        for (payload, refused) in [
            (
                json!({"fine": 1, "bad metric": 2}),
                Malformed::BadMetricName,
            ),
            (json!({"temp/C": 1}), Malformed::BadMetricName),
            (json!({"m".repeat(65): 1}), Malformed::BadMetricName),
            (json!({"": 1}), Malformed::BadMetricName),
            (json!({"fine": 1, "note": long_text}), Malformed::BadValue),
        ] {
            // Within the payload limit: refused for what it holds.
            let bytes = serde_json::to_vec(&payload).unwrap();
            assert_eq!(
                decode(&incoming(Route::Telemetry, &bytes), 64 * 1024).err(),
                Some(refused),
                "{payload}"
            );
        }
        let longest = "x".repeat(wf_common::contract::MAX_TEXT_VALUE_BYTES);
        let bytes = serde_json::to_vec(&json!({"m".repeat(64): longest})).unwrap();
        assert!(decode(&incoming(Route::Telemetry, &bytes), 64 * 1024).is_ok());
    }

    #[test]
    fn telemetry_without_ts_is_stamped_on_receipt() {
        let Ok(Decoded::Telemetry(t, TsSource::Receipt)) =
            decode_json(Route::Telemetry, json!({"temp": 1}))
        else {
            panic!("not telemetry stamped on receipt")
        };
        assert_eq!(t.ts, 1_000);
    }

    #[test]
    fn receipt_stamps_never_repeat_for_a_device() {
        let clock = ReceiptClock::new(8);
        let burst: Vec<i64> = (0..50).map(|_| clock.stamp("d1", 1_000)).collect();
        assert_eq!(burst, (1_000..1_050).collect::<Vec<_>>());
        // Another device has a clock of its own.
        assert_eq!(clock.stamp("d2", 1_000), 1_000);
        // Time catching up with the stamps takes over again.
        assert_eq!(clock.stamp("d1", 1_049), 1_050);
        assert_eq!(clock.stamp("d1", 5_000), 5_000);
        // A clock stepping back never repeats a stamp either.
        assert_eq!(clock.stamp("d1", 4_000), 5_001);
    }

    #[test]
    fn the_receipt_clock_forgets_only_stale_devices() {
        let clock = ReceiptClock::new(4);
        for i in 0..200 {
            clock.stamp(&format!("old-{i}"), 1_000);
        }
        // Stamped in the current millisecond: each may need its next stamp.
        assert_eq!(clock.len(), 200);
        for i in 0..200 {
            clock.stamp(&format!("new-{i}"), 2_000);
        }
        // The old stamps lie behind the clock now and are forgotten as the
        // shards fill up.
        assert!(clock.len() < 250, "{}", clock.len());
        // A device stamped ahead of the receive time is never forgotten,
        // however many others come by.
        for _ in 0..10 {
            clock.stamp("fast", 3_000);
        }
        for i in 0..200 {
            clock.stamp(&format!("later-{i}"), 3_001);
        }
        assert_eq!(clock.stamp("fast", 3_001), 3_010);
    }

    #[test]
    fn device_timestamps_outside_the_window_are_refused() {
        let window = TsWindow {
            max_age_ms: 1_000,
            max_ahead_ms: 100,
        };
        let now = 10_000;
        assert_eq!(window.check(now, now), Ok(()));
        assert_eq!(window.check(now - 1_000, now), Ok(()));
        assert_eq!(window.check(now + 100, now), Ok(()));
        assert_eq!(window.check(now - 1_001, now), Err(Malformed::TsOutOfRange));
        assert_eq!(window.check(now + 101, now), Err(Malformed::TsOutOfRange));
        assert_eq!(window.check(i64::MAX, now), Err(Malformed::TsOutOfRange));
        assert_eq!(window.check(0, now), Err(Malformed::TsOutOfRange));
        let wide = TsWindow {
            max_age_ms: i64::MAX,
            max_ahead_ms: i64::MAX,
        };
        assert_eq!(wide.check(0, now), Ok(()));
        assert_eq!(wide.check(i64::MAX, now), Ok(()));
    }

    #[test]
    fn bad_telemetry_is_refused_with_a_reason() {
        let cases = [
            (&b"not json"[..], Malformed::NotJson),
            (&b"[1,2]"[..], Malformed::NotObject),
            (&b"42"[..], Malformed::NotObject),
            (&br#"{"a": {"b": 1}}"#[..], Malformed::BadValue),
            (&br#"{"a": [1]}"#[..], Malformed::BadValue),
            (&br#"{"a": null}"#[..], Malformed::BadValue),
            (&br#"{"a": 1, "ts": "yesterday"}"#[..], Malformed::BadValue),
            (&br#"{"a": 1, "ts": -5}"#[..], Malformed::BadValue),
            (&br#"{"ts": 5}"#[..], Malformed::NoValues),
            (&b"{}"[..], Malformed::NoValues),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                decode(&incoming(Route::Telemetry, payload), MAX),
                Err(reason),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn payloads_over_the_limit_are_refused_on_every_route() {
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX));
        for route in [Route::Telemetry, Route::Status, Route::CommandResponse] {
            assert_eq!(
                decode(&incoming(route, big.as_bytes()), MAX),
                Err(Malformed::Oversized)
            );
        }
    }

    #[test]
    fn status_messages_and_last_wills() {
        let Ok(Decoded::Status(s)) = decode(&incoming(Route::Status, b"online\n"), MAX) else {
            panic!("not a status")
        };
        assert!(s.online);
        assert_eq!(s.reason, StatusReason::StatusMessage);
        let mut will = incoming(Route::Status, b"offline");
        will.last_will = true;
        let Ok(Decoded::Status(s)) = decode(&will, MAX) else {
            panic!("not a status")
        };
        assert!(!s.online);
        assert_eq!(s.reason, StatusReason::LastWill);
        assert_eq!(
            decode(&incoming(Route::Status, b"sleeping"), MAX),
            Err(Malformed::BadStatus)
        );
    }

    #[test]
    fn command_responses_are_succeeded_or_failed() {
        let Ok(Decoded::CommandResponded(c)) = decode_json(
            Route::CommandResponse,
            json!({"id": "c1", "status": "succeeded", "result": {"rebooted": true}}),
        ) else {
            panic!("not a response")
        };
        assert_eq!(c.command_id, "c1");
        assert_eq!(c.status, CommandOutcome::Succeeded);
        assert_eq!(c.result, json!({"rebooted": true}));
        let Ok(Decoded::CommandResponded(c)) = decode_json(
            Route::CommandResponse,
            json!({"id": "c2", "status": "boom"}),
        ) else {
            panic!("not a response")
        };
        assert_eq!(c.status, CommandOutcome::Failed);
        assert_eq!(c.result, Value::Null);
        assert_eq!(
            decode_json(Route::CommandResponse, json!({"status": "succeeded"})),
            Err(Malformed::MissingField)
        );
        assert_eq!(
            decode_json(
                Route::CommandResponse,
                json!({"id": 7, "status": "succeeded"})
            ),
            Err(Malformed::BadValue)
        );
    }

    #[test]
    fn ota_progress_reports() {
        let Ok(Decoded::OtaProgress(p)) = decode_json(
            Route::OtaProgress,
            json!({"task_id": "t1", "state": "downloading", "progress": 42.5}),
        ) else {
            panic!("not progress")
        };
        assert_eq!(p.task_id, "t1");
        assert_eq!(p.state, OtaState::Downloading);
        assert_eq!(p.progress, Some(42.5));
        assert_eq!(p.error, None);
        assert_eq!(
            decode_json(Route::OtaProgress, json!({"task_id": "t1"})),
            Err(Malformed::MissingField)
        );
        assert_eq!(
            decode_json(Route::OtaProgress, json!({"task_id": "t1", "state": ""})),
            Err(Malformed::MissingField)
        );
        // Said the way devices say it, published in the one form.
        let Ok(Decoded::OtaProgress(p)) = decode_json(
            Route::OtaProgress,
            json!({"task_id": "t1", "state": " SUCCESS ", "version": "1.2.0"}),
        ) else {
            panic!("not progress")
        };
        assert_eq!(p.state, OtaState::Succeeded);
        assert_eq!(p.version.as_deref(), Some("1.2.0"));
        for unknown in ["rebooting", "done", "  "] {
            assert_eq!(
                decode_json(
                    Route::OtaProgress,
                    json!({"task_id": "t1", "state": unknown})
                ),
                Err(Malformed::BadValue),
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn unknown_suffixes_are_malformed_and_shadow_messages_make_events() {
        assert_eq!(
            decode(&incoming(Route::Unknown, b"{}"), MAX),
            Err(Malformed::UnknownTopic)
        );
        assert_eq!(
            decode(&incoming(Route::ShadowReported, br#"{"led": "on"}"#), MAX),
            Ok(Decoded::ShadowReported(ShadowReported {
                device_id: "d1".into(),
                state: json!({"led": "on"}),
                at: 1_000,
            }))
        );
        assert_eq!(
            decode(&incoming(Route::ShadowReported, b"[1]"), MAX),
            Err(Malformed::NotObject)
        );
        assert_eq!(
            decode(&incoming(Route::ShadowReported, b"{not json"), MAX),
            Err(Malformed::NotJson)
        );
        assert_eq!(
            decode(&incoming(Route::ShadowGet, b""), MAX),
            Ok(Decoded::ShadowRequested(ShadowRequested {
                device_id: "d1".into(),
                at: 1_000,
            }))
        );
        assert_eq!(Route::of("shadow/get"), Route::ShadowGet);
        assert!(!Route::of("shadow/desired").is_upstream());
        assert!(!Route::of("shadow/rejected").is_upstream());
    }
}
