//! Test harness for end-to-end tests: a scheduler on a fresh SQLite store and a jobs folder
//! of the test's own, running against the real Docker engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use chrono::Utc;
use stevedore_backend::{Backend, DockerBackend, ProcessBackend, LABEL_RUN};
use stevedore_scheduler::jobs_dir::load_jobs_dir;
use stevedore_scheduler::runs::trigger_manual;
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::{RunRecord, SqliteStore, Store, TryRecord};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The images every end-to-end test uses, built by `stevedore images build`.
pub const SYNTH: &str = "stevedore/synth:0.1.0";
pub const SHELL: &str = "stevedore/shell-transform:0.1.0";

/// The synth integration as a local program, for the `process` backend: the very binary
/// the image holds (built by `images/synth/prepare`).
pub fn synth_command() -> String {
    let path = repo_root().join("images/synth/.build/synth");
    assert!(
        path.is_file(),
        "{} is missing: run `stevedore images build` first",
        path.display()
    );
    path.display().to_string()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("STEVEDORE_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// Fails the test (never skips it) when the engine or the images are missing.
pub async fn require_images() {
    let docker = DockerBackend::from_env().expect("docker client");
    docker
        .health()
        .await
        .expect("these tests need a running Docker engine");
    for image in [SYNTH, SHELL] {
        docker
            .client()
            .expect("docker client")
            .inspect_image(image)
            .await
            .unwrap_or_else(|_| panic!("image {image} is missing: run `stevedore images build` first (scripts/test.sh does)"));
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Harness {
    /// A scheduler on the local engine with these job files.
    pub async fn start(jobs: &[(&str, &str)]) -> Harness {
        require_images().await;
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        Harness::start_with(jobs, backend).await
    }

    pub async fn start_with(jobs: &[(&str, &str)], backend: Arc<dyn Backend>) -> Harness {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs_dir).unwrap();
        for (name, text) in jobs {
            std::fs::write(jobs_dir.join(name), text).unwrap();
        }
        Harness::run_in(dir, backend).await
    }

    async fn run_in(dir: tempfile::TempDir, backend: Arc<dyn Backend>) -> Harness {
        let jobs_dir = dir.path().join("jobs");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(dir.path().join("stevedore.db"))
                .await
                .unwrap(),
        );
        let mut config = SchedulerConfig::new(&jobs_dir);
        config.tick = Duration::from_millis(200);
        config.sync_every = Duration::from_secs(1);
        // Tests leave nothing behind: workspaces go as soon as their run has finished.
        config.workspace_retention = Duration::ZERO;
        config.workspace_sweep_every = Duration::from_millis(500);
        let process: Arc<dyn Backend> = Arc::new(ProcessBackend::new(dir.path().join("process")));
        let scheduler = Scheduler::new(store.clone(), vec![backend, process], config);
        let (shutdown, stop) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
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
            shutdown: Some(shutdown),
            handle: Some(handle),
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
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        Harness::run_in(dir, backend).await
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// Triggers a manual run of `job_id` as `stevedore jobs trigger` does.
    pub async fn trigger(&self, job_id: &str) -> RunRecord {
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
        trigger_manual(
            self.store.as_ref(),
            &loaded.job,
            &serde_json::Map::new(),
            Utc::now(),
        )
        .await
        .unwrap()
    }

    /// Waits for the run to finish, failing the test after `limit`.
    pub async fn wait_run(&self, run_id: &str, limit: Duration) -> RunRecord {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let run = self.store.get_run(run_id).await.unwrap();
            if run.state.is_finished() {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                let states = self.store.task_instances(run_id).await.unwrap();
                panic!("run {run_id} did not finish within {limit:?}: {run:?}\n{states:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn tries(&self, run_id: &str, task_id: &str) -> Vec<TryRecord> {
        self.store.tries(run_id, task_id).await.unwrap()
    }

    /// `(stream, text)` of every line of a try, in order.
    pub async fn log_lines(&self, attempt: &TryRecord) -> Vec<(String, String)> {
        self.store
            .logs(attempt.try_id, None, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|line| (line.stream.as_str().to_owned(), line.text))
            .collect()
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

pub fn read_repo_job(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("jobs").join(name)).expect("repo job file")
}

/// A real registry (Debian's `docker-registry`) on a free 127.0.0.1 port, stopped on drop.
pub struct Registry {
    pub address: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {address}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "these tests need Debian's docker-registry package (scripts/setup.sh installs it)",
            );
        let registry = Registry {
            address,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !registry.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry on {} did not start",
                registry.address
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(&self.address) else {
            return false;
        };
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.address);
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && (response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
