//! States of runs, task instances and tries, and what a try's exit means.

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "`{other}` is not a {}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// The state of a run.
    RunState {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
    }
}

string_enum! {
    /// The state of a task instance (Airflow's TaskInstance states).
    TaskState {
        None => "none",
        Scheduled => "scheduled",
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
        UpForRetry => "up_for_retry",
        UpForReschedule => "up_for_reschedule",
        UpstreamFailed => "upstream_failed",
        Skipped => "skipped",
        Removed => "removed",
    }
}

string_enum! {
    /// How a run came to exist (`asset`: the assets its job's `schedule` names were updated,
    /// or the jobs its `after` names succeeded; `event`: a batch of the events posted to its
    /// job).
    RunTrigger {
        Scheduled => "scheduled",
        Manual => "manual",
        Backfill => "backfill",
        Asset => "asset",
        Event => "event",
    }
}

string_enum! {
    /// The state of one try (one container). `interrupted`: ended by something other
    /// than the integration (its scheduler stopped or lost it, the engine was unreachable);
    /// such a try does not count against the retries.
    TryState {
        Running => "running",
        Success => "success",
        Failed => "failed",
        Skipped => "skipped",
        Reschedule => "up_for_reschedule",
        Interrupted => "interrupted",
    }
}

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Success | RunState::Failed)
    }
}

impl TaskState {
    /// Finished for good: nothing more will happen to this task instance in this run
    /// unless an operator clears it.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::UpstreamFailed
                | TaskState::Skipped
                | TaskState::Removed
        )
    }

    /// Holds a container right now, or is about to.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Queued | TaskState::Running)
    }
}

/// Exit code that marks a try `skipped` (Airflow's default skip exit code).
pub const EXIT_SKIPPED: i64 = 99;
/// Exit code (EX_TEMPFAIL) of a sensor that is not ready yet.
pub const EXIT_NOT_READY: i64 = 75;

/// Exit code (EX_CONFIG) of a try that failed in a way no retry can mend (a refused
/// credential, a config missing a key): it fails once, whatever `retries` says.
pub const EXIT_NOT_RETRYABLE: i64 = 78;

/// Why a try failed, when the exit code alone does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The container exited with a non-zero code.
    ExitCode(i64),
    /// Killed at the task's `timeout`.
    Timeout,
    /// The image could not be resolved or pulled; the text names the image.
    Image(String),
    /// The backend failed to create or run the container.
    Backend(String),
    /// Stopped by Stevedore before it ended by itself (run cancelled, task marked,
    /// scheduler stopped).
    Stopped(StopReason),
    /// The scheduler that ran the try went away and the container could not be adopted.
    Lost(String),
    /// The try broke the entrypoint protocol's limits (an output over `max_output_bytes`,
    /// too many outputs): it was stopped, and is retried by policy like any failure.
    Protocol(String),
    /// The try's files could not travel: an input missing or corrupt in the artifact store,
    /// an output over `max_artifact_size`, a store that stayed unreachable. Retried by
    /// policy like any failure.
    Artifact(String),
    /// The container exited with a failing code after saying why: its last
    /// `{"type":"error"}` message, masked. `retryable: false` (the message said so, or the
    /// exit code was 78, EX_CONFIG) fails the task instance without a retry.
    Reported {
        exit_code: i64,
        message: Option<String>,
        retryable: bool,
    },
}

/// What a try's `{"type":"error","message":"...","retryable":false}` message said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedError {
    pub message: String,
    /// `false` when the integration says no retry can mend it; `true` when it says nothing.
    pub retryable: bool,
}

impl FailureReason {
    /// The failure of a container that exited with `exit_code` after reporting `error` (its
    /// last error message), when the code means a failure: `Reported` when the integration
    /// said why or exited 78, a bare `ExitCode` otherwise. `None` for 0, 99 and 75.
    pub fn from_exit(exit_code: i64, error: Option<&ReportedError>) -> Option<FailureReason> {
        if matches!(exit_code, 0 | EXIT_SKIPPED | EXIT_NOT_READY) {
            return None;
        }
        if error.is_none() && exit_code != EXIT_NOT_RETRYABLE {
            return Some(FailureReason::ExitCode(exit_code));
        }
        Some(FailureReason::Reported {
            exit_code,
            message: error.map(|e| e.message.clone()),
            retryable: exit_code != EXIT_NOT_RETRYABLE && error.is_none_or(|e| e.retryable),
        })
    }

