//! The scheduler: syncs job files into the store, creates due runs, decides which task
//! instances run, hands tries to the backend and reacts the moment a try ends.
//!
//! - [`group_commit`]: the tries' writes, many at a time in one transaction.
//! - [`try_runner`]: one try from start to end, its logs, outputs and state.
//!
//! The scheduler's memory is split by what it is about, each part with its own lock and its
//! own file: the job cache (`jobs.rs`), backend health (`health.rs`), the lease on the runs
//! it holds (`lease.rs`), the tries it follows (`followed.rs`), housekeeping (`housekeeping.rs`),
//! the pass (`pass.rs`), expanding mapped tasks (`expansion.rs`) and adoption of tries left running (`adoption.rs`). This file holds
//! the configuration and the loop that calls them.
//!
//! Everything the scheduler knows lives in the store; its memory holds only caches and
//! the kill switches of the tries it runs, so a restart loses no decision.

mod adoption;
mod alerts;
mod expansion;
mod followed;
pub mod group_commit;
mod health;
mod housekeeping;
mod jobs;
mod lease;
pub mod notifier;
mod pass;
pub mod retention;
pub mod traces;
pub mod try_runner;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use stevedore_backend::{Backend, KillSender, StopReason};
use stevedore_domain::clock::{Clock, SystemClock};
use stevedore_domain::job::{parse_job, Job, JobError, Task};
use stevedore_domain::limits::{self, Candidate, Capacity, Held};
use stevedore_domain::mapping;
use stevedore_domain::run::{priority_weights, resolve_waiting_in_order, run_outcome};
use stevedore_domain::state::{FailureReason, RunState, TaskState, TryState};
use stevedore_store::{
    Fence, GiveUp, NewNotification, RunRecord, Store, StoreError, TryKey, TryRecord, Waiting,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::try_runner::{TryEnd, TryRunner};
use stevedore_ops::jobs_dir::{self, load_jobs_dir};
use stevedore_ops::runs;

use crate::adoption::AdoptionCheck;
use crate::followed::{FollowedCounts, FollowedTries, TryStart};
use crate::health::{BackendHealth, HealthChecks};
use crate::jobs::JobCache;
use crate::lease::Lease;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub jobs_dir: PathBuf,
    /// A pools file (`name: slots`), read with the job files when it exists.
    pub pools_file: Option<PathBuf>,
    /// Opens connections; tasks that use one fail without it.
    pub secret_key: Option<stevedore_store::secrets::SecretKey>,
    /// Where tries' files travel between them (`artifact_store`); `None`: each try's
    /// workspace starts empty and nothing of it is kept.
    pub artifacts: Option<stevedore_backend::ArtifactStore>,
    /// How long the files of a run that ended are kept before they are deleted
    /// (`artifact_retention`).
    pub artifact_retention: Duration,
    /// How long after a try ends its log lines move from the store to the artifact store
    /// (`log_archive_after`); `None`: never, they stay rows.
    pub log_archive_after: Option<Duration>,
    /// How long ended runs are kept (`retention`; a job's own `retention` wins for its
    /// runs), applied every `retention_every`.
    pub retention: stevedore_domain::retention::Retention,
    pub retention_every: Duration,
    /// How often the sweep looks for ended tries' containers and expired files.
    pub sweep_every: Duration,
    /// How often the loop makes a full pass when nothing else wakes it (due runs, retries).
    pub tick: Duration,
    /// How often the loop checks, with one cheap query, whether another process created a
    /// run (`stevedore jobs trigger`); a new run starts a pass at once.
    pub trigger_poll: Duration,
    /// How often job files are re-read.
    pub sync_every: Duration,
    /// How long a clean stop waits for running tries to end by themselves. After it, the
    /// scheduler stops following them (their containers run on, for the next scheduler to
    /// re-attach to); tries of a backend that cannot re-attach are killed.
    pub shutdown_grace: Duration,
    /// How often the scheduler records that it is alive.
    pub heartbeat_every: Duration,
    /// How long after a scheduler's last heartbeat other schedulers take its runs over. A
    /// scheduler that could not record a heartbeat for `lease - heartbeat_every` stops
    /// following its tries itself first, so two never follow one try.
    pub lease: Duration,
    /// The only scheduler its store allows (SQLite, by its file lock): the runs an earlier
    /// scheduler held are taken over at once, without waiting for its lease to run out.
    pub exclusive: bool,
    /// Extra labels on every container this scheduler starts (tests label theirs, to
    /// remove whatever is left when they end).
    pub container_labels: std::collections::BTreeMap<String, String>,
    /// What one try's output is held to (`max_line_bytes`, `max_output_bytes`, ...).
    pub limits: stevedore_domain::protocol::TryLimits,
    /// What a task that sets nothing of its own is confined to (`pids_limit`,
    /// `default_memory`).
    pub try_defaults: try_runner::TryDefaults,
    /// Where "now" comes from: the system's clock, or a test's
    /// ([`stevedore_domain::clock`]).
    pub clock: Arc<dyn Clock>,
    /// How long a task instance waits for a backend that does not answer before its try
    /// fails with the backend's answer (retried per policy) and a `stuck` event is made
    /// (`backend_unavailable_timeout`).
    pub backend_unavailable_timeout: Duration,
    /// How notifications are delivered (`public_url`, `notification_give_up_after`).
    pub notifier: notifier::NotifierConfig,
    /// Where traces of runs and tries go (the `OTEL_EXPORTER_OTLP_*` variables); `None`:
    /// no traces.
    pub traces: Option<traces::TracesConfig>,
}

