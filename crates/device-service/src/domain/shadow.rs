//! Device state: one shadow document per device, with what the device
//! reported about itself, what operators desire of it, and the delta
//! between them; and the server attributes operators keep about a device.
//!
//! Updates are partial: objects merge deeply and `null` deletes a key. An
//! update that would break a limit is refused whole; nothing is applied.

use serde_json::{Map, Value, json};
use wf_common::contract::ShadowSection;

pub type Object = Map<String, Value>;

/// How large and how deep a shadow document may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLimits {
    /// `reported` and `desired` together, as compact JSON.
    pub max_bytes: usize,
    /// Nesting of objects and arrays, the section's own object included
    /// (`{"a": 1}` is 1, `{"a": {"b": 1}}` is 2).
    pub max_depth: usize,
}

/// Why an update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotObject,
    TooDeep,
    TooLarge,
}

impl Refusal {
    /// The `code` on `devices/{id}/shadow/rejected`.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotObject => "not_object",
            Self::TooDeep => "too_deep",
            Self::TooLarge => "too_large",
        }
    }

    pub fn message(self, limits: &ShadowLimits) -> String {
        match self {
            Self::NotObject => "the state must be a JSON object".into(),
            Self::TooDeep => format!(
                "the state nests deeper than {} levels; nothing was applied",
                limits.max_depth
            ),
            Self::TooLarge => format!(
                "the document would exceed {} bytes; nothing was applied",
                limits.max_bytes
            ),
        }
    }
}

/// A device's shadow document. Version 0 is a device that never had any
/// state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shadow {
    pub version: i64,
    pub reported: Object,
    pub desired: Object,
    /// The shape of `reported`, each leaf the time (ms) it last changed.
    pub reported_meta: Object,
    pub desired_meta: Object,
    pub updated_at: Option<i64>,
}

impl Shadow {
    /// The desired keys whose values differ from reported, recursing into
    /// objects present in both.
    pub fn delta(&self) -> Object {
        delta(&self.desired, &self.reported)
    }

    pub fn section(&self, section: ShadowSection) -> &Object {
        match section {
            ShadowSection::Reported => &self.reported,
            ShadowSection::Desired => &self.desired,
        }
    }

    /// Merges `patch` into `section` at `now`. `Ok(true)`: the document
    /// changed and its version grew; `Ok(false)`: the patch changed
    /// nothing; `Err`: refused, and the document is as it was.
    pub fn apply(
        &mut self,
        section: ShadowSection,
        patch: &Value,
        now: i64,
        limits: &ShadowLimits,
    ) -> Result<bool, Refusal> {
        let Value::Object(patch) = patch else {
            return Err(Refusal::NotObject);
        };
        if 1 + depth(patch.values()) > limits.max_depth {
            return Err(Refusal::TooDeep);
        }
        let mut next = self.clone();
        let (state, meta) = match section {
            ShadowSection::Reported => (&mut next.reported, &mut next.reported_meta),
            ShadowSection::Desired => (&mut next.desired, &mut next.desired_meta),
        };
        if !merge(state, meta, patch, now) {
            return Ok(false);
        }
        if next.size() > limits.max_bytes {
            return Err(Refusal::TooLarge);
        }
        next.version += 1;
        next.updated_at = Some(now);
        *self = next;
        Ok(true)
    }

    /// The size the limit counts: both sections as compact JSON.
    pub fn size(&self) -> usize {
        let len = |o: &Object| {
            serde_json::to_vec(o)
                .map(|v| v.len())
                .unwrap_or(usize::MAX / 2)
        };
        len(&self.reported) + len(&self.desired)
    }

    /// The metadata object of the document.
    pub fn metadata(&self) -> Value {
        json!({"reported": self.reported_meta, "desired": self.desired_meta})
    }
}

