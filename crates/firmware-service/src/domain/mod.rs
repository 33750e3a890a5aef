//! firmware-service's types and rules, free of I/O.

mod execution;
mod link;
mod rollout;
mod signature;
mod version;

pub use execution::{Decision, ExecutionEvent, ExecutionState, Reported, RetryPolicy, decide};
pub use link::{DownloadGrant, LinkSigner};
pub use rollout::{RolloutState, StateCounts, Target, threshold_exceeded};
pub use signature::{PublicKeys, Sha256Digest};
pub use version::FirmwareVersion;

/// A device type (product) as device-service spells it: 1–64 letters,
/// digits, `.`, `_` or `-`.
pub fn check_device_type(device_type: &str) -> Result<String, String> {
    let t = device_type.trim();
    if (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(t.to_string())
    } else {
        Err("device_type must be 1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

/// A new id with a readable prefix: `fw-…`, `ro-…`, `ex-…`. Only these
/// generated ids name stored files, so no user input reaches a path.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Whether `s` could be an id this service generated (letters, digits and
/// `-` only), checked before an id is used as a storage key.
pub fn is_generated_id(s: &str) -> bool {
    (4..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_safe_storage_keys() {
        let id = new_id("fw");
        assert!(id.starts_with("fw-"));
        assert!(is_generated_id(&id));
        for bad in [
            "../etc/passwd",
            "fw-1/../../x",
            "FW-1",
            "a b",
            "",
            "..",
            "fw-\u{0}",
        ] {
            assert!(!is_generated_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn device_types() {
        assert_eq!(check_device_type(" boiler-v2 ").unwrap(), "boiler-v2");
        assert!(check_device_type("").is_err());
        assert!(check_device_type("a/b").is_err());
    }
}
