//! Test harness for end-to-end tests: a scheduler on a fresh SQLite store and a jobs folder
//! of the test's own, running against the real Docker engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use chrono::Utc;
use stevedore_backend::{Backend, DockerBackend, ProcessBackend, LABEL_RUN};
use stevedore_ops::jobs_dir::load_jobs_dir;
use stevedore_ops::runs::trigger_manual;
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::secrets::SecretKey;
use stevedore_store::{RunRecord, SqliteStore, Store, TryRecord};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod nomad_sim;

/// The images every end-to-end test uses, built by `stevedore images build`.
pub const SYNTH: &str = "stevedore/synth:0.1.0";
pub const SHELL: &str = "stevedore/shell-transform:0.1.1";

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

/// What `synth count --lines N` prints: `out 1` .. `out N` on stdout, and `err n` on stderr
/// for every third n.
pub fn counted(lines: u32) -> (Vec<String>, Vec<String>) {
    (
        (1..=lines).map(|n| format!("out {n}")).collect(),
        (1..=lines)
            .filter(|n| n % 3 == 0)
            .map(|n| format!("err {n}"))
            .collect(),
    )
}

/// The texts of one stream's lines, in order.
pub fn stream_lines(
    lines: &[(stevedore_backend::Stream, String)],
    stream: stevedore_backend::Stream,
) -> Vec<String> {
    lines
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, text)| text.clone())
        .collect()
}

/// The label every container of a [`Harness`] carries, with the harness's own id.
const TEST_LABEL: &str = "io.stevedore.test";

