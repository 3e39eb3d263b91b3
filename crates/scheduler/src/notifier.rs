//! The notifier: delivers the outbox's notifications in the background, never in the way of
//! scheduling. It claims a batch of due ones (each the oldest undelivered of its run and
//! connection, so a receiver hears a run's events in the order they happened), sends them
//! at once on their channels (`stevedore_notify`), and records every attempt; a failed one
//! is due again after an exponential backoff (`backon`: 1 s doubling to a minute, with
//! jitter) until it is `notification_give_up_after` old. A claim runs out after a minute:
//! a scheduler that dies mid-delivery leaves its claims to the others, which send the same
//! event (same `id`) again. So each event is delivered at least once.
//!
//! Every text an event carries (its reason, the log lines of an email) is masked against
//! the values of the job's connections before it leaves, as everywhere else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::stream::{self, StreamExt};
use stevedore_domain::mask::Masker;
use stevedore_domain::notify::Channel;
use stevedore_notify::{cut, rfc3339, Event, Sender, LOG_TAIL_LINES};
use stevedore_ops::connections;
use stevedore_store::{DeliveryOutcome, LogReader, NotificationAttempt, NotificationRecord};
use tracing::{debug, info, warn};

use super::*;

/// How many notifications one claim takes, and how many are sent at once.
const BATCH: u32 = 128;
const IN_FLIGHT: usize = 16;
/// How long a claim holds: longer than a delivery may take (15 s) with room to record it.
const CLAIM_FOR: Duration = Duration::from_secs(60);
/// How long a job's masker, and a connection's values, are kept before they are read again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// The notifier's settings, from the scheduler's.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// The web UI's address as users reach it (`public_url`): events link to their run.
    pub public_url: Option<String>,
    /// How long an event is tried before it is given up (`failed`).
    pub give_up_after: Duration,
    /// How often the outbox is looked at when nothing woke the notifier.
    pub poll: Duration,
    /// The backoff between attempts: from `min_backoff`, doubling, to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            public_url: None,
            give_up_after: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(500),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The delay before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff(config: &NotifierConfig, attempts: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1) as usize)
        .unwrap_or(config.max_backoff)
}

/// What the notifier keeps for [`CACHE_TTL`], so a burst of events does not read and open
/// the same connections once per event: each job version's masker, each connection's
/// values.
#[derive(Default)]
struct Caches {
    maskers: Mutex<HashMap<(String, String), (tokio::time::Instant, Arc<Masker>)>>,
    connections: Mutex<HashMap<String, (tokio::time::Instant, Arc<BTreeMap<String, String>>)>>,
}

/// A cached value still fresh.
fn fresh<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Mutex<HashMap<K, (tokio::time::Instant, V)>>,
    key: &K,
) -> Option<V> {
    let cache = cache.lock().expect("poisoned");
    let (made, value) = cache.get(key)?;
    (made.elapsed() < CACHE_TTL).then(|| value.clone())
}

impl Scheduler {
    /// Delivers notifications until the scheduler stops.
    pub(crate) async fn notify_loop(self: Arc<Self>) {
        let sender = Sender::new();
        let caches = Caches::default();
        loop {
            let now = self.now();
            let until = now + chrono::TimeDelta::from_std(CLAIM_FOR).unwrap_or_default();
            let claimed = match self
                .store
                .claim_notifications(&self.id, now, until, BATCH)
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    warn!(error = %error, "cannot claim notifications; trying again");
                    Vec::new()
                }
            };
            let full = claimed.len() as u32 == BATCH;
            let attempts: Vec<(i64, NotificationAttempt, DeliveryOutcome)> = stream::iter(claimed)
                .map(|notification| {
                    let (this, sender, caches) = (&self, &sender, &caches);
                    async move { this.deliver(sender, caches, notification).await }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            // One transaction for the batch: on SQLite's single writer, one per event would
            // take the scheduler's turns.
            if let Err(error) = try_runner::persist("recording notifications' deliveries", || {
                self.store.record_deliveries(&attempts)
            })
            .await
            {
                // Their claims run out and the next claims send them again: at least once.
                warn!(count = attempts.len(), error = %error, "cannot record notifications' deliveries");
            }
            if !full {
                // Nothing more due now: wait for the next poll or a new event.
                let _ = tokio::time::timeout(
                    self.config.notifier.poll,
                    self.notifications_waiting.notified(),
                )
                .await;
            }
        }
    }

    /// One attempt at one notification: what to record of it.
    async fn deliver(
        &self,
        sender: &Sender,
        caches: &Caches,
        notification: NotificationRecord,
    ) -> (i64, NotificationAttempt, DeliveryOutcome) {
        let started = self.now();
        let (channel, delivery) = match self.prepare(caches, &notification).await {
            Ok((channel, values, event, log_tail)) => {
                let delivery = sender.deliver(channel, &values, &event, &log_tail).await;
                (Some(channel), delivery)
            }
            Err(message) => (
                None,
                stevedore_notify::Delivery {
                    ok: false,
                    status_code: None,
                    error: Some(message),
                    took: Duration::ZERO,
                },
            ),
        };
        let now = self.now();
        let outcome = if delivery.ok {
            DeliveryOutcome::Delivered
        } else if (now - notification.occurred_at)
            .to_std()
            .unwrap_or_default()
            >= self.config.notifier.give_up_after
        {
            DeliveryOutcome::GiveUp
        } else {
            let delay = backoff(&self.config.notifier, notification.attempts + 1);
            DeliveryOutcome::RetryAt(now + chrono::TimeDelta::from_std(delay).unwrap_or_default())
        };
        let channel_name = channel.map(|c| c.as_str().to_owned());
        match outcome {
            DeliveryOutcome::Delivered => {
                debug!(id = %notification.id, event = %notification.event, channel = ?channel_name, "notification delivered")
            }
            DeliveryOutcome::RetryAt(at) => {
                warn!(id = %notification.id, event = %notification.event, connection = %notification.connection, channel = ?channel_name, status = ?delivery.status_code, error = ?delivery.error, retry_at = %at, "notification not delivered; trying again")
            }
            DeliveryOutcome::GiveUp => {
                warn!(id = %notification.id, event = %notification.event, connection = %notification.connection, channel = ?channel_name, error = ?delivery.error, "notification given up after its last attempt")
            }
        }
        let attempt = NotificationAttempt {
            attempt: 0,
            at: started,
            channel: channel_name,
            ok: delivery.ok,
            status_code: delivery.status_code,
            error: delivery.error.map(|e| cut(&e)),
            duration_ms: delivery.took.as_millis() as u64,
        };
        (notification.seq, attempt, outcome)
    }

