//! Trigger rules: given the states of a task instance's direct upstreams, does it run now,
//! keep waiting, become `skipped` or become `upstream_failed`? This is Airflow's
//! `TriggerRuleDep` with `flag_upstream_failed` set, as its scheduler evaluates it.

use std::fmt;
use std::str::FromStr;

use crate::state::TaskState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TriggerRule {
    #[default]
    AllSuccess,
    AllFailed,
    AllDone,
    AllDoneMinOneSuccess,
    AllSkipped,
    OneSuccess,
    OneFailed,
    OneDone,
    NoneFailed,
    NoneFailedMinOneSuccess,
    NoneSkipped,
    Always,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 12] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::AllDoneMinOneSuccess,
        TriggerRule::AllSkipped,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::OneDone,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllDoneMinOneSuccess => "all_done_min_one_success",
            TriggerRule::AllSkipped => "all_skipped",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneDone => "one_done",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::NoneSkipped => "none_skipped",
            TriggerRule::Always => "always",
        }
    }
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TriggerRule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        TriggerRule::ALL
            .into_iter()
            .find(|rule| rule.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<_> = TriggerRule::ALL.iter().map(|rule| rule.as_str()).collect();
                format!(
                    "`{text}` is not a trigger rule; use one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// What the scheduler does with a task instance whose state is still `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Its trigger rule holds: schedule a try.
    Run,
    /// Not decidable yet: some upstream is still to finish.
    Wait,
    Skip,
    UpstreamFailed,
}

/// Counts of the direct upstreams' states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    pub total: usize,
    pub success: usize,
    pub skipped: usize,
    pub failed: usize,
    pub upstream_failed: usize,
    pub removed: usize,
}

impl UpstreamCounts {
    pub fn from_states<I: IntoIterator<Item = TaskState>>(states: I) -> UpstreamCounts {
        let mut counts = UpstreamCounts::default();
        for state in states {
            counts.total += 1;
            counts.add_finished(state);
        }
        counts
    }

    /// Counts one more upstream as ended in `state` (already counted in `total` while it
    /// was unfinished). An unfinished state adds nothing.
    pub fn add_finished(&mut self, state: TaskState) {
        match state {
            TaskState::Success => self.success += 1,
            TaskState::Skipped => self.skipped += 1,
            TaskState::Failed => self.failed += 1,
            TaskState::UpstreamFailed => self.upstream_failed += 1,
            TaskState::Removed => self.removed += 1,
            _ => {}
        }
    }

    fn done(&self) -> usize {
        self.success + self.skipped + self.failed + self.upstream_failed + self.removed
    }

    fn all_done(&self) -> bool {
        self.done() >= self.total
    }
}

/// Evaluates `rule` against the upstream counts.
pub fn evaluate(rule: TriggerRule, up: UpstreamCounts) -> Decision {
    use Decision::*;
    if up.total == 0 {
        return Run;
    }
    // Removed upstreams count as neither success nor failure: they leave the rule.
    let upstream = up.total - up.removed;
    let failures = up.failed + up.upstream_failed;
    let done = up.all_done();
    match rule {
        TriggerRule::Always => Run,
        TriggerRule::AllSuccess => {
            if failures > 0 {
                UpstreamFailed
            } else if up.skipped > 0 {
                Skip
            } else if up.success >= upstream {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllFailed => {
            if up.success > 0 || up.skipped > 0 {
                Skip
            } else if failures >= upstream {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllDone => {
            if done {
                Run
            } else {
                Wait
            }
        }
        // Airflow 3.1: a skipped upstream skips it at once; otherwise it needs every upstream
        // done and at least one success, else it is upstream_failed.
        TriggerRule::AllDoneMinOneSuccess => {
            if up.skipped > 0 {
                Skip
            } else if !done {
                Wait
            } else if up.success > 0 {
                Run
            } else {
                UpstreamFailed
            }
        }
        TriggerRule::AllSkipped => {
            if up.success > 0 || failures > 0 {
                Skip
            } else if up.skipped >= upstream {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::OneSuccess => {
            if up.success > 0 {
                Run
            } else if !done {
                Wait
            } else if up.skipped >= upstream {
                Skip
            } else {
                UpstreamFailed
            }
        }
        TriggerRule::OneFailed => {
            if failures > 0 {
                Run
            } else if done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::OneDone => {
            if up.success + up.failed > 0 {
                Run
            } else if done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailed => {
            if failures > 0 {
                UpstreamFailed
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => {
            if failures > 0 {
                UpstreamFailed
            } else if up.skipped >= upstream {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::NoneSkipped => {
            if up.skipped > 0 {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use TaskState as S;

    fn decide(rule: TriggerRule, states: &[TaskState]) -> Decision {
        evaluate(rule, UpstreamCounts::from_states(states.iter().copied()))
    }

    #[test]
    fn all_success_propagates_failures_and_skips() {
        assert_eq!(
            decide(TriggerRule::AllSuccess, &[S::Success, S::Success]),
            Run
        );
        assert_eq!(
            decide(TriggerRule::AllSuccess, &[S::Success, S::Running]),
            Wait
        );
        assert_eq!(
            decide(TriggerRule::AllSuccess, &[S::Failed, S::Running]),
            UpstreamFailed
        );
        assert_eq!(
            decide(TriggerRule::AllSuccess, &[S::UpstreamFailed]),
            UpstreamFailed
        );
        assert_eq!(
            decide(TriggerRule::AllSuccess, &[S::Skipped, S::Success]),
            Skip
        );
    }

    #[test]
    fn rules_that_wait_for_every_upstream() {
        assert_eq!(
            decide(TriggerRule::AllDone, &[S::Failed, S::UpForRetry]),
            Wait
        );
        assert_eq!(decide(TriggerRule::AllDone, &[S::Failed, S::Skipped]), Run);
        assert_eq!(
            decide(TriggerRule::NoneFailed, &[S::Skipped, S::Success]),
            Run
        );
        assert_eq!(
            decide(
                TriggerRule::NoneFailedMinOneSuccess,
                &[S::Skipped, S::Skipped]
            ),
            Skip
        );
        assert_eq!(
            decide(TriggerRule::NoneSkipped, &[S::Failed, S::Success]),
            Run
        );
        assert_eq!(
            decide(TriggerRule::AllFailed, &[S::Failed, S::UpstreamFailed]),
            Run
        );
        assert_eq!(
            decide(TriggerRule::AllFailed, &[S::Failed, S::Success]),
            Skip
        );
    }

    #[test]
    fn one_rules_fire_early() {
        assert_eq!(
            decide(TriggerRule::OneSuccess, &[S::Success, S::Running]),
            Run
        );
        assert_eq!(
            decide(TriggerRule::OneFailed, &[S::Failed, S::Running]),
            Run
        );
        assert_eq!(
            decide(TriggerRule::OneFailed, &[S::Success, S::Skipped]),
            Skip
        );
        assert_eq!(
            decide(TriggerRule::OneSuccess, &[S::Failed, S::Skipped]),
            UpstreamFailed
        );
        assert_eq!(
            decide(TriggerRule::OneDone, &[S::Skipped, S::Running]),
            Wait
        );
    }

    #[test]
    fn names_round_trip() {
        for rule in TriggerRule::ALL {
            assert_eq!(rule.as_str().parse::<TriggerRule>(), Ok(rule));
        }
        assert!("all_good"
            .parse::<TriggerRule>()
            .unwrap_err()
            .contains("none_failed"));
    }
}
