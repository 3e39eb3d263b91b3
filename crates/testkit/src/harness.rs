//! The harness: a scheduler on a fresh SQLite store, with a jobs folder of the test's own,
//! against the real Docker engine (and the process backend); containers it leaves are
//! removed by their test label.
//!
//! Or, [`Harness::scripted`], a scheduler whose `docker` and `process` backends are
//! [`ScriptedBackend`]s on a [`ManualClock`]: nothing runs for real and no time passes
//! unless the harness moves the clock ([`Harness::wait_run`] and [`Harness::pass_time`] move
//! it in steps, each seen by the scheduler's passes). The scheduling rules are tested that
//! way, without Docker and without waiting.

#[allow(unused_imports)]
use super::*;

/// The label every container of a [`Harness`] carries, with the harness's own id.
pub(super) const TEST_LABEL: &str = "io.stevedore.test";

pub(super) fn test_id(dir: &tempfile::TempDir) -> String {
    dir.path()
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// A test that ends as soon as it has seen what it checks (a state, a log line) may leave
/// containers behind: the harness removes whatever carries its label.
impl Drop for Harness {
    fn drop(&mut self) {
        if self.scripted.is_some() {
            return;
        }
        let listed = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={TEST_LABEL}={}", test_id(&self.dir)))
            .output();
        if let Ok(listed) = listed {
            for id in String::from_utf8_lossy(&listed.stdout).lines() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    /// The scheduler's key for connections ([`Harness::add_connection`]).
    pub secret_key: SecretKey,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The backends besides the process one, for [`Harness::restart`].
    backends: Vec<Arc<dyn Backend>>,
    /// The scheduler, for counting its passes.
    scheduler: Arc<Scheduler>,
    /// The clock and backends of a scripted harness.
    scripted: Option<Scripted>,
    /// The artifact store, when not a folder of the harness's own.
    artifacts: Option<stevedore_artifacts::ArtifactStore>,
    /// What the test changed in the scheduler's configuration, applied again on restart.
    configure: Option<Configure>,
    /// Where tries' lines are read: rows, or archived logs.
    pub logs: Arc<stevedore_artifacts::logs::Logs>,
}

/// A temporary folder holding `jobs/` with these job files, for a harness to run in.
fn folder_with_jobs(jobs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let jobs_dir = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    for (name, text) in jobs {
        std::fs::write(jobs_dir.join(name), text).unwrap();
    }
    dir
}

/// A change to the scheduler's configuration ([`Harness::start_configured`]).
pub type Configure = Arc<dyn Fn(&mut SchedulerConfig) + Send + Sync>;

/// What a [`Harness::scripted`] runs on.
#[derive(Clone)]
struct Scripted {
    clock: Arc<ManualClock>,
    /// One standing in for `docker`, one for `process`.
    backends: Vec<Arc<ScriptedBackend>>,
}

/// The web UI's address a harness's scheduler links its events to (`public_url`).
pub const HARNESS_PUBLIC_URL: &str = "http://stevedore.test";

/// How far [`Harness::wait_run`] and [`Harness::pass_time`] move a scripted harness's clock
/// at a time: each step is seen by at least one whole scheduling pass before the next.
pub const CLOCK_STEP: Duration = Duration::from_millis(200);

impl Harness {
    /// A scheduler on the local engine with these job files.
    pub async fn start(jobs: &[(&str, &str)]) -> Harness {
        require_images().await;
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        Harness::start_with(jobs, backend).await
    }

    pub async fn start_with(jobs: &[(&str, &str)], backend: Arc<dyn Backend>) -> Harness {
        Harness::start_with_backends(jobs, vec![backend]).await
    }

    /// A scheduler with these backends (and the process backend) and job files.
    pub async fn start_with_backends(
        jobs: &[(&str, &str)],
        backends: Vec<Arc<dyn Backend>>,
    ) -> Harness {
        Harness::start_with_store(jobs, backends, None).await
    }

    /// [`Harness::start_with_backends`] with its tries' files in this artifact store (a
    /// folder of the harness's own when `None`).
    pub async fn start_with_store(
        jobs: &[(&str, &str)],
        backends: Vec<Arc<dyn Backend>>,
        artifacts: Option<stevedore_artifacts::StoreSettings>,
    ) -> Harness {
        init_logging();
        let dir = folder_with_jobs(jobs);
        let artifacts = artifacts.map(|settings| {
            stevedore_artifacts::ArtifactStore::open(&settings).expect("the artifact store")
        });
        Harness::run_in(
            dir,
            backends,
            SecretKey::generate().unwrap(),
            None,
            artifacts,
            None,
        )
        .await
    }

    /// A scheduler with the process backend whose tries' logs move to its artifact store
    /// (a folder of its own) `after` they ended (`log_archive_after`).
    pub async fn start_archiving_logs(jobs: &[(&str, &str)], after: Duration) -> Harness {
        Harness::start_configured(
            jobs,
            Arc::new(move |config: &mut SchedulerConfig| config.log_archive_after = Some(after)),
        )
        .await
    }

    /// A scheduler with the process backend (and a folder artifact store of its own) whose
    /// configuration `configure` changes after the harness's own settings.
    pub async fn start_configured(jobs: &[(&str, &str)], configure: Configure) -> Harness {
        init_logging();
        let dir = folder_with_jobs(jobs);
        Harness::run_in(
            dir,
            Vec::new(),
            SecretKey::generate().unwrap(),
            None,
            None,
            Some(configure),
        )
        .await
    }

    /// [`Harness::start_with_backends`] with its tries' files in this artifact store, as
    /// opened (with signed links, say).
    pub async fn start_with_artifact_store(
        jobs: &[(&str, &str)],
        backends: Vec<Arc<dyn Backend>>,
        artifacts: stevedore_artifacts::ArtifactStore,
    ) -> Harness {
        init_logging();
        let dir = folder_with_jobs(jobs);
        Harness::run_in(
            dir,
            backends,
            SecretKey::generate().unwrap(),
            None,
            Some(artifacts),
            None,
        )
        .await
    }

    /// A scheduler whose `docker` and `process` backends are scripted, on a manual clock
    /// (see the module doc): each try plays its task's script ([`Harness::script`]) or the
    /// synth modes its args name.
    pub async fn scripted(jobs: &[(&str, &str)]) -> Harness {
        let dir = folder_with_jobs(jobs);
        Harness::scripted_in(dir).await
    }

    /// [`Harness::scripted`] on a folder prepared beforehand (see [`Harness::start_in`]).
    pub async fn scripted_in(dir: tempfile::TempDir) -> Harness {
        init_logging();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        let clock = Arc::new(ManualClock::starting_at(Utc::now()));
        let backends = ["docker", "process"]
            .into_iter()
            .map(|name| Arc::new(ScriptedBackend::new(name, clock.clone())))
            .collect();
        let scripted = Scripted { clock, backends };
        Harness::run_in(
            dir,
            Vec::new(),
            SecretKey::generate().unwrap(),
            Some(scripted),
            None,
            None,
        )
        .await
    }

    /// From now on the tries of `task_id` play what `script` says (a scripted harness).
    pub fn script(
        &self,
        task_id: &str,
        script: impl Fn(&LaunchSpec) -> Play + Send + Sync + 'static,
    ) {
        let scripted = self.scripted.as_ref().expect("a scripted harness");
        let script = Arc::new(script);
        for backend in &scripted.backends {
            let script = script.clone();
            backend.script(task_id, move |spec| script(spec));
        }
    }

    /// A scripted harness's backend `name` stops answering (`Some(answer)`) or answers again.
    pub fn set_backend_down(&self, name: &str, answer: Option<&str>) {
        let scripted = self.scripted.as_ref().expect("a scripted harness");
        for backend in scripted.backends.iter().filter(|b| b.name() == name) {
            backend.set_down(answer);
        }
    }

    /// The time by the scheduler's clock.
    pub fn now(&self) -> chrono::DateTime<Utc> {
        match &self.scripted {
            Some(scripted) => scripted.clock.now(),
            None => Utc::now(),
        }
    }

    /// Lets `time` pass: a real sleep, or on a scripted harness the clock moved on in
    /// steps of [`CLOCK_STEP`], each seen by the scheduler.
    pub async fn pass_time(&self, time: Duration) {
        if self.scripted.is_none() {
            tokio::time::sleep(time).await;
            return;
        }
        let until = self.now() + time;
        while self.now() < until {
            let left = (until - self.now()).to_std().unwrap_or_default();
            self.step(left.min(CLOCK_STEP)).await;
        }
    }

    /// Moves a scripted harness's clock on by `by`, then waits for two scheduling passes
    /// to end: the second began after the move, so the scheduler has seen the new time.
    async fn step(&self, by: Duration) {
        let scripted = self.scripted.as_ref().expect("a scripted harness");
        scripted.clock.advance(by);
        let seen = self.scheduler.passes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.scheduler.passes() < seen + 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A scheduler on a folder prepared beforehand (its `stevedore.db` and `jobs/`), for a
    /// test that must set the store up before any scheduling pass can see it.
    pub async fn start_in(dir: tempfile::TempDir) -> Harness {
        require_images().await;
        init_logging();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        Harness::run_in(
            dir,
            vec![backend],
            SecretKey::generate().unwrap(),
            None,
            None,
            None,
        )
        .await
    }

    async fn run_in(
        dir: tempfile::TempDir,
        mut backends: Vec<Arc<dyn Backend>>,
        secret_key: SecretKey,
        scripted: Option<Scripted>,
        artifacts: Option<stevedore_artifacts::ArtifactStore>,
        configure: Option<Configure>,
    ) -> Harness {
        let jobs_dir = dir.path().join("jobs");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(dir.path().join("stevedore.db"))
                .await
                .unwrap(),
        );
        let mut config = SchedulerConfig::new(&jobs_dir);
        config.secret_key = Some(secret_key.clone());
        config.tick = Duration::from_millis(200);
        config
            .container_labels
            .insert(TEST_LABEL.to_owned(), test_id(&dir));
        config.sync_every = Duration::from_secs(1);
        config.sweep_every = Duration::from_millis(500);
        // Tests leave little behind: a run's files go 5 s after it ended (long enough to look
        // at them once the run is seen to end).
        config.artifact_retention = Duration::from_secs(5);
        // A receiver that was down is tried again within 5 s (a minute in production), so
        // the alert tests need not wait out the longest backoff.
        config.notifier.max_backoff = Duration::from_secs(5);
        // Events link to their pages under the web UI's address.
        config.notifier.public_url = Some(HARNESS_PUBLIC_URL.to_owned());
        let kept = backends.clone();
        match &scripted {
            None => {
                backends.push(Arc::new(ProcessBackend::new(dir.path().join("process"))));
                // Tries' files travel through a folder of the test's own, unless told.
                config.artifacts = Some(artifacts.clone().unwrap_or_else(|| {
                    stevedore_artifacts::ArtifactStore::open(&stevedore_artifacts::StoreSettings {
                        url: format!("file://{}", dir.path().join("artifacts").display()),
                        ..Default::default()
                    })
                    .unwrap()
                }));
            }
            Some(scripted) => {
                // Nothing waits for real: the loop looks often, and its times are the clock's.
                config.tick = Duration::from_millis(5);
                config.trigger_poll = Duration::from_millis(5);
                config.sync_every = Duration::from_millis(5);
                // Heartbeats are recorded on the clock, which runs far ahead of real time:
                // a lease of an hour keeps the scheduler's own runs its own.
                config.lease = Duration::from_secs(3600);
                config.heartbeat_every = Duration::from_secs(1);
                config.clock = scripted.clock.clone();
                // A wait for a backend that does not answer is given up on soon.
                config.backend_unavailable_timeout = Duration::from_secs(5);
                backends.extend(
                    scripted
                        .backends
                        .iter()
                        .map(|backend| backend.clone() as Arc<dyn Backend>),
                );
            }
        }
        if let Some(configure) = &configure {
            configure(&mut config);
        }
        let logs = Arc::new(stevedore_artifacts::logs::Logs::new(
            store.clone(),
            config.artifacts.clone(),
        ));
        let scheduler = Scheduler::new(store.clone(), backends, config);
        let (shutdown, stop) = oneshot::channel::<()>();
        let running = scheduler.clone();
        let handle = tokio::spawn(async move {
            let scheduler = running;
            scheduler
                .run(async move {
                    let _ = stop.await;
                })
                .await
                .expect("scheduler ended with an error");
        });
        Harness {
            dir,
            store,
            secret_key,
            shutdown: Some(shutdown),
            handle: Some(handle),
            backends: kept,
            scheduler,
            scripted,
            artifacts,
            configure,
            logs,
        }
    }

    /// Stops this scheduler and starts a new one on the same store and jobs folder, as a
    /// restarted scheduler process would.
    pub async fn restart(mut self) -> Harness {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("scheduler task panicked");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let backends = std::mem::take(&mut self.backends);
        // The same key, as a restarted scheduler reads the same key file.
        Harness::run_in(
            dir,
            backends,
            self.secret_key.clone(),
            self.scripted.take(),
            self.artifacts.take(),
            self.configure.take(),
        )
        .await
    }

    /// Adds a connection as `stevedore connections add` does.
    pub async fn add_connection(&self, name: &str, values: &[(&str, &str)]) {
        let map: std::collections::BTreeMap<&str, &str> = values.iter().copied().collect();
        let sealed = self
            .secret_key
            .seal(&serde_json::to_vec(&map).unwrap())
            .unwrap();
        let record = stevedore_store::ConnectionRecord {
            name: name.to_owned(),
            description: String::new(),
            keys: map.keys().map(|k| k.to_string()).collect(),
            sealed,
        };
        self.store.put_connection(&record).await.unwrap();
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// Triggers a manual run of `job_id` as `stevedore jobs trigger` does.
    pub async fn trigger(&self, job_id: &str) -> RunRecord {
        self.trigger_with(job_id, serde_json::Map::new()).await
    }

    /// [`Harness::trigger`] with params overriding the job's.
    pub async fn trigger_with(
        &self,
        job_id: &str,
        params: serde_json::Map<String, serde_json::Value>,
    ) -> RunRecord {
        let found = load_jobs_dir(&self.jobs_dir());
        let loaded = found
            .get(job_id)
            .unwrap_or_else(|| panic!("job {job_id} not loadable: {:?}", found.errors));
        self.store
            .upsert_job(
                &loaded.job.id,
                &loaded.job.version,
                &loaded.path.display().to_string(),
                &loaded.source,
            )
            .await
            .unwrap();
        trigger_manual(self.store.as_ref(), &loaded.job, &params, self.now())
            .await
            .unwrap()
    }

    /// Waits for the run to finish, failing the test after `limit` (on a scripted harness,
    /// `limit` on its clock, moved on meanwhile).
    pub async fn wait_run(&self, run_id: &str, limit: Duration) -> RunRecord {
        let deadline = tokio::time::Instant::now() + limit;
        let clock_deadline = self.now() + limit;
        loop {
            let run = self.store.get_run(run_id).await.unwrap();
            if run.state.is_finished() {
                return run;
            }
            if tokio::time::Instant::now() > deadline || self.now() > clock_deadline {
                let states = self.store.task_instances(run_id).await.unwrap();
                panic!("run {run_id} did not finish within {limit:?}: {run:?}\n{states:#?}");
            }
            match self.scripted {
                Some(_) => self.step(CLOCK_STEP).await,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn tries(&self, run_id: &str, task_id: &str) -> Vec<TryRecord> {
        self.store.tries(run_id, task_id).await.unwrap()
    }

    /// `(stream, text)` of every line of a try, in order.
    pub async fn log_lines(&self, attempt: &TryRecord) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .logs
                .log_page(attempt.try_id, after, 100_000)
                .await
                .unwrap()
                .lines;
            let Some(last) = page.last() else {
                return lines;
            };
            after = Some(last.seq);
            lines.extend(
                page.into_iter()
                    .map(|line| (line.stream.as_str().to_owned(), line.text)),
            );
        }
    }

    pub async fn outputs(&self, run_id: &str) -> HashMap<(String, String), serde_json::Value> {
        self.store
            .outputs(run_id)
            .await
            .unwrap()
            .into_iter()
            .map(|(t, k, v)| ((t, k), v))
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("scheduler task panicked");
        }
    }
}

/// Containers (running or not) that carry the run's label.
pub async fn containers_of_run(run_id: &str) -> Vec<String> {
    let docker = DockerBackend::from_env().expect("docker client");
    let label = format!("{LABEL_RUN}={run_id}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .client()
        .expect("docker client")
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Waits (up to `within`) until no container carries the run's label: a try's exited
/// container is removed right after its end is recorded, so the two are not one instant.
pub async fn wait_containers_gone(run_id: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = containers_of_run(run_id).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers of run {run_id} left after {within:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
