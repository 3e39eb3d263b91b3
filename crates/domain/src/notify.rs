//! Alerts: the events runs and task instances make, and the job file's `notify:` rules that
//! route each event to the connections it goes to. The scheduler writes one notification per
//! event and connection into the store's outbox; `docs/alerts.md` is the reference for users.
//!
//! Where a rule stands decides what it hears:
//! - a rule on the job hears the run's events (`failure`, `success`, `recovery`,
//!   `deadline_missed`, `repeated_failure`) and the task events that have no run-level
//!   counterpart (`retry`, `stuck`) of every task;
//! - a rule in `defaults` or on a task hears that task's events (`failure`, `retry`,
//!   `success`, `stuck`); run-only events there are a load error.

use std::fmt;
use std::str::FromStr;

use crate::job::{Job, Task};

/// Something that happened to a run or a task instance that a rule may ask to hear of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifyEvent {
    /// A run, or a task instance, failed for good (no retry left).
    Failure,
    /// A try failed and its task instance will be tried again.
    Retry,
    /// A run, or a task instance, succeeded.
    Success,
    /// A run succeeded after the job's previous run failed.
    Recovery,
    /// A run had not ended by its job's `deadline`.
    DeadlineMissed,
    /// The job's last `repeated_failure_after` runs failed.
    RepeatedFailure,
    /// A try waited longer than `backend_unavailable_timeout` for a backend that does not
    /// answer, and failed.
    Stuck,
}

/// Every event, in the order the docs list them.
pub const ALL_EVENTS: [NotifyEvent; 7] = [
    NotifyEvent::Failure,
    NotifyEvent::Retry,
    NotifyEvent::Success,
    NotifyEvent::Recovery,
    NotifyEvent::DeadlineMissed,
    NotifyEvent::RepeatedFailure,
    NotifyEvent::Stuck,
];

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failure => "failure",
            NotifyEvent::Retry => "retry",
            NotifyEvent::Success => "success",
            NotifyEvent::Recovery => "recovery",
            NotifyEvent::DeadlineMissed => "deadline_missed",
            NotifyEvent::RepeatedFailure => "repeated_failure",
            NotifyEvent::Stuck => "stuck",
        }
    }

    /// Events only a run makes: a task's rule cannot hear them.
    pub fn is_run_only(self) -> bool {
        matches!(
            self,
            NotifyEvent::Recovery | NotifyEvent::DeadlineMissed | NotifyEvent::RepeatedFailure
        )
    }

    /// Events only a task instance makes: a job's rule hears them for every task.
    pub fn is_task_only(self) -> bool {
        matches!(self, NotifyEvent::Retry | NotifyEvent::Stuck)
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotifyEvent {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ALL_EVENTS
            .into_iter()
            .find(|event| event.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = ALL_EVENTS.iter().map(|e| e.as_str()).collect();
                format!("`{text}` is not an event (one of {})", known.join(", "))
            })
    }
}

/// One `notify:` rule: the events it hears, and the connection whose variables say where
/// they go (`WEBHOOK_URL`, `SLACK_WEBHOOK_URL` or `SMTP_HOST`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyRule {
    pub on: Vec<NotifyEvent>,
    pub connection: String,
    /// The rule's line in its job file, for the errors only the scheduler can find (a
    /// connection that does not exist).
    pub line: u64,
}

impl NotifyRule {
    fn hears(&self, event: NotifyEvent) -> bool {
        self.on.contains(&event)
    }
}

/// The connections an event goes to, each once, in the order of the rules: a run's event
/// (`task` is `None`) to the job's rules; a task instance's to its task's rules (its own, or
/// the `defaults`'), and a `retry` or `stuck` to the job's rules too.
pub fn connections_for<'a>(
    job: &'a Job,
    event: NotifyEvent,
    task: Option<&'a Task>,
) -> Vec<&'a str> {
    let job_rules = job
        .notify
        .iter()
        .filter(|_| task.is_none() || event.is_task_only());
    let task_rules = task.into_iter().flat_map(|task| task.notify.iter());
    let mut connections: Vec<&str> = Vec::new();
    for rule in task_rules.chain(job_rules) {
        if rule.hears(event) && !connections.contains(&rule.connection.as_str()) {
            connections.push(rule.connection.as_str());
        }
    }
    connections
}

/// Whether any rule of the job, its own or a task's, hears `event`: the scheduler reads what
/// an event needs (the job's earlier runs, for `recovery`) only then.
pub fn anyone_hears(job: &Job, event: NotifyEvent) -> bool {
    job.notify
        .iter()
        .chain(job.tasks.iter().flat_map(|t| t.notify.iter()))
        .any(|rule| rule.hears(event))
}

/// Every rule of the job with its connection, the job's and the tasks' (a rule `defaults`
/// gave every task is listed once per task).
pub fn rules(job: &Job) -> impl Iterator<Item = &NotifyRule> {
    job.notify
        .iter()
        .chain(job.tasks.iter().flat_map(|t| t.notify.iter()))
}

