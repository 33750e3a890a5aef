use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A device id: 1–128 characters of letters, digits, `.`, `_`, `-` and
/// `:`. It is the MQTT client id and username and a topic level, so MQTT's
/// special characters (`/ + # $`) and spaces are never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "summary" || s == "activity" {
            return Err(format!("{s:?} is reserved (GET /api/v1/devices/{s})"));
        }
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a device id (1 to 128 letters, digits, '.', '_', '-' or ':')"
            ))
        }
    }

    /// A new id for a device created without one.
    pub fn generate() -> Self {
        Self(format!("dev-{}", uuid::Uuid::now_v7().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A device's MQTT password: 256 random bits, shown to the user once and
/// stored only as its SHA-256. A slow password hash buys nothing for a
/// secret with this much entropy, and keeps broker authentication cheap.
pub struct DeviceSecret(String);

impl DeviceSecret {
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(wf_common::random::bytes::<32>()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// A tag: 1–64 characters of letters, digits, `.`, `_`, `-`, `:` and `=`,
/// lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'='))
        {
            Ok(Self(s))
        } else {
            Err(format!(
                "{s:?} is not a tag (1 to 64 letters, digits, '.', '_', '-', ':' or '=')"
            ))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Parses, de-duplicates and sorts tags; at most 32.
pub fn normalize_tags(tags: &[String]) -> Result<Vec<String>, String> {
    if tags.len() > 32 {
        return Err("a device has at most 32 tags".into());
    }
    let mut out: Vec<String> = tags
        .iter()
        .map(|t| Tag::parse(t).map(Tag::into_inner))
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("sensor-01.floor_2:a").is_ok());
        for bad in [
            "",
            "a/b",
            "a+b",
            "a#",
            "$sys",
            "has space",
            &"x".repeat(129),
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DeviceId::parse(DeviceId::generate().as_str()).is_ok());
    }

    #[test]
    fn secrets_are_checked_against_their_hash() {
        let s = DeviceSecret::generate();
        assert_eq!(s.expose().len(), 43);
        assert!(secret_matches(s.expose(), &s.hash()));
        assert!(!secret_matches("guess", &s.hash()));
    }

    #[test]
    fn tags_are_normalized() {
        assert_eq!(
            normalize_tags(&["B".into(), "a".into(), "b".into()]).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(normalize_tags(&["no spaces".into()]).is_err());
    }
}
