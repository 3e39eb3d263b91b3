//! What a try's end means: the try's state, its task instance's next state, when the next
//! try may start, and the failure reason stored with it. One pure function, [`settle`],
//! holds the rules (retries, sensors, stops by Stevedore), so "why did this task go
//! `up_for_retry`?" has a one-file answer; the scheduler only reads the history it needs
//! and writes the result (restate's `invocation_state_machine` beside its I/O task).

use chrono::{DateTime, TimeDelta, Utc};

use crate::job::Task;
use crate::retry::RetryKey;
use crate::state::{state_after_try, FailureReason, StopReason, TaskState, TryOutcome, TryState};

/// How a try ended, as its backend said: the exit code, and why it did not end by itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    pub exit_code: Option<i64>,
    pub failure: Option<FailureReason>,
}

/// What the try's task instance went through before: what [`settle`] needs beyond the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Failed tries before this one since the task instance was last cleared.
    pub earlier_failures: u32,
    /// When the task instance's first try (since it was cleared) started: a sensor's
    /// deadline counts from it.
    pub first_started_at: Option<DateTime<Utc>>,
}

/// Which try of which run: what the retry delay's deterministic jitter is keyed on.
#[derive(Clone, Copy, Debug)]
pub struct TryIdentity<'a> {
    pub job_id: &'a str,
    pub logical_date: DateTime<Utc>,
}

/// What a try's end comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub try_state: TryState,
    pub task_state: TaskState,
    /// When the next try may start (`up_for_retry`, `up_for_reschedule`).
    pub next_try_at: Option<DateTime<Utc>>,
    /// The reason stored on a failed try (`exit_code: 3`, `timeout`, ...).
    pub failure_reason: Option<String>,
}

/// The outcome the ending means by the entrypoint contract.
pub fn outcome(ending: &Ending) -> TryOutcome {
    match (&ending.failure, ending.exit_code) {
        (Some(reason), _) => TryOutcome::Failed(reason.clone()),
        (None, Some(code)) => TryOutcome::from_exit_code(code),
        (None, None) => TryOutcome::Failed(FailureReason::Backend(
            "the container vanished without an exit code".to_owned(),
        )),
    }
}

/// Whether [`settle`] needs the task instance's [`History`]: retries count failed tries
/// only, and a sensor's deadline counts from its first try, so a success or a skip needs
/// none.
pub fn needs_history(ending: &Ending) -> bool {
    matches!(
        outcome(ending),
        TryOutcome::Failed(_) | TryOutcome::NotReady
    )
}

