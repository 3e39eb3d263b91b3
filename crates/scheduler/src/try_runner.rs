//! One try from start to end: render the task's templates, start the try in the store, hand
//! it to the backend, turn its events into log lines, outputs and pending state, enforce the
//! timeout, and record how it ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use stevedore_backend::{
    kill_switch, Adopted, Adoption, Backend, BackendError, Isolation, KillSender, LaunchSpec,
    RegistryAuth, StopReason, Stream, TryEvent, TryExit, STATE_FILE,
};
use stevedore_domain::attempt::{self, Ending, History, Settled, TryIdentity};
use stevedore_domain::image::ImageRef;
use stevedore_domain::job::{Job, Task};
use stevedore_domain::mask::Masker;
use stevedore_domain::protocol::{
    output_as_text, read_line, rfc3339, Message, TryContext, TryLimits,
};
use stevedore_domain::state::{FailureReason, TaskState, TryState};
use stevedore_domain::template::{self, Variable};
use stevedore_ops::connections;
use stevedore_store::secrets::SecretKey;
use stevedore_store::{
    Fence, LogLine, LogStream, RunRecord, Store, StoreError, TryFinish, TryKey, TryRecord,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::group_commit::GroupCommit;

/// Log lines are written in batches of at most this many, or after [`FLUSH_INTERVAL`].
const LOG_BATCH: usize = 4096;
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How a try ended, as the scheduler loop needs to know.
#[derive(Debug)]
pub enum TryEnd {
    Finished(TaskState),
    /// The backend could not be reached; the task instance was put back to `scheduled`.
    BackendUnavailable(String),
    /// Another scheduler took the run over: this one stopped following the try (its
    /// container runs on, for the new holder) and recorded nothing more.
    Fenced(String),
}

pub struct TryRunner {
    pub store: Arc<dyn Store>,
    /// Where the try's starts, containers, log lines and ends are written, grouped with
    /// other tries' writes.
    pub writes: GroupCommit,
    /// `None` when the task names a backend this scheduler does not have.
    pub backend: Option<Arc<dyn Backend>>,
    pub backend_name: &'static str,
    /// Opens connections; `None` when the scheduler has no secret key.
    pub secret_key: Option<SecretKey>,
    /// The scheduler's claim on the run; every write of the try is fenced by it.
    pub fence: Option<Fence>,
    /// Extra labels for the try's container.
    pub labels: BTreeMap<String, String>,
    /// What one try's output is held to.
    pub limits: TryLimits,
    /// What a task that sets nothing of its own is confined to.
    pub defaults: TryDefaults,
}

/// The scheduler's defaults for what a task does not set itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TryDefaults {
    /// The most processes a try may run (`pids_limit`).
    pub pids_limit: Option<i64>,
    /// The memory limit of a task without `resources.memory` (`default_memory`).
    pub memory_bytes: Option<u64>,
}

/// The store's refusal of a write by a scheduler that lost the run's claim, if that is
/// what `error` is.
pub fn fenced(error: &anyhow::Error) -> Option<String> {
    match error.downcast_ref::<StoreError>() {
        Some(StoreError::Fenced(message)) => Some(message.clone()),
        _ => None,
    }
}

/// What the events of a try came to.
#[derive(Default)]
struct Recorded {
    /// The container the try ran in, once the backend said.
    container_id: Option<String>,
    /// Its record, queued and perhaps not written yet (see [`TryRunner::settle_container`]).
    container_write: Option<ContainerWrite>,
}

/// A try's container record on its way to the store.
struct ContainerWrite {
    answer:
        std::pin::Pin<Box<dyn std::future::Future<Output = stevedore_store::Result<()>> + Send>>,
    try_id: i64,
    container_id: String,
    image_digest: Option<String>,
    log_seq: i64,
}

impl TryRunner {
    /// The environment variables of the task's connections, and a masker of their values
    /// (and of the registry password) for everything the try prints.
    async fn connection_env(
        &self,
        task: &Task,
    ) -> Result<(BTreeMap<String, String>, Masker), String> {
        let mut env = BTreeMap::new();
        let mut secrets = Vec::new();
        for name in &task.connections {
            for (variable, value) in self.open_connection(name).await? {
                secrets.push(value.clone());
                env.insert(variable, value);
            }
        }
        if let Some(auth) = self.registry_auth(task).await? {
            // Never in the container's environment, but masked should anything print it.
            secrets.push(auth.password);
        }
        Ok((env, Masker::new(secrets)))
    }

