use std::fmt;

/// A command name: 1–64 characters of letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandName(String);

impl CommandName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a command name (1 to 64 letters, digits, '.', '_' or '-')"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// pending → sent → succeeded | failed | timed_out
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    Pending,
    Sent,
    Succeeded,
    Failed,
    TimedOut,
}

impl CommandStatus {
    pub const OPEN: [CommandStatus; 2] = [Self::Pending, Self::Sent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "sent" => Self::Sent,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "timed_out" => Self::TimedOut,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !Self::OPEN.contains(&self)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            CommandStatus::Pending,
            CommandStatus::Sent,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
            CommandStatus::TimedOut,
        ] {
            assert_eq!(CommandStatus::parse(s.as_str()), Some(s));
        }
        assert!(CommandStatus::Succeeded.is_final());
        assert!(!CommandStatus::Sent.is_final());
        assert!(CommandName::parse("reboot").is_ok());
        assert!(CommandName::parse("re boot").is_err());
    }
}
