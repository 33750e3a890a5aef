//! What a device says on its topics, decoded into the platform's events.
//! Anything that does not fit is [`Malformed`], with a reason for the
//! metrics; nothing here panics on device input.

use serde::Deserialize;
use serde_json::Value;
use wf_common::events::{
    CommandResponded, MetricValue, OtaProgress, StatusChanged, TelemetryMessage,
};

/// The device topics (`devices/{id}/{suffix}`) the gateway understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Telemetry,
    Status,
    CommandResponse,
    OtaProgress,
    /// Reported shadow state: relayed to subscribers, no event of its own.
    ShadowReported,
    Unknown,
}

impl Route {
    /// The topic suffixes devices publish on (after `devices/{id}/`): the
    /// gateway takes these in, and the platform never publishes on them.
    pub const UPSTREAM_SUFFIXES: [&'static str; 5] = [
        "telemetry",
        "status",
        "commands/response",
        "ota/progress",
        "shadow/reported",
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
    NoValues,
    MissingField,
    BadStatus,
    UnknownTopic,
}

impl Malformed {
    /// The `reason` label of the malformed-messages metric.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::BadValue => "bad_value",
            Self::NoValues => "no_values",
            Self::MissingField => "missing_field",
            Self::BadStatus => "bad_status",
            Self::UnknownTopic => "unknown_topic",
        }
    }
}

/// A device message decoded for the event bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Telemetry(TelemetryMessage),
    Status(StatusChanged),
    CommandResponded(CommandResponded),
    OtaProgress(OtaProgress),
    /// Valid, but published on no event topic.
    Relayed,
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
        Route::Telemetry => telemetry(device_id, msg.payload, at).map(Decoded::Telemetry),
        Route::Status => {
            let online = status(msg.payload)?;
            Ok(Decoded::Status(StatusChanged {
                device_id,
                online,
                at,
                reason: if msg.last_will {
                    "last_will"
                } else {
                    "status_message"
                }
                .into(),
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
                status: if status == "succeeded" {
                    "succeeded"
                } else {
                    "failed"
                }
                .into(),
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
            Ok(Value::Object(_)) => Ok(Decoded::Relayed),
            Ok(_) => Err(Malformed::NotObject),
            Err(_) => Err(Malformed::NotJson),
        },
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
) -> Result<TelemetryMessage, Malformed> {
    let Value::Object(map) = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?
    else {
        return Err(Malformed::NotObject);
    };
    let mut ts = received_at;
    let mut values = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key == "ts" {
            ts = match value.as_f64() {
                Some(ms) if ms.is_finite() && ms >= 0.0 && ms <= i64::MAX as f64 => ms as i64,
                _ => return Err(Malformed::BadValue),
            };
            continue;
        }
        let value = match value {
            Value::Bool(b) => MetricValue::Bool(b),
            Value::String(s) => MetricValue::Text(s),
            Value::Number(n) => MetricValue::Number(n.as_f64().ok_or(Malformed::BadValue)?),
            Value::Null | Value::Array(_) | Value::Object(_) => return Err(Malformed::BadValue),
        };
        values.push((key, value));
    }
    if values.is_empty() {
        return Err(Malformed::NoValues);
    }
    Ok(TelemetryMessage {
        device_id,
        ts,
        values,
    })
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
        let Ok(Decoded::Telemetry(t)) = decode_json(
            Route::Telemetry,
            json!({"temp": 21.5, "door": "open", "ok": true, "count": 3, "ts": 1_735_689_600_000_i64}),
        ) else {
            panic!("not telemetry")
        };
        assert_eq!(t.device_id, "d1");
        assert_eq!(t.ts, 1_735_689_600_000);
        assert_eq!(
            t.values,
            vec![
                ("count".to_string(), MetricValue::Number(3.0)),
                ("door".to_string(), MetricValue::Text("open".into())),
                ("ok".to_string(), MetricValue::Bool(true)),
                ("temp".to_string(), MetricValue::Number(21.5)),
            ]
        );
    }

    #[test]
    fn telemetry_without_ts_is_stamped_on_receipt() {
        let Ok(Decoded::Telemetry(t)) = decode_json(Route::Telemetry, json!({"temp": 1})) else {
            panic!("not telemetry")
        };
        assert_eq!(t.ts, 1_000);
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
        assert_eq!(s.reason, "status_message");
        let mut will = incoming(Route::Status, b"offline");
        will.last_will = true;
        let Ok(Decoded::Status(s)) = decode(&will, MAX) else {
            panic!("not a status")
        };
        assert!(!s.online);
        assert_eq!(s.reason, "last_will");
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
        assert_eq!(c.status, "succeeded");
        assert_eq!(c.result, json!({"rebooted": true}));
        let Ok(Decoded::CommandResponded(c)) = decode_json(
            Route::CommandResponse,
            json!({"id": "c2", "status": "boom"}),
        ) else {
            panic!("not a response")
        };
        assert_eq!(c.status, "failed");
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
        assert_eq!(p.state, "downloading");
        assert_eq!(p.progress, Some(42.5));
        assert_eq!(p.error, None);
        assert_eq!(
            decode_json(Route::OtaProgress, json!({"task_id": "t1"})),
            Err(Malformed::MissingField)
        );
    }

    #[test]
    fn unknown_suffixes_are_malformed_and_shadow_reports_are_relayed() {
        assert_eq!(
            decode(&incoming(Route::Unknown, b"{}"), MAX),
            Err(Malformed::UnknownTopic)
        );
        assert_eq!(
            decode(&incoming(Route::ShadowReported, br#"{"led": "on"}"#), MAX),
            Ok(Decoded::Relayed)
        );
    }
}
