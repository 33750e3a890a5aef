//! The event contract between services: the topic names, the payload each
//! topic carries, and the vocabulary those payloads share (metric names and
//! values, status reasons, command outcomes, OTA states, shadow sections
//! and sources). The bus that
//! carries the events is [`crate::events`]; this module knows nothing of it.
//!
//! Every payload type implements [`Event`], which ties it to its one topic:
//! producers publish a payload type, never a topic name, so a payload
//! cannot go out on the wrong topic, and a consumer of a topic decodes that
//! topic's payload type. Payloads are JSON; enums travel as snake_case
//! strings.
//!
//! Producers validate what they publish ([`Event::validate`]): an event
//! that fails is refused before anything reaches the bus. Consumers decode
//! by type only. What the types cannot hold (a metric name that is not
//! one, a reason or outcome nobody defined) does not decode, and the event
//! is skipped; what only validation refuses still decodes, so that an event
//! published by an older release, still waiting in a stream after an
//! upgrade, is read, and each consumer applies its own rules to it.
//!
//! Device input is mapped to these types at the edge, by mqtt-gateway: see
//! [`CommandOutcome::from_device`] and [`OtaState::from_device`] for what
//! happens to a value a device made up.
//!
//! The audit entry an operator's change produces ([`crate::audit::AuditEvent`],
//! on [`topics::AUDIT_RECORDED`]) lives with the audit trail it feeds.

mod device;
mod shadow;
mod telemetry;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use device::{
    BrokerHeartbeat, CommandOutcome, CommandResponded, DeviceDeleted, OtaProgress, OtaState,
    StatusChanged, StatusReason,
};
pub use shadow::{ShadowReported, ShadowRequested, ShadowSection, ShadowSource, ShadowUpdated};
pub use telemetry::{
    InvalidMetricName, MAX_TEXT_VALUE_BYTES, MetricName, MetricValue, TelemetryBatch,
    TelemetryMessage,
};

/// Topic names, as DESIGN.md fixes them. Producers and consumers name a
/// payload type ([`Event::TOPIC`]); the names are here for the bus and for
/// tests that put bytes on a topic by hand.
pub mod topics {
    pub const DEVICE_DATA_RECEIVED: &str = "device.data.received";
    pub const DEVICE_STATUS_CHANGED: &str = "device.status.changed";
    pub const DEVICE_COMMAND_RESPONDED: &str = "device.command.responded";
    pub const DEVICE_OTA_PROGRESS: &str = "device.ota.progress";
    pub const DEVICE_DELETED: &str = "device.deleted";
    pub const DEVICE_SHADOW_REPORTED: &str = "device.shadow.reported";
    pub const DEVICE_SHADOW_REQUESTED: &str = "device.shadow.requested";
    pub const DEVICE_SHADOW_UPDATED: &str = "device.shadow.updated";
    pub const MQTT_BROKER_HEARTBEAT: &str = "mqtt.broker.heartbeat";
    /// An operator's change, for auth-service's audit log
    /// ([`crate::audit::AuditEvent`]).
    pub const AUDIT_RECORDED: &str = "audit.recorded";
}

/// A payload of the event contract: the one topic it travels on, and the
/// rules its producer keeps.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The topic this payload is published on, and only this one.
    const TOPIC: &'static str;

    /// Checks what the types alone do not: `Err` says what is wrong, and
    /// the event is not published.
    fn validate(&self) -> Result<(), String>;
}

/// `Err` naming `field` when `value` is empty.
fn require(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{field} is empty"))
    } else {
        Ok(())
    }
}
