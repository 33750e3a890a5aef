//! Telemetry: metric names and values, and `device.data.received`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Event, require, topics};

/// The longest text value stored, in bytes.
pub const MAX_TEXT_VALUE_BYTES: usize = 4096;

/// A metric name: 1 to 64 letters, digits, `.`, `_` or `-`. The gateway
/// refuses telemetry with any other name, so that what it acknowledges can
/// be stored, and telemetry queries refuse any other name too.
///
/// It travels as a plain JSON string; decoding checks it, so an event
/// carrying anything else does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricName(String);

/// Why a string is not a [`MetricName`]; says so in words fit for an API
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a metric name (1 to 64 letters, digits, '.', '_' or '-')")]
pub struct InvalidMetricName(String);

impl MetricName {
    /// The longest metric name, in bytes.
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, InvalidMetricName> {
        Self::try_from(s.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    fn is_valid(name: &str) -> bool {
        (1..=Self::MAX_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

impl TryFrom<String> for MetricName {
    type Error = InvalidMetricName;

    fn try_from(s: String) -> Result<Self, InvalidMetricName> {
        if Self::is_valid(&s) {
            Ok(Self(s))
        } else {
            Err(InvalidMetricName(s))
        }
    }
}

impl std::str::FromStr for MetricName {
    type Err = InvalidMetricName;

    fn from_str(s: &str) -> Result<Self, InvalidMetricName> {
        Self::parse(s)
    }
}

impl AsRef<str> for MetricName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for MetricName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for MetricName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for MetricName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// A metric value: JSON numbers, booleans and strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl MetricValue {
    /// Whether the store takes the value (text up to
    /// [`MAX_TEXT_VALUE_BYTES`]).
    pub fn is_storable(&self) -> bool {
        !matches!(self, Self::Text(t) if t.len() > MAX_TEXT_VALUE_BYTES)
    }
}

/// One telemetry message from one device (`devices/{id}/telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryMessage {
    pub device_id: String,
    /// The device's timestamp (ms), or the time the gateway received it.
    pub ts: i64,
    pub values: Vec<(MetricName, MetricValue)>,
}

impl TelemetryMessage {
    fn validate(&self) -> Result<(), String> {
        require("device_id", &self.device_id)?;
        if self.values.is_empty() {
            return Err(format!("telemetry of {:?} has no values", self.device_id));
        }
        for (name, value) in &self.values {
            if !value.is_storable() {
                return Err(format!(
                    "{name} of {:?}: text over {MAX_TEXT_VALUE_BYTES} bytes",
                    self.device_id
                ));
            }
            // JSON has no such numbers: it would arrive as null.
            if matches!(value, MetricValue::Number(n) if !n.is_finite()) {
                return Err(format!(
                    "{name} of {:?} is not a finite number",
                    self.device_id
                ));
            }
        }
        Ok(())
    }
}

/// `device.data.received`: telemetry messages published together, a JSON
/// array of [`TelemetryMessage`] (up to the gateway's
/// `batch_max_messages`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TelemetryBatch {
    pub messages: Vec<TelemetryMessage>,
}

impl Event for TelemetryBatch {
    const TOPIC: &'static str = topics::DEVICE_DATA_RECEIVED;

    fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err("a telemetry batch without messages".into());
        }
        self.messages
            .iter()
            .try_for_each(TelemetryMessage::validate)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metric_names_are_1_to_64_letters_digits_dots_underscores_and_dashes() {
        for good in ["t", "temp", "Temp.2_in-C", "a.b.c", "-", &"m".repeat(64)] {
            let name = MetricName::parse(good).unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(good.parse::<MetricName>().unwrap(), name);
        }
        for bad in [
            "",
            "bad name",
            "temp/C",
            "t\u{e9}mp",
            "temp\n",
            "a:b",
            "x*",
            &"m".repeat(65),
        ] {
            assert!(MetricName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_refused_metric_name_says_why_in_words() {
        let err = MetricName::parse("bad name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"bad name\" is not a metric name (1 to 64 letters, digits, '.', '_' or '-')"
        );
    }

    #[test]
    fn metric_names_travel_as_plain_strings_and_are_checked_on_arrival() {
        let name = MetricName::parse("temp").unwrap();
        assert_eq!(serde_json::to_value(&name).unwrap(), json!("temp"));
        assert_eq!(
            serde_json::from_value::<MetricName>(json!("temp")).unwrap(),
            name
        );
        for bad in [
            json!("bad name"),
            json!(""),
            json!("m".repeat(65)),
            json!(7),
        ] {
            assert!(
                serde_json::from_value::<MetricName>(bad.clone()).is_err(),
                "{bad} decoded"
            );
        }
        // One bad name and the message does not decode.
        let message = json!({"device_id": "d1", "ts": 1, "values": [["ok", 1], ["no good", 2]]});
        assert!(serde_json::from_value::<TelemetryMessage>(message).is_err());
    }

    #[test]
    fn a_telemetry_batch_is_a_json_array_of_messages() {
        let batch = TelemetryBatch {
            messages: vec![TelemetryMessage {
                device_id: "d1".into(),
                ts: 5,
                values: vec![
                    (
                        MetricName::parse("temp").unwrap(),
                        MetricValue::Number(21.5),
                    ),
                    (MetricName::parse("on").unwrap(), MetricValue::Bool(true)),
                    (
                        MetricName::parse("mode").unwrap(),
                        MetricValue::Text("eco".into()),
                    ),
                ],
            }],
        };
        let wire = json!([{
            "device_id": "d1",
            "ts": 5,
            "values": [["temp", 21.5], ["on", true], ["mode", "eco"]],
        }]);
        assert_eq!(serde_json::to_value(&batch).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<TelemetryBatch>(wire).unwrap(),
            batch
        );
    }

    #[test]
    fn telemetry_values_cross_the_bus_bit_for_bit() {
        // Doubles whose shortest decimal form the default JSON parser reads
        // back one unit in the last place off.
        let values = [
            1.0715660391465826e-75,
            -1.81996730402717e-179,
            -1.603964615428183e143,
        ];
        let msg = TelemetryMessage {
            device_id: "d1".into(),
            ts: 1,
            values: values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        MetricName::parse(&format!("m{i}")).unwrap(),
                        MetricValue::Number(*v),
                    )
                })
                .collect(),
        };
        let back: TelemetryMessage =
            serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
        for ((_, got), want) in back.values.iter().zip(values) {
            let MetricValue::Number(got) = got else {
                panic!("{got:?} is not a number")
            };
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{want:e} came back as {got:e}"
            );
        }
    }

