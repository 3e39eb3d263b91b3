//! What the store reads and writes: its records, the tries' writes, fences and errors.

use super::*;
use stevedore_domain::notify::NotifyEvent;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A write by a scheduler whose claim on the run was taken over.
    #[error("{0}")]
    Fenced(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store cannot be reached for now, through no fault of the request: a passing
    /// error several writes share, or the scheduler's writer stopping. Worth trying again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A passing condition worth trying again: the database cannot be reached, is starting
    /// up or shutting down, or cut the connection (a restart, a failover, a network blip).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            StoreError::Database(sqlx::Error::Database(error)) => {
                // SQLSTATE classes 08 (connection exception) and 57 (operator
                // intervention: shutting down, starting up), and SQLite's "locked/busy".
                let code = error.code().unwrap_or_default();
                code.starts_with("08")
                    || code.starts_with("57")
                    || error.message().contains("database is locked")
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// The same passing error again, for each of several writes that failed together
    /// (`sqlx::Error` cannot be cloned): still [`StoreError::is_transient`], same message.
    pub(crate) fn again(&self) -> StoreError {
        match self {
            StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
            other => StoreError::passing(other.to_string()),
        }
    }

    /// A passing error with this message ([`StoreError::is_transient`]): the store could not
    /// be reached through no fault of the write.
    pub fn passing(message: impl Into<String>) -> StoreError {
        StoreError::Unavailable(message.into())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub current_version: String,
    pub file_path: String,
    pub paused: bool,
    pub updated_at: DateTime<Utc>,
}

/// A run to create, with the ids of the tasks that get a task instance.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub job_id: String,
    pub job_version: String,
    pub trigger: RunTrigger,
    pub logical_date: DateTime<Utc>,
    pub data_interval: DataInterval,
    pub params: Value,
    pub task_ids: Vec<String>,
    /// Tasks that run without their committed state (`jobs trigger --full-refresh`).
    pub full_refresh: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub job_id: String,
    pub job_version: String,
    pub trigger: RunTrigger,
    pub logical_date: DateTime<Utc>,
    pub data_interval: DataInterval,
    pub params: Value,
    pub state: RunState,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// An operator asked to cancel it (`stevedore runs cancel`).
    pub cancel_requested: bool,
    /// When its job's `deadline` passed while it had not ended.
    pub deadline_missed_at: Option<DateTime<Utc>>,
    /// Tasks that run without their committed state (`jobs trigger --full-refresh`).
    pub full_refresh: Vec<String>,
}

/// One committed state of a task, in its history (`stevedore state history`).
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    /// Orders the entries of one task (larger is later).
    pub seq: i64,
    pub job_id: String,
    pub task_id: String,
    /// `None`: the state was cleared.
    pub value: Option<Value>,
    /// The run that committed it (`action` `run`).
    pub run_id: Option<String>,
    /// `run`, `set` or `clear`.
    pub action: String,
    /// Who set or cleared it.
    pub actor: Option<String>,
    pub committed_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskInstanceRecord {
    pub run_id: String,
    pub task_id: String,
    pub state: TaskState,
    /// The latest try's number; 0 before the first try.
    pub try_number: u32,
    /// When a task instance in `up_for_retry` or `up_for_reschedule` may be tried again.
    pub next_try_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Tries numbered up to this one came before the last clear; retries count after it.
    pub retry_base: u32,
    /// Since when it waits for a backend that does not answer, and that backend's answer.
    pub waiting: Option<Waiting>,
}

/// A task instance waiting for its backend (see [`TaskInstanceRecord::waiting`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// Identifies a try.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TryKey {
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TryRecord {
    /// Store-assigned id that log lines refer to.
    pub try_id: i64,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    pub backend: String,
    pub container_id: Option<String>,
    pub image_ref: String,
    /// The registry digest, or the image id of an image that was never pushed.
    pub image_digest: Option<String>,
    pub state: TryState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// A `{"type":"log"}` protocol message; its text is `level: message`.
    Protocol,
}