    /// Whether a retry may mend it (the task's `retries` decide how many).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            FailureReason::Reported {
                retryable: false,
                ..
            }
        )
    }
}

impl FailureReason {
    /// The short form stored on the try and shown in the CLI: `timeout`,
    /// `exit_code: 3`, `image: ...`.
    pub fn to_text(&self) -> String {
        match self {
            FailureReason::ExitCode(code) => format!("exit_code: {code}"),
            FailureReason::Timeout => "timeout".to_owned(),
            FailureReason::Image(text) => format!("image: {text}"),
            FailureReason::Backend(text) => format!("backend: {text}"),
            FailureReason::Stopped(reason) => format!("killed: {}", reason.describe()),
            FailureReason::Lost(text) => format!("lost: {text}"),
            FailureReason::Protocol(text) => format!("protocol: {text}"),
            FailureReason::Artifact(text) => format!("artifacts: {text}"),
            FailureReason::Reported {
                exit_code,
                message,
                retryable,
            } => {
                let said = message
                    .as_deref()
                    .unwrap_or("configuration error (EX_CONFIG)");
                let head = if *retryable { "error" } else { "not retryable" };
                format!("{head}: {said} (exit_code: {exit_code})")
            }
        }
    }
}

/// Why Stevedore stops a try that has not ended by itself. The scheduler says it when it
/// flips a try's kill switch; the backend hands it back untouched with the try's exit; the
/// domain decides what it means ([`crate::attempt::settle`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The task's `timeout` passed.
    Timeout,
    /// An operator cancelled the run: the try fails, without a retry.
    Cancelled,
    /// The run passed its job's `run_timeout`: the try fails, without a retry.
    RunTimeout,
    /// An operator marked the task instance while the try ran: the mark stands.
    Marked(TaskState),
    /// The scheduler that followed the try stops and its backend cannot re-attach: the try
    /// is interrupted, not counted, and its task instance scheduled again.
    SchedulerStopped,
    /// The try broke the protocol's limits (an output over `max_output_bytes`, ...).
    Protocol(String),
}

impl StopReason {
    /// The failure a try stopped for this reason ends with.
    pub fn as_failure(&self) -> FailureReason {
        match self {
            StopReason::Timeout => FailureReason::Timeout,
            StopReason::Protocol(why) => FailureReason::Protocol(why.clone()),
            other => FailureReason::Stopped(other.clone()),
        }
    }

    /// The words stored after `killed: `.
    fn describe(&self) -> String {
        match self {
            StopReason::Timeout => "timeout".to_owned(),
            StopReason::Cancelled => "run cancelled".to_owned(),
            StopReason::RunTimeout => "run timeout".to_owned(),
            StopReason::Marked(state) => format!("task marked {state}"),
            StopReason::SchedulerStopped => "scheduler stopped".to_owned(),
            StopReason::Protocol(why) => why.clone(),
        }
    }
}

/// What one finished try means for its task instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TryOutcome {
    Success,
    Skipped,
    NotReady,
    Failed(FailureReason),
}

impl TryOutcome {
    /// Interprets an exit code by the entrypoint contract.
    pub fn from_exit_code(code: i64) -> TryOutcome {
        match code {
            0 => TryOutcome::Success,
            EXIT_SKIPPED => TryOutcome::Skipped,
            EXIT_NOT_READY => TryOutcome::NotReady,
            other => TryOutcome::Failed(FailureReason::ExitCode(other)),
        }
    }

    pub fn try_state(&self) -> TryState {
        match self {
            TryOutcome::Success => TryState::Success,
            TryOutcome::Skipped => TryState::Skipped,
            TryOutcome::NotReady => TryState::Reschedule,
            TryOutcome::Failed(_) => TryState::Failed,
        }
    }
}

