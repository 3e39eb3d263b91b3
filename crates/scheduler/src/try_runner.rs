//! One try from start to end: render the task's templates, start the try in the store, hand
//! it to the backend, turn its events into log lines, outputs and pending state, enforce the
//! timeout, and record how it ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use stevedore_backend::{
    kill_switch, Backend, BackendError, KillReason, KillSender, LaunchSpec, RegistryAuth, Stream,
    TryEvent, TryExit, STATE_FILE,
};
use stevedore_domain::job::{Job, Task};
use stevedore_domain::protocol::{output_as_text, parse_line, rfc3339, Message, TryContext};
use stevedore_domain::retry::RetryKey;
use stevedore_domain::state::{state_after_try, FailureReason, TaskState, TryOutcome, TryState};
use stevedore_domain::template::{self, Variable};
use stevedore_store::secrets::SecretKey;
use stevedore_store::{LogLine, LogStream, RunRecord, Store, TryFinish, TryKey};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Log lines are written in batches of at most this many, or after [`FLUSH_INTERVAL`].
const LOG_BATCH: usize = 4096;
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The kill reason of tries stopped because their scheduler stops: such a try does not
/// count against the retries; its task instance is scheduled again.
pub const SCHEDULER_STOPPED: &str = "scheduler stopped";

/// The kill reason of a try whose task instance an operator marked (`task marked success`).
pub const MARKED: &str = "task marked ";
/// The kill reason of the tries of a cancelled run.
pub const RUN_CANCELLED: &str = "run cancelled";

/// How a try ended, as the scheduler loop needs to know.
#[derive(Debug)]
pub enum TryEnd {
    Finished(TaskState),
    /// The backend could not be reached; the task instance was put back to `scheduled`.
    BackendUnavailable(String),
}

pub struct TryRunner {
    pub store: Arc<dyn Store>,
    /// `None` when the task names a backend this scheduler does not have.
    pub backend: Option<Arc<dyn Backend>>,
    pub backend_name: &'static str,
    /// Opens connections; `None` when the scheduler has no secret key.
    pub secret_key: Option<SecretKey>,
}

/// Secret values shorter than this are not redacted from logs: masking every `1` or `ab` in
/// a log would hide more than it protects.
const MIN_REDACTED_LEN: usize = 4;