impl LogStream {
    pub fn code(self) -> i64 {
        match self {
            LogStream::Stdout => 1,
            LogStream::Stderr => 2,
            LogStream::Protocol => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<LogStream> {
        match code {
            1 => Some(LogStream::Stdout),
            2 => Some(LogStream::Stderr),
            3 => Some(LogStream::Protocol),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Protocol => "log",
        }
    }
}

/// The most text one page of log lines holds (see [`Store::log_page`]).
pub const LOG_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The most of one stored line a page reads (lines are stored cut to `max_line_bytes`;
/// this bounds what older stores may hold).
pub const MAX_LINE_READ: usize = 1024 * 1024;

/// One page of a try's log lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// The page ended at its byte budget: more lines may follow even if it has fewer than
    /// the limit.
    pub cut: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub try_id: i64,
    /// Position in the try's log, from 0, in the order lines arrived.
    pub seq: i64,
    pub stream: LogStream,
    pub timestamp: DateTime<Utc>,
    pub text: String,
}

/// How a try ended, written in one transaction with its task instance's new state.
#[derive(Clone, Debug)]
pub struct TryFinish {
    pub try_id: i64,
    pub state: TryState,
    pub ended_at: DateTime<Utc>,
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
    pub task_state: TaskState,
    pub next_try_at: Option<DateTime<Utc>>,
    /// The events this end makes (`retry`, `failure`, `success`), written into the outbox
    /// with it.
    pub notifications: Vec<NewNotification>,
    /// The assets the try's task `produces`: each gets an update event with a success.
    pub produces: Vec<String>,
    /// The last value of each `metric` message the try printed.
    pub metrics: Vec<(String, f64)>,
}

/// One write of a try, for [`Store::write_tries`]: what [`Store::start_try_fenced`],
/// [`Store::set_try_container_fenced`], [`Store::append_logs_fenced`] and
/// [`Store::finish_try_fenced`] each write alone.
#[derive(Clone, Debug)]
pub enum TryWrite {
    /// Inserts the try, sets its task instance `running` and clears the outputs of earlier
    /// tries; answers [`TryWritten::Started`].
    Start {
        key: TryKey,
        backend: String,
        image_ref: String,
        at: DateTime<Utc>,
    },
    /// Records the try's container; `log_seq` is the seq its first line gets.
    Container {
        try_id: i64,
        container_id: String,
        image_digest: Option<String>,
        log_seq: i64,
    },
    Logs(Vec<LogLine>),
    Finish(TryFinish),
}

impl TryWrite {
    pub fn start(key: &TryKey, backend: &str, image_ref: &str, at: DateTime<Utc>) -> TryWrite {
        TryWrite::Start {
            key: key.clone(),
            backend: backend.to_owned(),
            image_ref: image_ref.to_owned(),
            at,
        }
    }

    pub fn container(
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
        log_seq: i64,
    ) -> TryWrite {
        TryWrite::Container {
            try_id,
            container_id: container_id.to_owned(),
            image_digest: image_digest.map(str::to_owned),
            log_seq,
        }
    }
}

/// A [`TryWrite`] by the holder of `fence` (the run's claim), refused with
/// [`StoreError::Fenced`] once the run's fencing token has moved on; `None`: unfenced (an
/// operator, a test).
#[derive(Clone, Debug)]
pub struct FencedWrite {
    pub write: TryWrite,
    pub fence: Option<Fence>,
}

/// What a [`TryWrite`] gives back.
#[derive(Clone, Debug, PartialEq)]
pub enum TryWritten {
    /// The try just started, and its task's committed state as the try's start saw it (what
    /// its state file holds).
    Started {
        record: TryRecord,
        committed_state: Option<Value>,
    },
    Done,
}

/// A connection: named secret values injected as environment variables. Only `sealed`
/// (encrypted with the [`secrets::SecretKey`]) holds the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub name: String,
    pub description: String,
    /// The environment variable names it sets (not secret).
    pub keys: Vec<String>,
    pub sealed: Vec<u8>,
}

/// An API bearer token: its name and role. The token itself is never stored, only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: stevedore_domain::role::Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A web UI session: the token it was opened with, and the CSRF token its forms carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session cookie's value.
    pub id_hash: String,
    pub token: TokenRecord,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// A pool: how many slots the task instances using it may hold at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRecord {
    pub name: String,
    pub slots: i64,
    pub description: String,
}