/// Nesting below a section's top level: 0 when every value is a leaf.
fn depth<'a>(values: impl Iterator<Item = &'a Value>) -> usize {
    values
        .map(|v| match v {
            Value::Object(m) => 1 + depth(m.values()),
            Value::Array(a) => 1 + depth(a.iter()),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Deep merge of `patch` into `target`, stamping changed leaves in `meta`;
/// whether anything changed.
fn merge(target: &mut Object, meta: &mut Object, patch: &Object, now: i64) -> bool {
    let mut changed = false;
    for (key, value) in patch {
        match value {
            Value::Null => {
                if target.remove(key).is_some() {
                    meta.remove(key);
                    changed = true;
                }
            }
            Value::Object(inner) => {
                let existed = target.get(key).is_some_and(Value::is_object);
                if !existed {
                    target.insert(key.clone(), Value::Object(Map::new()));
                    meta.insert(key.clone(), Value::Object(Map::new()));
                }
                let (Some(Value::Object(t)), Some(Value::Object(m))) =
                    (target.get_mut(key), meta.get_mut(key))
                else {
                    continue;
                };
                let inner_changed = merge(t, m, inner, now);
                if existed {
                    changed |= inner_changed;
                } else if t.is_empty() && !inner.is_empty() {
                    // Only deletions under a key that was not there.
                    target.remove(key);
                    meta.remove(key);
                } else {
                    changed = true;
                }
            }
            leaf => {
                if target.get(key) != Some(leaf) {
                    target.insert(key.clone(), leaf.clone());
                    meta.insert(key.clone(), Value::from(now));
                    changed = true;
                }
            }
        }
    }
    changed
}

fn delta(desired: &Object, reported: &Object) -> Object {
    let mut out = Object::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(r))) => {
                let inner = delta(w, r);
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (w, Some(r)) if same(w, r) => {}
            (w, _) => {
                out.insert(key.clone(), w.clone());
            }
        }
    }
    out
}

/// Equal as JSON values, numbers compared by value (`500` is `500.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|other| same(v, other)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

/// Whether `reported` already is what `wanted` (a partial desired state)
/// asks: every key it sets has that value, every key it deletes is absent.
pub fn converged(wanted: &Object, reported: &Object) -> bool {
    wanted
        .iter()
        .all(|(key, want)| match (want, reported.get(key)) {
            (Value::Null, r) => r.is_none(),
            (Value::Object(w), Some(Value::Object(r))) => converged(w, r),
            (Value::Object(w), _) => w.values().all(Value::is_null),
            (w, Some(r)) => same(w, r),
            (_, None) => false,
        })
}

/// The most server attributes one device holds.
pub const MAX_ATTRIBUTES: usize = 64;

/// The longest attribute value, as compact JSON.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;

/// A server attribute's name: 1 to 64 letters, digits, `_`, `-` or `.`.
pub fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "attribute name {name:?} must be 1 to 64 letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

