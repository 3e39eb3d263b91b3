//! Backends: where tries execute. One [`Backend`] trait; the scheduler hands it a
//! [`LaunchSpec`] and receives [`TryEvent`]s (container id, image digest, log lines as they
//! arrive) and finally a [`TryExit`].
//!
//! - [`docker`]: a container per try on a Docker engine, through bollard.
//! - [`nomad`]: a Nomad batch job per try, through Nomad's HTTP API.
//! - [`process`]: a local subprocess per try, the same contract without an image.
//! - [`scripted`]: tries played on the scheduler's clock, for testing the scheduling rules
//!   without Docker and measuring the scheduler alone.
//! - [`lines`]: turns the engine's log chunks into whole, timestamped lines.

pub mod docker;
pub mod docker_hosts;
#[cfg(test)]
mod fuzz;
pub mod lines;
pub mod nomad;
pub mod process;
pub mod scripted;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use stevedore_domain::job::{PullPolicy, Resources};
use stevedore_domain::state::FailureReason;
use tokio::sync::{mpsc, watch};

pub use stevedore_artifacts::{
    ArtifactError, ArtifactStore, CaptureError, CaptureLimits, StageError, StagedFile,
    WorkspaceFile,
};

pub use docker::DockerBackend;
pub use nomad::{NomadBackend, NomadConfig};
pub use process::ProcessBackend;

/// Container labels that identify a try, so a scheduler can find what it started.
pub const LABEL_JOB: &str = "io.stevedore.job";
pub const LABEL_RUN: &str = "io.stevedore.run";
pub const LABEL_TASK: &str = "io.stevedore.task";
pub const LABEL_TRY: &str = "io.stevedore.try";

/// Everything a backend needs to run one try.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub job_id: String,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    /// The rendered image reference.
    pub image: String,
    pub pull_policy: PullPolicy,
    /// Replaces the image's entrypoint when set.
    pub command: Option<Vec<String>>,
    /// Arguments after the entrypoint: the contract's `run --job ... -- ARGS`.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// The task's last committed state, written to the file `STEVEDORE_STATE_FILE` names.
    pub state: Option<String>,
    /// Credentials for pulling `image` from a registry that asks for them.
    pub registry_auth: Option<RegistryAuth>,
    /// Labels the host that runs it must carry (several Docker hosts).
    pub placement: BTreeMap<String, String>,
    /// Extra labels for its container (the scheduler's `container_labels`).
    pub labels: BTreeMap<String, String>,
    /// Leave the exited container in place: the scheduler records the try's end first and
    /// then calls [`Backend::discard`], so a scheduler that dies in between leaves the exit
    /// for the next one to read.
    pub keep_exited: bool,
    /// The most of one output line the backend keeps (see [`lines::LineSplitter`]); the
    /// rest of a longer line is dropped and counted in [`TryEvent::Line::dropped`].
    pub max_line_bytes: usize,
    /// How the try is confined beyond its resources.
    pub isolation: Isolation,
    /// The artifact store the try's workspace is staged from (and, once it ends, captured
    /// into, [`Backend::capture`]), with the files it starts with. `None`: the workspace
    /// starts empty (backends' own tests).
    pub workspace: Option<WorkspaceExchange>,
}

/// What a try's workspace starts with, and where its files go when it ends.
#[derive(Clone, Debug)]
pub struct WorkspaceExchange {
    pub store: ArtifactStore,
    /// The files of the run's upstream tasks, put at their paths before the try starts.
    pub inputs: Vec<StagedFile>,
}

/// Why the files a try left could not be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureFailure {
    /// The backend (or the host the try ran on) does not answer: its files are still
    /// there, so the capture can be tried again.
    Unavailable(String),
    /// The try's container is gone: there is nothing to capture.
    Gone(String),
    /// Reading or storing them failed (see [`CaptureError`]).
    Capture(CaptureError),
}

impl std::fmt::Display for CaptureFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureFailure::Unavailable(message) | CaptureFailure::Gone(message) => {
                f.write_str(message)
            }
            CaptureFailure::Capture(error) => error.fmt(f),
        }
    }
}

impl CaptureFailure {
    /// Whether trying again later can succeed (the backend or the store did not answer).
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            CaptureFailure::Unavailable(_)
                | CaptureFailure::Capture(CaptureError::Store(ArtifactError::Unreachable(_)))
        )
    }
}

/// A staging problem as the try's failure: the store not answering is the backend being
/// unavailable (the try waits and is launched again); a missing or corrupt file fails it.
pub fn stage_failure(error: StageError) -> Result<TryExit, BackendError> {
    if error.is_unreachable() {
        return Err(BackendError::Unavailable(error.to_string()));
    }
    Ok(TryExit {
        exit_code: None,
        failure: Some(FailureReason::Artifact(error.to_string())),
    })
}

/// The most of one output line a backend keeps unless told otherwise: a protocol message
/// may carry an output of up to 1 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// How a try is confined beyond its cpu and memory: every backend applies what it can
/// (docs/backends.md says what each does with each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// The most processes (and threads) the try may run at once.
    pub pids_limit: Option<i64>,
    /// The image's filesystem is mounted read-only (`/tmp` is a small tmpfs; the workspace
    /// and the state folder stay writable).
    pub read_only_rootfs: bool,
    /// The user (`uid`, `uid:gid` or a name the image knows) the try runs as, instead of
    /// the image's own.
    pub user: Option<String>,
}

