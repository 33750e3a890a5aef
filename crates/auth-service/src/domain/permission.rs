use std::fmt;

use serde::{Deserialize, Serialize};

/// The permissions the platform's endpoints check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    DeviceRead,
    DeviceWrite,
    DeviceCommand,
    FirmwareRead,
    FirmwareWrite,
    FirmwareDeploy,
    UserManage,
    RoleManage,
    AuditRead,
}

pub const ALL_PERMISSIONS: [Permission; 9] = [
    Permission::DeviceRead,
    Permission::DeviceWrite,
    Permission::DeviceCommand,
    Permission::FirmwareRead,
    Permission::FirmwareWrite,
    Permission::FirmwareDeploy,
    Permission::UserManage,
    Permission::RoleManage,
    Permission::AuditRead,
];

impl Permission {
    pub const fn code(self) -> &'static str {
        match self {
            Self::DeviceRead => "device:read",
            Self::DeviceWrite => "device:write",
            Self::DeviceCommand => "device:command",
            Self::FirmwareRead => "firmware:read",
            Self::FirmwareWrite => "firmware:write",
            Self::FirmwareDeploy => "firmware:deploy",
            Self::UserManage => "user:manage",
            Self::RoleManage => "role:manage",
            Self::AuditRead => "audit:read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A permission code as it arrives from a client: `resource:action`, lower
/// case ASCII letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PermissionCode(String);

impl PermissionCode {
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        match s.split_once(':') {
            Some((resource, action))
                if s.len() <= 64 && valid_part(resource) && valid_part(action) =>
            {
                Ok(Self(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is not a permission code (expected resource:action, e.g. device:read)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PermissionCode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<PermissionCode> for String {
    fn from(p: PermissionCode) -> String {
        p.0
    }
}

impl From<Permission> for PermissionCode {
    fn from(p: Permission) -> Self {
        Self(p.code().to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_code_parses() {
        for p in ALL_PERMISSIONS {
            assert_eq!(
                PermissionCode::parse(p.code()).unwrap(),
                PermissionCode::from(p)
            );
        }
    }

    #[test]
    fn malformed_codes_are_refused() {
        for bad in [
            "",
            "device",
            ":read",
            "device:",
            "Device:read",
            "a:b:c",
            "dev ice:read",
        ] {
            assert!(PermissionCode::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
