//! Device events: status changes, command responses, OTA progress,
//! deletions, and the heartbeat of the broker holding the connections.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Event, require, topics};

/// Why a device's online status changed: `device.status.changed`'s
/// `reason`, also kept with each change in the device's status history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    /// mqtt-gateway: a connection of the device was accepted.
    Connected,
    /// mqtt-gateway: the device's last connection ended.
    Disconnected,
    /// mqtt-gateway: the device said `online` or `offline` on
    /// `devices/{id}/status`.
    StatusMessage,
    /// mqtt-gateway: the broker published the device's `offline` last will.
    LastWill,
    /// device-service: the embedded broker instance holding the device's
    /// connection stopped renewing its lease.
    GatewayLost,
    /// device-service: every device went offline when the all-in-one
    /// platform started (kept in the history; never published).
    ServerRestart,
}

impl StatusReason {
    pub const ALL: [Self; 6] = [
        Self::Connected,
        Self::Disconnected,
        Self::StatusMessage,
        Self::LastWill,
        Self::GatewayLost,
        Self::ServerRestart,
    ];

    /// The wire and storage form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::StatusMessage => "status_message",
            Self::LastWill => "last_will",
            Self::GatewayLost => "gateway_lost",
            Self::ServerRestart => "server_restart",
        }
    }
}

/// `device.status.changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub device_id: String,
    pub online: bool,
    /// When it happened (ms).
    pub at: i64,
    pub reason: StatusReason,
    /// The embedded broker instance that holds the device's connection
    /// (see [`BrokerHeartbeat`]); none with an external broker, whose
    /// connections no gateway instance owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

impl StatusChanged {
    /// A device connected (`online`) or cleanly disconnected at `at` (ms),
    /// on a connection no embedded broker instance holds.
    pub fn plain(device_id: &str, online: bool, at: i64) -> Self {
        Self {
            device_id: device_id.into(),
            online,
            at,
            reason: if online {
                StatusReason::Connected
            } else {
                StatusReason::Disconnected
            },
            broker: None,
        }
    }
}

impl Event for StatusChanged {
    const TOPIC: &'static str = topics::DEVICE_STATUS_CHANGED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        if let Some(broker) = &self.broker {
            require("broker", broker)?;
        }
        Ok(())
    }
}

/// How a device says a command went: `device.command.responded`'s
/// `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Succeeded,
    Failed,
}

impl CommandOutcome {
    pub const ALL: [Self; 2] = [Self::Succeeded, Self::Failed];

    /// What a device's `status` on `devices/{id}/commands/response` means:
    /// `succeeded` is success, and anything else the device says is a
    /// failure (a device that answers at all has finished with the command).
    pub fn from_device(status: &str) -> Self {
        if status == "succeeded" {
            Self::Succeeded
        } else {
            Self::Failed
        }
    }

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// `device.command.responded`, from `devices/{id}/commands/response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponded {
    pub device_id: String,
    pub command_id: String,
    pub status: CommandOutcome,
    #[serde(default)]
    pub result: serde_json::Value,
    pub at: i64,
}

impl Event for CommandResponded {
    const TOPIC: &'static str = topics::DEVICE_COMMAND_RESPONDED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        require("command_id", &self.command_id)
    }
}

/// Where a device is with an update: `device.ota.progress`'s `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaState {
    Downloading,
    Installing,
    /// Done; the device runs the version it reports (after restarting into
    /// it).
    Succeeded,
    Failed,
    /// The device refuses the update (wrong product, bad signature,
    /// policy).
    Rejected,
}

impl OtaState {
    pub const ALL: [Self; 5] = [
        Self::Downloading,
        Self::Installing,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
    ];

    /// What a device's `state` on `devices/{id}/ota/progress` means: one of
    /// the states, in any case and with surrounding whitespace, or
    /// `success` and `failure` for `succeeded` and `failed`. `None` for
    /// anything else: the gateway refuses that report as malformed
    /// (`bad_value`), as it refuses any other value it cannot read, rather
    /// than guessing at a state that would move a rollout.
    pub fn from_device(state: &str) -> Option<Self> {
        match state.trim().to_ascii_lowercase().as_str() {
            "downloading" => Some(Self::Downloading),
            "installing" => Some(Self::Installing),
            "succeeded" | "success" => Some(Self::Succeeded),
            "failed" | "failure" => Some(Self::Failed),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }
}

impl Serialize for OtaState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Reads what [`OtaState::from_device`] reads: gateways of earlier releases
/// passed the device's own word on, and such events may still wait in a
/// stream after an upgrade.
impl<'de> Deserialize<'de> for OtaState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::from_device(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an OTA state")))
    }
}

/// `device.ota.progress`, from `devices/{id}/ota/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaProgress {
    pub device_id: String,
    pub task_id: String,
    pub state: OtaState,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    pub at: i64,
}

impl Event for OtaProgress {
    const TOPIC: &'static str = topics::DEVICE_OTA_PROGRESS;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        require("task_id", &self.task_id)?;
        match self.progress {
            Some(p) if !p.is_finite() => Err(format!("progress {p} is not a finite number")),
            _ => Ok(()),
        }
    }
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

impl Event for BrokerHeartbeat {
    const TOPIC: &'static str = topics::MQTT_BROKER_HEARTBEAT;

    fn validate(&self) -> Result<(), String> {
        require("broker", &self.broker)?;
        if self.lease_ms <= 0 {
            return Err(format!("lease_ms {} is not positive", self.lease_ms));
        }
        Ok(())
    }
}

