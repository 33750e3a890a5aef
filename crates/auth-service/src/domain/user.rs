//! Parsed user input: names, e-mail addresses and new passwords.

/// A login name: 3–64 characters of lower-case letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit. Input is lower-cased, so names
/// are unique regardless of case in every database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let ok = (3..=64).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Self(s))
        } else {
            Err("username must be 3 to 64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An e-mail address, lower-cased; checked for shape, not deliverability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let ok = s.len() <= 254
            && !s.chars().any(char::is_whitespace)
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            });
        if ok {
            Ok(Self(s))
        } else {
            Err(format!("{s:?} is not an e-mail address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A password about to be set: 8 to 128 characters. The upper bound keeps
/// hashing cost bounded.
pub struct NewPassword(String);

impl NewPassword {
    pub const MIN_LEN: usize = 8;
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: String) -> Result<Self, String> {
        let n = s.chars().count();
        if n < Self::MIN_LEN {
            Err(format!(
                "password must be at least {} characters",
                Self::MIN_LEN
            ))
        } else if n > Self::MAX_LEN {
            Err(format!(
                "password must be at most {} characters",
                Self::MAX_LEN
            ))
        } else {
            Ok(Self(s))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A role name: 2–64 characters of lower-case letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if (2..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        {
            Ok(Self(s))
        } else {
            Err("role name must be 2 to 64 characters of letters, digits, '_' or '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(Username::parse(" Alice.B ").unwrap().as_str(), "alice.b");
        for bad in ["ab", "-alice", "al ice", "ali@ce", &"a".repeat(65)] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("Bob@Example.COM").unwrap().as_str(),
            "bob@example.com"
        );
        for bad in [
            "bob",
            "bob@",
            "@x.io",
            "bob@x",
            "b ob@x.io",
            "a@b@c.io",
            "bob@.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords() {
        assert!(NewPassword::parse("short".into()).is_err());
        assert!(NewPassword::parse("x".repeat(129)).is_err());
        assert!(NewPassword::parse("long enough".into()).is_ok());
    }

    #[test]
    fn role_names() {
        assert_eq!(RoleName::parse("Field-Ops").unwrap().as_str(), "field-ops");
        assert!(RoleName::parse("a").is_err());
        assert!(RoleName::parse("no spaces").is_err());
    }
}
