//! The scheduler: syncs job files into the store, creates due runs, decides which task
//! instances run, hands tries to the backend and reacts the moment a try ends.
//!
//! - [`group_commit`]: the tries' writes, many at a time in one transaction.
//! - [`try_runner`]: one try from start to end, its logs, outputs and state.
//!
//! Everything the scheduler knows lives in the store; its memory holds only caches and
//! the kill switches of the tries it runs, so a restart loses no decision.

pub mod group_commit;
pub mod try_runner;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use stevedore_backend::{Backend, KillSender, StopReason};
use stevedore_domain::job::{parse_job, Job, JobError};
use stevedore_domain::limits::{self, Candidate, Capacity, Held};
use stevedore_domain::run::{priority_weights, resolve_waiting, run_outcome};
use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_store::{Fence, RunRecord, Store, StoreError, TryKey, TryRecord};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::try_runner::{TryEnd, TryRunner};
use stevedore_ops::jobs_dir::{self, load_jobs_dir};
use stevedore_ops::runs;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub jobs_dir: PathBuf,
    /// A pools file (`name: slots`), read with the job files when it exists.
    pub pools_file: Option<PathBuf>,
    /// Opens connections; tasks that use one fail without it.
    pub secret_key: Option<stevedore_store::secrets::SecretKey>,
    /// How long a finished run's workspace is kept before it is removed.
    pub workspace_retention: Duration,
    /// How often workspaces past their retention are looked for.
    pub workspace_sweep_every: Duration,
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
}

impl SchedulerConfig {
    pub fn new(jobs_dir: impl Into<PathBuf>) -> SchedulerConfig {
        SchedulerConfig {
            jobs_dir: jobs_dir.into(),
            pools_file: None,
            secret_key: None,
            workspace_retention: Duration::from_secs(24 * 3600),
            workspace_sweep_every: Duration::from_secs(60),
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
        }
    }
}

/// How often a pass looks for left tries when nothing else calls for it.
const ADOPTION_RECHECK: Duration = Duration::from_secs(2);

/// What `depends_on_past` says of a task instance.
enum Past {
    Allows,
    /// The previous run's task instance has not finished yet.
    NotYet,
    /// It finished without success: only an operator can change that.
    Never,
}

/// Something that should wake the loop at once.
#[derive(Debug)]
enum Wake {
    TryEnded,
}