/// Settles a try of `task` that ended as `ending`, at `now`.
///
/// - Exit 0 succeeds, 99 skips, 75 is not ready yet (a sensor: rescheduled after its
///   `reschedule_interval`, failed once `sensor_timeout` has passed since its first try);
///   anything else fails and is retried while `retries` allow, after the retry delay.
/// - A try stopped because its scheduler stopped is `interrupted` and does not count: its
///   task instance is scheduled again.
/// - A try stopped on an operator's request, or by its run's `run_timeout`, fails without
///   a retry; one whose task instance
///   an operator marked while it ran keeps the mark.
pub fn settle(
    ending: &Ending,
    history: &History,
    task: &Task,
    identity: TryIdentity<'_>,
    now: DateTime<Utc>,
) -> Settled {
    let outcome = outcome(ending);
    let failures = history.earlier_failures + u32::from(matches!(outcome, TryOutcome::Failed(_)));
    let mut task_state = state_after_try(&outcome, failures, task.retry.retries);
    let mut try_state = outcome.try_state();
    match &ending.failure {
        Some(FailureReason::Stopped(StopReason::SchedulerStopped)) => {
            try_state = TryState::Interrupted;
            task_state = TaskState::Scheduled;
        }
        Some(FailureReason::Stopped(StopReason::Marked(mark))) => task_state = *mark,
        Some(FailureReason::Stopped(StopReason::Cancelled | StopReason::RunTimeout)) => {
            task_state = TaskState::Failed
        }
        _ => {}
    }
    let mut next_try_at = None;
    match task_state {
        TaskState::UpForRetry => {
            let key = RetryKey {
                job_id: identity.job_id,
                task_id: &task.id,
                logical_date: identity.logical_date,
                try_number: failures,
            };
            next_try_at = Some(task.retry.next_try_at(now, &key));
        }
        TaskState::UpForReschedule => {
            let first_try = history.first_started_at.unwrap_or(now);
            let deadline =
                first_try + TimeDelta::from_std(task.sensor_timeout).unwrap_or(TimeDelta::MAX);
            if now >= deadline {
                task_state = TaskState::Failed;
            } else {
                next_try_at = Some(
                    now + TimeDelta::from_std(task.reschedule_interval)
                        .unwrap_or(TimeDelta::zero()),
                );
            }
        }
        _ => {}
    }
    let failure_reason = match &outcome {
        TryOutcome::Failed(reason) => Some(reason.to_text()),
        _ => None,
    };
    Settled {
        try_state,
        task_state,
        next_try_at,
        failure_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn task(retries: u32) -> Task {
        let text = format!("id: j\ntasks:\n  - id: t\n    image: x:1\n    retries: {retries}\n    retry_delay: 10s\n    reschedule_interval: 30s\n    sensor_timeout: 5m\n");
        parse_job("j.yaml", &text).unwrap().tasks[0].clone()
    }

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, minute, 0).unwrap()
    }

    fn identity() -> TryIdentity<'static> {
        TryIdentity {
            job_id: "j",
            logical_date: at(0),
        }
    }

    fn ended(code: i64) -> Ending {
        Ending {
            exit_code: Some(code),
            failure: None,
        }
    }

    fn stopped(reason: StopReason) -> Ending {
        Ending {
            exit_code: Some(137),
            failure: Some(FailureReason::Stopped(reason)),
        }
    }

    #[test]
    fn exit_codes_settle_by_the_contract() {
        let history = History::default();
        let settle = |ending: &Ending| settle(ending, &history, &task(1), identity(), at(1));
        assert_eq!(settle(&ended(0)).task_state, TaskState::Success);
        assert_eq!(settle(&ended(99)).try_state, TryState::Skipped);
        let retry = settle(&ended(3));
        assert_eq!(
            (
                retry.try_state,
                retry.task_state,
                retry.failure_reason.as_deref()
            ),
            (
                TryState::Failed,
                TaskState::UpForRetry,
                Some("exit_code: 3")
            )
        );
        assert_eq!(retry.next_try_at, Some(at(1) + TimeDelta::seconds(10)));
        let sensor = settle(&ended(75));
        assert_eq!(sensor.task_state, TaskState::UpForReschedule);
        assert_eq!(sensor.next_try_at, Some(at(1) + TimeDelta::seconds(30)));
        let vanished = settle(&Ending {
            exit_code: None,
            failure: None,
        });
        assert!(vanished.failure_reason.unwrap().contains("vanished"));
    }

    #[test]
    fn stops_by_stevedore_settle_by_their_reason() {
        let history = History::default();
        let settle = |ending: &Ending| settle(ending, &history, &task(3), identity(), at(1));
        let interrupted = settle(&stopped(StopReason::SchedulerStopped));
        assert_eq!(
            (interrupted.try_state, interrupted.task_state),
            (TryState::Interrupted, TaskState::Scheduled)
        );
        assert_eq!(
            settle(&stopped(StopReason::Cancelled))
                .failure_reason
                .as_deref(),
            Some("killed: run cancelled")
        );
        assert_eq!(
            settle(&stopped(StopReason::Cancelled)).task_state,
            TaskState::Failed,
            "a cancel is not retried"
        );
        let marked = settle(&stopped(StopReason::Marked(TaskState::Success)));
        assert_eq!(marked.task_state, TaskState::Success);
        assert_eq!(
            marked.failure_reason.as_deref(),
            Some("killed: task marked success")
        );
        let timeout = settle(&Ending {
            exit_code: Some(137),
            failure: Some(StopReason::Timeout.as_failure()),
        });
        assert_eq!(
            (timeout.task_state, timeout.failure_reason.as_deref()),
            (TaskState::UpForRetry, Some("timeout"))
        );
    }

    #[test]
    fn a_sensor_fails_once_its_timeout_has_passed_since_its_first_try() {
        let history = History {
            earlier_failures: 0,
            first_started_at: Some(at(0)),
        };
        let early = settle(&ended(75), &history, &task(0), identity(), at(4));
        assert_eq!(early.task_state, TaskState::UpForReschedule);
        let late = settle(&ended(75), &history, &task(0), identity(), at(5));
        assert_eq!(late.task_state, TaskState::Failed);
        assert_eq!(late.next_try_at, None);
    }

    proptest! {
        /// Whatever the history, a failed try is retried exactly while the budget lasts,
        /// always at a time after its end, and a success or a skip never waits.
        #[test]
        fn retries_are_spent_in_order_and_never_run_early(
            retries in 0u32..6,
            earlier in 0u32..8,
            code in prop_oneof![Just(0i64), Just(99), Just(75), 1i64..300],
            minute in 0u32..59,
        ) {
            let history = History { earlier_failures: earlier, first_started_at: Some(at(0)) };
            let settled = settle(&ended(code), &history, &task(retries), identity(), at(minute));
            match code {
                0 => prop_assert_eq!(settled.task_state, TaskState::Success),
                99 => prop_assert_eq!(settled.task_state, TaskState::Skipped),
                75 => prop_assert!(matches!(settled.task_state, TaskState::UpForReschedule | TaskState::Failed)),
                _ if earlier < retries => prop_assert_eq!(settled.task_state, TaskState::UpForRetry),
                _ => prop_assert_eq!(settled.task_state, TaskState::Failed),
            }
            match settled.next_try_at {
                Some(next) => prop_assert!(next > at(minute)),
                None => prop_assert!(!matches!(settled.task_state, TaskState::UpForRetry | TaskState::UpForReschedule)),
            }
            prop_assert_eq!(settled.failure_reason.is_some(), settled.try_state == TryState::Failed);
        }
    }
}
