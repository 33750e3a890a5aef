//! The topic router and access rule: device ids, topic names, topic
//! filters, which device a topic belongs to, and what a device may publish
//! and subscribe to. Input: a device id, a topic and a filter, one per line
//! (the filter is the rest, newlines included); each string is also tried
//! in the other roles.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_gateway::access::{authorize_topic, Action};
use mqtt_gateway::domain::{may_publish, may_subscribe, DeviceId, Route, TopicFilter, TopicName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (id, topic, filter) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let strings = [id, topic, filter];
    for s in strings {
        check_name(s);
        check_filter(s);
    }
    for claimed in strings {
        let device = DeviceId::parse(claimed);
        for t in strings {
            // The HTTP hooks (EMQX) and the embedded broker apply one rule.
            if let Ok(d) = &device {
                assert_eq!(
                    authorize_topic(claimed, Some(claimed), t, Action::Publish),
                    may_publish(d, t)
                );
                assert_eq!(
                    authorize_topic(claimed, None, t, Action::Subscribe),
                    may_subscribe(d, t)
                );
                check_access(d, t, strings);
            } else {
                assert!(!authorize_topic(claimed, Some(claimed), t, Action::Publish));
                assert!(!authorize_topic(
                    claimed,
                    Some(claimed),
                    t,
                    Action::Subscribe
                ));
            }
        }
    }
});

/// A topic name, and the device and route the router reads from it.
fn check_name(s: &str) {
    let Ok(name) = TopicName::parse(s) else {
        return;
    };
    assert!(!s.is_empty() && !s.contains(['+', '#', '\0']), "{s:?}");
    // Every topic name is a filter that matches exactly itself.
    let exact = TopicFilter::parse(s).expect("a topic name is a filter");
    assert!(exact.matches(s), "{s:?} does not match itself");
    if !s.starts_with('$') {
        assert!(TopicFilter::parse("#").unwrap().matches(s));
    }
    if let Some((device, suffix)) = name.device_topic() {
        assert!(!suffix.is_empty());
        assert_eq!(format!("devices/{device}/{suffix}"), s);
        // The device the router names is the only one allowed to publish
        // there.
        assert!(may_publish(&device, s), "{device} may not publish on {s:?}");
        let _ = Route::of(suffix).kind();
    }
}

/// A filter, and the topics it matches.
fn check_filter(s: &str) {
    let Ok(filter) = TopicFilter::parse(s) else {
        return;
    };
    let levels: Vec<&str> = s.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) {
            assert!(
                *level == "+" || (*level == "#" && i == levels.len() - 1),
                "{s:?}"
            );
        }
    }
    // A filter with no wildcard matches only itself.
    if !s.contains(['+', '#']) {
        assert!(filter.matches(s));
    }
}

/// What `device` may publish and subscribe to stays under its own prefix.
fn check_access(device: &DeviceId, t: &str, strings: [&str; 3]) {
    let own = format!("devices/{device}/");
    if may_publish(device, t) {
        assert!(
            t.starts_with(&own) && t.len() > own.len(),
            "{device} publishes on {t:?}"
        );
        let name = TopicName::parse(t).expect("a published topic is a topic name");
        let (routed, _) = name.device_topic().expect("a device topic");
        assert_eq!(&routed, device, "{t:?} routed to another device");
    }
    if may_subscribe(device, t) {
        assert!(
            t.starts_with(&own) && t.len() > own.len(),
            "{device} subscribes to {t:?}"
        );
        let filter = TopicFilter::parse(t).expect("a subscribed filter is a filter");
        // No topic of another device, and nothing outside `devices/`,
        // reaches the subscription.
        for topic in strings {
            if filter.matches(topic) {
                assert!(
                    topic.starts_with(&own) || topic == own.trim_end_matches('/'),
                    "{device}'s filter {t:?} matches {topic:?}"
                );
            }
        }
        for other in ["devices/other/telemetry", "devices", "$SYS/x", "#"] {
            if filter.matches(other) {
                assert!(other.starts_with(&own) || other == own.trim_end_matches('/'));
            }
        }
    }
}
