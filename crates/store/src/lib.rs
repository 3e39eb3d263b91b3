//! The metadata store: jobs and their versions, runs, task instances, tries, log lines,
//! outputs and committed state, behind one domain-level [`Store`] trait.
//!
//! - [`sqlite`]: the embedded default, a single file, created and migrated on open.
//! - [`postgres`]: PostgreSQL, for several schedulers sharing one store.
//! - `sql_store.rs`: the one `impl Store` both share; `rows.rs`: their rows.
//! - `records.rs`: what the store reads and writes, its errors and fences.
//! - [`secrets`]: how connection values are sealed before they reach any store.
//! - [`open`]: the store a URL names (`postgres://…`, a path or `sqlite://path`).
//!
//! Every implementation passes the same contract suite (`tests/contract.rs`).

pub mod secrets;
#[macro_use]
mod rows;
#[macro_use]
mod sql_store;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Which store a URL names: `postgres://…` or `postgresql://…` a PostgreSQL one; a path or
/// `sqlite://path` the SQLite file at that path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreUrl<'a> {
    Postgres(&'a str),
    Sqlite(&'a std::path::Path),
}

impl<'a> StoreUrl<'a> {
    pub fn parse(url: &'a str) -> StoreUrl<'a> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            StoreUrl::Postgres(url)
        } else {
            StoreUrl::Sqlite(std::path::Path::new(
                url.strip_prefix("sqlite://").unwrap_or(url),
            ))
        }
    }
}

/// Opens (and migrates) the store a URL names ([`StoreUrl`]).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match StoreUrl::parse(url) {
        StoreUrl::Postgres(url) => std::sync::Arc::new(PostgresStore::open(url).await?),
        StoreUrl::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path).await?),
    })
}

mod records;

pub use records::*;

/// A time as the store writes it: fixed-width RFC 3339 in UTC, microseconds.
pub fn timestamp(time: DateTime<Utc>) -> String {
    rows::ts(time)
}

/// The metadata store. Methods are small domain operations; each is atomic.
/// Where a try's log lines are read from: the store's rows, or, once a try's log is
/// archived, the artifact store (`stevedore_artifacts::logs::Logs` reads both). Every
/// reader of logs (the API, its live log, the UI, `tasks logs`, the alerts' log tail) goes
/// through one, so an archived log reads as a stored one.
#[async_trait]
pub trait LogReader: Send + Sync {
    /// As [`Store::log_page`].
    async fn log_page(&self, try_id: i64, after: Option<i64>, limit: u32) -> Result<LogPage>;
    /// As [`Store::last_log_seq`].
    async fn last_log_seq(&self, try_id: i64) -> Result<Option<i64>>;
}

#[async_trait]
pub trait Store: Send + Sync {
    // Jobs.
    /// Records the job's current version (and its source the first time it is seen).
    async fn upsert_job(
        &self,
        job_id: &str,
        version: &str,
        file_path: &str,
        source: &str,
    ) -> Result<()>;
    /// Records a job (like [`Store::upsert_job`]) and its paused state in one write, so no
    /// scheduling pass sees it unpaused in between (`jobs pause` of a job no scheduler has
    /// read yet).
    async fn record_job_paused(
        &self,
        job_id: &str,
        version: &str,
        file_path: &str,
        source: &str,
        paused: bool,
    ) -> Result<()>;
    async fn list_jobs(&self) -> Result<Vec<JobRecord>>;
    async fn job_source(&self, job_id: &str, version: &str) -> Result<String>;
    async fn set_paused(&self, job_id: &str, paused: bool) -> Result<()>;