/// Runs and task instances per state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateCounts {
    pub runs: Vec<(RunState, i64)>,
    pub task_instances: Vec<(TaskState, i64)>,
}

/// A scheduler's claim on a run: only its holder starts and records the run's tries. Every
/// claim of a run bumps its `token` (a fencing token), so the writes of a scheduler that
/// lost the claim (its heartbeat expired and another took the run over) are refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub run_id: String,
    pub token: i64,
}

/// Held while a scheduling pass decides (see [`Store::lock_scheduling`]).
pub struct SchedulingLock {
    /// PostgreSQL: the transaction holding `pg_advisory_xact_lock`; SQLite: nothing (one
    /// scheduler per store).
    transaction: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl SchedulingLock {
    pub(crate) fn none() -> SchedulingLock {
        SchedulingLock { transaction: None }
    }

    pub(crate) fn postgres(
        transaction: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> SchedulingLock {
        SchedulingLock {
            transaction: Some(transaction),
        }
    }

    /// Lets the next scheduler in.
    pub async fn release(self) -> Result<()> {
        if let Some(transaction) = self.transaction {
            transaction.commit().await?;
        }
        Ok(())
    }
}

/// A scheduler process, as its heartbeats record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerRecord {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Active runs it holds.
    pub runs: i64,
}

/// See [`Store::active_elsewhere`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveElsewhere {
    /// `(job_id, job_version, task_id, count)` of queued or running task instances.
    pub task_instances: Vec<(String, String, String, i64)>,
    /// `(job_id, count)` of running runs.
    pub running_runs: Vec<(String, i64)>,
}

/// How many of a try's container lines the store holds, per stream (protocol messages
/// count as stdout, where they came from), and the seq the next line gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredLines {
    pub stdout: u64,
    pub stderr: u64,
    pub next_seq: i64,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub job_id: Option<String>,
    pub states: Vec<RunState>,
    pub limit: Option<u32>,
    /// Only runs whose id sorts before this one: the next page of a newest-first list
    /// (run ids are UUIDv7, so their order is their creation order).
    pub before: Option<String>,
}

/// A file a try wrote under its workspace, kept in the artifact store: the blob of its run
/// whose digest is `sha256`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub try_id: i64,
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    /// Where it is under the workspace (`records.jsonl`, `out/part-1.csv`).
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Its modification time where it was written (Unix seconds).
    pub modified: i64,
}

/// Which ended runs [`Store::runs_to_clean`] finds (`db clean`, the retention).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanFilter {
    /// One job's runs only.
    pub job_id: Option<String>,
    /// Runs that ended before this.
    pub ended_before: Option<DateTime<Utc>>,
    /// Each job keeps this many of its newest ended runs.
    pub keep_last: Option<u32>,
    /// Not these jobs' runs (they have a retention of their own).
    pub except_jobs: Vec<String>,
    /// Only runs after this one in the order runs are found (their end, then their id):
    /// where the previous batch of a clean stopped, so each batch reads about a batch of
    /// rows however many runs the store holds.
    pub after: Option<CleanCursor>,
}

/// A place in the order [`Store::runs_to_clean`] finds runs: a run's end and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanCursor {
    pub ended_at: DateTime<Utc>,
    pub run_id: String,
}

impl From<&RunToClean> for CleanCursor {
    fn from(run: &RunToClean) -> Self {
        Self {
            ended_at: run.ended_at,
            run_id: run.run_id.clone(),
        }
    }
}