/// Replaces every secret value in `text` by `***`.
fn redact(text: String, secrets: &[String]) -> String {
    let mut text = text;
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

impl TryRunner {
    /// The environment variables of the task's connections, and their values (to redact).
    async fn connection_env(
        &self,
        task: &Task,
    ) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
        let mut env = BTreeMap::new();
        let mut secrets = Vec::new();
        for name in &task.connections {
            for (variable, value) in self.open_connection(name).await? {
                if value.len() >= MIN_REDACTED_LEN {
                    secrets.push(value.clone());
                }
                env.insert(variable, value);
            }
        }
        if let Some(auth) = self.registry_auth(task).await? {
            // Never in the container's environment, but masked should anything print it.
            if auth.password.len() >= MIN_REDACTED_LEN {
                secrets.push(auth.password);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok((env, secrets))
    }

    /// A connection's values, unsealed.
    async fn open_connection(&self, name: &str) -> Result<BTreeMap<String, String>, String> {
        let record = self
            .store
            .get_connection(name)
            .await
            .map_err(|e| format!("connection `{name}`: {e}"))?;
        let key = self.secret_key.as_ref().ok_or_else(|| {
            format!("connection `{name}`: the scheduler has no secret key (STEVEDORE_SECRET_KEY or its key file)")
        })?;
        let plain = key
            .open(&record.sealed)
            .map_err(|e| format!("connection `{name}`: {e}"))?;
        serde_json::from_slice(&plain).map_err(|e| format!("connection `{name}`: {e}"))
    }

    /// The registry credentials of the task's `registry_connection`.
    async fn registry_auth(&self, task: &Task) -> Result<Option<RegistryAuth>, String> {
        let Some(name) = &task.registry_connection else {
            return Ok(None);
        };
        let mut values = self.open_connection(name).await?;
        let mut take = |key: &str| values.remove(key);
        match (take("REGISTRY_USERNAME"), take("REGISTRY_PASSWORD")) {
            (Some(username), Some(password)) => Ok(Some(RegistryAuth {
                username,
                password,
                server: take("REGISTRY_SERVER"),
            })),
            _ => Err(format!(
                "registry_connection `{name}` needs the keys REGISTRY_USERNAME and REGISTRY_PASSWORD"
            )),
        }
    }
}

/// The task's image, args and env with templates rendered for one try.
struct RenderedTask {
    image: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

/// Renders the task's templates for this try.
fn render_task(
    task: &Task,
    context: &TryContext,
    outputs: &HashMap<(String, String), Value>,
) -> Result<RenderedTask, String> {
    let lookup = |variable: &Variable| -> Option<String> {
        match variable {
            Variable::Context(name) => Some(match name.as_str() {
                "job_id" => context.job_id.clone(),
                "run_id" => context.run_id.clone(),
                "task_id" => context.task_id.clone(),
                "try_number" => context.try_number.to_string(),
                "logical_date" => rfc3339(context.logical_date),
                "data_interval_start" => rfc3339(context.data_interval.start),
                "data_interval_end" => rfc3339(context.data_interval.end),
                _ => return None,
            }),
            Variable::Param(name) => context.params.get(name).map(output_as_text),
            Variable::Output { task, key } => outputs
                .get(&(task.clone(), key.clone()))
                .map(output_as_text),
        }
    };
    let image = template::render(&task.image, &lookup).map_err(|e| format!("image: {e}"))?;
    let args = task
        .args
        .iter()
        .map(|arg| template::render(arg, &lookup))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("args: {e}"))?;
    let env = task
        .env
        .iter()
        .map(|(key, value)| Ok((key.clone(), template::render(value, &lookup)?)))
        .collect::<Result<BTreeMap<_, _>, String>>()
        .map_err(|e| format!("env: {e}"))?;
    Ok(RenderedTask { image, args, env })
}

impl TryRunner {
    /// Runs try `try_number` of `task` in `run`. `on_started` receives the kill switch once
    /// the try exists, so the scheduler can stop it.
    pub async fn run(
        &self,
        job: Arc<Job>,
        run: RunRecord,
        task: Task,
        try_number: u32,
        on_started: impl FnOnce(KillSender),
    ) -> anyhow::Result<TryEnd> {
        let context = TryContext {
            job_id: job.id.clone(),
            task_id: task.id.clone(),
            run_id: run.run_id.clone(),
            try_number,
            logical_date: run.logical_date,
            data_interval: run.data_interval,
            params: run.params.clone(),
        };
        let key = TryKey {
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number,
        };
        let outputs: HashMap<(String, String), Value> = self
            .store
            .outputs(&run.run_id)
            .await?
            .into_iter()
            .map(|(task, key, value)| ((task, key), value))
            .collect();
        let rendered = render_task(&task, &context, &outputs);
        let image_text = rendered
            .as_ref()
            .map(|r| r.image.clone())
            .unwrap_or_else(|_| task.image.clone());
        let started = self
            .store
            .start_try(&key, self.backend_name, &image_text, Utc::now())
            .await?;
        let RenderedTask {
            image,
            args,
            mut env,
        } = match rendered {
            Ok(rendered) => rendered,
            Err(message) => {
                warn!(run_id = %run.run_id, task_id = %task.id, error = %message, "template failed");
                let exit = TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Backend(format!("template {message}"))),
                };
                return self
                    .finish(&job, &task, &context, started.try_id, exit)
                    .await;
            }
        };
        let Some(backend) = self.backend.clone() else {
            let exit = TryExit {
                exit_code: None,
                failure: Some(FailureReason::Backend(format!(
                    "backend `{}` is not available in this scheduler",
                    self.backend_name
                ))),
            };
            return self
                .finish(&job, &task, &context, started.try_id, exit)
                .await;
        };
        let (connection_env, secrets) = match self.connection_env(&task).await {
            Ok(found) => found,
            Err(message) => {
                let exit = TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Backend(message)),
                };
                return self
                    .finish(&job, &task, &context, started.try_id, exit)
                    .await;
            }
        };
        env.extend(connection_env);
        let registry_auth = match self.registry_auth(&task).await {
            Ok(auth) => auth,
            Err(message) => {
                let exit = TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Backend(message)),
                };
                return self
                    .finish(&job, &task, &context, started.try_id, exit)
                    .await;
            }
        };
        let state = self.store.committed_state(&job.id, &task.id).await?;
        // The state file exists only once the task has committed state.
        for (name, value) in context.environment(state.as_ref().map(|_| STATE_FILE)) {
            env.insert(name, value);
        }
        let spec = LaunchSpec {
            job_id: job.id.clone(),
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number,
            image,
            pull_policy: task.pull_policy,
            command: task.command.clone(),
            args: context.entrypoint_args(&args),
            env,
            resources: task.resources.clone(),
            state: state.map(|value| value.to_string()),
            registry_auth,
        };

        let (kill_tx, kill_rx) = kill_switch();
        let timeout_guard = task.timeout.map(|timeout| {
            let kill_tx = kill_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = kill_tx.send(Some(KillReason::Timeout));
            })
        });
        on_started(kill_tx);

        let (events_tx, events_rx) = mpsc::channel(8192);
        let sink = tokio::spawn(consume_events(
            self.store.clone(),
            run.run_id.clone(),
            task.id.clone(),
            started.try_id,
            events_rx,
            secrets,
        ));
        info!(run_id = %run.run_id, task_id = %task.id, try_number, image = %spec.image, "try started");
        let result = backend.execute(spec, events_tx, kill_rx).await;
        if let Some(guard) = timeout_guard {
            guard.abort();
        }
        match sink.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(error = %error, "storing the try's logs failed"),
            Err(error) => warn!(error = %error, "log consumer panicked"),
        }
        match result {
            Ok(exit) => {
                self.finish(&job, &task, &context, started.try_id, exit)
                    .await
            }
            Err(BackendError::Unavailable(message)) => {
                // Nothing started: record the attempt and put the task instance back.
                record_finish(
                    self.store.as_ref(),
                    &TryFinish {
                        try_id: started.try_id,
                        state: TryState::Interrupted,
                        ended_at: Utc::now(),
                        exit_code: None,
                        failure_reason: Some(format!("backend: {message}")),
                        task_state: TaskState::Scheduled,
                        next_try_at: None,
                    },
                )
                .await?;
                Ok(TryEnd::BackendUnavailable(message))
            }
        }
    }

    async fn finish(
        &self,
        job: &Job,
        task: &Task,
        context: &TryContext,
        try_id: i64,
        exit: TryExit,
    ) -> anyhow::Result<TryEnd> {
        let now = Utc::now();
        let outcome = match (&exit.failure, exit.exit_code) {
            (Some(reason), _) => TryOutcome::Failed(reason.clone()),
            (None, Some(code)) => TryOutcome::from_exit_code(code),
            (None, None) => TryOutcome::Failed(FailureReason::Backend(
                "the container vanished without an exit code".to_owned(),
            )),
        };
        // Retries count failed tries only: sensor reschedules and interrupted tries do not
        // spend the budget.
        let earlier_tries = self.store.tries(&context.run_id, &task.id).await?;
        let retry_base = self
            .store
            .task_instances(&context.run_id)
            .await?
            .into_iter()
            .find(|ti| ti.task_id == task.id)
            .map(|ti| ti.retry_base)
            .unwrap_or(0);
        let earlier_failures = earlier_tries
            .iter()
            .filter(|t| {
                t.try_id != try_id && t.try_number > retry_base && t.state == TryState::Failed
            })
            .count() as u32;
        let failures = earlier_failures + u32::from(matches!(outcome, TryOutcome::Failed(_)));
        let mut task_state = state_after_try(&outcome, failures, task.retry.retries);
        let mut try_state = outcome.try_state();
        let mut next_try_at = None;
        match &exit.failure {
            Some(FailureReason::Killed(why)) if why == SCHEDULER_STOPPED => {
                try_state = TryState::Interrupted;
                task_state = TaskState::Scheduled;
            }
            // Killed on an operator's request (run cancelled): failed, not retried.
            // Marked by an operator while it ran: the mark stands.
            Some(FailureReason::Killed(why)) if why.starts_with(MARKED) => {
                task_state = why[MARKED.len()..].parse().unwrap_or(TaskState::Failed);
            }
            Some(FailureReason::Killed(_)) => task_state = TaskState::Failed,
            _ => {}
        }
        match task_state {
            TaskState::UpForRetry => {
                let key = RetryKey {
                    job_id: &job.id,
                    task_id: &task.id,
                    logical_date: context.logical_date,
                    try_number: failures,
                };
                next_try_at = Some(task.retry.next_try_at(now, &key));
            }
            TaskState::UpForReschedule => {
                let first_try = earlier_tries.first().map(|t| t.started_at).unwrap_or(now);
                let sensor_deadline = first_try
                    + chrono::TimeDelta::from_std(task.sensor_timeout)
                        .unwrap_or(chrono::TimeDelta::MAX);
                if now >= sensor_deadline {
                    task_state = TaskState::Failed;
                } else {
                    next_try_at = Some(
                        now + chrono::TimeDelta::from_std(task.reschedule_interval)
                            .unwrap_or(chrono::TimeDelta::zero()),
                    );
                }
            }
            _ => {}
        }
        let failure_reason = match &outcome {
            TryOutcome::Failed(reason) => Some(reason.to_text()),
            _ => None,
        };
        info!(
            run_id = %context.run_id, task_id = %task.id, try_number = context.try_number,
            exit_code = ?exit.exit_code, reason = ?failure_reason, state = %task_state, "try ended"
        );
        record_finish(
            self.store.as_ref(),
            &TryFinish {
                try_id,
                state: try_state,
                ended_at: now,
                exit_code: exit.exit_code,
                failure_reason,
                task_state,
                next_try_at,
            },
        )
        .await?;
        Ok(TryEnd::Finished(task_state))
    }
}