/// `device.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDeleted {
    pub device_id: String,
    pub at: i64,
}

impl Event for DeviceDeleted {
    const TOPIC: &'static str = topics::DEVICE_DELETED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The strings each enum travelled as when it was a free-text field.
    #[test]
    fn status_reasons_travel_as_they_always_did() {
        let wire: Vec<Value> = StatusReason::ALL
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(
            wire,
            [
                "connected",
                "disconnected",
                "status_message",
                "last_will",
                "gateway_lost",
                "server_restart"
            ]
        );
        for reason in StatusReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
            let back: StatusReason = serde_json::from_value(json!(reason.as_str())).unwrap();
            assert_eq!(back, reason);
        }
        assert!(serde_json::from_value::<StatusReason>(json!("rebooted")).is_err());
        assert!(serde_json::from_value::<StatusReason>(json!("Connected")).is_err());
    }

    #[test]
    fn a_status_change_keeps_its_shape_on_the_wire() {
        let wire = json!({"device_id": "d1", "online": false, "at": 7, "reason": "last_will"});
        let change: StatusChanged = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(change.reason, StatusReason::LastWill);
        assert_eq!(change.broker, None);
        assert_eq!(serde_json::to_value(&change).unwrap(), wire);
    }

    #[test]
    fn command_outcomes_travel_as_succeeded_or_failed() {
        for (outcome, wire) in CommandOutcome::ALL.into_iter().zip(["succeeded", "failed"]) {
            assert_eq!(serde_json::to_value(outcome).unwrap(), wire);
            assert_eq!(outcome.as_str(), wire);
            assert_eq!(
                serde_json::from_value::<CommandOutcome>(json!(wire)).unwrap(),
                outcome
            );
        }
        assert!(serde_json::from_value::<CommandOutcome>(json!("error")).is_err());
    }

    #[test]
    fn anything_but_succeeded_from_a_device_is_a_failure() {
        assert_eq!(
            CommandOutcome::from_device("succeeded"),
            CommandOutcome::Succeeded
        );
        for other in ["failed", "error", "boom", "", "Succeeded", " succeeded"] {
            assert_eq!(
                CommandOutcome::from_device(other),
                CommandOutcome::Failed,
                "{other:?}"
            );
        }
    }

    #[test]
    fn ota_states_travel_as_snake_case_and_read_what_devices_said() {
        let wire: Vec<Value> = OtaState::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(
            wire,
            [
                "downloading",
                "installing",
                "succeeded",
                "failed",
                "rejected"
            ]
        );
        for state in OtaState::ALL {
            let back: OtaState = serde_json::from_value(json!(state.as_str())).unwrap();
            assert_eq!(back, state);
            assert_eq!(OtaState::from_device(state.as_str()), Some(state));
        }
        // What earlier gateways passed on as the device said it.
        for (said, state) in [
            (" Downloading ", OtaState::Downloading),
            ("SUCCESS", OtaState::Succeeded),
            ("success", OtaState::Succeeded),
            ("Failure", OtaState::Failed),
            ("REJECTED\n", OtaState::Rejected),
        ] {
            assert_eq!(OtaState::from_device(said), Some(state), "{said:?}");
            let back: OtaState = serde_json::from_value(json!(said)).unwrap();
            assert_eq!(back, state);
            // Published again in the one form.
            assert_eq!(serde_json::to_value(back).unwrap(), state.as_str());
        }
        for unknown in ["", "  ", "rebooting", "done", "succeed"] {
            assert_eq!(OtaState::from_device(unknown), None, "{unknown:?}");
            assert!(serde_json::from_value::<OtaState>(json!(unknown)).is_err());
        }
    }

    #[test]
    fn producers_refuse_events_that_name_nothing() {
        let status = StatusChanged {
            device_id: "d1".into(),
            online: true,
            at: 1,
            reason: StatusReason::Connected,
            broker: Some("b1".into()),
        };
        assert_eq!(status.validate(), Ok(()));
        assert!(
            StatusChanged {
                device_id: String::new(),
                ..status.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            StatusChanged {
                broker: Some(String::new()),
                ..status
            }
            .validate()
            .is_err()
        );

        let response = CommandResponded {
            device_id: "d1".into(),
            command_id: "c1".into(),
            status: CommandOutcome::Succeeded,
            result: Value::Null,
            at: 1,
        };
        assert_eq!(response.validate(), Ok(()));
        assert!(
            CommandResponded {
                command_id: String::new(),
                ..response
            }
            .validate()
            .is_err()
        );

        let progress = OtaProgress {
            device_id: "d1".into(),
            task_id: "t1".into(),
            state: OtaState::Downloading,
            progress: Some(42.0),
            error: None,
            version: None,
            at: 1,
        };
        assert_eq!(progress.validate(), Ok(()));
        for bad in [
            OtaProgress {
                task_id: String::new(),
                ..progress.clone()
            },
            OtaProgress {
                progress: Some(f64::NAN),
                ..progress.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }

        let beat = BrokerHeartbeat {
            broker: "b1".into(),
            at: 1,
            lease_ms: 15_000,
        };
        assert_eq!(beat.validate(), Ok(()));
        assert!(
            BrokerHeartbeat {
                lease_ms: 0,
                ..beat.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            BrokerHeartbeat {
                broker: String::new(),
                ..beat
            }
            .validate()
            .is_err()
        );

        assert!(
            DeviceDeleted {
                device_id: String::new(),
                at: 1
            }
            .validate()
            .is_err()
        );
    }
}