/// The channel a connection's variables choose, by their names (values are sealed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Webhook,
    Slack,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Slack => "slack",
            Channel::Email => "email",
        }
    }

    /// The channel a connection with these variables is: `WEBHOOK_URL`, `SLACK_WEBHOOK_URL`
    /// or `SMTP_HOST` (and the other `SMTP_*` an email needs), in that order; an error
    /// saying what is missing otherwise.
    pub fn of(variables: &[&str]) -> Result<Channel, String> {
        let has = |name: &str| variables.contains(&name);
        if has("WEBHOOK_URL") {
            return Ok(Channel::Webhook);
        }
        if has("SLACK_WEBHOOK_URL") {
            return Ok(Channel::Slack);
        }
        if has("SMTP_HOST") {
            let missing: Vec<&str> = ["SMTP_FROM", "SMTP_TO"]
                .into_iter()
                .filter(|name| !has(name))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "has SMTP_HOST but not {}, which an email needs",
                    missing.join(" or ")
                ));
            }
            return Ok(Channel::Email);
        }
        Err(
            "has none of WEBHOOK_URL, SLACK_WEBHOOK_URL or SMTP_HOST, so no channel to send on"
                .to_owned(),
        )
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the job's latest runs, newest first (`outcomes`: `true` for a failure, this run
/// included), make `repeated_failure`: exactly the last `after` runs failed, so a streak
/// is told of once, when it reaches `after`, not at every failure after that.
pub fn is_repeated_failure(outcomes: &[bool], after: u32) -> bool {
    let after = after as usize;
    after > 0
        && outcomes.len() >= after
        && outcomes[..after].iter().all(|failed| *failed)
        && outcomes.get(after).is_none_or(|failed| !failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;

    fn job(text: &str) -> Job {
        parse_job("job.yaml", text).unwrap_or_else(|errors| panic!("{errors:?}"))
    }

    #[test]
    fn events_parse_and_print_by_their_names() {
        for event in ALL_EVENTS {
            assert_eq!(event.as_str().parse::<NotifyEvent>(), Ok(event));
        }
        let error = "failed".parse::<NotifyEvent>().unwrap_err();
        assert!(error.contains("`failed` is not an event"), "{error}");
    }

    #[test]
    fn a_job_rule_hears_run_events_and_every_task_s_retries() {
        let job = job("id: j\nnotify:\n  - {on: [failure, retry, recovery], connection: ops}\ntasks:\n  - id: a\n    image: x:1\n");
        let task = job.task("a");
        assert_eq!(connections_for(&job, NotifyEvent::Failure, None), ["ops"]);
        assert_eq!(connections_for(&job, NotifyEvent::Recovery, None), ["ops"]);
        assert_eq!(connections_for(&job, NotifyEvent::Retry, task), ["ops"]);
        // A task's failure is not the run's: the job's rule hears the run's.
        assert!(connections_for(&job, NotifyEvent::Failure, task).is_empty());
        assert!(connections_for(&job, NotifyEvent::Success, None).is_empty());
    }

    #[test]
    fn a_defaults_rule_hears_each_task_s_events_and_a_task_s_own_replaces_it() {
        let job = job("id: j\ndefaults:\n  notify:\n    - {on: [failure], connection: team}\ntasks:\n  - id: a\n    image: x:1\n  - id: b\n    image: x:1\n    notify:\n      - {on: [failure, success], connection: oncall}\n      - {on: [failure], connection: oncall}\n");
        assert_eq!(
            connections_for(&job, NotifyEvent::Failure, job.task("a")),
            ["team"]
        );
        assert_eq!(
            connections_for(&job, NotifyEvent::Failure, job.task("b")),
            ["oncall"]
        );
        assert_eq!(
            connections_for(&job, NotifyEvent::Success, job.task("b")),
            ["oncall"]
        );
        assert!(connections_for(&job, NotifyEvent::Failure, None).is_empty());
        assert!(anyone_hears(&job, NotifyEvent::Success));
        assert!(!anyone_hears(&job, NotifyEvent::Recovery));
    }

    #[test]
    fn a_channel_is_chosen_by_the_connection_s_variable_names() {
        assert_eq!(
            Channel::of(&["WEBHOOK_URL", "WEBHOOK_SECRET"]),
            Ok(Channel::Webhook)
        );
        assert_eq!(Channel::of(&["SLACK_WEBHOOK_URL"]), Ok(Channel::Slack));
        assert_eq!(
            Channel::of(&["SMTP_HOST", "SMTP_FROM", "SMTP_TO"]),
            Ok(Channel::Email)
        );
        let error = Channel::of(&["SMTP_HOST", "SMTP_TO"]).unwrap_err();
        assert!(error.contains("not SMTP_FROM"), "{error}");
        let error = Channel::of(&["API_KEY"]).unwrap_err();
        assert!(error.contains("none of WEBHOOK_URL"), "{error}");
    }

    #[test]
    fn a_streak_of_failures_is_told_of_once_when_it_reaches_its_length() {
        assert!(is_repeated_failure(&[true, true, true], 3));
        assert!(is_repeated_failure(&[true, true, true, false], 3));
        assert!(!is_repeated_failure(&[true, true], 3));
        assert!(!is_repeated_failure(&[true, true, true, true], 3));
        assert!(!is_repeated_failure(&[false, true, true, true], 3));
        assert!(!is_repeated_failure(&[true], 0));
    }
}