/// A try that a scheduler which is gone started, to follow from where the store's record of
/// it ends: the first `stored_stdout` and `stored_stderr` lines of its output are stored
/// already and are not sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    pub job_id: String,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    pub stored_stdout: u64,
    pub stored_stderr: u64,
    /// As [`LaunchSpec::max_line_bytes`].
    pub max_line_bytes: usize,
}

/// What adopting a try found.
#[derive(Clone, Debug, PartialEq)]
pub enum Adopted {
    /// Its container ran (or still runs): the rest of its output was sent, and how it ended.
    Exit(TryExit),
    /// Its container was created but never started. `left` is the container the caller
    /// removes ([`Backend::discard`]) once the try's end is recorded, so a scheduler that
    /// stops in between leaves an exited-or-created container of an ended try (which the
    /// sweep removes), never a running try whose container is gone. `None` when the backend
    /// removed it itself (a Nomad job not yet placed must go at once, or Nomad could still
    /// place and run it).
    NotStarted { left: Option<String> },
    /// No container of the try exists (it was never created, or removed by someone else).
    Missing,
    /// The host the try ran on has not answered for too long: the try is given up as lost.
    Lost(String),
}

/// Registry credentials from a connection. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// The registry's address; by default the image reference's own registry.
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"***")
            .field("server", &self.server)
            .finish()
    }
}

/// Where a try finds its workspace in a container (also `STEVEDORE_WORKSPACE`): its run's
/// upstream files staged into it, its own files captured from it when it ends.
pub const WORKSPACE_DIR: &str = "/workspace";

/// Where the state file sits inside a container.
pub const STATE_DIR: &str = "/stevedore";
pub const STATE_FILE: &str = "/stevedore/state.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Something that happened while a try ran, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum TryEvent {
    /// The container exists; `image_digest` is the registry digest, or the image id of an
    /// image that was built locally and never pushed.
    Launched {
        container_id: String,
        image_digest: Option<String>,
    },
    /// Pull progress, for the scheduler's log.
    Pulling { image: String, status: String },
    /// Something Stevedore says about the try before its container starts (where it was
    /// placed, what it waits for), for the try's log.
    Note(String),
    /// One complete line of output: its first `max_line_bytes` bytes, and how many more it
    /// had (`dropped`, 0 for a line that was kept whole).
    Line {
        stream: Stream,
        timestamp: DateTime<Utc>,
        text: String,
        dropped: u64,
    },
}

/// How a try ended. A non-zero exit is a result, not an error.
#[derive(Clone, Debug, PartialEq)]
pub struct TryExit {
    pub exit_code: Option<i64>,
    /// Set when the try did not end by itself: killed at its timeout, image missing, ...
    pub failure: Option<FailureReason>,
}

/// Why the scheduler stops a try: the domain's [`StopReason`], carried by the kill switch
/// and handed back untouched in the try's exit (`reason.as_failure()`).
pub use stevedore_domain::state::StopReason;

/// The scheduler's side of a kill switch: `kill(reason)` stops the try.
pub type KillSender = watch::Sender<Option<StopReason>>;
pub type KillReceiver = watch::Receiver<Option<StopReason>>;

pub fn kill_switch() -> (KillSender, KillReceiver) {
    watch::channel(None)
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached; nothing was started, so the try does not count.
    #[error("{0}")]
    Unavailable(String),
    /// The try started, then the backend stopped answering (an engine restarting, a network
    /// cut). The try is not over: the scheduler re-attaches to it once the backend answers.
    #[error("{0}")]
    Disconnected(String),
}

/// A try the backend is running, found by its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTry {
    pub container_id: String,
    pub job_id: String,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks that the backend can be reached, with a message saying where it looked.
    async fn health(&self) -> Result<(), BackendError>;

    /// Runs one try to its end: resolves the image, starts the container, sends events as
    /// they happen, waits for the exit, drains the logs and cleans up. A kill through
    /// `kill` stops it early. `Err` only when the backend was unreachable before anything
    /// started; every other problem is a [`TryExit`] with a failure reason.
    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        kill: KillReceiver,
    ) -> Result<TryExit, BackendError>;

    /// Whether [`Backend::adopt`] can follow a try another scheduler started. Tries of a
    /// backend that cannot are stopped when their scheduler stops.
    fn can_adopt(&self) -> bool {
        false
    }

    /// Follows a try another scheduler started until it ends: sends the output lines the
    /// store does not hold yet (and `Launched` with the container's id), then how it ended.
    /// A kill through `kill` stops it. Leaves the exited container for [`Backend::discard`].
    async fn adopt(
        &self,
        adoption: &Adoption,
        events: mpsc::Sender<TryEvent>,
        kill: KillReceiver,
    ) -> Result<Adopted, BackendError> {
        let _ = (adoption, events, kill);
        Ok(Adopted::Missing)
    }

    /// Removes what is left of a try whose end is recorded (its exited container).
    async fn discard(&self, container_id: &str) -> Result<(), BackendError> {
        let _ = container_id;
        Ok(())
    }

    /// Tries this backend is running now, by their labels.
    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError>;

    /// Stops and removes a try's container found by [`Backend::list_running`].
    async fn remove(&self, container_id: &str) -> Result<(), BackendError>;

    /// Stores the files the exited try `container_id` left under its workspace into
    /// `store` (all but those of `staged` unchanged) and returns them. Called after the try
    /// ended and before [`Backend::discard`]; a backend without workspaces has none.
    async fn capture(
        &self,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let _ = (container_id, run_id, store, staged, limits);
        Ok(Vec::new())
    }
}
