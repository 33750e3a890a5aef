//! One device's part in a rollout (an *execution*, stored as a row of
//! `firmware_upgrade_tasks`; its id is the `task_id` the device sees).
//!
//! ```text
//! queued → notified → downloading → installing → succeeded
//!    ↑         │            │             │    ↘ failed | timed_out | rejected | canceled
//!    └─────────┴── retry ───┴─────────────┘  (failed or timed out with retries left)
//! ```
//!
//! Success is counted only when the device reports `succeeded` *and* the
//! target version (which it reports after restarting into it).

use super::FirmwareVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecutionState {
    Queued,
    Notified,
    Downloading,
    Installing,
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
    Rejected,
}

impl ExecutionState {
    pub const ALL: [Self; 9] = [
        Self::Queued,
        Self::Notified,
        Self::Downloading,
        Self::Installing,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Canceled,
        Self::Rejected,
    ];

    /// States an execution waits in for its device.
    pub const IN_FLIGHT: [Self; 3] = [Self::Notified, Self::Downloading, Self::Installing];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Notified => "notified",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Canceled => "canceled",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Canceled | Self::Rejected
        )
    }

    /// Final states that count against a rollout's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut | Self::Rejected)
    }

    pub fn is_in_flight(self) -> bool {
        Self::IN_FLIGHT.contains(&self)
    }

    /// Position along the happy path; reports never move an execution back.
    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Notified => 1,
            Self::Downloading => 2,
            Self::Installing => 3,
            _ => 4,
        }
    }
}

/// What a device may report on `devices/{id}/ota/progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Downloading,
    Installing,
    Succeeded,
    Failed,
    /// The device refuses the update (wrong product, bad signature, policy);
    /// final, never retried.
    Rejected,
}

/// Something that happens to an execution.
#[derive(Debug, Clone)]
pub enum ExecutionEvent<'a> {
    /// The worker published the OTA notification.
    Notified,
    /// The device reported on `devices/{id}/ota/progress`.
    Report {
        state: Reported,
        progress: Option<f64>,
        version: Option<&'a str>,
        error: Option<&'a str>,
    },
    /// The per-device timeout ran out while waiting for the device.
    DeadlinePassed,
    /// The rollout was canceled or aborted, or the device deleted.
    Cancel { reason: &'a str },
}

/// Whether a failed attempt is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Notifications sent so far, including the failed attempt's.
    pub attempts: u32,
    pub max_retries: u32,
    /// The first retry waits this long; each further one twice as long.
    pub backoff_secs: u64,
    /// False once the rollout is aborted or canceled.
    pub rollout_active: bool,
}

/// The longest wait between attempts.
const MAX_BACKOFF_MS: i64 = 3_600_000;

impl RetryPolicy {
    pub fn can_retry(&self) -> bool {
        self.rollout_active && self.attempts <= self.max_retries
    }

    /// How long to wait before the next attempt.
    pub fn delay_ms(&self) -> i64 {
        let doublings = self.attempts.saturating_sub(1).min(20);
        let base = i64::try_from(self.backoff_secs.saturating_mul(1000)).unwrap_or(MAX_BACKOFF_MS);
        base.saturating_mul(1 << doublings).min(MAX_BACKOFF_MS)
    }
}

/// What to do with an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing changes: a duplicate, stale or late event.
    Ignore(&'static str),
    /// Move to (or stay in, with new progress) a non-final state.
    Advance {
        state: ExecutionState,
        progress: Option<f64>,
    },
    /// The attempt failed and another will be made after `delay_ms`.
    Retry { error: String, delay_ms: i64 },
    /// A final state.
    Finish {
        state: ExecutionState,
        error: Option<String>,
        version: Option<String>,
    },
}