    /// A connection's values, unsealed.
    async fn open_connection(&self, name: &str) -> Result<BTreeMap<String, String>, String> {
        connections::open(self.store.as_ref(), self.secret_key.as_ref(), name).await
    }

    /// The registry credentials of the task's `registry_connection`.
    async fn registry_auth(&self, task: &Task) -> Result<Option<RegistryAuth>, String> {
        let Some(name) = &task.registry_connection else {
            return Ok(None);
        };
        let values = self.open_connection(name).await?;
        let credentials = connections::registry_credentials(name, values).map_err(|_| {
            format!("registry_connection `{name}` needs the keys REGISTRY_USERNAME and REGISTRY_PASSWORD")
        })?;
        Ok(Some(RegistryAuth {
            username: credentials.username,
            password: credentials.password,
            server: credentials.server,
        }))
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
    allowed_images: &[String],
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
    if image != task.image && !allowed_images.is_empty() {
        // A param or an output chose the image (the job file allows that only with an
        // allow-list): it must be one of the listed names.
        let name = ImageRef::parse(&image)
            .map(|parsed| parsed.name())
            .map_err(|e| format!("image: {e}"))?;
        if !allowed_images.contains(&name) {
            return Err(format!(
                "image: `{image}` is not among the job's allowed_images ({})",
                allowed_images.join(", ")
            ));
        }
    }
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
        // Upstream outputs are read only for a task whose templates use them.
        let uses_outputs = std::iter::once(&task.image)
            .chain(&task.args)
            .chain(task.env.values())
            .any(|text| {
                template::variables(text)
                    .unwrap_or_default()
                    .iter()
                    .any(|v| matches!(v, Variable::Output { .. }))
            });
        let outputs: HashMap<(String, String), Value> = if uses_outputs {
            self.store
                .outputs(&run.run_id)
                .await?
                .into_iter()
                .map(|(task, key, value)| ((task, key), value))
                .collect()
        } else {
            HashMap::new()
        };
        let rendered = render_task(&task, &job.allowed_images, &context, &outputs);
        let image_text = rendered
            .as_ref()
            .map(|r| r.image.clone())
            .unwrap_or_else(|_| task.image.clone());
        let (started, state) = match self
            .writes
            .start_try(
                &key,
                self.backend_name,
                &image_text,
                Utc::now(),
                self.fence.as_ref(),
            )
            .await
        {
            Ok(started) => started,
            Err(StoreError::Fenced(message)) => return Ok(TryEnd::Fenced(message)),
            Err(error) => return Err(error.into()),
        };
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
                failure: Some(FailureReason::Backend(if self.backend_name == "process" {
                    "backend `process` is not enabled in this scheduler: it runs tries as local processes of the scheduler's own user, so `stevedore scheduler` has it only with `process_backend: true` (STEVEDORE_PROCESS_BACKEND=true); docs/security.md says why".to_owned()
                } else {
                    format!(
                        "backend `{}` is not configured in this scheduler (docs/backends.md says how to set it up)",
                        self.backend_name
                    )
                })),
            };
            return self
                .finish(&job, &task, &context, started.try_id, exit)
                .await;
        };
        let (connection_env, masker) = match self.connection_env(&task).await {
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
        // The state file exists only once the task has committed state.
        for (name, value) in context.environment(state.as_ref().map(|_| STATE_FILE)) {
            env.insert(name, value);
        }
        let mut resources = task.resources.clone();
        if resources.memory_bytes.is_none() {
            resources.memory_bytes = self.defaults.memory_bytes;
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
            resources,
            state: state.map(|value| value.to_string()),
            registry_auth,
            placement: task.placement.clone(),
            labels: self.labels.clone(),
            keep_exited: true,
            max_line_bytes: self.limits.line_buffer_bytes(),
            isolation: Isolation {
                pids_limit: self.defaults.pids_limit,
                read_only_rootfs: task.read_only_rootfs,
                user: task.user.clone(),
            },
        };

        let Following {
            kill_rx,
            kill_probe,
            timeout_guard,
            events_tx,
            sink,
        } = self.follow_events(
            EventTarget {
                run_id: run.run_id.clone(),
                task_id: task.id.clone(),
                try_id: started.try_id,
                first_seq: 0,
                fence: self.fence.clone(),
            },
            task.timeout,
            masker,
            on_started,
        );
        info!(run_id = %run.run_id, task_id = %task.id, try_number, image = %spec.image, "try started");
        let kill_rx_probe = kill_probe;
        let followed = follow(
            backend.execute(spec, events_tx, kill_rx),
            sink,
            timeout_guard,
        )
        .await;
        let (result, mut recorded) = match followed {
            Ok(both) => both,
            Err(message) => return Ok(TryEnd::Fenced(message)),
        };
        let error = match result {
            Ok(exit) => {
                let exit = with_protocol_failure(exit, &kill_rx_probe);
                // The end is queued behind the container's record, often into the same group.
                let end = self
                    .finish(&job, &task, &context, started.try_id, exit)
                    .await?;
                if let Some(message) = self.settle_container(&mut recorded).await? {
                    return Ok(TryEnd::Fenced(message));
                }
                self.discard(&backend, recorded.container_id.as_deref())
                    .await;
                return Ok(end);
            }
            Err(error) => error,
        };
        if let Some(message) = self.settle_container(&mut recorded).await? {
            return Ok(TryEnd::Fenced(message));
        }
        match error {
            BackendError::Unavailable(message) => {
                // Nothing started: record the attempt and put the task instance back.
                self.record(&TryFinish {
                    try_id: started.try_id,
                    state: TryState::Interrupted,
                    ended_at: Utc::now(),
                    exit_code: None,
                    failure_reason: Some(format!("backend: {message}")),
                    task_state: TaskState::Scheduled,
                    next_try_at: None,
                })
                .await?;
                Ok(TryEnd::BackendUnavailable(message))
            }
            BackendError::Disconnected(message) => {
                // The try runs on (or ended unseen): it stays `running` in the store and is
                // re-attached to once the backend answers again.
                warn!(run_id = %run.run_id, task_id = %task.id, try_number, error = %message, "lost the backend while the try ran; re-attaching when it is back");
                Ok(TryEnd::BackendUnavailable(message))
            }
        }
    }

    /// Follows a try that a scheduler which is gone started (`record`, still `running` in
    /// the store): re-attaches to its container, stores the output lines the store does not
    /// hold yet, and records how it ended, even if that happened while no scheduler watched.
    /// A try whose container vanished is failed as `lost` (and retried per policy); one whose
    /// container never started is tried again without spending a retry.
    pub async fn adopt(
        &self,
        job: Arc<Job>,
        run: RunRecord,
        task: Task,
        record: TryRecord,
        on_started: impl FnOnce(KillSender),
    ) -> anyhow::Result<TryEnd> {
        let context = TryContext {
            job_id: job.id.clone(),
            task_id: task.id.clone(),
            run_id: run.run_id.clone(),
            try_number: record.try_number,
            logical_date: run.logical_date,
            data_interval: run.data_interval,
            params: run.params.clone(),
        };
        let interrupted = |why: &str| TryFinish {
            try_id: record.try_id,
            state: TryState::Interrupted,
            ended_at: Utc::now(),
            exit_code: None,
            failure_reason: Some(FailureReason::Lost(why.to_owned()).to_text()),
            task_state: TaskState::Scheduled,
            next_try_at: None,
        };
        let backend = match self.backend.clone() {
            Some(backend) if backend.can_adopt() => backend,
            _ => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, backend = self.backend_name, "a try left by a stopped scheduler cannot be re-attached; trying again");
                self.record(&interrupted(&format!(
                    "its scheduler stopped while it ran, and the `{}` backend cannot re-attach to a try",
                    self.backend_name
                )))
                .await?;
                return Ok(TryEnd::Finished(TaskState::Scheduled));
            }
        };
        let masker = match self.connection_env(&task).await {
            Ok((_, masker)) => masker,
            Err(message) => {
                // Its lines could not be masked: the try is stopped unread and fails.
                return self
                    .stop_unmaskable(&job, &task, &context, &record, backend, message)
                    .await;
            }
        };
        let stored = self.store.stored_lines(record.try_id).await?;
        let adoption = Adoption {
            job_id: job.id.clone(),
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number: record.try_number,
            stored_stdout: stored.stdout,
            stored_stderr: stored.stderr,
            max_line_bytes: self.limits.line_buffer_bytes(),
        };
        // The timeout counts from the try's start, not from its adoption.
        let ran = (Utc::now() - record.started_at)
            .to_std()
            .unwrap_or_default();
        let Following {
            kill_rx,
            kill_probe,
            timeout_guard,
            events_tx,
            sink,
        } = self.follow_events(
            EventTarget {
                run_id: run.run_id.clone(),
                task_id: task.id.clone(),
                try_id: record.try_id,
                first_seq: stored.next_seq,
                fence: self.fence.clone(),
            },
            task.timeout.map(|timeout| timeout.saturating_sub(ran)),
            masker,
            on_started,
        );
        info!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, stored_stdout = stored.stdout, stored_stderr = stored.stderr, "re-attaching to a try a stopped scheduler left running");
        let followed = follow(
            backend.adopt(&adoption, events_tx, kill_rx),
            sink,
            timeout_guard,
        )
        .await;
        let (result, mut recorded) = match followed {
            Ok(both) => both,
            Err(message) => return Ok(TryEnd::Fenced(message)),
        };
        if let Some(message) = self.settle_container(&mut recorded).await? {
            return Ok(TryEnd::Fenced(message));
        }
        match result {
            Ok(Adopted::Exit(exit)) => {
                let exit = with_protocol_failure(exit, &kill_probe);
                let end = self
                    .finish(&job, &task, &context, record.try_id, exit)
                    .await?;
                self.discard(&backend, recorded.container_id.as_deref())
                    .await;
                Ok(end)
            }
            Ok(Adopted::NotStarted) => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, "a stopped scheduler created the try's container but never started it; trying again");
                self.record(&interrupted(
                    "its scheduler stopped before the container started",
                ))
                .await?;
                Ok(TryEnd::Finished(TaskState::Scheduled))
            }
            Ok(Adopted::Missing) if record.container_id.is_none() => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, "a stopped scheduler never created the try's container; trying again");
                self.record(&interrupted(
                    "its scheduler stopped before the container was created",
                ))
                .await?;
                Ok(TryEnd::Finished(TaskState::Scheduled))
            }
            Ok(Adopted::Lost(reason)) => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, reason, "giving the try up as lost");
                let exit = TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Lost(reason)),
                };
                self.finish(&job, &task, &context, record.try_id, exit)
                    .await
            }
            Ok(Adopted::Missing) => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, "the try's container vanished while no scheduler watched it");
                let exit = TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Lost(format!(
                        "its container {} vanished while no scheduler watched it",
                        record.container_id.as_deref().unwrap_or_default()
                    ))),
                };
                self.finish(&job, &task, &context, record.try_id, exit)
                    .await
            }
            Err(BackendError::Unavailable(message) | BackendError::Disconnected(message)) => {
                // Leave the try as it is: it is adopted again once the backend is back.
                Ok(TryEnd::BackendUnavailable(message))
            }
        }
    }

    /// Stops a left try whose connections cannot be opened (a scheduler started without the
    /// secret key, say) without reading a line of it, since its lines could not be masked,
    /// and fails it with the reason.
    async fn stop_unmaskable(
        &self,
        job: &Job,
        task: &Task,
        context: &TryContext,
        record: &TryRecord,
        backend: Arc<dyn Backend>,
        message: String,
    ) -> anyhow::Result<TryEnd> {
        warn!(run_id = %context.run_id, task_id = %task.id, try_number = record.try_number, error = %message, "cannot open the connections of a left try: stopping it unread");
        let mut containers: Vec<String> = record.container_id.iter().cloned().collect();
        if let Ok(running) = backend.list_running().await {
            containers.extend(
                running
                    .into_iter()
                    .filter(|r| {
                        r.run_id == context.run_id
                            && r.task_id == task.id
                            && r.try_number == record.try_number
                    })
                    .map(|r| r.container_id),
            );
        }
        containers.sort();
        containers.dedup();
        for container_id in &containers {
            if let Err(error) = backend.remove(container_id).await {
                warn!(container_id, error = %error, "cannot stop the try's container");
            }
        }
        let exit = TryExit {
            exit_code: None,
            failure: Some(FailureReason::Backend(format!(
                "{message}; the try was stopped without reading its output, since its connection values could not be masked"
            ))),
        };
        self.finish(job, task, context, record.try_id, exit).await
    }

    /// Sets a try up to be followed: its kill switch (handed to `on_started`), a timer that
    /// kills it after `timeout`, and the task that stores its events.
    fn follow_events(
        &self,
        target: EventTarget,
        timeout: Option<Duration>,
        masker: Masker,
        on_started: impl FnOnce(KillSender),
    ) -> Following {
        let (kill_tx, kill_rx) = kill_switch();
        let timeout_guard = timeout.map(|timeout| {
            let kill_tx = kill_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = kill_tx.send(Some(StopReason::Timeout));
            })
        });
        let protocol_kill = kill_tx.clone();
        on_started(kill_tx);
        let (events_tx, events_rx) = mpsc::channel(8192);
        let sink = tokio::spawn(consume_events(
            self.store.clone(),
            self.writes.clone(),
            target,
            events_rx,
            EventRules {
                masker,
                limits: self.limits,
                kill: protocol_kill,
            },
        ));
        Following {
            kill_probe: kill_rx.clone(),
            kill_rx,
            timeout_guard,
            events_tx,
            sink,
        }
    }

    /// Records a try's end, fenced by this runner's claim.
    async fn record(&self, finish: &TryFinish) -> anyhow::Result<()> {
        record_finish(&self.writes, finish, self.fence.as_ref()).await
    }

    /// Waits for the try's container record to be written; writes it again (with backoff)
    /// if that failed for a passing reason. `Some` with the store's message when the run was
    /// taken over.
    async fn settle_container(&self, recorded: &mut Recorded) -> anyhow::Result<Option<String>> {
        let Some(pending) = recorded.container_write.take() else {
            return Ok(None);
        };
        let written = match pending.answer.await {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced(message)) => return Ok(Some(message)),
            Err(error) if error.is_transient() => {
                persist("recording the try's container", || {
                    self.writes.set_try_container(
                        pending.try_id,
                        &pending.container_id,
                        pending.image_digest.as_deref(),
                        pending.log_seq,
                        self.fence.as_ref(),
                    )
                })
                .await
            }
            Err(error) => Err(error.into()),
        };
        match written {
            Ok(()) => Ok(None),
            Err(error) => match fenced(&error) {
                Some(message) => Ok(Some(message)),
                None => Err(error),
            },
        }
    }

    /// Removes the exited container of a try whose end is recorded.
    async fn discard(&self, backend: &Arc<dyn Backend>, container_id: Option<&str>) {
        if let Some(container_id) = container_id {
            if let Err(error) = backend.discard(container_id).await {
                warn!(container_id, error = %error, "cannot remove the try's container");
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
        let ending = Ending {
            exit_code: exit.exit_code,
            failure: exit.failure,
        };
        // Only a failure or a sensor's reschedule needs the task instance's history.
        let history = if attempt::needs_history(&ending) {
            let earlier_tries = self.store.tries(&context.run_id, &task.id).await?;
            let retry_base = self
                .store
                .task_instances(&context.run_id)
                .await?
                .into_iter()
                .find(|ti| ti.task_id == task.id)
                .map(|ti| ti.retry_base)
                .unwrap_or(0);
            History {
                earlier_failures: earlier_tries
                    .iter()
                    .filter(|t| {
                        t.try_id != try_id
                            && t.try_number > retry_base
                            && t.state == TryState::Failed
                    })
                    .count() as u32,
                first_started_at: earlier_tries.first().map(|t| t.started_at),
            }
        } else {
            History::default()
        };
        let identity = TryIdentity {
            job_id: &job.id,
            logical_date: context.logical_date,
        };
        let Settled {
            try_state,
            task_state,
            next_try_at,
            failure_reason,
        } = attempt::settle(&ending, &history, task, identity, now);
        info!(
            run_id = %context.run_id, task_id = %task.id, try_number = context.try_number,
            exit_code = ?exit.exit_code, reason = ?failure_reason, state = %task_state, "try ended"
        );
        let finish = TryFinish {
            try_id,
            state: try_state,
            ended_at: now,
            exit_code: exit.exit_code,
            failure_reason,
            task_state,
            next_try_at,
        };
        match self.record(&finish).await {
            Ok(()) => Ok(TryEnd::Finished(task_state)),
            Err(error) => match fenced(&error) {
                Some(message) => Ok(TryEnd::Fenced(message)),
                None => Err(error),
            },
        }
    }
}

/// Runs a store write again on a passing error (a busy database, a dropped connection, a
/// restarting server) for up to two minutes: the records of work already done must not be
/// lost. A fenced write (the run was taken over) or a missing row is not tried again.
pub async fn persist<T, F, Fut>(what: &str, mut write: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = stevedore_store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(error @ (StoreError::Fenced(_) | StoreError::NotFound(_))) => {
                return Err(error.into())
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                warn!(what, error = %error, retry_in_ms = delay.as_millis() as u64, "store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Records how a try ended (see [`persist`]).
pub async fn record_finish(
    writes: &GroupCommit,
    finish: &TryFinish,
    fence: Option<&Fence>,
) -> anyhow::Result<()> {
    persist("recording the try's end", || {
        writes.finish_try(finish, fence)
    })
    .await
}

/// Waits for a try (`exit`) while its events are stored (`sink`), then stops its timeout
/// timer. `Err` with the store's message when the store refused the records because another
/// scheduler took the run over: the try is then left to that scheduler (nothing is killed).
async fn follow<T>(
    exit: impl std::future::Future<Output = T>,
    mut sink: tokio::task::JoinHandle<anyhow::Result<Recorded>>,
    timeout_guard: Option<tokio::task::JoinHandle<()>>,
) -> Result<(T, Recorded), String> {
    tokio::pin!(exit);
    let mut stored = None;
    let result = loop {
        tokio::select! {
            result = &mut exit => break result,
            ended = &mut sink, if stored.is_none() => stored = Some(ended),
        }
    };
    let stored = match stored {
        Some(ended) => ended,
        None => sink.await,
    };
    if let Some(guard) = timeout_guard {
        guard.abort();
    }
    let recorded = match stored {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(error)) => {
            if let Some(message) = fenced(&error) {
                return Err(message);
            }
            warn!(error = %error, "storing the try's logs failed");
            Recorded::default()
        }
        Err(error) => {
            warn!(error = %error, "log consumer panicked");
            Recorded::default()
        }
    };
    Ok((result, recorded))
}

async fn append(
    writes: &GroupCommit,
    batch: &[LogLine],
    fence: Option<&Fence>,
) -> anyhow::Result<()> {
    persist("storing log lines", || writes.append_logs(batch, fence)).await
}

/// A try being followed: see [`TryRunner::follow_events`].
struct Following {
    kill_rx: stevedore_backend::KillReceiver,
    /// Reads the kill switch after the try: the try may have ended by itself after its
    /// events broke the protocol's limits, before the kill reached it.
    kill_probe: stevedore_backend::KillReceiver,
    timeout_guard: Option<tokio::task::JoinHandle<()>>,
    events_tx: mpsc::Sender<TryEvent>,
    sink: tokio::task::JoinHandle<anyhow::Result<Recorded>>,
}

/// Where a try's events go.
struct EventTarget {
    run_id: String,
    task_id: String,
    try_id: i64,
    /// The seq of the first line to store (after the lines stored already).
    first_seq: i64,
    fence: Option<Fence>,
}

/// What a try's events are held to while they are stored.
struct EventRules {
    /// Hides connection values in lines, messages, outputs and state.
    masker: Masker,
    limits: TryLimits,
    /// Stops the try when it breaks the protocol's limits.
    kill: KillSender,
}

impl EventRules {
    /// Stops the try for breaking the protocol's limits (once; the first reason stands).
    fn broke(&self, why: String) {
        warn!(reason = %why, "stopping a try that broke the protocol's limits");
        self.kill.send_if_modified(|reason| {
            if reason.is_some() {
                return false;
            }
            *reason = Some(StopReason::Protocol(why));
            true
        });
    }
}

/// Stores the try's events: log lines in batches, outputs and state as they come. Every
/// text is masked (the raw line, and the decoded message, output and state), every stored
/// line cut to `max_line_bytes`, and an output or state over `max_output_bytes`, a
/// protocol message cut short, or more than `max_outputs` outputs stop the try.
async fn consume_events(
    store: Arc<dyn Store>,
    writes: GroupCommit,
    target: EventTarget,
    mut events: mpsc::Receiver<TryEvent>,
    rules: EventRules,
) -> anyhow::Result<Recorded> {
    let masker = &rules.masker;
    let limits = rules.limits;
    let mut outputs_seen: std::collections::HashSet<String> = Default::default();
    let mut broken = false;
    let EventTarget {
        run_id,
        task_id,
        try_id,
        first_seq,
        fence,
    } = target;
    let fence = fence.as_ref();
    let store = store.as_ref();
    let mut recorded = Recorded::default();
    // Grown as lines come: most tries print a few lines, and a batch's full size would be
    // a third of a megabyte for each of them.
    let mut batch: Vec<LogLine> = Vec::new();
    let mut seq: i64 = first_seq;
    let mut flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                append(&writes, &batch, fence).await?;
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
                // Lines before this one are Stevedore's own (the pull); from here on they
                // are the container's. Queued now and answered later: the lines and the
                // end that follow are queued after it.
                recorded.container_write = Some(ContainerWrite {
                    answer: writes.queue_try_container(
                        try_id,
                        &container_id,
                        image_digest.as_deref(),
                        seq,
                        fence,
                    ),
                    try_id,
                    container_id: container_id.clone(),
                    image_digest,
                    log_seq: seq,
                });
                recorded.container_id = Some(container_id);
            }
            TryEvent::Note(text) => {
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: LogStream::Protocol,
                    timestamp: Utc::now(),
                    text: masker.mask(&format!("info: {text}")),
                });
                seq += 1;
            }
            TryEvent::Pulling { image, status } => {
                debug!(image, status, "pulling");
                // The pull is part of the try: its steps go to the try's log.
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: LogStream::Protocol,
                    timestamp: Utc::now(),
                    text: masker.mask(&format!("info: pulling {image}: {status}")),
                });
                seq += 1;
            }
            TryEvent::Line {
                stream,
                timestamp,
                text,
                dropped,
            } => {
                let read = read_line(stream == Stream::Stdout, &text, dropped, masker, &limits);
                if let Some(problem) = read.problem {
                    if !broken {
                        broken = true;
                        rules.broke(problem);
                    }
                }
                match read.message {
                    // After a broken limit nothing more is published.
                    Some(Message::Output { .. } | Message::State { .. }) if broken => {}
                    Some(Message::Output { key, value }) => {
                        if !outputs_seen.contains(&key) && outputs_seen.len() >= limits.max_outputs
                        {
                            broken = true;
                            rules.broke(format!(
                                "the try published more than {} outputs (max_outputs)",
                                limits.max_outputs
                            ));
                        } else {
                            persist("storing an output", || {
                                store.put_output(&run_id, &task_id, &key, &value)
                            })
                            .await?;
                            outputs_seen.insert(key);
                        }
                    }
                    Some(Message::State { value }) => {
                        persist("storing the try's state", || {
                            store.set_pending_state(try_id, &value)
                        })
                        .await?
                    }
                    _ => {}
                }
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: match stream {
                        _ if read.is_log => LogStream::Protocol,
                        Stream::Stdout => LogStream::Stdout,
                        Stream::Stderr => LogStream::Stderr,
                    },
                    timestamp,
                    text: read.text,
                });
                seq += 1;
                if batch.len() >= LOG_BATCH {
                    append(&writes, &batch, fence).await?;
                    batch.clear();
                }
            }
        }
    }
    append(&writes, &batch, fence).await?;
    Ok(recorded)
}

/// `exit` failed for breaking the protocol's limits when its events did (they are all
/// stored before the exit is looked at), even if the try ended before the kill reached it.
fn with_protocol_failure(mut exit: TryExit, kill: &stevedore_backend::KillReceiver) -> TryExit {
    if let Some(StopReason::Protocol(why)) = kill.borrow().clone() {
        exit.failure = Some(FailureReason::Protocol(why));
    }
    exit
}
