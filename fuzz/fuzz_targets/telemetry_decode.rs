//! The telemetry decoder: what a device publishes on its topics, decoded
//! into events. Input: the topic suffix after `devices/{id}/` on the first
//! line (`telemetry`, `status`, `commands/response`, `shadow/reported`,
//! `shadow/get`, ...; a trailing
//! ` will` marks a last will), the payload after it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_gateway::domain::message::TsSource;
use mqtt_gateway::domain::{decode, Decoded, Incoming, Route};
use wf_common::contract::{Event, MetricValue, StatusReason, TelemetryBatch, TelemetryMessage};

/// The gateway's default payload limit.
const MAX_PAYLOAD: usize = 64 * 1024;
const RECEIVED_AT: i64 = 1_735_689_600_000;

/// `event` as a consumer reads it back from the bus.
fn across_the_bus<E: Event + PartialEq + std::fmt::Debug>(event: &E) -> E {
    let json = serde_json::to_vec(event).expect("the event encodes");
    serde_json::from_slice(&json).expect("the event decodes")
}

fuzz_target!(|data: &[u8]| {
    let (head, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let (suffix, last_will) = match head.strip_suffix(" will") {
        Some(suffix) => (suffix, true),
        None => (head, false),
    };
    let route = Route::of(suffix);
    let msg = Incoming {
        device_id: "d1",
        route,
        payload,
        received_at: RECEIVED_AT,
        last_will,
    };
    let Ok(decoded) = decode(&msg, MAX_PAYLOAD) else {
        return;
    };
    assert!(route.is_upstream(), "{suffix:?} decoded");
    match decoded {
        Decoded::Telemetry(t, source) => {
            assert_eq!(route, Route::Telemetry);
            assert_eq!(t.device_id, "d1");
            assert!(t.ts >= 0, "negative ts {}", t.ts);
            // Without a `ts` of its own, a message carries the receive time
            // (made unique per device later, by the ingest's clock).
            if source == TsSource::Receipt {
                assert_eq!(t.ts, RECEIVED_AT);
            }
            assert!(!t.values.is_empty(), "telemetry without values");
            for (name, value) in &t.values {
                assert_ne!(name, "ts", "ts stored as a metric");
                // What is acknowledged can be stored.
                assert!(
                    value.is_storable(),
                    "{name} acknowledged with an unstorable value"
                );
                if let MetricValue::Number(n) = value {
                    assert!(n.is_finite(), "{name} = {n}");
                }
            }
            // It crosses the event bus as JSON and must arrive unchanged.
            let json = serde_json::to_vec(&t).expect("telemetry encodes");
            let back: TelemetryMessage = serde_json::from_slice(&json).expect("telemetry decodes");
            assert_eq!(back, t);
            // And its producer may publish it.
            let batch = TelemetryBatch { messages: vec![t] };
            assert_eq!(batch.validate(), Ok(()));
        }
        Decoded::Status(s) => {
            assert_eq!(route, Route::Status);
            assert_eq!(s.reason == StatusReason::LastWill, last_will);
            assert_eq!(s.validate(), Ok(()));
            assert_eq!(across_the_bus(&s), s);
        }
        Decoded::CommandResponded(c) => {
            assert_eq!(route, Route::CommandResponse);
            assert!(!c.command_id.is_empty());
            assert_eq!(c.validate(), Ok(()));
            assert_eq!(across_the_bus(&c), c);
        }
        Decoded::OtaProgress(p) => {
            assert_eq!(route, Route::OtaProgress);
            assert!(!p.task_id.is_empty());
            assert_eq!(p.validate(), Ok(()));
            assert_eq!(across_the_bus(&p), p);
        }
        Decoded::ShadowReported(r) => {
            assert_eq!(route, Route::ShadowReported);
            assert!(r.state.is_object(), "a report that is not an object: {}", r.state);
            assert_eq!(r.validate(), Ok(()));
            assert_eq!(across_the_bus(&r), r);
        }
        Decoded::ShadowRequested(r) => {
            assert_eq!(route, Route::ShadowGet);
            assert_eq!(r.validate(), Ok(()));
            assert_eq!(across_the_bus(&r), r);
        }
    }
});
