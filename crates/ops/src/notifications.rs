//! Alerts as an operator meets them: a job's `notify:` rules checked against the store's
//! connections (a rule naming a connection that does not exist, or one with no channel, is a
//! load error with its file and line), and the outbox listed and retried, for the CLI, the
//! REST API and the UI alike.

use chrono::{DateTime, Utc};
use stevedore_domain::job::{Job, JobError};
use stevedore_domain::notify::{rules, Channel};
use stevedore_store::{
    ConnectionRecord, NotificationAttempt, NotificationFilter, NotificationRecord, Store,
};

use crate::actions::Result;

/// The problems of `job`'s rules (read from `file`) against `connections`: each rule's
/// connection must exist and choose a channel by its variables. A rule that `defaults` gave
/// every task is reported once.
pub fn check_rules(job: &Job, file: &str, connections: &[ConnectionRecord]) -> Vec<JobError> {
    let mut errors: Vec<JobError> = Vec::new();
    for rule in rules(job) {
        let problem = match connections.iter().find(|c| c.name == rule.connection) {
            None => Some(format!(
                "notify: connection `{}` does not exist (stevedore connections set {} WEBHOOK_URL=...)",
                rule.connection, rule.connection
            )),
            Some(connection) => {
                let keys: Vec<&str> = connection.keys.iter().map(String::as_str).collect();
                Channel::of(&keys)
                    .err()
                    .map(|why| format!("notify: connection `{}` {why}", rule.connection))
            }
        };
        if let Some(message) = problem {
            let error = JobError {
                file: file.to_owned(),
                line: Some(rule.line),
                message,
            };
            if !errors.contains(&error) {
                errors.push(error);
            }
        }
    }
    errors
}

/// A notification and its delivery attempts.
#[derive(Clone, Debug)]
pub struct NotificationDetail {
    pub notification: NotificationRecord,
    pub attempts: Vec<NotificationAttempt>,
}

/// Notifications, newest first (at most 500 a page).
pub async fn list(
    store: &dyn Store,
    filter: &NotificationFilter,
) -> Result<Vec<NotificationRecord>> {
    let mut filter = filter.clone();
    filter.limit = filter.limit.clamp(1, 500);
    Ok(store.list_notifications(&filter).await?)
}

/// One notification by its id (or a unique prefix), with its attempts.
pub async fn show(store: &dyn Store, id: &str) -> Result<NotificationDetail> {
    let notification = store.find_notification(id).await?;
    let attempts = store.notification_attempts(notification.seq).await?;
    Ok(NotificationDetail {
        notification,
        attempts,
    })
}

/// Sends a notification again at once, whatever became of it (a receiver fixed after it was
/// given up on, a message someone lost, one waiting out its backoff). The receiver sees the
/// same `id` again.
pub async fn retry(store: &dyn Store, id: &str, now: DateTime<Utc>) -> Result<NotificationRecord> {
    let notification = store.find_notification(id).await?;
    store.retry_notification(notification.seq, now).await?;
    Ok(store.find_notification(&notification.id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_domain::job::parse_job;

    fn connection(name: &str, keys: &[&str]) -> ConnectionRecord {
        ConnectionRecord {
            name: name.into(),
            description: String::new(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            sealed: Vec::new(),
        }
    }

    #[test]
    fn rules_must_name_connections_that_exist_and_choose_a_channel() {
        let job = parse_job(
            "j.yaml",
            "id: j\nnotify:\n  - {on: [failure], connection: ops}\n  - {on: [success], connection: nowhere}\ndefaults:\n  notify:\n    - {on: [retry], connection: plain}\ntasks:\n  - id: a\n    image: x:1\n  - id: b\n    image: x:1\n",
        )
        .unwrap();
        let connections = [
            connection("ops", &["WEBHOOK_URL", "WEBHOOK_SECRET"]),
            connection("plain", &["API_KEY"]),
        ];
        let errors: Vec<String> = check_rules(&job, "jobs/j.yaml", &connections)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("jobs/j.yaml:4: notify: connection `nowhere` does not exist"),
            "{errors:?}"
        );
        assert!(
            errors[1]
                .starts_with("jobs/j.yaml:7: notify: connection `plain` has none of WEBHOOK_URL"),
            "{errors:?}"
        );
    }
}