fn test_id(dir: &tempfile::TempDir) -> String {
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
}

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
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs_dir).unwrap();
        for (name, text) in jobs {
            std::fs::write(jobs_dir.join(name), text).unwrap();
        }
        Harness::run_in(dir, backends, SecretKey::generate().unwrap()).await
    }

    /// A scheduler on a folder prepared beforehand (its `stevedore.db` and `jobs/`), for a
    /// test that must set the store up before any scheduling pass can see it.
    pub async fn start_in(dir: tempfile::TempDir) -> Harness {
        require_images().await;
        init_logging();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        Harness::run_in(dir, vec![backend], SecretKey::generate().unwrap()).await
    }

    async fn run_in(
        dir: tempfile::TempDir,
        mut backends: Vec<Arc<dyn Backend>>,
        secret_key: SecretKey,
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
        // Tests leave nothing behind: workspaces go as soon as their run has finished.
        config.workspace_retention = Duration::ZERO;
        config.workspace_sweep_every = Duration::from_millis(500);
        let process: Arc<dyn Backend> = Arc::new(ProcessBackend::new(dir.path().join("process")));
        let kept = backends.clone();
        backends.push(process);
        let scheduler = Scheduler::new(store.clone(), backends, config);
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
            secret_key,
            shutdown: Some(shutdown),
            handle: Some(handle),
            backends: kept,
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
        Harness::run_in(dir, backends, self.secret_key.clone()).await
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
        let mut lines = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .logs(attempt.try_id, after, 100_000)
                .await
                .unwrap();
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
        Registry::start_with(None)
    }

    /// A registry that asks for this user and password (htpasswd, bcrypt) on every request.
    pub fn start_with_login(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {address}}}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            text.push_str(&format!(
                "auth: {{htpasswd: {{realm: stevedore-test, path: {}}}}}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
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
        // 401 is the answer of a registry that asks for a login.
        matches!(
            try_http("GET", &self.address, "/v2/", &[]),
            Ok((200 | 401, _, _))
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 exchange over a TCP socket: `(status, headers, body)`. Enough to drive
/// the demo API and the registry without an HTTP client library in the tests.
pub fn http(
    method: &str,
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    try_http(method, address, path, headers)
        .unwrap_or_else(|e| panic!("{method} http://{address}{path}: {e}"))
}

/// [`http`], with connection errors returned rather than failing the test.
pub fn try_http(
    method: &str,
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, HashMap<String, String>, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// The demo SaaS API (`images/demo-api`) in a container on a free 127.0.0.1 port, removed
/// on drop.
pub struct DemoApi {
    pub address: String,
    container: String,
}

impl DemoApi {
    pub fn start(records: usize) -> DemoApi {
        let output = std::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "-p",
                "127.0.0.1::8080",
                "-e",
                &format!("DEMO_API_RECORDS={records}"),
                "stevedore/demo-api:0.1.1",
            ])
            .output()
            .expect("docker run");
        assert!(
            output.status.success(),
            "cannot start the demo API (run `stevedore images build`): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let container = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let port = std::process::Command::new("docker")
            .args(["port", &container, "8080"])
            .output()
            .expect("docker port");
        let port = String::from_utf8_lossy(&port.stdout);
        let address = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .expect("published port")
            .trim()
            .to_owned();
        let api = DemoApi { address, container };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = matches!(
                try_http("GET", &api.address, "/health", &[]),
                Ok((200, _, _))
            );
            if ready {
                return api;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo API did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl DemoApi {
    /// The API's base URL as other containers on the default bridge reach it.
    pub fn container_url(&self) -> String {
        let output = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                &self.container,
            ])
            .output()
            .expect("docker inspect");
        format!(
            "http://{}:8080",
            String::from_utf8_lossy(&output.stdout).trim()
        )
    }

    /// How many requests of `method path` answered `status`, from the API's own log.
    pub fn requests(&self, method: &str, path: &str, status: u16) -> usize {
        let output = std::process::Command::new("docker")
            .args(["logs", &self.container])
            .output()
            .expect("docker logs");
        let wanted = format!("{method} {path} -> {status}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.trim() == wanted)
            .count()
    }
}

impl Drop for DemoApi {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
    }
}

/// A real PostgreSQL server (Debian's package) in a temporary folder, as the warehouse. It
/// listens on 127.0.0.1 and on the Docker bridge's gateway address, so containers reach it
/// at [`Postgres::container_host`]. Stopped on drop.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("these tests need PostgreSQL (scripts/setup.sh installs Debian's postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .max()
            .expect("no PostgreSQL server binaries under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = |program: &str, args: &[&str]| {
            let output = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join(program))
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                output.status.success(),
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        // The server refuses to run as root: the folder belongs to the postgres user.
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let data = dir.path().join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let gateway = docker_gateway();
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .unwrap();
        use std::io::Write;
        writeln!(hba, "host all all {gateway}/16 trust").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1,{gateway} -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        Postgres { port, bin, dir }
    }

    /// Restarts the server (a fast shutdown, as a package upgrade or a failover would):
    /// every open connection is cut.
    pub fn restart(&self) {
        let data = self.dir.path().join("data");
        // With its log in a file: a server writing to pg_ctl's output would keep the pipe
        // open, and this call would never return.
        let log = self.dir.path().join("server.log");
        let output = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-m", "fast", "-w", "restart"])
            .output()
            .expect("pg_ctl restart");
        assert!(
            output.status.success(),
            "pg_ctl restart failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The address containers use to reach the server.
    pub fn container_host(&self) -> String {
        docker_gateway()
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn query(&self, sql: &str) -> String {
        let output = std::process::Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

/// The default bridge's gateway: this host as containers see it.
pub fn docker_gateway() -> String {
    let output = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if gateway.is_empty() {
        "172.17.0.1".to_owned()
    } else {
        gateway
    }
}

/// Pushes `source` (a local image) as `repository:tag` and returns its registry digest.
pub async fn push_image(
    docker: &bollard::Docker,
    source: &str,
    repository: &str,
    tag: &str,
) -> String {
    push_image_as(docker, source, repository, tag, Default::default()).await
}

/// [`push_image`] with credentials, for a registry that asks for a login.
pub async fn push_image_as(
    docker: &bollard::Docker,
    source: &str,
    repository: &str,
    tag: &str,
    credentials: bollard::auth::DockerCredentials,
) -> String {
    use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
    use futures_util::StreamExt;
    docker
        .tag_image(
            source,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repository)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("tag {source} as {repository}:{tag}: {e}"));
    let mut push = docker.push_image(
        repository,
        Some(PushImageOptionsBuilder::default().tag(tag).build()),
        Some(credentials),
    );
    while let Some(step) = push.next().await {
        step.expect("push to the test registry");
    }
    // Each push of a new image adds its digest; find the one of this tag's image.
    let inspected = docker
        .inspect_image(&format!("{repository}:{tag}"))
        .await
        .unwrap();
    inspected
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")).map(str::to_owned))
        .expect("pushed image has a registry digest")
}

/// The registry address the repository's job files name (the quickstart's registry).
pub const QUICKSTART_REGISTRY: &str = "127.0.0.1:5000";

/// What the SaaS API → warehouse pipeline (`jobs/charges_to_warehouse.yaml`) needs, started
/// on this machine for one test: the demo API, a PostgreSQL warehouse, and a registry that
/// holds the integration images.
pub struct PipelineServices {
    pub api: DemoApi,
    pub warehouse: Postgres,
    pub registry: Registry,
    pushed: std::sync::Mutex<Vec<String>>,
}

impl PipelineServices {
    pub fn start(records: usize) -> PipelineServices {
        PipelineServices {
            api: DemoApi::start(records),
            warehouse: Postgres::start(),
            registry: Registry::start(),
            pushed: Default::default(),
        }
    }

    /// `text` (a job file) with the quickstart registry's address replaced by this test's
    /// registry, after pushing every image it names from there to it (from the local image
    /// of the same name, as `stevedore images build --push` would).
    pub async fn job(&self, text: &str) -> String {
        let prefix = format!("{QUICKSTART_REGISTRY}/");
        let docker = DockerBackend::from_env().unwrap().client().unwrap();
        for word in text.split_whitespace() {
            let Some(local) = word.strip_prefix(&prefix) else {
                continue;
            };
            let (name, tag) = local.rsplit_once(':').expect("a tagged image");
            let repository = format!("{}/{name}", self.registry.address);
            push_image(&docker, local, &repository, tag).await;
            self.pushed
                .lock()
                .unwrap()
                .push(format!("{repository}:{tag}"));
        }
        text.replace(&prefix, &format!("{}/", self.registry.address))
    }

    /// A scheduler with the `demo_api` and `warehouse` connections pointing at these
    /// services, given the job files only once those exist (they are read at the next
    /// sync), so no try can start without them.
    pub async fn harness(&self, jobs: &[(&str, &str)]) -> Harness {
        let harness = Harness::start(&[]).await;
        let api_url = self.api.container_url();
        let api = [
            ("API_BASE_URL", api_url.as_str()),
            ("API_TOKEN", "demo-token"),
        ];
        harness.add_connection("demo_api", &api).await;
        let port = self.warehouse.port.to_string();
        let host = self.warehouse.container_host();
        let values = [
            ("PGHOST", host.as_str()),
            ("PGPORT", port.as_str()),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "postgres"),
        ];
        harness.add_connection("warehouse", &values).await;
        for (file, text) in jobs {
            std::fs::write(harness.jobs_dir().join(file), text).unwrap();
        }
        harness
    }
}

impl Drop for PipelineServices {
    fn drop(&mut self) {
        for image in self.pushed.lock().unwrap().iter() {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", image])
                .output();
        }
    }
}

/// A second Docker engine of the test's own: its own `dockerd` with its own socket, data root,
/// exec root, containerd namespace and bridge interface (no NAT: its containers reach
/// nothing outside), and the images it is given copied from the main engine. It can be
/// restarted; it is stopped, and its folder and bridge removed, on drop.
///
/// Never `--bridge none`: a `dockerd` started so deletes the host's `docker0`, the main
/// engine's bridge.
pub struct SecondEngine {
    /// Its unix socket (plain, for the test's own `docker` commands).
    pub host: String,
    /// With [`SecondEngine::start_tls`]: its `tcp://127.0.0.1:PORT` endpoint, which takes
    /// only clients with a certificate of the test's CA, and the folder of the client's
    /// files (`ca.pem`, `cert.pem`, `key.pem`, the docker CLI's layout).
    pub tls: Option<(String, std::path::PathBuf)>,
    dir: tempfile::TempDir,
    bridge: String,
    child: std::process::Child,
}

impl SecondEngine {
    pub fn start(images: &[&str]) -> SecondEngine {
        SecondEngine::start_with(images, false)
    }

    /// A second engine that also listens on TCP with TLS, verifying its clients
    /// (`dockerd --tlsverify`), with certificates of a CA the test makes (openssl).
    pub fn start_tls(images: &[&str]) -> SecondEngine {
        SecondEngine::start_with(images, true)
    }

    fn start_with(images: &[&str], tls: bool) -> SecondEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let tls = tls.then(|| make_certificates(dir.path()));
        // A bridge of its own, on a 10.213.N.0/24 no interface uses yet.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bridge = format!(
            "stv{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let addresses = std::process::Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .expect("these tests need iproute2 (`ip`)");
        let addresses = String::from_utf8_lossy(&addresses.stdout).into_owned();
        let subnet = (100..250)
            .find(|n| !addresses.contains(&format!("10.213.{n}.")))
            .expect("no free 10.213.N.0/24 for the second engine's bridge");
        let ip = |args: &[&str]| {
            let output = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("these tests need iproute2 (`ip`)");
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        std::fs::write(dir.path().join("bridge"), &bridge).unwrap();
        let child = SecondEngine::spawn(dir.path());
        let engine = SecondEngine {
            host: format!("unix://{}/docker.sock", dir.path().display()),
            tls,
            dir,
            bridge,
            child,
        };
        engine.wait_ready();
        for image in images {
            let save = std::process::Command::new("docker")
                .args(["save", image])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("docker save");
            let load = std::process::Command::new("docker")
                .args(["-H", &engine.host, "load", "-q"])
                .stdin(save.stdout.unwrap())
                .output()
                .expect("docker load");
            assert!(
                load.status.success(),
                "cannot copy {image} to the second engine: {}",
                String::from_utf8_lossy(&load.stderr)
            );
        }
        engine
    }

    fn spawn(dir: &std::path::Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        // containerd namespaces are letters, digits and single separators.
        let namespace: String = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let namespace = format!("stevedoretest{}", namespace.to_lowercase());
        std::process::Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}/docker.sock", dir.display()))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--bridge")
            .arg(std::fs::read_to_string(dir.join("bridge")).unwrap())
            .args(["--iptables=false", "--ip-masq=false"])
            .args(tls_args(dir))
            .args(["--containerd-namespace", &namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("these tests start a second Docker engine: dockerd must be installed")
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let info = std::process::Command::new("docker")
                .args([
                    "-H",
                    &self.host,
                    "version",
                    "--format",
                    "{{.Server.Version}}",
                ])
                .output()
                .unwrap();
            if info.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second engine did not start: {}",
                std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Stops the engine (SIGTERM: its containers are stopped, as on a host reboot or an
    /// engine upgrade), waits for it to exit, and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.child = SecondEngine::spawn(self.dir.path());
        self.wait_ready();
    }

    /// Stops the engine and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// The host goes away at once (a crashed machine): its `dockerd`, containerd and shims
    /// are killed.
    pub fn crash(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-9", "-f", &self.dir.path().display().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// `docker -H <this engine> ARGS`.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .output()
            .expect("docker")
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in
/// `dir/tls`; the TCP port the engine listens on with them goes to `dir/tls/port`. Returns
/// the engine's TLS endpoint and the folder of the client's files.
pub fn make_certificates(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let tls = dir.join("tls");
    let client = tls.join("client");
    std::fs::create_dir_all(&client).unwrap();
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .current_dir(&tls)
            .args(args)
            .output()
            .expect("the TLS tests need openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=stevedore test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        tls.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    std::fs::write(tls.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=stevedore")] {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    subject,
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}-cert.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    std::fs::copy(tls.join("ca.pem"), client.join("ca.pem")).unwrap();
    std::fs::copy(tls.join("client-cert.pem"), client.join("cert.pem")).unwrap();
    std::fs::copy(tls.join("client-key.pem"), client.join("key.pem")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(tls.join("port"), port.to_string()).unwrap();
    (format!("tcp://127.0.0.1:{port}"), client)
}

/// The `dockerd` arguments of an engine made with TLS (none otherwise).
fn tls_args(dir: &std::path::Path) -> Vec<String> {
    let tls = dir.join("tls");
    let Ok(port) = std::fs::read_to_string(tls.join("port")) else {
        return Vec::new();
    };
    let file = |name: &str| tls.join(name).display().to_string();
    vec![
        "--tlsverify".to_owned(),
        "--tlscacert".to_owned(),
        file("ca.pem"),
        "--tlscert".to_owned(),
        file("server-cert.pem"),
        "--tlskey".to_owned(),
        file("server-key.pem"),
        "--host".to_owned(),
        format!("tcp://127.0.0.1:{port}"),
    ]
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Ok(listed) = std::process::Command::new("docker")
            .args(["-H", &self.host, "ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&listed.stdout).lines() {
                let _ = std::process::Command::new("docker")
                    .args(["-H", &self.host, "rm", "-f", id])
                    .output();
            }
        }
        self.stop();
        // Layers may be mounted under the data root while the engine stops: unmount them
        // before the folder goes.
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