/// A run [`Store::runs_to_clean`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunToClean {
    pub run_id: String,
    pub job_id: String,
    pub ended_at: DateTime<Utc>,
}

/// What [`Store::delete_runs`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub runs: u64,
    pub task_instances: u64,
    pub tries: u64,
    pub log_lines: u64,
    pub notifications: u64,
}

impl Cleaned {
    pub fn add(&mut self, other: &Cleaned) {
        self.runs += other.runs;
        self.task_instances += other.task_instances;
        self.tries += other.tries;
        self.log_lines += other.log_lines;
        self.notifications += other.notifications;
    }
}

/// The upper bounds (seconds) of the histograms' buckets (`+Inf` follows the last).
pub const HISTOGRAM_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// The index of the bucket `seconds` falls in ([`HISTOGRAM_BUCKETS`], then `+Inf`).
pub fn bucket_of(seconds: f64) -> i64 {
    HISTOGRAM_BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(HISTOGRAM_BUCKETS.len()) as i64
}

/// The histograms the store keeps per job.
pub const HISTOGRAMS: [&str; 3] = [
    "try_duration_seconds",
    "queue_wait_seconds",
    "run_lag_seconds",
];

/// One task's metric (`stevedore_task_metric`): the last value reported, and the total of
/// successful tries' values.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMetric {
    pub job_id: String,
    pub task_id: String,
    pub name: String,
    pub last_value: f64,
    pub total: f64,
}

/// One job's histogram: counts per bucket (not cumulative; the last is `+Inf`), count, sum.
#[derive(Clone, Debug, PartialEq)]
pub struct JobHistogram {
    pub job_id: String,
    pub name: String,
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// A metric a try of a run reported (the run page's metrics).
#[derive(Clone, Debug, PartialEq)]
pub struct RunMetric {
    pub task_id: String,
    pub try_id: i64,
    pub name: String,
    pub value: f64,
}

/// The objects of some runs in the artifact store, as the store knows them
/// ([`Store::run_objects`]): what `db clean` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunObjects {
    /// The runs that have files recorded (their `runs/<run>/` prefix is listed).
    pub with_files: Vec<String>,
    /// Every archived log of the runs: `(run_id, try_id, sha256)`.
    pub archived_logs: Vec<(String, i64, String)>,
}

/// Where the store's log lines are ([`Store::log_totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTotals {
    /// Lines held as rows (`log_lines`).
    pub rows: u64,
    /// Lines in archived logs, and those logs' compressed size.
    pub archived_lines: u64,
    pub archived_bytes: u64,
}

/// A try whose log is to be archived ([`Store::logs_to_archive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogToArchive {
    pub try_id: i64,
    pub run_id: String,
    /// Its archive is recorded already; only rows are left to delete.
    pub archived: bool,
}

/// A try's log in the artifact store: compressed JSON lines in independent frames, so a
/// page is read by fetching only the frames that hold it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogArchiveRecord {
    pub try_id: i64,
    pub run_id: String,
    /// The object's size in bytes and sha256 (hex).
    pub size: u64,
    pub sha256: String,
    pub lines: u64,
    /// The size of the JSON lines before compression.
    pub raw_bytes: u64,
    pub frames: Vec<LogFrame>,
    pub archived_at: DateTime<Utc>,
}

/// One compressed frame of an archived log: the lines from `first_seq` up to the next
/// frame's, at bytes `offset..offset + length` of the object, `raw_length` bytes once
/// decompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogFrame {
    pub first_seq: i64,
    pub last_seq: i64,
    pub offset: u64,
    pub length: u64,
    pub raw_length: u64,
}

/// One captured file of a try, to record: its path under the workspace, size and sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Its modification time where it was written (Unix seconds).
    pub modified: i64,
}

