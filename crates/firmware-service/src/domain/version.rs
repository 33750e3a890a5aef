use std::fmt;

/// A firmware version: semantic versioning (`1.4.0`, `2.0.0-rc.1`,
/// `1.0.0+build.7`), with an optional leading `v` accepted and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareVersion(semver::Version);

impl FirmwareVersion {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        if t.len() > 64 {
            return Err("a version is at most 64 characters".into());
        }
        semver::Version::parse(t)
            .map(Self)
            .map_err(|e| format!("{s:?} is not a semantic version such as 1.4.0: {e}"))
    }

    /// Whether a device reporting `reported` runs this version.
    pub fn is_reported_by(&self, reported: &str) -> bool {
        Self::parse(reported).is_ok_and(|v| v == *self)
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_semantic_versions() {
        assert_eq!(
            FirmwareVersion::parse("1.4.0").unwrap().to_string(),
            "1.4.0"
        );
        assert_eq!(
            FirmwareVersion::parse("v2.0.0-rc.1").unwrap().to_string(),
            "2.0.0-rc.1"
        );
        for bad in ["", "1", "1.2", "latest", "1.2.3.4", "01.2.3"] {
            assert!(FirmwareVersion::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_by_precedence() {
        let v = |s| FirmwareVersion::parse(s).unwrap();
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2.0.0-rc.1") < v("2.0.0"));
    }

    #[test]
    fn reported_versions_must_match_exactly() {
        let target = FirmwareVersion::parse("1.4.0").unwrap();
        assert!(target.is_reported_by("1.4.0"));
        assert!(target.is_reported_by("v1.4.0"));
        assert!(!target.is_reported_by("1.3.9"));
        assert!(!target.is_reported_by("1.4.0-rc.1"));
        assert!(!target.is_reported_by("garbage"));
    }
}
