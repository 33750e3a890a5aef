//! Rollouts: a firmware version delivered to a set of devices, at a rate,
//! stopped by a failure threshold.
//!
//! ```text
//! scheduled ──start_at──→ running ──all final──→ completed
//!     │  ↖resume   pause↙   │  ╲──threshold──→ aborted
//!     └──────→ paused ←─────┘
//! any of scheduled | running | paused ──cancel──→ canceled
//! ```

use serde::{Deserialize, Serialize};

use super::ExecutionState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    Scheduled,
    Running,
    Paused,
    Completed,
    Aborted,
    Canceled,
}

impl RolloutState {
    pub const ALL: [Self; 6] = [
        Self::Scheduled,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Aborted,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted | Self::Canceled)
    }

    /// Whether failed attempts of its executions are still retried.
    pub fn retries_executions(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running | Self::Paused)
    }

    pub fn pause(self) -> Result<Self, String> {
        match self {
            Self::Scheduled | Self::Running => Ok(Self::Paused),
            other => Err(format!("a {} rollout cannot be paused", other.as_str())),
        }
    }

    /// Resumes a paused rollout: running, or scheduled when its start time
    /// is still ahead.
    pub fn resume(self, start_due: bool) -> Result<Self, String> {
        match self {
            Self::Paused if start_due => Ok(Self::Running),
            Self::Paused => Ok(Self::Scheduled),
            other => Err(format!("a {} rollout cannot be resumed", other.as_str())),
        }
    }

    pub fn cancel(self) -> Result<Self, String> {
        if self.is_final() {
            Err(format!("a {} rollout cannot be canceled", self.as_str()))
        } else {
            Ok(Self::Canceled)
        }
    }

    /// States from which a rollout whose executions are all final completes.
    pub fn may_complete(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// Which devices a rollout targets; resolved through device-service when
/// the rollout is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = RolloutTarget)]
pub enum Target {
    /// These devices (each must be of the firmware's device type).
    DeviceIds(Vec<String>),
    /// Devices carrying this tag, of the firmware's device type.
    Tag(String),
    /// Every device of this type (the firmware's).
    DeviceType(String),
}

/// Executions of one rollout, counted per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([u64; 9]);

impl StateCounts {
    fn index(state: ExecutionState) -> usize {
        ExecutionState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default()
    }

    pub fn set(&mut self, state: ExecutionState, n: u64) {
        self.0[Self::index(state)] = n;
    }

    pub fn get(&self, state: ExecutionState) -> u64 {
        self.0[Self::index(state)]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn sum(&self, pick: impl Fn(ExecutionState) -> bool) -> u64 {
        ExecutionState::ALL
            .into_iter()
            .filter(|s| pick(*s))
            .map(|s| self.get(s))
            .sum()
    }

    /// Executions that reached an outcome (canceled ones did not).
    pub fn finished(&self) -> u64 {
        self.sum(|s| s.is_final() && s != ExecutionState::Canceled)
    }

    pub fn failures(&self) -> u64 {
        self.sum(ExecutionState::is_failure)
    }

    /// Executions not yet final.
    pub fn open(&self) -> u64 {
        self.sum(|s| !s.is_final())
    }

    /// `(state, count)` for every state.
    pub fn iter(&self) -> impl Iterator<Item = (ExecutionState, u64)> + '_ {
        ExecutionState::ALL.into_iter().map(|s| (s, self.get(s)))
    }
}

/// Whether failures have passed `threshold_percent` of the finished
/// executions, once at least `min_finished` have finished.
pub fn threshold_exceeded(counts: &StateCounts, threshold_percent: f64, min_finished: u64) -> bool {
    let finished = counts.finished();
    if finished == 0 || finished < min_finished {
        return false;
    }
    counts.failures() as f64 * 100.0 > threshold_percent * finished as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::RolloutState as R;
    use super::*;

    fn counts(pairs: &[(ExecutionState, u64)]) -> StateCounts {
        let mut c = StateCounts::default();
        for (s, n) in pairs {
            c.set(*s, *n);
        }
        c
    }

    #[test]
    fn control_transitions() {
        assert_eq!(R::Running.pause(), Ok(R::Paused));
        assert_eq!(R::Scheduled.pause(), Ok(R::Paused));
        assert!(R::Paused.pause().is_err());
        assert!(R::Completed.pause().is_err());
        assert_eq!(R::Paused.resume(true), Ok(R::Running));
        assert_eq!(R::Paused.resume(false), Ok(R::Scheduled));
        assert!(R::Running.resume(true).is_err());
        for s in [R::Scheduled, R::Running, R::Paused] {
            assert_eq!(s.cancel(), Ok(R::Canceled));
            assert!(s.retries_executions());
        }
        for s in [R::Completed, R::Aborted, R::Canceled] {
            assert!(s.cancel().is_err());
            assert!(s.is_final() && !s.retries_executions() && !s.may_complete());
        }
    }

    #[test]
    fn threshold_waits_for_the_minimum() {
        use ExecutionState::*;
        let c = counts(&[(Succeeded, 2), (Failed, 3), (Queued, 95)]);
        assert_eq!(c.total(), 100);
        assert_eq!(c.finished(), 5);
        assert_eq!(c.failures(), 3);
        assert_eq!(c.open(), 95);
        assert!(!threshold_exceeded(&c, 20.0, 10));
        assert!(threshold_exceeded(&c, 20.0, 5));
        // Exactly at the threshold is not past it.
        let c = counts(&[(Succeeded, 8), (TimedOut, 1), (Rejected, 1)]);
        assert!(!threshold_exceeded(&c, 20.0, 1));
        assert!(threshold_exceeded(&c, 19.9, 1));
        // 100 % never aborts; canceled executions are not outcomes.
        let c = counts(&[(Failed, 10), (Canceled, 50)]);
        assert!(!threshold_exceeded(&c, 100.0, 1));
        assert_eq!(c.finished(), 10);
        assert!(!threshold_exceeded(&StateCounts::default(), 0.0, 0));
    }

    #[test]
    fn states_round_trip_and_targets_serialize() {
        for s in R::ALL {
            assert_eq!(R::parse(s.as_str()), Some(s));
        }
        let t = Target::Tag("site-a".into());
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"tag":"site-a"}"#);
        let back: Target = serde_json::from_str(r#"{"device_ids":["a","b"]}"#).unwrap();
        assert_eq!(back, Target::DeviceIds(vec!["a".into(), "b".into()]));
    }
}