    fn message(values: Vec<(&str, MetricValue)>) -> TelemetryMessage {
        TelemetryMessage {
            device_id: "d1".into(),
            ts: 1,
            values: values
                .into_iter()
                .map(|(k, v)| (MetricName::parse(k).unwrap(), v))
                .collect(),
        }
    }

    #[test]
    fn a_telemetry_batch_publishes_only_what_can_be_stored() {
        let batch = |messages| TelemetryBatch { messages };
        let longest = "x".repeat(MAX_TEXT_VALUE_BYTES);
        assert_eq!(
            batch(vec![message(vec![("note", MetricValue::Text(longest))])]).validate(),
            Ok(())
        );
        let too_long = "x".repeat(MAX_TEXT_VALUE_BYTES + 1);
        let mut nameless = message(vec![("t", MetricValue::Number(1.0))]);
        nameless.device_id.clear();
        for bad in [
            batch(vec![]),
            batch(vec![message(vec![])]),
            batch(vec![nameless]),
            batch(vec![
                message(vec![("t", MetricValue::Number(1.0))]),
                message(vec![("note", MetricValue::Text(too_long))]),
            ]),
            batch(vec![message(vec![("t", MetricValue::Number(f64::NAN))])]),
            batch(vec![message(vec![(
                "t",
                MetricValue::Number(f64::INFINITY),
            )])]),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} passed");
        }
    }
}
