//! Device state events: what a device reports about itself and asks for
//! over MQTT, and every change to a device's shadow document.

use serde::{Deserialize, Serialize};

use super::{Event, require, topics};

/// `device.shadow.reported`, from `devices/{id}/shadow/reported`: a partial
/// state the device merges into its `reported` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReported {
    pub device_id: String,
    /// A JSON object; `null` values delete keys.
    pub state: serde_json::Value,
    /// When the gateway received it (ms).
    pub at: i64,
}

impl Event for ShadowReported {
    const TOPIC: &'static str = topics::DEVICE_SHADOW_REPORTED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        if !self.state.is_object() {
            return Err("state is not a JSON object".into());
        }
        Ok(())
    }
}

/// `device.shadow.requested`, from `devices/{id}/shadow/get`: the device
/// wants its whole document on `devices/{id}/shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowRequested {
    pub device_id: String,
    pub at: i64,
}

impl Event for ShadowRequested {
    const TOPIC: &'static str = topics::DEVICE_SHADOW_REQUESTED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)
    }
}

/// The half of a shadow document a change touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowSection {
    /// What the device says about itself; only the device writes it.
    Reported,
    /// What operators want the device to be; only the platform writes it.
    Desired,
}

impl ShadowSection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Desired => "desired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reported" => Some(Self::Reported),
            "desired" => Some(Self::Desired),
            _ => None,
        }
    }
}

/// Who changed a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowSource {
    /// The device, on `devices/{id}/shadow/reported`.
    Device,
    /// A user or program, over REST or gRPC.
    User,
    /// A fleet shadow job.
    Job,
}

impl ShadowSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::User => "user",
            Self::Job => "job",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "device" => Some(Self::Device),
            "user" => Some(Self::User),
            "job" => Some(Self::Job),
            _ => None,
        }
    }
}

/// `device.shadow.updated`: a device's shadow document changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowUpdated {
    pub device_id: String,
    /// The document's version after the change.
    pub version: i64,
    pub section: ShadowSection,
    pub source: ShadowSource,
    /// The user or job behind the change; none for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The partial state applied (`null` deleted a key).
    pub changes: serde_json::Value,
    /// What the device still has to apply after the change.
    pub delta: serde_json::Value,
    pub at: i64,
}

impl Event for ShadowUpdated {
    const TOPIC: &'static str = topics::DEVICE_SHADOW_UPDATED;

    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        if self.version <= 0 {
            return Err(format!("version {} is not positive", self.version));
        }
        if !self.changes.is_object() || !self.delta.is_object() {
            return Err("changes and delta must be JSON objects".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_must_be_an_object() {
        let mut r = ShadowReported {
            device_id: "d1".into(),
            state: json!({"a": 1}),
            at: 1,
        };
        assert!(r.validate().is_ok());
        r.state = json!([1]);
        assert!(r.validate().is_err());
        r.state = json!({});
        r.device_id.clear();
        assert!(r.validate().is_err());
    }

    #[test]
    fn sections_and_sources_travel_as_snake_case() {
        let u = ShadowUpdated {
            device_id: "d1".into(),
            version: 3,
            section: ShadowSection::Desired,
            source: ShadowSource::Job,
            actor: Some("job-1".into()),
            changes: json!({"sampling_ms": 500}),
            delta: json!({"sampling_ms": 500}),
            at: 1,
        };
        let wire = serde_json::to_value(&u).unwrap();
        assert_eq!(wire["section"], "desired");
        assert_eq!(wire["source"], "job");
        assert!(u.validate().is_ok());
        let back: ShadowUpdated = serde_json::from_value(wire).unwrap();
        assert_eq!(back, u);
        for s in [ShadowSource::Device, ShadowSource::User, ShadowSource::Job] {
            assert_eq!(ShadowSource::parse(s.as_str()), Some(s));
        }
    }
}
