//! The events the scheduler makes, as notifications for the outbox: one per event and
//! connection its job's rules route it to (`stevedore_domain::notify`). Each is written in
//! the transaction of the state change that made it (a try's end, a run's end, a missed
//! deadline, a task instance given up on); the notifier (`notifier.rs`) delivers them.

use chrono::{DateTime, Utc};
use stevedore_domain::job::{Job, Task};
use stevedore_domain::notify::{connections_for, is_repeated_failure, NotifyEvent};
use stevedore_domain::state::{RunState, TaskState};
use stevedore_store::{NewNotification, RunRecord};

/// The run an event is about: what every notification of it carries.
pub(crate) struct RunRef<'a> {
    pub job_id: &'a str,
    pub job_version: &'a str,
    pub run_id: &'a str,
    pub logical_date: DateTime<Utc>,
}

impl<'a> From<&'a RunRecord> for RunRef<'a> {
    fn from(run: &'a RunRecord) -> RunRef<'a> {
        RunRef {
            job_id: &run.job_id,
            job_version: &run.job_version,
            run_id: &run.run_id,
            logical_date: run.logical_date,
        }
    }
}

/// The event a try's end makes for its task instance, if any: `retry` when it will be
/// tried again, `failure` when it failed for good, `success`.
pub(crate) fn task_event(task_state: TaskState) -> Option<NotifyEvent> {
    match task_state {
        TaskState::UpForRetry => Some(NotifyEvent::Retry),
        TaskState::Failed => Some(NotifyEvent::Failure),
        TaskState::Success => Some(NotifyEvent::Success),
        _ => None,
    }
}

/// The notifications of a task instance's `event` (its try `try_id`, number `try_number`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_task(
    job: &Job,
    task: &Task,
    run: RunRef<'_>,
    event: NotifyEvent,
    try_id: Option<i64>,
    try_number: u32,
    state: TaskState,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Vec<NewNotification> {
    let what = match try_id {
        Some(try_id) => format!("try:{try_id}"),
        None => format!("task:{}:{}:{try_number}", run.run_id, task.id),
    };
    connections_for(job, event, Some(task))
        .into_iter()
        .map(|connection| {
            NewNotification::new(
                &what,
                event,
                connection,
                (run.job_id, run.job_version),
                run.run_id,
                Some((&task.id, try_number)),
                state.as_str(),
                reason.map(str::to_owned),
                run.logical_date,
                at,
            )
        })
        .collect()
}