/// The task instance's next state after a try ends. `failures` counts the task instance's
/// failed tries including this one; `retries` is the task's `retries` (how many failed
/// tries are tried again).
pub fn state_after_try(outcome: &TryOutcome, failures: u32, retries: u32) -> TaskState {
    match outcome {
        TryOutcome::Success => TaskState::Success,
        TryOutcome::Skipped => TaskState::Skipped,
        TryOutcome::NotReady => TaskState::UpForReschedule,
        TryOutcome::Failed(reason) if failures <= retries && reason.is_retryable() => {
            TaskState::UpForRetry
        }
        TryOutcome::Failed(_) => TaskState::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(*state));
        }
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(*state));
        }
        assert!("done"
            .parse::<TaskState>()
            .unwrap_err()
            .contains("up_for_retry"));
    }

    #[test]
    fn a_failure_the_integration_calls_final_is_not_retried() {
        let not_retryable = ReportedError {
            message: "401 from /v1/charges: check the token".into(),
            retryable: false,
        };
        let said = FailureReason::from_exit(1, Some(&not_retryable)).unwrap();
        assert_eq!(
            said.to_text(),
            "not retryable: 401 from /v1/charges: check the token (exit_code: 1)"
        );
        let config = FailureReason::from_exit(78, None).unwrap();
        assert_eq!(
            config.to_text(),
            "not retryable: configuration error (EX_CONFIG) (exit_code: 78)"
        );
        for reason in [said, config] {
            assert_eq!(
                state_after_try(&TryOutcome::Failed(reason), 1, 3),
                TaskState::Failed
            );
        }
        let retryable = ReportedError {
            message: "503 from the API".into(),
            retryable: true,
        };
        let reported = FailureReason::from_exit(2, Some(&retryable)).unwrap();
        assert_eq!(reported.to_text(), "error: 503 from the API (exit_code: 2)");
        assert_eq!(
            state_after_try(&TryOutcome::Failed(reported), 1, 3),
            TaskState::UpForRetry
        );
        assert_eq!(
            FailureReason::from_exit(3, None),
            Some(FailureReason::ExitCode(3))
        );
        for code in [0, 99, 75] {
            assert_eq!(FailureReason::from_exit(code, Some(&retryable)), None);
        }
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(TryOutcome::from_exit_code(0), TryOutcome::Success);
        assert_eq!(TryOutcome::from_exit_code(99), TryOutcome::Skipped);
        assert_eq!(TryOutcome::from_exit_code(75), TryOutcome::NotReady);
        assert_eq!(
            TryOutcome::from_exit_code(137),
            TryOutcome::Failed(FailureReason::ExitCode(137))
        );
    }

    #[test]
    fn failed_tries_retry_until_the_budget_is_spent() {
        let failed = TryOutcome::Failed(FailureReason::ExitCode(1));
        assert_eq!(state_after_try(&failed, 1, 2), TaskState::UpForRetry);
        assert_eq!(state_after_try(&failed, 2, 2), TaskState::UpForRetry);
        assert_eq!(state_after_try(&failed, 3, 2), TaskState::Failed);
        assert_eq!(state_after_try(&failed, 1, 0), TaskState::Failed);
        assert_eq!(
            state_after_try(&TryOutcome::Success, 3, 2),
            TaskState::Success
        );
        assert_eq!(
            state_after_try(&TryOutcome::NotReady, 1, 0),
            TaskState::UpForReschedule
        );
    }

    proptest::proptest! {
        /// Whatever the tries do, a task instance ends after at most `retries + 1` tries:
        /// success as soon as one succeeds, failed once the budget is spent.
        #[test]
        fn retries_never_exceed_the_budget(retries in 0u32..6, fails in proptest::collection::vec(proptest::bool::ANY, 1..10)) {
            let mut try_number = 0;
            let final_state = loop {
                try_number += 1;
                let failed = fails.get(try_number as usize - 1).copied().unwrap_or(false);
                let outcome = if failed { TryOutcome::Failed(FailureReason::ExitCode(1)) } else { TryOutcome::Success };
                let state = state_after_try(&outcome, try_number, retries);
                if state != TaskState::UpForRetry {
                    break state;
                }
            };
            proptest::prop_assert!(try_number <= retries + 1);
            // Tries past the end of `fails` succeed.
            let first_success = fails.iter().position(|f| !f).unwrap_or(fails.len()) as u32 + 1;
            if first_success <= retries + 1 {
                proptest::prop_assert_eq!((final_state, try_number), (TaskState::Success, first_success));
            } else {
                proptest::prop_assert_eq!((final_state, try_number), (TaskState::Failed, retries + 1));
            }
        }
    }

    #[test]
    fn finished_states_are_exactly_the_terminal_ones() {
        let finished: Vec<_> = TaskState::ALL.iter().filter(|s| s.is_finished()).collect();
        assert_eq!(finished.len(), 5);
        assert!(!TaskState::UpForRetry.is_finished());
    }
}