/// An event for the outbox: one notification per event and connection, written with the
/// state change that made the event ([`Store::set_run_states_notifying`], a try's end).
#[derive(Clone, Debug, PartialEq)]
pub struct NewNotification {
    /// The id receivers see, the same at every delivery attempt: a UUID derived from what
    /// makes the event one (`what`, the event, the connection), so the same event written
    /// twice (a write retried after its answer was lost, two schedulers racing) is kept once.
    pub id: String,
    pub event: NotifyEvent,
    pub job_id: String,
    /// The job version the run ran.
    pub job_version: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub connection: String,
    /// The run's or task instance's state the event tells of.
    pub state: String,
    pub reason: Option<String>,
    pub logical_date: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

impl NewNotification {
    /// A new event's notification to `connection`; `what` identifies what happened
    /// (`run:<id>:<ended_at>`, `try:<id>`, ...), and with the event and the connection, the
    /// notification's id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        what: &str,
        event: NotifyEvent,
        connection: &str,
        (job_id, job_version): (&str, &str),
        run_id: &str,
        task: Option<(&str, u32)>,
        state: &str,
        reason: Option<String>,
        logical_date: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
    ) -> NewNotification {
        NewNotification {
            id: event_id(&format!("{what}:{event}:{connection}")),
            event,
            job_id: job_id.to_owned(),
            job_version: job_version.to_owned(),
            run_id: run_id.to_owned(),
            task_id: task.map(|(task_id, _)| task_id.to_owned()),
            try_number: task.map(|(_, try_number)| try_number),
            connection: connection.to_owned(),
            state: state.to_owned(),
            reason,
            logical_date,
            occurred_at,
        }
    }
}

/// Where a notification's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationStatus {
    /// Not delivered yet: waiting for its next attempt (or its first).
    Pending,
    Delivered,
    /// Given up after its attempts; `stevedore notifications retry` sends it again.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Failed => "failed",
        }
    }
}

impl std::str::FromStr for NotificationStatus {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "pending" => Ok(NotificationStatus::Pending),
            "delivered" => Ok(NotificationStatus::Delivered),
            "failed" => Ok(NotificationStatus::Failed),
            other => Err(format!("notification status `{other}`")),
        }
    }
}

/// A notification in the outbox, with where its delivery stands.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationRecord {
    /// Its place in the outbox: events are delivered in this order per run and connection.
    pub seq: i64,
    pub id: String,
    pub event: NotifyEvent,
    pub job_id: String,
    pub job_version: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub connection: String,
    pub state: String,
    pub reason: Option<String>,
    pub logical_date: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
    pub status: NotificationStatus,
    /// The channel its connection chose at its last attempt (`webhook`, `slack`, `email`).
    pub channel: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One delivery attempt of a notification.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationAttempt {
    /// From 1; given by the store when the attempt is recorded.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub channel: Option<String>,
    pub ok: bool,
    /// The receiver's HTTP status (webhook, Slack) or SMTP reply code (email).
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What a delivery attempt leaves the notification as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; tried again at this time.
    RetryAt(DateTime<Utc>),
    /// Failed for the last time: the notification is `failed`.
    GiveUp,
}

/// Which notifications to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct NotificationFilter {
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    /// Only those whose delivery failed: given up, or pending after a failed attempt.
    pub failed: bool,
    /// Only those older than this `seq` (the next page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A task instance given up on after waiting for its backend ([`Store::give_up_waiting`]).
#[derive(Clone, Debug)]
pub struct GiveUp {
    pub key: TryKey,
    pub backend: String,
    pub image_ref: String,
    pub reason: String,
    pub task_state: TaskState,
    pub next_try_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    pub notifications: Vec<NewNotification>,
}

/// One update of an asset: a try of a task that `produces` it succeeded (`task_id` is its
/// task instance), or a run succeeded (`job:ID`, no task).
#[derive(Clone, Debug, PartialEq)]
pub struct AssetEventRecord {
    pub seq: i64,
    pub asset: String,
    pub job_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A UUID (version 8, RFC 9562's custom kind) made of the first 16 bytes of the key's
/// SHA-256: the same key, the same id.
pub fn event_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}