/// Records how a try ended, retrying for up to two minutes: the result of work already done
/// must not be lost to a passing store error (a busy database, a dropped connection).
pub async fn record_finish(store: &dyn Store, finish: &TryFinish) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match store.finish_try(finish).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() < deadline => {
                warn!(try_id = finish.try_id, error = %error, retry_in_ms = delay.as_millis() as u64, "recording the try's end failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Stores the try's events: log lines in batches, outputs and state as they come.
async fn consume_events(
    store: Arc<dyn Store>,
    run_id: String,
    task_id: String,
    try_id: i64,
    mut events: mpsc::Receiver<TryEvent>,
    secrets: Vec<String>,
) -> anyhow::Result<()> {
    let mut batch: Vec<LogLine> = Vec::with_capacity(LOG_BATCH);
    let mut seq: i64 = 0;
    let mut flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                store.append_logs(&batch).await?;
                batch.clear();
                continue;
            }
        };
        let Some(event) = event else { break };
        if batch.is_empty() {
            flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
        }
        match event {
            TryEvent::Launched {
                container_id,
                image_digest,
            } => {
                store
                    .set_try_container(try_id, &container_id, image_digest.as_deref())
                    .await?;
            }
            TryEvent::Pulling { image, status } => {
                debug!(image, status, "pulling");
                // The pull is part of the try: its steps go to the try's log.
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: LogStream::Protocol,
                    timestamp: Utc::now(),
                    text: format!("info: pulling {image}: {status}"),
                });
                seq += 1;
            }
            TryEvent::Line {
                stream,
                timestamp,
                text,
            } => {
                let mut log_stream = match stream {
                    Stream::Stdout => LogStream::Stdout,
                    Stream::Stderr => LogStream::Stderr,
                };
                let mut text = redact(text, &secrets);
                if stream == Stream::Stdout {
                    match parse_line(&text) {
                        Some(Message::Log { level, message }) => {
                            log_stream = LogStream::Protocol;
                            text = format!("{level}: {message}");
                        }
                        Some(Message::Output { key, value }) => {
                            store.put_output(&run_id, &task_id, &key, &value).await?
                        }
                        Some(Message::State { value }) => {
                            store.set_pending_state(try_id, &value).await?
                        }
                        Some(Message::Progress { .. } | Message::Metric { .. }) | None => {}
                    }
                }
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: log_stream,
                    timestamp,
                    text,
                });
                seq += 1;
                if batch.len() >= LOG_BATCH {
                    store.append_logs(&batch).await?;
                    batch.clear();
                }
            }
        }
    }
    store.append_logs(&batch).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_every_occurrence_longest_first() {
        let secrets = vec!["sk_live_abc123".to_owned(), "abc1".to_owned()];
        assert_eq!(
            redact(
                "token sk_live_abc123 and abc1 and sk_live_abc123".into(),
                &secrets
            ),
            "token *** and *** and ***"
        );
        assert_eq!(redact("nothing here".into(), &secrets), "nothing here");
    }
}