/// The stored forms an attribute filter value matches: the text as a JSON
/// string, and the text itself (numbers, booleans).
pub fn attribute_filter_forms(text: &str) -> [String; 2] {
    [Value::from(text).to_string(), text.to_string()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: ShadowLimits = ShadowLimits {
        max_bytes: 16 * 1024,
        max_depth: 8,
    };

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn objects_merge_deeply_and_null_deletes() {
        let mut s = Shadow::default();
        assert!(
            s.apply(
                ShadowSection::Reported,
                &json!({"net": {"rssi": -70, "ssid": "lab"}, "fw": "1.0"}),
                10,
                &LIMITS
            )
            .unwrap()
        );
        assert_eq!(s.version, 1);
        assert!(
            s.apply(
                ShadowSection::Reported,
                &json!({"net": {"rssi": -60, "ssid": null}}),
                20,
                &LIMITS
            )
            .unwrap()
        );
        assert_eq!(
            Value::Object(s.reported.clone()),
            json!({"net": {"rssi": -60}, "fw": "1.0"})
        );
        assert_eq!(
            s.metadata()["reported"],
            json!({"net": {"rssi": 20}, "fw": 10})
        );
        assert_eq!((s.version, s.updated_at), (2, Some(20)));
        // Nothing new: no change, no version.
        assert!(
            !s.apply(ShadowSection::Reported, &json!({"fw": "1.0"}), 30, &LIMITS)
                .unwrap()
        );
        assert!(
            !s.apply(ShadowSection::Reported, &json!({"gone": null}), 30, &LIMITS)
                .unwrap()
        );
        assert!(
            !s.apply(
                ShadowSection::Reported,
                &json!({"new": {"x": null}}),
                30,
                &LIMITS
            )
            .unwrap()
        );
        assert_eq!(s.version, 2);
        // A leaf replaced by an object and back.
        s.apply(
            ShadowSection::Reported,
            &json!({"fw": {"major": 1}}),
            40,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(s.reported["fw"], json!({"major": 1}));
        s.apply(ShadowSection::Reported, &json!({"fw": "2.0"}), 50, &LIMITS)
            .unwrap();
        assert_eq!(s.reported_meta["fw"], json!(50));
        s.apply(ShadowSection::Reported, &json!({"empty": {}}), 60, &LIMITS)
            .unwrap();
        assert_eq!(s.reported["empty"], json!({}));
    }

    #[test]
    fn the_delta_is_what_desired_asks_and_reported_lacks() {
        let mut s = Shadow::default();
        s.apply(
            ShadowSection::Desired,
            &json!({"sampling_ms": 500, "led": {"color": "red", "level": 3}, "mode": "eco"}),
            1,
            &LIMITS,
        )
        .unwrap();
        s.apply(
            ShadowSection::Reported,
            &json!({"sampling_ms": 500.0, "led": {"color": "blue", "level": 3}, "extra": 1}),
            2,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            Value::Object(s.delta()),
            json!({"led": {"color": "red"}, "mode": "eco"})
        );
        s.apply(
            ShadowSection::Reported,
            &json!({"led": {"color": "red"}, "mode": "eco"}),
            3,
            &LIMITS,
        )
        .unwrap();
        assert!(s.delta().is_empty());
    }

    #[test]
    fn an_update_beyond_a_limit_is_refused_whole() {
        let mut s = Shadow::default();
        s.apply(ShadowSection::Reported, &json!({"a": 1}), 1, &LIMITS)
            .unwrap();
        let before = s.clone();
        assert_eq!(
            s.apply(ShadowSection::Reported, &json!([1, 2]), 2, &LIMITS),
            Err(Refusal::NotObject)
        );
        let mut deep = json!(1);
        for _ in 0..9 {
            deep = json!({ "k": deep });
        }
        assert_eq!(
            s.apply(ShadowSection::Desired, &deep, 2, &LIMITS),
            Err(Refusal::TooDeep)
        );
        // Eight levels, the section's own included, is the deepest accepted.
        let mut ok = json!(1);
        for _ in 0..8 {
            ok = json!({ "k": ok });
        }
        assert!(s.apply(ShadowSection::Desired, &ok, 2, &LIMITS).is_ok());
        let mut s2 = before.clone();
        let big = json!({"b": "x".repeat(16 * 1024), "a": 2});
        assert_eq!(
            s2.apply(ShadowSection::Reported, &big, 3, &LIMITS),
            Err(Refusal::TooLarge)
        );
        assert_eq!(s2, before, "nothing half applied");
    }

    #[test]
    fn convergence_is_every_key_a_job_set() {
        let reported = obj(json!({"sampling_ms": 500, "net": {"mode": "lte"}}));
        assert!(converged(&obj(json!({"sampling_ms": 500.0})), &reported));
        assert!(converged(&obj(json!({"net": {"mode": "lte"}})), &reported));
        assert!(converged(&obj(json!({"old": null})), &reported));
        assert!(!converged(&obj(json!({"sampling_ms": 1000})), &reported));
        assert!(!converged(
            &obj(json!({"net": {"mode": "wifi"}})),
            &reported
        ));
        assert!(!converged(&obj(json!({"sampling_ms": null})), &reported));
        assert!(!converged(&obj(json!({"other": 1})), &reported));
    }

    #[test]
    fn attribute_names_and_filters() {
        assert!(check_attribute_name("site").is_ok());
        assert!(check_attribute_name("install.date").is_ok());
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_attribute_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            attribute_filter_forms("lyon"),
            ["\"lyon\"".to_string(), "lyon".to_string()]
        );
    }
}