/// The notifications of a run-level `event`.
fn for_run(
    job: &Job,
    run: &RunRef<'_>,
    event: NotifyEvent,
    what: &str,
    state: &str,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> Vec<NewNotification> {
    connections_for(job, event, None)
        .into_iter()
        .map(|connection| {
            NewNotification::new(
                what,
                event,
                connection,
                (run.job_id, run.job_version),
                run.run_id,
                None,
                state,
                reason.clone(),
                run.logical_date,
                at,
            )
        })
        .collect()
}

/// What a run's end makes: `success` or `failure`; `recovery` when the job's previous
/// ended run failed; `repeated_failure` when this failure makes the job's last
/// `repeated_failure_after` runs all failed. `earlier` are the job's ended runs before this
/// one, newest first (read only when a rule hears `recovery` or `repeated_failure`).
pub(crate) fn for_run_end(
    job: &Job,
    run: RunRef<'_>,
    outcome: RunState,
    reason: Option<String>,
    earlier: &[RunState],
    at: DateTime<Utc>,
) -> Vec<NewNotification> {
    let what = format!("run:{}:{}", run.run_id, stevedore_store::timestamp(at));
    let failed = outcome == RunState::Failed;
    let mut notifications = for_run(
        job,
        &run,
        if failed {
            NotifyEvent::Failure
        } else {
            NotifyEvent::Success
        },
        &what,
        outcome.as_str(),
        reason.clone(),
        at,
    );
    if !failed && earlier.first() == Some(&RunState::Failed) {
        notifications.extend(for_run(
            job,
            &run,
            NotifyEvent::Recovery,
            &what,
            outcome.as_str(),
            Some("the job's previous run failed; this one succeeded".to_owned()),
            at,
        ));
    }
    if failed {
        let outcomes: Vec<bool> = std::iter::once(true)
            .chain(earlier.iter().map(|state| *state == RunState::Failed))
            .collect();
        if is_repeated_failure(&outcomes, job.repeated_failure_after) {
            notifications.extend(for_run(
                job,
                &run,
                NotifyEvent::RepeatedFailure,
                &what,
                outcome.as_str(),
                Some(format!(
                    "the job's last {} runs failed",
                    job.repeated_failure_after
                )),
                at,
            ));
        }
    }
    notifications
}

/// What a run that missed its deadline makes.
pub(crate) fn for_deadline(
    job: &Job,
    run: &RunRecord,
    deadline: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Vec<NewNotification> {
    let reason = format!(
        "the run had not ended by its deadline, {} ({} after {})",
        stevedore_store::timestamp(deadline),
        humantime(job.deadline.unwrap_or_default()),
        if run.trigger == stevedore_domain::state::RunTrigger::Scheduled {
            "its data interval ended"
        } else {
            "it was queued"
        }
    );
    let run_ref = RunRef::from(run);
    for_run(
        job,
        &run_ref,
        NotifyEvent::DeadlineMissed,
        &format!("run:{}:deadline", run.run_id),
        run.state.as_str(),
        Some(reason),
        at,
    )
}

/// When a run's `deadline` is: after its data interval ended (a scheduled run) or after it
/// was queued (manual, backfill).
pub(crate) fn deadline_of(job: &Job, run: &RunRecord) -> Option<DateTime<Utc>> {
    let deadline = chrono::TimeDelta::from_std(job.deadline?).ok()?;
    let from = if run.trigger == stevedore_domain::state::RunTrigger::Scheduled {
        run.data_interval.end
    } else {
        run.queued_at
    };
    from.checked_add_signed(deadline)
}

/// When a running run times out (`run_timeout`, counted from its start).
pub(crate) fn timeout_of(job: &Job, run: &RunRecord) -> Option<DateTime<Utc>> {
    let timeout = chrono::TimeDelta::from_std(job.run_timeout?).ok()?;
    run.started_at?.checked_add_signed(timeout)
}

/// `90s`, `2h`, `1h30m`: a duration as a job file writes it.
pub(crate) fn humantime(duration: std::time::Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_domain::job::parse_job;

    fn job() -> Job {
        parse_job(
            "j.yaml",
            "id: j\nrepeated_failure_after: 2\nnotify:\n  - {on: [failure, success, recovery, repeated_failure], connection: ops}\ntasks:\n  - id: a\n    image: x:1\n",
        )
        .unwrap()
    }

    fn events(notifications: &[NewNotification]) -> Vec<&str> {
        notifications.iter().map(|n| n.event.as_str()).collect()
    }

    #[test]
    fn a_run_s_end_tells_of_recovery_and_of_a_streak_of_failures_once() {
        let job = job();
        let at = Utc::now();
        let run = || RunRef {
            job_id: "j",
            job_version: "v",
            run_id: "r",
            logical_date: at,
        };
        let success = RunState::Success;
        let failed = RunState::Failed;
        assert_eq!(
            events(&for_run_end(&job, run(), success, None, &[failed], at)),
            ["success", "recovery"]
        );
        assert_eq!(
            events(&for_run_end(&job, run(), success, None, &[success], at)),
            ["success"]
        );
        assert_eq!(
            events(&for_run_end(
                &job,
                run(),
                failed,
                None,
                &[failed, success],
                at
            )),
            ["failure", "repeated_failure"]
        );
        assert_eq!(
            events(&for_run_end(
                &job,
                run(),
                failed,
                None,
                &[failed, failed],
                at
            )),
            ["failure"]
        );
        let all = for_run_end(&job, run(), failed, None, &[failed], at);
        assert!(all
            .iter()
            .all(|n| n.connection == "ops" && n.task_id.is_none()));
        // Every event of one end has its own id, the same for the same end (written twice,
        // it is kept once).
        assert_ne!(all[0].id, all[1].id);
        let again = for_run_end(&job, run(), failed, None, &[failed], at);
        assert_eq!(all[0].id, again[0].id);
    }

    #[test]
    fn durations_print_as_job_files_write_them() {
        assert_eq!(humantime(std::time::Duration::from_secs(5400)), "1h30m");
        assert_eq!(humantime(std::time::Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(std::time::Duration::from_millis(250)), "250ms");
    }
}