impl SchedulerConfig {
    pub fn new(jobs_dir: impl Into<PathBuf>) -> SchedulerConfig {
        SchedulerConfig {
            jobs_dir: jobs_dir.into(),
            pools_file: None,
            secret_key: None,
            artifacts: None,
            artifact_retention: Duration::from_secs(7 * 24 * 3600),
            log_archive_after: Some(Duration::from_secs(3600)),
            retention: Default::default(),
            retention_every: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            trigger_poll: Duration::from_millis(100),
            sync_every: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(0),
            heartbeat_every: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            exclusive: false,
            container_labels: Default::default(),
            limits: Default::default(),
            try_defaults: try_runner::TryDefaults {
                pids_limit: Some(1024),
                memory_bytes: None,
            },
            clock: Arc::new(SystemClock),
            backend_unavailable_timeout: Duration::from_secs(600),
            traces: None,
            notifier: Default::default(),
        }
    }
}

/// Something that should wake the loop at once.
#[derive(Debug)]
enum Wake {
    TryEnded,
}

pub struct Scheduler {
    /// This process's id among the store's schedulers (new at every start).
    id: String,
    store: Arc<dyn Store>,
    /// The tries' starts, containers, log lines and ends, written in groups.
    writes: group_commit::GroupCommit,
    /// By name (`docker`, `process`); a task's `backend` picks one.
    backends: HashMap<&'static str, Arc<dyn Backend>>,
    config: SchedulerConfig,
    /// Parsed job versions, their weights, the file errors reported.
    jobs: JobCache,
    /// The tries this scheduler follows.
    followed: FollowedTries,
    /// The runs this scheduler holds and its last heartbeat.
    lease: Lease,
    /// The backends that answered their last health check.
    health: BackendHealth,
    /// When left tries were last looked for.
    adoption: AdoptionCheck,
    wake_tx: mpsc::UnboundedSender<Wake>,
    wake_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Wake>>,
    /// Scheduling passes made so far.
    passes: std::sync::atomic::AtomicU64,
    /// Woken when events may have entered the outbox, so the notifier looks at once.
    notifications_waiting: tokio::sync::Notify,
    /// The OTLP exporter of runs' and tries' spans, when configured.
    traces: Option<Arc<traces::Traces>>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        backends: Vec<Arc<dyn Backend>>,
        config: SchedulerConfig,
    ) -> Arc<Scheduler> {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let traces =
            config
                .traces
                .as_ref()
                .and_then(|traces| match traces::Traces::start(traces) {
                    Ok(started) => {
                        info!(endpoint = %traces.endpoint, "exporting traces over OTLP");
                        Some(Arc::new(started))
                    }
                    Err(error) => {
                        warn!(error = %error, "no traces: the OTLP exporter could not be made");
                        None
                    }
                });
        Arc::new(Scheduler {
            traces,
            id: uuid::Uuid::now_v7().to_string(),
            writes: group_commit::GroupCommit::start(store.clone()),
            store,
            backends: backends.into_iter().map(|b| (b.name(), b)).collect(),
            config,
            jobs: JobCache::default(),
            followed: FollowedTries::default(),
            lease: Lease::new(),
            health: BackendHealth::default(),
            adoption: AdoptionCheck::default(),
            wake_tx,
            wake_rx: tokio::sync::Mutex::new(wake_rx),
            passes: Default::default(),
            notifications_waiting: tokio::sync::Notify::new(),
        })
    }

    /// The time of day by the scheduler's clock.
    fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    /// How many scheduling passes this scheduler has made (a test that moves a manual
    /// clock waits for the passes that see it).
    pub fn passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs until `shutdown` resolves, then stops the tries it started and returns.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut wake_rx = self.wake_rx.lock().await;
        let host = hostname();
        try_runner::persist("registering the scheduler", || {
            self.store
                .register_scheduler(&self.id, &host, std::process::id(), self.now())
        })
        .await?;
        self.lease.beat();
        info!(scheduler_id = %self.id, host, heartbeat_secs = self.config.heartbeat_every.as_secs_f64(), lease_secs = self.config.lease.as_secs_f64(), "scheduler registered");
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop());
        let notifier = tokio::spawn(self.clone().notify_loop());
        let archiver = tokio::spawn(self.clone().archive_loop());
        let retention = tokio::spawn(self.clone().retention_loop());
        self.sync_jobs().await;
        let mut last_sync = tokio::time::Instant::now();
        // The first pass sweeps: an earlier scheduler may have left containers behind.
        let mut last_sweep = tokio::time::Instant::now()
            .checked_sub(self.config.sweep_every)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut health = HealthChecks::new();
        let mut runs_marker = self.store.runs_marker().await.ok().flatten();
        'passes: loop {
            self.check_backends(&mut health).await;
            if last_sweep.elapsed() >= self.config.sweep_every {
                self.sweep_containers().await;
                self.sweep_artifacts().await;
                last_sweep = tokio::time::Instant::now();
            }
            if last_sync.elapsed() >= self.config.sync_every {
                self.sync_jobs().await;
                last_sync = tokio::time::Instant::now();
            }
            let pass_started = tokio::time::Instant::now();
            let pass = self.schedule_once().await;
            let pass_took = pass_started.elapsed();
            self.passes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // A pass costs time in proportion to the active runs. The passes that ending
            // tries call for are spaced by half the last one's duration (100 ms at most), so
            // a stream of ends does not keep the scheduler passing back to back, and the ends
            // that arrive meanwhile are handled by one pass.
            let paced_until = tokio::time::Instant::now() + pace(pass_took);
            tracing::debug!(
                elapsed_ms = pass_took.as_millis() as u64,
                following = self.followed.len(),
                "scheduling pass"
            );
            if let Err(error) = pass {
                error!(error = %error, "scheduling pass failed");
            }
            let next_pass = tokio::time::Instant::now() + self.config.tick;
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'passes,
                    _ = tokio::time::sleep_until(next_pass) => break,
                    Some(_) = wake_rx.recv() => {
                        tokio::select! {
                            _ = &mut shutdown => break 'passes,
                            _ = tokio::time::sleep_until(paced_until) => {}
                        }
                        // Drain bursts: one pass handles every try that ended meanwhile.
                        while wake_rx.try_recv().is_ok() {}
                        break;
                    }
                    _ = tokio::time::sleep(self.config.trigger_poll) => {
                        let marker = self.store.runs_marker().await.ok().flatten();
                        if marker != runs_marker {
                            runs_marker = marker;
                            break;
                        }
                    }
                }
            }
        }
        heartbeat.abort();
        notifier.abort();
        if let Some(traces) = &self.traces {
            traces.flush();
        }
        archiver.abort();
        retention.abort();
        self.stop_following_tries().await;
        // Containers of tries that ended while the scheduler stopped go with it.
        self.sweep_containers().await;
        self.sweep_artifacts().await;
        // Hand the runs back (fenced), so other schedulers take them at once.
        if let Err(error) = try_runner::persist("handing claims back", || {
            self.store.deregister_scheduler(&self.id)
        })
        .await
        {
            warn!(error = %error, "cannot hand the claims back; other schedulers take them when the lease runs out");
        }
        info!(scheduler_id = %self.id, "scheduler stopped");
        Ok(())
    }
}

/// This machine's name, for the scheduler's record.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How long after a pass that took `took` the next one called for by ending tries may start:
/// half as long, at most 100 ms (see [`Scheduler::run`]).
fn pace(took: Duration) -> Duration {
    (took / 2).min(Duration::from_millis(100))
}