/// A try this scheduler follows: its kill switch once it has one, and its task, to stop
/// following it without killing it.
struct Tracked {
    kill: Option<KillSender>,
    task: Option<tokio::task::AbortHandle>,
    backend: &'static str,
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
    /// Parsed job versions by `(job_id, version)`.
    versions: Mutex<HashMap<(String, String), Arc<Job>>>,
    /// Each job version's priority weights, by version (a hash of the job file).
    weights: Mutex<HashMap<String, Arc<HashMap<String, i64>>>>,
    /// The tries this scheduler follows.
    running: Mutex<HashMap<TryKey, Tracked>>,
    /// The runs this scheduler holds, with their fencing tokens.
    claims: Mutex<HashMap<String, Fence>>,
    /// When the last heartbeat was recorded.
    last_heartbeat: Mutex<tokio::time::Instant>,
    /// Backends that answered their last health check and whose leftovers from an earlier
    /// scheduler are settled; tries of the other backends wait.
    ready: Mutex<std::collections::HashSet<&'static str>>,
    /// When the store's running tries were last compared with the tries followed, and
    /// whether a backend has turned ready since (see [`Scheduler::adoption_due`]).
    adoption_checked: Mutex<Option<tokio::time::Instant>>,
    backend_turned_ready: std::sync::atomic::AtomicBool,
    /// File errors already reported, so an unchanged bad file is logged once.
    reported_errors: Mutex<Vec<JobError>>,
    wake_tx: mpsc::UnboundedSender<Wake>,
    wake_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Wake>>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        backends: Vec<Arc<dyn Backend>>,
        config: SchedulerConfig,
    ) -> Arc<Scheduler> {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        Arc::new(Scheduler {
            id: uuid::Uuid::now_v7().to_string(),
            writes: group_commit::GroupCommit::start(store.clone()),
            store,
            backends: backends.into_iter().map(|b| (b.name(), b)).collect(),
            config,
            versions: Mutex::new(HashMap::new()),
            weights: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            last_heartbeat: Mutex::new(tokio::time::Instant::now()),
            ready: Mutex::new(Default::default()),
            adoption_checked: Mutex::new(None),
            backend_turned_ready: std::sync::atomic::AtomicBool::new(false),
            reported_errors: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx: tokio::sync::Mutex::new(wake_rx),
        })
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
                .register_scheduler(&self.id, &host, std::process::id(), Utc::now())
        })
        .await?;
        *self.last_heartbeat.lock().expect("poisoned") = tokio::time::Instant::now();
        info!(scheduler_id = %self.id, host, heartbeat_secs = self.config.heartbeat_every.as_secs_f64(), lease_secs = self.config.lease.as_secs_f64(), "scheduler registered");
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop());
        self.sync_jobs().await;
        let mut last_sync = tokio::time::Instant::now();
        // The first pass sweeps: an earlier scheduler may have left containers behind.
        let mut last_sweep = tokio::time::Instant::now()
            .checked_sub(self.config.workspace_sweep_every)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut health: HashMap<&'static str, (tokio::time::Instant, Duration)> = HashMap::new();
        let mut runs_marker = self.store.runs_marker().await.ok().flatten();
        'passes: loop {
            for (name, backend) in &self.backends {
                if self.is_ready(name) {
                    continue;
                }
                let (next_check, delay) = health
                    .entry(name)
                    .or_insert((tokio::time::Instant::now(), Duration::from_secs(1)));
                if tokio::time::Instant::now() < *next_check {
                    continue;
                }
                match backend.health().await {
                    Ok(()) => {
                        info!(backend = name, "backend ready");
                        self.ready.lock().expect("poisoned").insert(name);
                        self.backend_turned_ready
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        health.remove(name);
                    }
                    Err(error) => {
                        error!(backend = name, error = %error, retry_in_secs = delay.as_secs(), "backend unavailable; its tries wait until it is back");
                        *next_check = tokio::time::Instant::now() + *delay;
                        *delay = (*delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
            if last_sweep.elapsed() >= self.config.workspace_sweep_every {
                self.sweep_containers().await;
                self.sweep_workspaces().await;
                last_sweep = tokio::time::Instant::now();
            }
            if last_sync.elapsed() >= self.config.sync_every {
                self.sync_jobs().await;
                last_sync = tokio::time::Instant::now();
            }
            let pass_started = tokio::time::Instant::now();
            let pass = self.schedule_once().await;
            let pass_took = pass_started.elapsed();
            // A pass costs time in proportion to the active runs. The passes that ending
            // tries call for are spaced by half the last one's duration (100 ms at most), so
            // a stream of ends does not keep the scheduler passing back to back, and the ends
            // that arrive meanwhile are handled by one pass.
            let paced_until = tokio::time::Instant::now() + pace(pass_took);
            tracing::debug!(
                elapsed_ms = pass_took.as_millis() as u64,
                following = self.running.lock().expect("poisoned").len(),
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
        self.stop_following_tries().await;
        // Containers of tries that ended while the scheduler stopped go with it.
        self.sweep_containers().await;
        self.sweep_workspaces().await;
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

    /// Records that this scheduler is alive, every `heartbeat_every`. When no heartbeat
    /// could be recorded for `lease - heartbeat_every`, other schedulers may soon take its
    /// runs over: it stops following its tries first (without killing them) and claims
    /// afresh once the store answers.
    async fn heartbeat_loop(self: Arc<Self>) {
        let margin = self
            .config
            .lease
            .saturating_sub(self.config.heartbeat_every);
        loop {
            tokio::time::sleep(self.config.heartbeat_every).await;
            let now = Utc::now();
            let recorded = match self.store.heartbeat(&self.id, now).await {
                Err(StoreError::NotFound(_)) => {
                    warn!(scheduler_id = %self.id, "this scheduler's record was removed; registering again");
                    self.store
                        .register_scheduler(&self.id, &hostname(), std::process::id(), now)
                        .await
                }
                other => other,
            };
            match recorded {
                Ok(()) => {
                    *self.last_heartbeat.lock().expect("poisoned") = tokio::time::Instant::now()
                }
                Err(error) => warn!(error = %error, "cannot record the heartbeat"),
            }
            let silent = self.last_heartbeat.lock().expect("poisoned").elapsed();
            if silent >= margin && !self.claims.lock().expect("poisoned").is_empty() {
                error!(silent_secs = silent.as_secs(), "no heartbeat recorded for too long: other schedulers may take this one's runs over; it stops following its tries");
                self.drop_work();
            }
        }
    }

    /// Stops following every try (their containers run on) and forgets every claim.
    fn drop_work(&self) {
        let tracked: Vec<Tracked> = self
            .running
            .lock()
            .expect("poisoned")
            .drain()
            .map(|(_, tracked)| tracked)
            .collect();
        for tracked in tracked {
            if let Some(task) = tracked.task {
                task.abort();
            }
        }
        self.claims.lock().expect("poisoned").clear();
    }

    /// Reads the jobs folder (and the pools file) and records each valid job's current
    /// version.
    pub async fn sync_jobs(&self) -> Vec<Arc<Job>> {
        let dir = self.config.jobs_dir.clone();
        let mut found = tokio::task::spawn_blocking(move || load_jobs_dir(&dir))
            .await
            .unwrap_or_default();
        if let Some(path) = self.config.pools_file.as_ref().filter(|p| p.is_file()) {
            let name = path.display().to_string();
            match jobs_dir::read_job_file(path).and_then(|text| limits::parse_pools(&name, &text)) {
                Ok(pools) => {
                    for pool in pools {
                        let record = stevedore_store::PoolRecord {
                            name: pool.name,
                            slots: pool.slots,
                            description: pool.description,
                        };
                        if let Err(error) = self.store.set_pool(&record).await {
                            error!(pool = %record.name, error = %error, "cannot record pool");
                        }
                    }
                }
                Err(errors) => found.errors.extend(errors),
            }
        }
        {
            let mut reported = self.reported_errors.lock().expect("poisoned");
            for problem in &found.errors {
                if !reported.contains(problem) {
                    error!(file = %problem.file, line = ?problem.line, "invalid job file: {problem}");
                }
            }
            *reported = found.errors.clone();
        }
        let mut jobs = Vec::new();
        for loaded in found.jobs {
            let path = loaded.path.display().to_string();
            if let Err(error) = self
                .store
                .upsert_job(&loaded.job.id, &loaded.job.version, &path, &loaded.source)
                .await
            {
                error!(job_id = %loaded.job.id, error = %error, "cannot record job");
                continue;
            }
            self.versions.lock().expect("poisoned").insert(
                (loaded.job.id.clone(), loaded.job.version.clone()),
                loaded.job.clone(),
            );
            jobs.push(loaded.job);
        }
        jobs
    }

    /// The priority weights of a job version's tasks, computed once per version.
    fn weights(&self, job: &Job) -> Arc<HashMap<String, i64>> {
        self.weights
            .lock()
            .expect("poisoned")
            .entry(job.version.clone())
            .or_insert_with(|| Arc::new(priority_weights(job)))
            .clone()
    }

    /// The job version a run was created with.
    async fn job_version(&self, job_id: &str, version: &str) -> anyhow::Result<Arc<Job>> {
        let key = (job_id.to_owned(), version.to_owned());
        if let Some(job) = self.versions.lock().expect("poisoned").get(&key) {
            return Ok(job.clone());
        }
        let source = self.store.job_source(job_id, version).await?;
        let job = parse_job(
            &format!("{job_id}@{}", &version[..12.min(version.len())]),
            &source,
        )
        .map_err(|errors| anyhow::anyhow!("stored job version no longer parses: {}", errors[0]))?;
        let job = Arc::new(job);
        self.versions
            .lock()
            .expect("poisoned")
            .insert(key, job.clone());
        Ok(job)
    }

    /// One pass: due runs, queued runs started, task instances decided and launched,
    /// finished runs closed.
    fn is_ready(&self, backend: &str) -> bool {
        self.ready.lock().expect("poisoned").contains(backend)
    }

    async fn schedule_once(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = Utc::now();
        // What this scheduler follows, before anything is read: a try that ends after this
        // is still counted as followed, never as left behind by another scheduler.
        let followed: HashSet<TryKey> = self
            .running
            .lock()
            .expect("poisoned")
            .keys()
            .cloned()
            .collect();
        let following = FollowedCounts::of(&followed);
        let live_after = if self.config.exclusive {
            // No other scheduler can be alive: take every run over at once.
            now + chrono::TimeDelta::days(365)
        } else {
            now - chrono::TimeDelta::from_std(self.config.lease).unwrap_or(chrono::TimeDelta::MAX)
        };
        let held: HashMap<String, Fence> = self
            .store
            .claim_runs(&self.id, live_after)
            .await?
            .into_iter()
            .map(|fence| (fence.run_id.clone(), fence))
            .collect();
        let newly_held = {
            let mut claims = self.claims.lock().expect("poisoned");
            let newly = held.keys().any(|run_id| !claims.contains_key(run_id));
            *claims = held.clone();
            newly
        };
        let records = self.store.list_jobs().await?;
        let mut max_runs = HashMap::new();
        let current_versions: HashMap<&str, &str> = records
            .iter()
            .map(|r| (r.job_id.as_str(), r.current_version.as_str()))
            .collect();
        for record in &records {
            let Ok(job) = self
                .job_version(&record.job_id, &record.current_version)
                .await
            else {
                continue;
            };
            max_runs.insert(job.id.clone(), job.max_active_runs);
            // A scheduled run is unique per job and logical date: schedulers creating the
            // same one at once make it once.
            if !record.paused {
                runs::create_due_runs(self.store.as_ref(), &job, now, 100).await?;
            }
        }

        // The runs this scheduler holds, oldest first so queued runs start in order, and
        // their task instances in one read.
        let active: Vec<RunRecord> = self
            .store
            .held_runs(&self.id)
            .await?
            .into_iter()
            .filter(|run| held.contains_key(&run.run_id))
            .collect();
        let mut instances_of: HashMap<String, Vec<stevedore_store::TaskInstanceRecord>> =
            HashMap::new();
        for ti in self.store.held_task_instances(&self.id).await? {
            instances_of.entry(ti.run_id.clone()).or_default().push(ti);
        }
        let mut plan = Plan::default();
        // What this scheduler's own runs take of the pools and of `max_active_tasks`.
        let mut own = Capacity::default();
        let mut running_per_job: HashMap<String, u32> = HashMap::new();
        let mut queued_runs = Vec::new();
        for run in active {
            if run.cancel_requested {
                if let Err(error) = self.cancel_run(&run).await {
                    error!(run_id = %run.run_id, error = %error, "cannot cancel run");
                }
                continue;
            }
            if run.state == RunState::Queued {
                queued_runs.push(run);
                continue;
            }
            *running_per_job.entry(run.job_id.clone()).or_default() += 1;
            let instances = instances_of.remove(&run.run_id).unwrap_or_default();
            self.plan_run(&mut plan, run, instances, &following, &mut own)
                .await;
        }
        // What takes no shared slot is written before taking the turn.
        self.write_changes(&mut plan, now).await?;
        if self.adoption_due(newly_held) {
            self.adopt_left_tries(&held, &followed, &plan.jobs_of_runs)
                .await?;
        }

        // Schedulers take turns from reading what the others' runs take of the shared limits
        // to queueing what they picked, so two never fill the same free slot.
        let turn = self.store.lock_scheduling().await?;
        let elsewhere = self.store.active_elsewhere(&self.id).await?;
        for (job_id, count) in &elsewhere.running_runs {
            *running_per_job.entry(job_id.clone()).or_default() += *count as u32;
        }
        let mut capacity = Capacity {
            pools: HashMap::new(),
            jobs: own.jobs,
        };
        for pool in self.store.list_pools().await? {
            capacity.pools.insert(pool.name, pool.slots);
        }
        for (pool, taken) in own.pools {
            *capacity.pools.entry(pool).or_insert(0) += taken;
        }
        for (job_id, version, task_id, count) in &elsewhere.task_instances {
            if let Ok(job) = self.job_version(job_id, version).await {
                count_active(&job, task_id, *count, &mut capacity);
            }
        }
        // Queued runs start while their job is under `max_active_runs`, counting every
        // scheduler's running runs.
        for mut run in queued_runs {
            let limit = max_runs.get(&run.job_id).copied().unwrap_or(16);
            let running = running_per_job.entry(run.job_id.clone()).or_default();
            if *running >= limit {
                continue;
            }
            *running += 1;
            let mut instances = instances_of.remove(&run.run_id).unwrap_or_default();
            // A run that had not started yet follows the job file as it is now.
            if let Some(current) = current_versions.get(run.job_id.as_str()) {
                if *current != run.job_version {
                    if let Err(error) = self.adopt_current_version(&mut run, current).await {
                        warn!(run_id = %run.run_id, error = %error, "cannot move the run to the job's current version");
                    }
                    // Its task instances changed with the version: read them again.
                    instances = self.store.task_instances(&run.run_id).await?;
                }
            }
            plan.run_changes
                .push((run.run_id.clone(), RunState::Running));
            info!(run_id = %run.run_id, job_id = %run.job_id, "run started");
            run.state = RunState::Running;
            self.plan_run(&mut plan, run, instances, &following, &mut capacity)
                .await;
        }
        self.write_changes(&mut plan, now).await?;
        let (picked, waiting) = limits::select(plan.candidates, &mut capacity);
        for (candidate, reason) in waiting {
            if let Held::PoolMissing(pool) = reason {
                warn!(run_id = %candidate.run_id, task_id = %candidate.task_id, pool, "task instance waits: its pool does not exist (`stevedore pools set`)");
            }
        }
        // Every task instance picked is queued in one write, then launched.
        let queued: Vec<(String, String, TaskState)> = picked
            .iter()
            .filter(|c| held.contains_key(&c.run_id))
            .map(|c| (c.run_id.clone(), c.task_id.clone(), TaskState::Queued))
            .collect();
        self.store.set_task_states(&queued, now).await?;
        turn.release().await?;
        for candidate in picked {
            let Some((job, run)) = plan.jobs_of_runs.get(&candidate.run_id) else {
                continue;
            };
            let Some(task) = job.task(&candidate.task_id) else {
                continue;
            };
            let try_number = plan
                .last_tries
                .get(&(candidate.run_id.clone(), candidate.task_id.clone()))
                .copied()
                .unwrap_or(0)
                + 1;
            let Some(fence) = held.get(&run.run_id) else {
                continue;
            };
            self.spawn_try(
                job.clone(),
                run.clone(),
                task.clone(),
                fence.clone(),
                TryStart::New(try_number),
            );
        }
        Ok(())
    }

    /// Writes the task instance and run states `plan` changed so far, and forgets them: task
    /// instances first, as a run's end is recorded after the states that decided it.
    async fn write_changes(
        &self,
        plan: &mut Plan,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.store.set_task_states(&plan.task_changes, now).await?;
        self.store
            .set_run_states(&plan.run_changes, Utc::now())
            .await?;
        plan.task_changes.clear();
        plan.run_changes.clear();
        Ok(())
    }

    /// Moves one running run forward ([`Scheduler::advance_run`]) and adds what it decided to
    /// `plan`.
    async fn plan_run(
        &self,
        plan: &mut Plan,
        run: RunRecord,
        instances: Vec<stevedore_store::TaskInstanceRecord>,
        following: &FollowedCounts,
        capacity: &mut Capacity,
    ) {
        match self.advance_run(&run, instances, following, capacity).await {
            Ok(advanced) => {
                for (task_id, try_number) in advanced.tries {
                    plan.last_tries
                        .insert((run.run_id.clone(), task_id), try_number);
                }
                plan.candidates.extend(advanced.ready);
                plan.task_changes.extend(advanced.changes);
                if let Some(outcome) = advanced.outcome {
                    info!(run_id = %run.run_id, job_id = %run.job_id, state = %outcome, "run finished");
                    plan.run_changes.push((run.run_id.clone(), outcome));
                }
                plan.jobs_of_runs
                    .insert(run.run_id.clone(), (advanced.job, run));
            }
            Err(error) => error!(run_id = %run.run_id, error = %error, "cannot advance run"),
        }
    }

    /// Whether this pass should look for tries left behind (see
    /// [`Scheduler::adopt_left_tries`]): when it holds runs it did not hold in the last pass
    /// (at start, after a takeover or after giving its work up), when a backend has turned
    /// ready, and every few seconds for the adoptions that failed and wait to be tried again.
    /// Reading every running try in every pass would cost a busy scheduler most of its time.
    fn adoption_due(&self, newly_held: bool) -> bool {
        let now = tokio::time::Instant::now();
        let mut checked = self.adoption_checked.lock().expect("poisoned");
        let turned_ready = self
            .backend_turned_ready
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let stale = checked.is_none_or(|at| now.duration_since(at) >= ADOPTION_RECHECK);
        if newly_held || turned_ready || stale {
            *checked = Some(now);
            return true;
        }
        false
    }

    /// Tries of the runs this scheduler holds that the store says are running but no
    /// scheduler follows (their scheduler stopped or lost its claim): re-attached to.
    async fn adopt_left_tries(
        self: &Arc<Self>,
        held: &HashMap<String, Fence>,
        followed: &HashSet<TryKey>,
        jobs_of_runs: &HashMap<String, (Arc<Job>, RunRecord)>,
    ) -> anyhow::Result<()> {
        let left: Vec<TryRecord> = self
            .store
            .running_tries()
            .await?
            .into_iter()
            .filter(|t| held.contains_key(&t.run_id))
            .filter(|t| {
                !followed.contains(&TryKey {
                    run_id: t.run_id.clone(),
                    task_id: t.task_id.clone(),
                    try_number: t.try_number,
                })
            })
            .collect();
        for record in left {
            // A configured backend that is not ready: adopt once it is.
            if self.backends.contains_key(record.backend.as_str())
                && !self.is_ready(&record.backend)
            {
                continue;
            }
            let (job, run) = match jobs_of_runs.get(&record.run_id) {
                Some((job, run)) => (job.clone(), run.clone()),
                None => {
                    let run = self.store.get_run(&record.run_id).await?;
                    (self.job_version(&run.job_id, &run.job_version).await?, run)
                }
            };
            let Some(task) = job.task(&record.task_id).cloned() else {
                continue;
            };
            let fence = held[&record.run_id].clone();
            self.spawn_try(job, run, task, fence, TryStart::Adopt(record));
        }
        Ok(())
    }

    /// `depends_on_past`: the same task in the job's previous run (by logical date) must
    /// have succeeded or been skipped; the first run, or a task new in it, may run.
    async fn past_allows(&self, run: &RunRecord, task_id: &str) -> anyhow::Result<Past> {
        let Some(previous) = self
            .store
            .previous_run(&run.job_id, run.logical_date)
            .await?
        else {
            return Ok(Past::Allows);
        };
        let instances = self.store.task_instances(&previous.run_id).await?;
        Ok(match instances.iter().find(|ti| ti.task_id == task_id) {
            None => Past::Allows,
            Some(ti) if matches!(ti.state, TaskState::Success | TaskState::Skipped) => Past::Allows,
            Some(ti) if ti.state.is_finished() => Past::Never,
            Some(_) => Past::NotYet,
        })
    }

    async fn adopt_current_version(
        &self,
        run: &mut RunRecord,
        current: &str,
    ) -> anyhow::Result<()> {
        let old = self.job_version(&run.job_id, &run.job_version).await?;
        let new = self.job_version(&run.job_id, current).await?;
        let removed: Vec<String> = old
            .tasks
            .iter()
            .filter(|t| new.task(&t.id).is_none())
            .map(|t| t.id.clone())
            .collect();
        let added: Vec<String> = new
            .tasks
            .iter()
            .filter(|t| old.task(&t.id).is_none())
            .map(|t| t.id.clone())
            .collect();
        self.store
            .adopt_version(&run.run_id, current, &removed, &added)
            .await?;
        info!(run_id = %run.run_id, version = current, removed = ?removed, added = ?added, "run follows the job's current version");
        run.job_version = current.to_owned();
        Ok(())
    }

    /// Removes the containers of tries whose end is recorded: a scheduler that stopped
    /// between recording a try's end and removing its container leaves one behind. A
    /// container whose try this store does not know is left alone (another installation may
    /// share the engine), as is one whose try still runs.
    async fn sweep_containers(&self) {
        for (name, backend) in &self.backends {
            if !self.is_ready(name) || !backend.can_adopt() {
                continue;
            }
            let Ok(containers) = backend.list_running().await else {
                continue;
            };
            for container in containers {
                let Ok(tries) = self
                    .store
                    .tries(&container.run_id, &container.task_id)
                    .await
                else {
                    continue;
                };
                let ended = tries
                    .iter()
                    .find(|t| t.try_number == container.try_number)
                    .is_some_and(|t| t.state != TryState::Running);
                if ended {
                    info!(run_id = %container.run_id, task_id = %container.task_id, try_number = container.try_number, "removing the container of a try that ended");
                    if let Err(error) = backend.discard(&container.container_id).await {
                        warn!(backend = name, error = %error, "cannot remove a container");
                    }
                }
            }
        }
    }

    /// Removes the workspaces of runs that finished longer than the retention ago. A
    /// workspace whose run this store does not know is left alone (another installation
    /// may share the engine).
    async fn sweep_workspaces(&self) {
        let retention = chrono::TimeDelta::from_std(self.config.workspace_retention)
            .unwrap_or(chrono::TimeDelta::MAX);
        let now = Utc::now();
        for (name, backend) in &self.backends {
            if !self.is_ready(name) {
                continue;
            }
            let Ok(run_ids) = backend.workspaces().await else {
                continue;
            };
            for run_id in run_ids {
                let Ok(run) = self.store.get_run(&run_id).await else {
                    continue;
                };
                let expired = run.state.is_finished()
                    && run.ended_at.is_some_and(|ended| ended + retention <= now);
                if expired {
                    if let Err(error) = backend.remove_workspace(&run_id).await {
                        warn!(backend = name, run_id, error = %error, "cannot remove a run's workspace");
                    }
                }
            }
        }
    }

    /// Cancels a run: its running tries are killed (and end `failed`), its task instances
    /// that had not started are `skipped`, and the run is `failed` — as Airflow's "mark run
    /// failed" does.
    async fn cancel_run(&self, run: &RunRecord) -> anyhow::Result<()> {
        let now = Utc::now();
        let switches: Vec<KillSender> = self
            .running
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(key, _)| key.run_id == run.run_id)
            .filter_map(|(_, tracked)| tracked.kill.clone())
            .collect();
        for kill in &switches {
            let _ = kill.send(Some(StopReason::Cancelled));
        }
        for ti in self.store.task_instances(&run.run_id).await? {
            if !ti.state.is_finished() && !ti.state.is_active() {
                self.store
                    .set_task_state(&run.run_id, &ti.task_id, TaskState::Skipped, now)
                    .await?;
            }
        }
        self.store
            .set_run_state(&run.run_id, RunState::Failed, now)
            .await?;
        info!(run_id = %run.run_id, job_id = %run.job_id, killed = switches.len(), "run cancelled");
        Ok(())
    }

    /// Moves one running run forward: due retries and reschedules back to `scheduled`,
    /// waiting task instances decided by their trigger rules, the run closed when its
    /// outcome is known. Returns the run's job version, its task instances ready to start
    /// and each task instance's latest try number; counts the run's active task instances
    /// against `capacity`.
    async fn advance_run(
        &self,
        run: &RunRecord,
        instances: Vec<stevedore_store::TaskInstanceRecord>,
        following: &FollowedCounts,
        capacity: &mut Capacity,
    ) -> anyhow::Result<Advanced> {
        let job = self.job_version(&run.job_id, &run.job_version).await?;
        let now = Utc::now();
        let mut states: HashMap<String, TaskState> = instances
            .iter()
            .map(|ti| (ti.task_id.clone(), ti.state))
            .collect();

        // A task instance an operator marked while its try ran: stop the try.
        let marked: Vec<(KillSender, TaskState)> = {
            let running = self.running.lock().expect("poisoned");
            instances
                .iter()
                .filter(|ti| ti.state.is_finished())
                .filter_map(|ti| {
                    let key = following
                        .task_instances
                        .get(&(ti.run_id.clone(), ti.task_id.clone()))?;
                    let kill = running.get(key)?.kill.clone()?;
                    Some((kill, ti.state))
                })
                .collect()
        };
        for (kill, state) in marked {
            let _ = kill.send(Some(StopReason::Marked(state)));
        }

        let mut changes: Vec<(String, String, TaskState)> = Vec::new();
        for ti in &instances {
            // Queued by a scheduler that stopped (or lost the run) before its try started:
            // nothing runs it, so it is scheduled again rather than stuck in `queued`.
            let left_queued = ti.state == TaskState::Queued
                && !following
                    .task_instances
                    .contains_key(&(ti.run_id.clone(), ti.task_id.clone()));
            if left_queued {
                warn!(run_id = %run.run_id, task_id = %ti.task_id, "task instance was left queued by a stopped scheduler; scheduling it again");
                changes.push((run.run_id.clone(), ti.task_id.clone(), TaskState::Scheduled));
                states.insert(ti.task_id.clone(), TaskState::Scheduled);
                continue;
            }
            let waiting = matches!(ti.state, TaskState::UpForRetry | TaskState::UpForReschedule);
            if waiting && ti.next_try_at.is_none_or(|at| at <= now) {
                changes.push((run.run_id.clone(), ti.task_id.clone(), TaskState::Scheduled));
                states.insert(ti.task_id.clone(), TaskState::Scheduled);
            }
        }
        for (task_id, state) in resolve_waiting(&job, &mut states) {
            changes.push((run.run_id.clone(), task_id, state));
        }

        let job_free = capacity
            .jobs
            .entry(job.id.clone())
            .or_insert(i64::from(job.max_active_tasks));
        let weights = self.weights(&job);
        let mut ready = Vec::new();
        let mut blocked_for_good = 0;
        for (task_id, state) in &states {
            let Some(task) = job.task(task_id) else {
                continue;
            };
            if state.is_active() {
                *job_free -= 1;
                *capacity.pools.entry(task.pool.clone()).or_insert(0) -= i64::from(task.pool_slots);
                continue;
            }
            if *state != TaskState::Scheduled {
                continue;
            }
            if task.depends_on_past {
                match self.past_allows(run, task_id).await? {
                    Past::Allows => {}
                    Past::NotYet => continue,
                    Past::Never => {
                        blocked_for_good += 1;
                        continue;
                    }
                }
            }
            // A configured backend that is not ready holds its tries; one that is not
            // configured at all fails them (with a reason saying so) in the try runner.
            let backend = task.backend.as_str();
            if self.backends.contains_key(backend) && !self.is_ready(backend) {
                continue;
            }
            ready.push(Candidate {
                run_id: run.run_id.clone(),
                task_id: task_id.clone(),
                job_id: job.id.clone(),
                pool: task.pool.clone(),
                pool_slots: i64::from(task.pool_slots),
                weight: weights.get(task_id).copied().unwrap_or(0),
                logical_date: run.logical_date,
            });
        }

        // A deadlock: everything left waits on a previous run's task that ended without
        // success; nothing can change that but an operator. The run fails, as in Airflow.
        let unfinished = states.values().filter(|s| !s.is_finished()).count();
        let outcome = if blocked_for_good > 0 && blocked_for_good == unfinished {
            warn!(run_id = %run.run_id, job_id = %run.job_id, "deadlock: depends_on_past can never be met; failing the run");
            Some(RunState::Failed)
        } else {
            run_outcome(&job, &states)
        };
        // A run ends once this scheduler has finished with each of its tries, their
        // containers removed included: the next pass, which the last of them wakes.
        let still_following = || following.runs.contains(&run.run_id);
        let outcome = outcome.filter(|_| !still_following());
        // The latest try number of the task instances about to start, so a launch needs no
        // re-read.
        let tries = ready
            .iter()
            .filter_map(|candidate| {
                instances
                    .iter()
                    .find(|ti| ti.task_id == candidate.task_id)
                    .map(|ti| (ti.task_id.clone(), ti.try_number))
            })
            .collect();
        Ok(Advanced {
            job,
            ready,
            tries,
            changes,
            outcome,
        })
    }

    /// Follows one try in its own task: a new one, or one a stopped scheduler left running.
    /// It is registered as followed before this returns, so no pass takes it for left.
    fn spawn_try(
        self: &Arc<Self>,
        job: Arc<Job>,
        run: RunRecord,
        task: stevedore_domain::job::Task,
        fence: Fence,
        start: TryStart,
    ) {
        let key = TryKey {
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number: match &start {
                TryStart::New(number) => *number,
                TryStart::Adopt(record) => record.try_number,
            },
        };
        let backend_name: &'static str = self
            .backends
            .get_key_value(task.backend.as_str())
            .map(|(name, _)| *name)
            .unwrap_or(task.backend.as_str());
        self.running.lock().expect("poisoned").insert(
            key.clone(),
            Tracked {
                kill: None,
                task: None,
                backend: backend_name,
            },
        );
        let scheduler = self.clone();
        let spawned_key = key.clone();
        let handle = tokio::spawn(async move {
            let key = spawned_key;
            let runner = TryRunner {
                store: scheduler.store.clone(),
                writes: scheduler.writes.clone(),
                backend: scheduler.backends.get(backend_name).cloned(),
                backend_name,
                secret_key: scheduler.config.secret_key.clone(),
                fence: Some(fence),
                labels: scheduler.config.container_labels.clone(),
                limits: scheduler.config.limits,
                defaults: scheduler.config.try_defaults.clone(),
            };
            let registry = scheduler.clone();
            let registered_key = key.clone();
            let on_started = move |kill| {
                if let Some(tracked) = registry
                    .running
                    .lock()
                    .expect("poisoned")
                    .get_mut(&registered_key)
                {
                    tracked.kill = Some(kill);
                }
            };
            let adopted = matches!(start, TryStart::Adopt(_));
            let result = match start {
                TryStart::New(try_number) => {
                    runner.run(job, run, task, try_number, on_started).await
                }
                TryStart::Adopt(record) => runner.adopt(job, run, task, record, on_started).await,
            };
            scheduler.running.lock().expect("poisoned").remove(&key);
            match result {
                Ok(TryEnd::Finished(_)) => {}
                Ok(TryEnd::Fenced(message)) => {
                    warn!(run_id = %key.run_id, task_id = %key.task_id, try_number = key.try_number, reason = %message, "another scheduler took the run over; this one stops following the try");
                    scheduler
                        .claims
                        .lock()
                        .expect("poisoned")
                        .remove(&key.run_id);
                }
                Ok(TryEnd::BackendUnavailable(message)) if adopted => {
                    // Its host does not answer (others may): a later pass looks again.
                    warn!(backend = backend_name, error = %message, "cannot re-attach to the try yet");
                }
                Ok(TryEnd::BackendUnavailable(message)) => {
                    warn!(backend = backend_name, error = %message, "backend became unavailable");
                    scheduler
                        .ready
                        .lock()
                        .expect("poisoned")
                        .remove(backend_name);
                }
                Err(error) if adopted => {
                    error!(run_id = %key.run_id, task_id = %key.task_id, error = %error, "a left try could not be followed; a later pass tries again");
                }
                Err(error) => {
                    error!(run_id = %key.run_id, task_id = %key.task_id, error = %error, "try could not be recorded");
                    // If it failed before the try existed, the task instance is still
                    // `queued`: put it back so a later pass tries again.
                    let store = scheduler.store.clone();
                    if let Ok(instances) = store.task_instances(&key.run_id).await {
                        if instances
                            .iter()
                            .any(|ti| ti.task_id == key.task_id && ti.state == TaskState::Queued)
                        {
                            let _ = store
                                .set_task_state(
                                    &key.run_id,
                                    &key.task_id,
                                    TaskState::Scheduled,
                                    Utc::now(),
                                )
                                .await;
                        }
                    }
                }
            }
            let _ = scheduler.wake_tx.send(Wake::TryEnded);
        });
        if let Some(tracked) = self.running.lock().expect("poisoned").get_mut(&key) {
            tracked.task = Some(handle.abort_handle());
        }
    }

    /// On a clean stop: running tries get the grace period to end by themselves. Then the
    /// scheduler stops following them; their containers run on, and the scheduler that
    /// takes their runs over re-attaches to them. Tries of a backend that cannot re-attach
    /// (`process`) are killed instead, and tried again by the next scheduler.
    async fn stop_following_tries(&self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while tokio::time::Instant::now() < deadline
            && !self.running.lock().expect("poisoned").is_empty()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let switches: Vec<KillSender> = self
            .running
            .lock()
            .expect("poisoned")
            .values()
            .filter(|tracked| {
                !self
                    .backends
                    .get(tracked.backend)
                    .is_some_and(|backend| backend.can_adopt())
            })
            .filter_map(|tracked| tracked.kill.clone())
            .collect();
        if !switches.is_empty() {
            info!(
                tries = switches.len(),
                "stopping tries that no other scheduler could re-attach to"
            );
        }
        for kill in &switches {
            let _ = kill.send(Some(StopReason::SchedulerStopped));
        }
        // Wait (bounded) for the killed tries to record their end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline
            && self
                .running
                .lock()
                .expect("poisoned")
                .values()
                .any(|tracked| {
                    tracked
                        .kill
                        .as_ref()
                        .is_some_and(|kill| switches.iter().any(|s| s.same_channel(kill)))
                })
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.running.lock().expect("poisoned").len();
        if left > 0 {
            info!(
                tries = left,
                "leaving running tries to the scheduler that takes their runs over"
            );
        }
        self.drop_work();
    }
}

/// The runs and task instances with a try this scheduler follows, for lookups in a pass.
struct FollowedCounts {
    runs: HashSet<String>,
    /// The followed try of each task instance.
    task_instances: HashMap<(String, String), TryKey>,
}

impl FollowedCounts {
    fn of(followed: &HashSet<TryKey>) -> FollowedCounts {
        FollowedCounts {
            runs: followed.iter().map(|key| key.run_id.clone()).collect(),
            task_instances: followed
                .iter()
                .map(|key| ((key.run_id.clone(), key.task_id.clone()), key.clone()))
                .collect(),
        }
    }
}

/// What a pass decides for the runs it holds, gathered to be written at once.
#[derive(Default)]
struct Plan {
    /// Task instances ready to start, for the pools and limits to pick from.
    candidates: Vec<Candidate>,
    /// The latest try number of each candidate, so a launch needs no re-read.
    last_tries: HashMap<(String, String), u32>,
    /// Each planned run with its job version.
    jobs_of_runs: HashMap<String, (Arc<Job>, RunRecord)>,
    task_changes: Vec<(String, String, TaskState)>,
    run_changes: Vec<(String, RunState)>,
}

/// What a pass decided for one run (see [`Scheduler::advance_run`]).
struct Advanced {
    /// The job version the run follows.
    job: Arc<Job>,
    /// Its task instances ready to start.
    ready: Vec<Candidate>,
    /// The latest try number of each task instance ready to start.
    tries: Vec<(String, u32)>,
    /// Task instances whose state changes: retries due, trigger rules decided.
    changes: Vec<(String, String, TaskState)>,
    /// How the run ended, once it has.
    outcome: Option<RunState>,
}

/// How a followed try begins.
enum TryStart {
    /// Launch try number N.
    New(u32),
    /// Re-attach to a try a stopped scheduler left running.
    Adopt(TryRecord),
}

/// Counts `count` active task instances of `task_id` in another scheduler's runs of `job`
/// against `capacity`.
fn count_active(job: &Job, task_id: &str, count: i64, capacity: &mut Capacity) {
    let Some(task) = job.task(task_id) else {
        return;
    };
    *capacity
        .jobs
        .entry(job.id.clone())
        .or_insert(i64::from(job.max_active_tasks)) -= count;
    *capacity.pools.entry(task.pool.clone()).or_insert(0) -= count * i64::from(task.pool_slots);
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