    /// What a notification needs to go out: its channel, its connection's values, the event
    /// (masked) and, for an email of a task event, the try's last log lines (masked).
    async fn prepare(
        &self,
        caches: &Caches,
        notification: &NotificationRecord,
    ) -> Result<(Channel, Arc<BTreeMap<String, String>>, Event, Vec<String>), String> {
        let values = match fresh(&caches.connections, &notification.connection) {
            Some(values) => values,
            None => {
                let values = Arc::new(
                    connections::open(
                        self.store.as_ref(),
                        self.config.secret_key.as_ref(),
                        &notification.connection,
                    )
                    .await?,
                );
                caches.connections.lock().expect("poisoned").insert(
                    notification.connection.clone(),
                    (tokio::time::Instant::now(), values.clone()),
                );
                values
            }
        };
        let keys: Vec<&str> = values.keys().map(String::as_str).collect();
        let channel = Channel::of(&keys)
            .map_err(|why| format!("connection `{}` {why}", notification.connection))?;
        let masker = self.masker(caches, notification).await?;
        let mask = |text: &str| cut(&masker.mask(text));
        let url = self.config.notifier.public_url.as_deref().map(|base| {
            let base = base.trim_end_matches('/');
            match (&notification.task_id, notification.try_number) {
                (Some(task_id), Some(try_number)) => format!(
                    "{base}/runs/{}/tasks/{task_id}/tries/{try_number}",
                    notification.run_id
                ),
                _ => format!("{base}/runs/{}", notification.run_id),
            }
        });
        let event = Event {
            id: notification.id.clone(),
            event: notification.event.as_str().to_owned(),
            job_id: notification.job_id.clone(),
            run_id: notification.run_id.clone(),
            task_id: notification.task_id.clone(),
            try_number: notification.try_number,
            state: notification.state.clone(),
            reason: notification.reason.as_deref().map(mask),
            logical_date: rfc3339(notification.logical_date),
            url,
            occurred_at: rfc3339(notification.occurred_at),
        };
        let log_tail = match (channel, &notification.task_id, notification.try_number) {
            (Channel::Email, Some(task_id), Some(try_number)) => self
                .log_tail(&notification.run_id, task_id, try_number)
                .await
                .into_iter()
                .map(|line| mask(&line))
                .collect(),
            _ => Vec::new(),
        };
        Ok((channel, values, event, log_tail))
    }

    /// The masker of the job version the run ran: every value of every connection its tasks
    /// use (a run's event may quote any of them), kept for [`CACHE_TTL`].
    async fn masker(
        &self,
        caches: &Caches,
        notification: &NotificationRecord,
    ) -> Result<Arc<Masker>, String> {
        let key = (
            notification.job_id.clone(),
            notification.job_version.clone(),
        );
        if let Some(masker) = fresh(&caches.maskers, &key) {
            return Ok(masker);
        }
        let job = self
            .job_version(&notification.job_id, &notification.job_version)
            .await
            .map_err(|e| e.to_string())?;
        let mut names: Vec<String> = job
            .tasks
            .iter()
            .flat_map(|task| task.connections.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        let values =
            connections::open_all(self.store.as_ref(), self.config.secret_key.as_ref(), &names)
                .await?;
        let masker = Arc::new(Masker::new(values.into_values()));
        caches
            .maskers
            .lock()
            .expect("poisoned")
            .insert(key, (tokio::time::Instant::now(), masker.clone()));
        Ok(masker)
    }

    /// The last [`LOG_TAIL_LINES`] lines of a try (none when it has no lines or is gone).
    async fn log_tail(&self, run_id: &str, task_id: &str, try_number: u32) -> Vec<String> {
        let Ok(tries) = self.store.tries(run_id, task_id).await else {
            return Vec::new();
        };
        let Some(attempt) = tries.iter().find(|t| t.try_number == try_number) else {
            return Vec::new();
        };
        let logs = self.logs();
        let Ok(Some(last)) = logs.last_log_seq(attempt.try_id).await else {
            return Vec::new();
        };
        let after = last - LOG_TAIL_LINES as i64;
        match logs
            .log_page(attempt.try_id, Some(after), LOG_TAIL_LINES as u32)
            .await
        {
            Ok(page) => page.lines.into_iter().map(|line| line.text).collect(),
            Err(error) => {
                info!(error = %error, "cannot read the try's last lines for an email");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_its_least_to_its_most_with_jitter() {
        let config = NotifierConfig::default();
        for (attempts, least) in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (30, 60)] {
            let delay = backoff(&config, attempts);
            assert!(
                delay >= Duration::from_secs(least) && delay <= Duration::from_secs(least * 2),
                "after {attempts} failures: {delay:?}"
            );
        }
    }
}