/// Decides what `event` does to an execution in `current` whose target is
/// `target`.
pub fn decide(
    current: ExecutionState,
    event: &ExecutionEvent<'_>,
    target: &FirmwareVersion,
    retry: &RetryPolicy,
) -> Decision {
    if current.is_final() {
        return Decision::Ignore("the execution is already final");
    }
    let fail = |state: ExecutionState, error: String| {
        if retry.can_retry() {
            Decision::Retry {
                error,
                delay_ms: retry.delay_ms(),
            }
        } else {
            Decision::Finish {
                state,
                error: Some(error),
                version: None,
            }
        }
    };
    match event {
        ExecutionEvent::Notified => {
            if current == ExecutionState::Queued {
                Decision::Advance {
                    state: ExecutionState::Notified,
                    progress: None,
                }
            } else {
                Decision::Ignore("only a queued execution is notified")
            }
        }
        ExecutionEvent::Cancel { reason } => Decision::Finish {
            state: ExecutionState::Canceled,
            error: Some((*reason).to_string()),
            version: None,
        },
        ExecutionEvent::DeadlinePassed => {
            if current.is_in_flight() {
                fail(
                    ExecutionState::TimedOut,
                    "the device did not finish within the timeout".into(),
                )
            } else {
                Decision::Ignore("not waiting for the device")
            }
        }
        ExecutionEvent::Report {
            state,
            progress,
            version,
            error,
        } => match state {
            Reported::Downloading | Reported::Installing => {
                let next = if *state == Reported::Downloading {
                    ExecutionState::Downloading
                } else {
                    ExecutionState::Installing
                };
                if next.rank() < current.rank() {
                    return Decision::Ignore("an out-of-order report");
                }
                Decision::Advance {
                    state: next,
                    progress: progress
                        .filter(|p| p.is_finite())
                        .map(|p| p.clamp(0.0, 100.0)),
                }
            }
            Reported::Succeeded => match version {
                Some(v) if target.is_reported_by(v) => Decision::Finish {
                    state: ExecutionState::Succeeded,
                    error: None,
                    version: Some((*v).to_string()),
                },
                Some(v) => fail(
                    ExecutionState::Failed,
                    format!("the device reported success but runs version {v:?}, not {target}"),
                ),
                None => fail(
                    ExecutionState::Failed,
                    format!(
                        "the device reported success without its running version (expected {target})"
                    ),
                ),
            },
            Reported::Failed => {
                if current == ExecutionState::Queued {
                    // A late report of an attempt whose retry is already queued.
                    return Decision::Ignore("a retry is already queued");
                }
                fail(
                    ExecutionState::Failed,
                    error
                        .filter(|e| !e.trim().is_empty())
                        .map(|e| e.chars().take(500).collect())
                        .unwrap_or_else(|| "the device reported a failure".into()),
                )
            }
            Reported::Rejected => Decision::Finish {
                state: ExecutionState::Rejected,
                error: Some(
                    error
                        .filter(|e| !e.trim().is_empty())
                        .map(|e| e.chars().take(500).collect())
                        .unwrap_or_else(|| "the device rejected the update".into()),
                ),
                version: None,
            },
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::ExecutionState as S;
    use super::*;

    fn target() -> FirmwareVersion {
        FirmwareVersion::parse("2.0.0").unwrap()
    }

    fn policy(attempts: u32, max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            max_retries,
            backoff_secs: 10,
            rollout_active: true,
        }
    }

    fn report<'a>(state: Reported, version: Option<&'a str>) -> ExecutionEvent<'a> {
        ExecutionEvent::Report {
            state,
            progress: None,
            version,
            error: None,
        }
    }

    #[test]
    fn happy_path() {
        let p = policy(1, 0);
        let t = target();
        assert_eq!(
            decide(S::Queued, &ExecutionEvent::Notified, &t, &p),
            Decision::Advance {
                state: S::Notified,
                progress: None
            }
        );
        assert_eq!(
            decide(
                S::Notified,
                &ExecutionEvent::Report {
                    state: Reported::Downloading,
                    progress: Some(140.0),
                    version: None,
                    error: None
                },
                &t,
                &p
            ),
            Decision::Advance {
                state: S::Downloading,
                progress: Some(100.0)
            }
        );
        assert!(matches!(
            decide(S::Downloading, &report(Reported::Installing, None), &t, &p),
            Decision::Advance {
                state: S::Installing,
                ..
            }
        ));
        assert_eq!(
            decide(
                S::Installing,
                &report(Reported::Succeeded, Some("v2.0.0")),
                &t,
                &p
            ),
            Decision::Finish {
                state: S::Succeeded,
                error: None,
                version: Some("v2.0.0".into())
            }
        );
    }

    #[test]
    fn success_needs_the_target_version() {
        let t = target();
        // No retries left: a wrong version is a failure.
        let d = decide(
            S::Installing,
            &report(Reported::Succeeded, Some("1.9.0")),
            &t,
            &policy(1, 0),
        );
        assert!(
            matches!(
                d,
                Decision::Finish {
                    state: S::Failed,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = decide(
            S::Installing,
            &report(Reported::Succeeded, None),
            &t,
            &policy(1, 0),
        );
        assert!(
            matches!(
                d,
                Decision::Finish {
                    state: S::Failed,
                    ..
                }
            ),
            "{d:?}"
        );
        // With retries left it is tried again.
        let d = decide(
            S::Installing,
            &report(Reported::Succeeded, Some("1.9.0")),
            &t,
            &policy(1, 1),
        );
        assert!(matches!(d, Decision::Retry { .. }), "{d:?}");
    }

    #[test]
    fn final_states_never_change() {
        let t = target();
        for s in ExecutionState::ALL.into_iter().filter(|s| s.is_final()) {
            for e in [
                ExecutionEvent::Notified,
                ExecutionEvent::DeadlinePassed,
                ExecutionEvent::Cancel { reason: "x" },
                report(Reported::Succeeded, Some("2.0.0")),
                report(Reported::Downloading, None),
            ] {
                assert!(
                    matches!(decide(s, &e, &t, &policy(1, 5)), Decision::Ignore(_)),
                    "{s:?} {e:?}"
                );
            }
        }
    }

    #[test]
    fn reports_never_move_backwards() {
        let t = target();
        assert!(matches!(
            decide(
                S::Installing,
                &report(Reported::Downloading, None),
                &t,
                &policy(1, 0)
            ),
            Decision::Ignore(_)
        ));
        // A device working on a notification the worker had not recorded yet.
        assert!(matches!(
            decide(
                S::Queued,
                &report(Reported::Downloading, None),
                &t,
                &policy(0, 0)
            ),
            Decision::Advance {
                state: S::Downloading,
                ..
            }
        ));
        // A late failure of an attempt already being retried.
        assert!(matches!(
            decide(
                S::Queued,
                &report(Reported::Failed, None),
                &t,
                &policy(1, 3)
            ),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn timeouts_retry_then_give_up() {
        let t = target();
        for s in ExecutionState::IN_FLIGHT {
            assert_eq!(
                decide(s, &ExecutionEvent::DeadlinePassed, &t, &policy(1, 2)),
                Decision::Retry {
                    error: "the device did not finish within the timeout".into(),
                    delay_ms: 10_000
                }
            );
            assert_eq!(
                decide(s, &ExecutionEvent::DeadlinePassed, &t, &policy(2, 2)),
                Decision::Retry {
                    error: "the device did not finish within the timeout".into(),
                    delay_ms: 20_000
                }
            );
            assert!(matches!(
                decide(s, &ExecutionEvent::DeadlinePassed, &t, &policy(3, 2)),
                Decision::Finish {
                    state: S::TimedOut,
                    ..
                }
            ));
        }
        assert!(matches!(
            decide(
                S::Queued,
                &ExecutionEvent::DeadlinePassed,
                &t,
                &policy(1, 2)
            ),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn no_retries_once_the_rollout_stopped() {
        let t = target();
        let stopped = RetryPolicy {
            rollout_active: false,
            ..policy(1, 5)
        };
        assert!(matches!(
            decide(
                S::Downloading,
                &report(Reported::Failed, None),
                &t,
                &stopped
            ),
            Decision::Finish {
                state: S::Failed,
                ..
            }
        ));
    }

    #[test]
    fn rejections_are_final_and_cancel_wins() {
        let t = target();
        assert!(matches!(
            decide(
                S::Notified,
                &report(Reported::Rejected, None),
                &t,
                &policy(1, 5)
            ),
            Decision::Finish {
                state: S::Rejected,
                ..
            }
        ));
        assert!(matches!(
            decide(
                S::Queued,
                &ExecutionEvent::Cancel {
                    reason: "device deleted"
                },
                &t,
                &policy(0, 5)
            ),
            Decision::Finish {
                state: S::Canceled,
                ..
            }
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = |attempts| RetryPolicy {
            attempts,
            max_retries: 99,
            backoff_secs: 30,
            rollout_active: true,
        };
        assert_eq!(p(1).delay_ms(), 30_000);
        assert_eq!(p(2).delay_ms(), 60_000);
        assert_eq!(p(3).delay_ms(), 120_000);
        assert_eq!(p(30).delay_ms(), MAX_BACKOFF_MS);
    }

    #[test]
    fn states_round_trip() {
        for s in ExecutionState::ALL {
            assert_eq!(ExecutionState::parse(s.as_str()), Some(s));
        }
    }
}
