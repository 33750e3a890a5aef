//! Device ids, topic names and topic filters, and the access rule built on
//! them: a device publishes and subscribes only under `devices/{its id}/`.

use std::fmt;

/// The longest device id the gateway accepts.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// The longest topic (or filter) MQTT can carry.
const MAX_TOPIC_LEN: usize = 65_535;

/// The first level of every device topic.
pub const DEVICES_ROOT: &str = "devices";

/// A device id as used for the MQTT client id, the username and the second
/// level of its topics: 1 to 128 bytes, no `/`, `+`, `#`, `$` (they would
/// change the meaning of a topic) and no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("device id must not be empty".into());
        }
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(format!(
                "device id must be at most {MAX_DEVICE_ID_LEN} bytes"
            ));
        }
        if s.chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '$') || c.is_control())
        {
            return Err(format!(
                "{s:?} is not a device id (no '/', '+', '#', '$' or control characters)"
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of `topic` after `devices/{this id}/`, when it has one.
    fn own_suffix<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(DEVICES_ROOT)?
            .strip_prefix('/')?
            .strip_prefix(self.as_str())?
            .strip_prefix('/')
            .filter(|rest| !rest.is_empty())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic a message is published on: no wildcards, no NUL, not empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::check(s)?;
        Ok(Self(s.to_string()))
    }

    fn check(s: &str) -> Result<(), String> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err("a topic must have 1 to 65535 bytes".into());
        }
        if s.contains(['+', '#', '\0']) {
            return Err(format!(
                "{s:?} is not a topic name (no wildcards or NUL characters)"
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device and the rest of a `devices/{id}/{rest}` topic, when this
    /// is one with a valid id and a non-empty rest.
    pub fn device_topic(&self) -> Option<(DeviceId, &str)> {
        let rest = self.0.strip_prefix(DEVICES_ROOT)?.strip_prefix('/')?;
        let (id, suffix) = rest.split_once('/')?;
        if suffix.is_empty() {
            return None;
        }
        Some((DeviceId::parse(id).ok()?, suffix))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An MQTT topic filter: `+` stands for one whole level, `#` for any
/// number of trailing levels and only as the last one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::check(s)?;
        Ok(Self(s.to_string()))
    }

    fn check(s: &str) -> Result<(), String> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err("a topic filter must have 1 to 65535 bytes".into());
        }
        if s.contains('\0') {
            return Err("a topic filter must not contain NUL characters".into());
        }
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            let wildcard_ok = match level {
                "+" => true,
                "#" => levels.peek().is_none(),
                other => !other.contains(['+', '#']),
            };
            if !wildcard_ok {
                return Err(format!(
                    "{s:?} is not a topic filter ('+' must be a whole level, '#' a whole last level)"
                ));
            }
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a message on `topic` matches this filter. As MQTT requires,
    /// a filter starting with a wildcard does not match topics starting
    /// with `$`.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.0.split('/') {
            match (level, topic_levels.next()) {
                ("#", _) => return true,
                ("+", Some(_)) => {}
                (expected, Some(actual)) if expected == actual => {}
                _ => return false,
            }
        }
        topic_levels.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `device` may publish on `topic`: only topics under its own
/// `devices/{id}/` prefix.
pub fn may_publish(device: &DeviceId, topic: &str) -> bool {
    device.own_suffix(topic).is_some() && TopicName::check(topic).is_ok()
}

/// Whether `device` may subscribe to `filter`: a valid filter under its own
/// `devices/{id}/` prefix. The prefix is literal, so no wildcard in the
/// rest can reach another device's topics; `#`, `devices/+/...` and
/// `$share/...` are refused.
pub fn may_subscribe(device: &DeviceId, filter: &str) -> bool {
    device.own_suffix(filter).is_some() && TopicFilter::check(filter).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn device_ids_refuse_topic_syntax_and_odd_lengths() {
        assert!(DeviceId::parse("sensor-01").is_ok());
        assert!(DeviceId::parse("0191b6f2-7c1e-7d3a-9a51-0c5e4f1a2b3c").is_ok());
        assert!(DeviceId::parse(&"a".repeat(128)).is_ok());
        for bad in [
            "",
            "a/b",
            "a+b",
            "a#",
            "$SYS",
            "tab\there",
            &"a".repeat(129),
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn topic_names_have_no_wildcards() {
        assert!(TopicName::parse("devices/d1/telemetry").is_ok());
        for bad in ["", "devices/+/telemetry", "devices/d1/#", "a\0b"] {
            assert!(TopicName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn device_topics_split_into_device_and_rest() {
        let t = TopicName::parse("devices/d1/commands/response").unwrap();
        let (device, rest) = t.device_topic().unwrap();
        assert_eq!(device, id("d1"));
        assert_eq!(rest, "commands/response");
        for other in [
            "devices/d1",
            "devices/d1/",
            "devices//x",
            "things/d1/x",
            "devices/$x/y",
        ] {
            assert!(
                TopicName::parse(other).unwrap().device_topic().is_none(),
                "{other:?} taken for a device topic"
            );
        }
    }

    #[test]
    fn filters_put_wildcards_on_whole_levels_only() {
        for good in ["#", "+", "a/+/b", "a/#", "+/+/#", "devices/d1/ota/progress"] {
            assert!(TopicFilter::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a\0"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        let m = |f: &str, t: &str| TopicFilter::parse(f).unwrap().matches(t);
        assert!(m("devices/+/telemetry", "devices/d1/telemetry"));
        assert!(!m("devices/+/telemetry", "devices/d1/status"));
        assert!(!m("devices/+/telemetry", "devices/d1/telemetry/x"));
        assert!(m("devices/#", "devices/d1/commands/response"));
        assert!(m("devices/#", "devices"));
        assert!(m("devices/d1/#", "devices/d1/ota/progress"));
        assert!(!m("devices/d1/#", "devices/d2/ota/progress"));
        assert!(m("#", "devices/d1/telemetry"));
        assert!(!m("#", "$SYS/uptime"));
        assert!(!m("+/uptime", "$SYS/uptime"));
        assert!(m("$SYS/#", "$SYS/uptime"));
        assert!(m("a/+", "a/"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
    }

    #[test]
    fn devices_publish_only_under_their_own_prefix() {
        let d1 = id("d1");
        assert!(may_publish(&d1, "devices/d1/telemetry"));
        assert!(may_publish(&d1, "devices/d1/commands/response"));
        for topic in [
            "devices/d2/telemetry",
            "devices/d1",
            "devices/d1/",
            "devices/d10/telemetry",
            "devices/d/telemetry",
            "telemetry",
            "$SYS/x",
        ] {
            assert!(!may_publish(&d1, topic), "{topic:?} allowed");
        }
    }

    #[test]
    fn devices_subscribe_only_under_their_own_prefix() {
        let d1 = id("d1");
        assert!(may_subscribe(&d1, "devices/d1/commands"));
        assert!(may_subscribe(&d1, "devices/d1/#"));
        assert!(may_subscribe(&d1, "devices/d1/+/response"));
        for filter in [
            "#",
            "+/d1/commands",
            "devices/+/commands",
            "devices/#",
            "devices/d2/commands",
            "devices/d1",
            "devices/d1/",
            "devices/d1/#/x",
            "$share/g/devices/d1/commands",
        ] {
            assert!(!may_subscribe(&d1, filter), "{filter:?} allowed");
        }
    }
}