    // Runs.
    /// Creates a queued run and a task instance in state `none` for each task. A second
    /// scheduled run for the same job and logical date is a [`StoreError::Conflict`].
    async fn create_run(&self, run: NewRun) -> Result<RunRecord>;
    /// Creates a run of an asset-triggered job (`run`, its params given
    /// `triggering_asset_events`) when the updates of its assets since its last such run are
    /// enough (`trigger`'s mode), and marks them read, in one transaction: each update
    /// triggers at most one run, whichever schedulers ask. A job new to an asset reads its
    /// updates from now on. `None` when no run is due.
    async fn trigger_asset_run(
        &self,
        trigger: &stevedore_domain::assets::AssetTrigger,
        run: NewRun,
    ) -> Result<Option<RunRecord>>;
    /// Stores events posted to `job_id` (each a JSON text), in order, in one transaction:
    /// all or none. Returns how many.
    async fn accept_events(
        &self,
        job_id: &str,
        events: &[String],
        at: DateTime<Utc>,
    ) -> Result<u64>;
    /// Creates `run` (its params given `event_count`) and gives it the oldest waiting events
    /// of its job, at most `max_batch`, when `max_batch` wait or the oldest arrived at or
    /// before `due_before`; in one transaction, so each event lands in exactly one run.
    /// `None` when no run is due.
    async fn batch_events(
        &self,
        max_batch: u32,
        due_before: DateTime<Utc>,
        run: NewRun,
    ) -> Result<Option<RunRecord>>;
    /// The events a run was given, in arrival order.
    async fn run_events(&self, run_id: &str) -> Result<Vec<String>>;
    /// How many events wait for a run of `job_id`.
    async fn waiting_events(&self, job_id: &str) -> Result<u64>;
    /// Sets (or replaces) the hash of `job_id`'s webhook token.
    async fn set_webhook_token(&self, job_id: &str, hash: &str, at: DateTime<Utc>) -> Result<()>;
    /// The hash of `job_id`'s webhook token, if it has one.
    async fn webhook_token(&self, job_id: &str) -> Result<Option<String>>;
    /// The updates of `asset`, newest first; without an asset, the latest update of each
    /// asset, by name.
    async fn asset_events(&self, asset: Option<&str>, limit: u32) -> Result<Vec<AssetEventRecord>>;
    async fn get_run(&self, run_id: &str) -> Result<RunRecord>;
    /// Finds a run by its id or a unique prefix of it.
    async fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord>;
    /// Newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    /// How many runs and task instances are in each state (for metrics).
    async fn state_counts(&self) -> Result<StateCounts>;
    /// Sets a run's state. When a run succeeds, the state its successful tries published is
    /// committed for the job's tasks; when it fails, that state is dropped.
    async fn set_run_state(&self, run_id: &str, state: RunState, at: DateTime<Utc>) -> Result<()> {
        self.set_run_states(&[(run_id.to_owned(), state)], at).await
    }
    /// Sets the states of several runs in one transaction (a scheduling pass), as
    /// [`Store::set_run_state`] would one after the other.
    async fn set_run_states(
        &self,
        changes: &[(String, RunState)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.set_run_states_notifying(changes, &[], at).await
    }
    /// [`Store::set_run_states`], with the events the runs' ends make written into the
    /// outbox in the same transaction: a notification of a run is kept only if this write
    /// ended the run (a run already ended makes its events once).
    async fn set_run_states_notifying(
        &self,
        changes: &[(String, RunState)],
        notifications: &[NewNotification],
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Records that the run's `deadline` passed while it had not ended, with its
    /// `deadline_missed` notifications, once: `false` (and nothing written) when it was
    /// recorded before or the run has ended.
    async fn mark_deadline_missed(
        &self,
        run_id: &str,
        notifications: &[NewNotification],
        at: DateTime<Utc>,
    ) -> Result<bool>;
    /// The job's latest ended runs, newest end first, at most `limit`, with their states.
    async fn job_outcomes(&self, job_id: &str, limit: u32) -> Result<Vec<(String, RunState)>>;
    /// Changes whenever a run is created (the newest run id; ids are time-ordered), so a
    /// scheduler can notice a trigger from another process with one cheap query.
    async fn runs_marker(&self) -> Result<Option<String>>;
    /// The job's run with the latest logical date before `logical_date` (any trigger).
    async fn previous_run(
        &self,
        job_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<RunRecord>>;
    /// Moves a run that has not started to another version of its job: task instances of
    /// removed tasks become `removed`, added tasks get task instances.
    async fn move_to_version(
        &self,
        run_id: &str,
        version: &str,
        removed: &[String],
        added: &[String],
    ) -> Result<()>;
    /// The data interval of the job's latest scheduled run (backfills and manual runs do
    /// not move the schedule).
    async fn last_scheduled_interval(&self, job_id: &str) -> Result<Option<DataInterval>>;

    // Task instances and tries.
    async fn task_instances(&self, run_id: &str) -> Result<Vec<TaskInstanceRecord>>;
    /// The queued and running runs scheduler `owner` holds, oldest first.
    async fn held_runs(&self, owner: &str) -> Result<Vec<RunRecord>>;
    /// The task instances of the queued and running runs `owner` holds, in one read (a
    /// scheduling pass), each run's in task order.
    async fn held_task_instances(&self, owner: &str) -> Result<Vec<TaskInstanceRecord>>;
    /// What the queued and running runs `owner` does not hold take of the limits that every
    /// scheduler shares (pools, `max_active_tasks`, `max_active_runs`), counted by the store
    /// rather than read row by row.
    async fn active_elsewhere(&self, owner: &str) -> Result<ActiveElsewhere>;
    async fn set_task_state(
        &self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Sets the states of several task instances in one transaction (a scheduling pass).
    async fn set_task_states(
        &self,
        changes: &[(String, String, TaskState)],
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Starts try `try_number`: inserts the try, sets the task instance `running` and clears
    /// the outputs of earlier tries.
    async fn start_try(
        &self,
        key: &TryKey,
        backend: &str,
        image_ref: &str,
        at: DateTime<Utc>,
    ) -> Result<TryRecord> {
        self.start_try_fenced(key, backend, image_ref, at, None)
            .await
    }
    /// [`Store::start_try`] by the holder of `fence` (the run's claim): refused with
    /// [`StoreError::Fenced`] when the run's fencing token has moved on. `None`: unfenced
    /// (an operator, a test).
    async fn start_try_fenced(
        &self,
        key: &TryKey,
        backend: &str,
        image_ref: &str,
        at: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<TryRecord> {
        let write = TryWrite::start(key, backend, image_ref, at);
        match self.write_one(write, fence).await? {
            TryWritten::Started { record, .. } => Ok(record),
            TryWritten::Done => unreachable!("a start answers Started"),
        }
    }
    async fn set_try_container(
        &self,
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
    ) -> Result<()> {
        self.set_try_container_fenced(try_id, container_id, image_digest, 0, None)
            .await
    }
    /// Records the try's container; `log_seq` is the seq its first line gets.
    async fn set_try_container_fenced(
        &self,
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
        log_seq: i64,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let write = TryWrite::container(try_id, container_id, image_digest, log_seq);
        self.write_one(write, fence).await.map(drop)
    }
    /// Ends a try; on success the state the try published waits for the run's outcome.
    async fn finish_try(&self, finish: &TryFinish) -> Result<()> {
        self.finish_try_fenced(finish, None).await
    }
    async fn finish_try_fenced(&self, finish: &TryFinish, fence: Option<&Fence>) -> Result<()> {
        self.write_one(TryWrite::Finish(finish.clone()), fence)
            .await
            .map(drop)
    }
    /// Several tries' writes in one transaction (the scheduler's group commit), each with its
    /// own result, in order, as if each had been made alone: a write that is fenced, finds no
    /// try or conflicts fails without failing the others.
    async fn write_tries(&self, writes: &[FencedWrite]) -> Vec<Result<TryWritten>>;
    /// How many groups of [`Store::write_tries`] are best written at once: 1 where writers
    /// take turns anyway (SQLite), more where the database works on one while the writer
    /// prepares the next.
    fn write_concurrency(&self) -> usize {
        1
    }
    /// One write through [`Store::write_tries`].
    async fn write_one(&self, write: TryWrite, fence: Option<&Fence>) -> Result<TryWritten> {
        let writes = [FencedWrite {
            write,
            fence: fence.cloned(),
        }];
        self.write_tries(&writes)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a write without a result".to_owned())))
    }
    async fn tries(&self, run_id: &str, task_id: &str) -> Result<Vec<TryRecord>>;
    /// Tries still `running` in queued or running runs, for a restarted scheduler to settle.
    async fn running_tries(&self) -> Result<Vec<TryRecord>>;

    // Logs.
    async fn append_logs(&self, lines: &[LogLine]) -> Result<()> {
        self.append_logs_fenced(lines, None).await
    }
    async fn append_logs_fenced(&self, lines: &[LogLine], fence: Option<&Fence>) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write_one(TryWrite::Logs(lines.to_vec()), fence)
            .await
            .map(drop)
    }
    /// How many of the try's container lines are stored (see [`StoredLines`]).
    async fn stored_lines(&self, try_id: i64) -> Result<StoredLines>;
    /// Lines of a try with `seq > after`, in order, at most `limit`, and no more text than
    /// [`LOG_PAGE_BYTES`] (at least one line), each line's text at most [`MAX_LINE_READ`]
    /// characters: a page never costs more memory than that, whatever the try printed.
    async fn log_page(&self, try_id: i64, after: Option<i64>, limit: u32) -> Result<LogPage>;
    /// The lines of [`Store::log_page`].
    async fn logs(&self, try_id: i64, after: Option<i64>, limit: u32) -> Result<Vec<LogLine>> {
        Ok(self.log_page(try_id, after, limit).await?.lines)
    }
    /// The `seq` of the try's last stored line (`None` before its first).
    async fn last_log_seq(&self, try_id: i64) -> Result<Option<i64>>;

    // Schedulers and claims.
    /// Records a scheduler that starts (its first heartbeat).
    async fn register_scheduler(
        &self,
        id: &str,
        host: &str,
        pid: u32,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Records that the scheduler is alive; `NotFound` when it was deregistered.
    async fn heartbeat(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// Claims, for scheduler `id`, queued and running runs that no live scheduler holds (a
    /// scheduler is live while its last heartbeat is at or after `live_after`), up to its
    /// fair share of all active runs, each claim bumping the run's fencing token; schedulers
    /// claiming at once skip each other's rows. Returns every active run `id` holds now.
    async fn claim_runs(&self, id: &str, live_after: DateTime<Utc>) -> Result<Vec<Fence>>;
    /// Taken for the part of a scheduling pass that reads what runs and decides what is
    /// queued next, so schedulers take turns there and pools, `max_active_tasks` and
    /// `max_active_runs` hold across them (Airflow locks its pool rows for the same step).
    /// Released by [`SchedulingLock::release`], or when dropped.
    async fn lock_scheduling(&self) -> Result<SchedulingLock>;
    /// Hands back the scheduler's claims (bumping their tokens, so nothing it still had in
    /// flight can write) and removes it.
    async fn deregister_scheduler(&self, id: &str) -> Result<()>;
    /// Schedulers that heartbeat, most recent first.
    async fn list_schedulers(&self) -> Result<Vec<SchedulerRecord>>;

    // Operator actions.
    /// Asks the scheduler to cancel a queued or running run.
    async fn request_cancel(&self, run_id: &str) -> Result<()>;
    /// Puts finished task instances back to `none` (a new try follows, with a fresh retry
    /// budget) and a finished run back to `queued`. Refuses running task instances.
    async fn clear_task_instances(&self, run_id: &str, task_ids: &[String]) -> Result<()>;
    /// Expands mapped task `task_id` of `run_id`, whose unexpanded task instance is
    /// `scheduled` (or `none`, as the pass deciding so has not written it yet), into one
    /// instance `task_id[N]` per item (at least one), all `scheduled`, each holding its item:
    /// the unexpanded instance leaves, an instance an earlier expansion made is reused (its
    /// tries keep counting) and any beyond the items becomes `removed`. `false` when the
    /// unexpanded instance is no longer waiting to start (nothing is changed).
    async fn expand_task(&self, run_id: &str, task_id: &str, items: &[Value]) -> Result<bool>;
    /// The items mapped task instances `keys` (`task[N]`) of `run_id` were made for, by key
    /// (a key that is not a mapped instance is left out).
    async fn map_items(
        &self,
        run_id: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Value>>;
    /// Fails a task instance that has not started (`none` or `scheduled`) before any
    /// container: its try is recorded failed with `give_up.reason` (such as a mapped task's
    /// `for_each` that is not a list), with its events. `false` when it has started or
    /// ended since.
    async fn fail_before_start(&self, give_up: &GiveUp) -> Result<bool>;

    // Connections.
    async fn put_connection(&self, connection: &ConnectionRecord) -> Result<()>;
    async fn get_connection(&self, name: &str) -> Result<ConnectionRecord>;
    async fn list_connections(&self) -> Result<Vec<ConnectionRecord>>;
    async fn delete_connection(&self, name: &str) -> Result<()>;

    // API tokens.
    /// Stores a new token by its hash; fails with `Conflict` when an active token has the
    /// same name.
    async fn create_token(
        &self,
        name: &str,
        role: stevedore_domain::role::Role,
        hash: &str,
    ) -> Result<TokenRecord>;
    /// The active (not revoked) token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    async fn touch_token(&self, id: i64, at: DateTime<Utc>) -> Result<()>;
    /// Every token, revoked ones included, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes the active token of that name.
    async fn revoke_token(&self, name: &str) -> Result<()>;
    async fn create_session(&self, session: &SessionRecord) -> Result<()>;
    /// The session, while it has not expired and its token is not revoked.
    async fn session(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<SessionRecord>>;
    /// Ends a session (and drops expired ones).
    async fn delete_session(&self, id_hash: &str) -> Result<()>;

    // Pools.
    /// Every pool, `default` (128 slots unless changed) included.
    async fn list_pools(&self) -> Result<Vec<PoolRecord>>;
    /// Creates or resizes a pool.
    async fn set_pool(&self, pool: &PoolRecord) -> Result<()>;
    async fn delete_pool(&self, name: &str) -> Result<()>;

    // Outputs and state.
    async fn put_output(&self, run_id: &str, task_id: &str, key: &str, value: &Value)
        -> Result<()>;
    /// `(task_id, key, value)` of every output published in the run.
    async fn outputs(&self, run_id: &str) -> Result<Vec<(String, String, Value)>>;
    /// The outputs of task `task_id` in `run_id`, and of each of its instances `task_id[N]`
    /// when it is mapped: `(task instance key, key, value)`.
    async fn task_outputs(
        &self,
        run_id: &str,
        task_id: &str,
    ) -> Result<Vec<(String, String, Value)>>;
    /// Holds state published by a running try until the try ends.
    async fn set_pending_state(&self, try_id: i64, value: &Value) -> Result<()>;

    /// Records the files a try's workspace held when it ended (a path recorded again for the
    /// same try takes the new size and digest).
    async fn record_artifacts(&self, try_id: i64, files: &[CapturedFile]) -> Result<()>;
    /// A run's artifacts, by task, try and path.
    async fn run_artifacts(&self, run_id: &str) -> Result<Vec<ArtifactRecord>>;
    /// Forgets a run's artifacts (their blobs are deleted from the artifact store first);
    /// returns how many rows there were.
    async fn delete_run_artifacts(&self, run_id: &str) -> Result<u64>;
    /// Runs that ended before `ended_before` and still have artifacts, oldest first, at
    /// most `limit` (the artifact retention's sweep).
    async fn runs_with_artifacts_ended_before(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>>;

    // Archived logs (see `stevedore_ops::log_archive`).
    /// Ended tries whose log is still stored as rows and that ended before `ended_before`,
    /// oldest first, at most `limit`; tries whose archive is recorded but whose rows are not
    /// all deleted yet come first (`archived: true`).
    async fn logs_to_archive(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LogToArchive>>;
    /// Records a try's archived log: from now on its log is read from the archive. Its rows
    /// are deleted afterwards, a batch at a time ([`Store::delete_archived_rows`]).
    async fn record_log_archive(&self, archive: &LogArchiveRecord) -> Result<()>;
    /// Deletes at most `batch` stored lines of try `try_id`, whose log is archived (or that
    /// has none); once none is left, the try's log counts as archived for good. Returns
    /// whether none is left.
    async fn delete_archived_rows(&self, try_id: i64, batch: u32) -> Result<bool>;
    /// The archive of a try's log, `None` while its lines are rows.
    async fn log_archive(&self, try_id: i64) -> Result<Option<LogArchiveRecord>>;

    // Metrics (`/metrics`, the run page).
    /// Every task's metrics ([`TaskMetric`]).
    async fn task_metrics(&self) -> Result<Vec<TaskMetric>>;
    /// Every job's histograms ([`HISTOGRAMS`]).
    async fn job_histograms(&self) -> Result<Vec<JobHistogram>>;
    /// The metrics a run's tries reported, by task and try.
    async fn run_metrics(&self, run_id: &str) -> Result<Vec<RunMetric>>;

    // Retention (`stevedore db clean`, `retention`).
    /// Ended runs the filter selects, oldest first (by end, then id; after
    /// [`CleanFilter::after`] when it is set), at most `limit`. Never a run that has
    /// not ended, nor the latest scheduled run of its job (the scheduler's next interval
    /// follows it: without it, the job's past intervals would be run again).
    async fn runs_to_clean(&self, filter: &CleanFilter, limit: u32) -> Result<Vec<RunToClean>>;
    /// Deletes ended runs and everything of them the store holds: task instances, tries,
    /// log lines (a batch at a time, before the rest), outputs, artifact and archive
    /// records, notifications, posted events, state history rows (a task's newest is
    /// kept). Their files and archived logs in the artifact store are the caller's to
    /// delete first. A run not ended is left alone. The committed state itself is never
    /// touched. The runs' rows go in one transaction (after their log lines): pass a few.
    async fn delete_runs(&self, run_ids: &[String]) -> Result<Cleaned>;
    /// Deletes job versions no run uses that are not their job's current version.
    async fn delete_unused_job_versions(&self) -> Result<u64>;
    /// The store's size on disk, in bytes (the SQLite file and its WAL; the PostgreSQL
    /// database).
    async fn size_bytes(&self) -> Result<u64>;
    /// Gives free space back to the file system where the database can (SQLite with
    /// incremental auto-vacuum, which new stores have); PostgreSQL leaves it to autovacuum.
    /// Returns whether it could.
    async fn reclaim_space(&self) -> Result<bool>;
    /// Log lines held as rows, and the archived logs' lines and compressed bytes. The rows
    /// are counted from each try's first and last sequence numbers (index seeks, not a scan
    /// of the lines; exact, as a try's lines are numbered without gaps).
    async fn log_totals(&self) -> Result<LogTotals>;
    /// What the runs `run_ids` hold in the artifact store: the runs with files recorded,
    /// and every archived log.
    async fn run_objects(&self, run_ids: &[String]) -> Result<RunObjects>;

    async fn committed_state(&self, job_id: &str, task_id: &str) -> Result<Option<Value>>;
    /// A task's committed states, newest first, at most `limit`: each run's commit and each
    /// operator's set or clear.
    async fn state_history(
        &self,
        job_id: &str,
        task_id: &str,
        limit: u32,
    ) -> Result<Vec<StateEntry>>;
    /// An operator sets a task's committed state (`None` clears it), recorded in its history
    /// with `actor`. The next run's try gets it; a run already running keeps what it got.
    async fn set_committed_state(
        &self,
        job_id: &str,
        task_id: &str,
        value: Option<&Value>,
        actor: &str,
    ) -> Result<StateEntry>;

    // Task instances waiting for a backend.
    /// Records which task instances wait for a backend that does not answer (`Some`: since
    /// when and its answer; a task instance already waiting keeps its `since`) or no longer
    /// do (`None`).
    async fn set_waiting(&self, changes: &[(String, String, Option<Waiting>)]) -> Result<()>;
    /// Fails a task instance that waited for its backend past `backend_unavailable_timeout`:
    /// a try `try_number` is recorded `failed` with `reason` (never started), the task
    /// instance takes `task_state` (`up_for_retry` with `next_try_at`, or `failed`) and stops
    /// waiting, and its `stuck` notifications are written, all at once. `false` when the task
    /// instance no longer waits (another scheduler got there first, or it started).
    async fn give_up_waiting(&self, give_up: &GiveUp) -> Result<bool>;

    // Notifications (the outbox).
    /// Claims, for scheduler `owner` until `until`, up to `limit` pending notifications due
    /// at `now` that no live claim holds, oldest first, each the oldest pending one of its
    /// run and connection (so a run's events reach a receiver in the order they happened).
    async fn claim_notifications(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>>;
    /// Records a delivery attempt (numbered by the store) and what it leaves the
    /// notification as; its claim is released.
    async fn record_delivery(
        &self,
        seq: i64,
        attempt: &NotificationAttempt,
        outcome: DeliveryOutcome,
    ) -> Result<()> {
        self.record_deliveries(&[(seq, attempt.clone(), outcome)])
            .await
    }
    /// [`Store::record_delivery`] for several notifications in one transaction (a batch the
    /// notifier sent together).
    async fn record_deliveries(
        &self,
        deliveries: &[(i64, NotificationAttempt, DeliveryOutcome)],
    ) -> Result<()>;
    /// Newest first.
    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>>;
    /// By its id or a unique prefix of it.
    async fn find_notification(&self, id_or_prefix: &str) -> Result<NotificationRecord>;
    async fn notification_attempts(&self, seq: i64) -> Result<Vec<NotificationAttempt>>;
    /// Sends a notification again: pending, due at `at`, whatever it was.
    async fn retry_notification(&self, seq: i64, at: DateTime<Utc>) -> Result<()>;
    /// Delivery attempts counted by channel and whether they succeeded (for metrics).
    async fn delivery_counts(&self) -> Result<Vec<(String, bool, u64)>>;
}

#[cfg(test)]
mod tests {
    use super::StoreUrl;

    #[test]
    fn a_store_url_names_postgresql_or_a_sqlite_file() {
        assert_eq!(
            StoreUrl::parse("postgres://u@h/db"),
            StoreUrl::Postgres("postgres://u@h/db")
        );
        assert_eq!(
            StoreUrl::parse("postgresql://u@h/db"),
            StoreUrl::Postgres("postgresql://u@h/db")
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/stevedore.db"),
            StoreUrl::Sqlite(std::path::Path::new("/var/lib/stevedore.db"))
        );
        assert_eq!(
            StoreUrl::parse("stevedore.db"),
            StoreUrl::Sqlite(std::path::Path::new("stevedore.db"))
        );
    }
}
