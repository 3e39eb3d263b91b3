//! One try from start to end: render the task's templates, start the try in the store, hand
//! it to the backend, turn its events into log lines, outputs and pending state, enforce the
//! timeout, and record how it ended.
//!
//! This file holds the two ways a try is followed, [`TryRunner::run`] (a new try: started in
//! the store, then launched) and [`TryRunner::adopt`] (a try a stopped scheduler left
//! running: re-attached to), and the types they share. Their phases live beside it:
//! [`prepare`] (templates, connections, registry credentials), [`sink`] (the kill switch,
//! the timeout and the task storing the try's events), [`finish`] (what the end means, as
//! `stevedore_domain::attempt` decides, recorded; the container removed) and
//! [`persistence`] (store writes tried again on a passing error).

mod files;
mod finish;
mod persistence;
mod prepare;
mod sink;

pub use finish::task_history;
use finish::{with_protocol_failure, with_reported_error};
use persistence::append;
pub use persistence::{persist, record_finish};
use prepare::{render_task, RenderedTask};
use sink::{follow, EventPipe, EventTarget};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use stevedore_backend::{
    kill_switch, Adopted, Adoption, ArtifactStore, Backend, BackendError, Isolation, KillSender,
    LaunchSpec, RegistryAuth, StopReason, Stream, TryEvent, TryExit, WorkspaceExchange, STATE_FILE,
};
use stevedore_domain::attempt::{self, Ending, History, Settled, TryIdentity};
use stevedore_domain::clock::Clock;
use stevedore_domain::image::ImageRef;
use stevedore_domain::job::{Job, Task};
use stevedore_domain::mapping;
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
    /// Where the try's start and end times come from.
    pub clock: Arc<dyn Clock>,
    /// Where tries' files travel between them; `None`: each try's workspace starts empty
    /// and nothing of it is kept.
    pub artifacts: Option<ArtifactStore>,
    /// Where the try's span goes, when traces are exported.
    pub traces: Option<Arc<crate::traces::Traces>>,
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
    /// The last `{"type":"error"}` message the try printed: its failure reason if it then
    /// exits with a failing code.
    error: Option<stevedore_domain::state::ReportedError>,
    /// The last value of each `metric` the try printed (at most [`sink::MAX_METRICS`]).
    metrics: std::collections::BTreeMap<String, f64>,
    /// When the backend said the try runs (its `backend start` span ends there).
    launched_at: Option<chrono::DateTime<chrono::Utc>>,
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
            task_id: task.task_id().to_owned(),
            run_id: run.run_id.clone(),
            try_number,
            logical_date: run.logical_date,
            data_interval: run.data_interval,
            params: run.params.clone(),
            map_index: task.map_index,
        };
        let key = TryKey {
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number,
        };
        // The outputs of the upstream tasks the task's templates name (and its `for_each`,
        // for a mapped instance's item), read only for those tasks.
        let named: BTreeSet<String> = std::iter::once(&task.image)
            .chain(&task.args)
            .chain(task.env.values())
            .flat_map(|text| template::variables(text).unwrap_or_default())
            .filter_map(|variable| match variable {
                Variable::Output { task, .. } => Some(task),
                _ => None,
            })
            .collect();
        // A mapped upstream's outputs gather into lists, with a place for each instance.
        let keys: Vec<String> = if named
            .iter()
            .any(|source| job.task(source).is_some_and(|t| t.for_each.is_some()))
        {
            self.store
                .task_instances(&run.run_id)
                .await?
                .into_iter()
                .map(|ti| ti.task_id)
                .collect()
        } else {
            Vec::new()
        };
        let outputs = crate::expansion::source_outputs(
            self.store.as_ref(),
            &run.run_id,
            named.iter().map(String::as_str),
            &keys,
        )
        .await?;
        // A mapped instance's item, as its task's expansion recorded it.
        let item = match (task.map_index, &task.map_item) {
            (Some(_), Some(item)) => Ok(Some(item.clone())),
            (Some(index), None) => self
                .store
                .map_items(&run.run_id, std::slice::from_ref(&task.id))
                .await?
                .remove(&task.id)
                .map(Some)
                .ok_or_else(|| format!("for_each: instance {index} has no item")),
            (None, _) => Ok(None),
        };
        let inputs = self.staged_inputs(&job, &task, &run.run_id).await?;
        let rendered = item.and_then(|item| {
            render_task(
                &task,
                &job.allowed_images,
                &context,
                &outputs,
                item.as_ref(),
            )
        });
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
                self.clock.now(),
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
                    .finish(
                        &job,
                        &task,
                        &context,
                        started.try_id,
                        exit,
                        finish::Observed::default(),
                    )
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
                .finish(
                    &job,
                    &task,
                    &context,
                    started.try_id,
                    exit,
                    finish::Observed::default(),
                )
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
                    .finish(
                        &job,
                        &task,
                        &context,
                        started.try_id,
                        exit,
                        finish::Observed::default(),
                    )
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
                    .finish(
                        &job,
                        &task,
                        &context,
                        started.try_id,
                        exit,
                        finish::Observed::default(),
                    )
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
            workspace: self.artifacts.clone().map(|store| WorkspaceExchange {
                store,
                inputs: inputs.clone(),
            }),
        };

        let EventPipe {
            kill_rx,
            kill_probe,
            timeout_guard,
            events_tx,
            sink,
        } = self.open_event_pipe(
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
        let launch_requested_at = Some(chrono::Utc::now());
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
                let exit = with_reported_error(exit, recorded.error.as_ref());
                let exit = self
                    .capture_files(
                        &backend,
                        recorded.container_id.as_deref(),
                        &context,
                        &task,
                        started.try_id,
                        &inputs,
                        exit,
                    )
                    .await?;
                // The end is queued behind the container's record, often into the same group.
                let end = self
                    .finish(
                        &job,
                        &task,
                        &context,
                        started.try_id,
                        exit,
                        finish::Observed {
                            metrics: std::mem::take(&mut recorded.metrics).into_iter().collect(),
                            launch_requested_at,
                            launched_at: recorded.launched_at,
                        },
                    )
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
                    ended_at: self.clock.now(),
                    exit_code: None,
                    failure_reason: Some(format!("backend: {message}")),
                    task_state: TaskState::Scheduled,
                    next_try_at: None,
                    notifications: Vec::new(),
                    produces: Vec::new(),
                    metrics: Vec::new(),
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
            task_id: task.task_id().to_owned(),
            run_id: run.run_id.clone(),
            try_number: record.try_number,
            logical_date: run.logical_date,
            data_interval: run.data_interval,
            params: run.params.clone(),
            map_index: task.map_index,
        };
        let interrupted = |why: &str| TryFinish {
            try_id: record.try_id,
            state: TryState::Interrupted,
            ended_at: self.clock.now(),
            exit_code: None,
            failure_reason: Some(FailureReason::Lost(why.to_owned()).to_text()),
            task_state: TaskState::Scheduled,
            next_try_at: None,
            notifications: Vec::new(),
            produces: Vec::new(),
            metrics: Vec::new(),
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
        // What this scheduler's earlier follower of the try still had on its way is written
        // (or has failed) before the stored lines are counted.
        self.writes.barrier(&run.run_id).await;
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
        let ran = (self.clock.now() - record.started_at)
            .to_std()
            .unwrap_or_default();
        let EventPipe {
            kill_rx,
            kill_probe,
            timeout_guard,
            events_tx,
            sink,
        } = self.open_event_pipe(
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
                let exit = with_reported_error(exit, recorded.error.as_ref());
                let inputs = self.staged_inputs(&job, &task, &run.run_id).await?;
                let exit = self
                    .capture_files(
                        &backend,
                        recorded.container_id.as_deref(),
                        &context,
                        &task,
                        record.try_id,
                        &inputs,
                        exit,
                    )
                    .await?;
                let end = self
                    .finish(
                        &job,
                        &task,
                        &context,
                        record.try_id,
                        exit,
                        finish::Observed {
                            metrics: std::mem::take(&mut recorded.metrics).into_iter().collect(),
                            launch_requested_at: None,
                            launched_at: recorded.launched_at,
                        },
                    )
                    .await?;
                self.discard(&backend, recorded.container_id.as_deref())
                    .await;
                Ok(end)
            }
            Ok(Adopted::NotStarted { left }) => {
                warn!(run_id = %run.run_id, task_id = %task.id, try_number = record.try_number, "a stopped scheduler created the try's container but never started it; trying again");
                self.record(&interrupted(
                    "its scheduler stopped before the container started",
                ))
                .await?;
                // Only now: removed first, a stop before the record would leave a running try
                // whose container is gone, and the next scheduler would give it up as lost.
                self.discard(&backend, left.as_deref()).await;
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
                self.finish(
                    &job,
                    &task,
                    &context,
                    record.try_id,
                    exit,
                    finish::Observed::default(),
                )
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
                self.finish(
                    &job,
                    &task,
                    &context,
                    record.try_id,
                    exit,
                    finish::Observed::default(),
                )
                .await
            }
            Err(BackendError::Unavailable(message) | BackendError::Disconnected(message)) => {
                // Leave the try as it is: it is adopted again once the backend is back.
                Ok(TryEnd::BackendUnavailable(message))
            }
        }
    }
}
