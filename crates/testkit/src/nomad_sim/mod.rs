//! A Nomad API simulator, for testing the `nomad` backend where no Nomad binary can be had.
//! It is test code and never shipped.
//!
//! It serves the endpoints the backend uses, with Nomad's own JSON shapes (the Go field names
//! of Nomad's `api` package, durations and times in nanoseconds), its blocking queries
//! (`index` / `wait`, the `X-Nomad-Index` header), its framed log stream (`{}` heartbeats,
//! base64 `Data`, byte `Offset`s, a followed stream that never ends) and its ACL token
//! header, and it runs each allocation's docker task as a real container on the local Docker
//! engine: logs and exit codes are real. One node (`sim-node-1`, datacenter `dc1`, 4000 MHz,
//! 8192 MB) places tasks by their `Resources`; a task that does not fit waits as a blocked
//! evaluation whose `FailedTGAllocs` say why. It honours `RestartPolicy` and
//! `ReschedulePolicy` (with Nomad's batch defaults when a job omits them), so a backend that
//! left Nomad's retries on would be seen running a try twice. docs/backends.md lists the
//! Nomad sources and docs each part follows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

mod files;
mod hcl;
mod http;
mod logs;
mod placement;
mod runner;

use files::*;
use http::*;
use logs::*;
use placement::*;
use runner::*;

pub const NODE_NAME: &str = "sim-node-1";

pub const NODE_ID: &str = "5a1e0000-0000-4000-8000-000000000001";

pub const DATACENTER: &str = "dc1";

pub const NODE_CPU_MHZ: u64 = 4000;

pub const NODE_MEMORY_MB: u64 = 8192;

/// Labels every container the simulator starts carries, for cleaning up.
pub const SIM_LABEL: &str = "io.stevedore.nomad-sim";

/// A running simulator; stops (and removes its containers) when dropped.
pub struct NomadSim {
    pub address: String,
    sim: Arc<Sim>,
    server: tokio::task::JoinHandle<()>,
}

/// A client node: its name, ID and `meta` (for constraints), and where its allocations'
/// directories are (nothing of one node's is seen by another's tasks).
pub(super) struct Node {
    name: String,
    id: String,
    meta: BTreeMap<String, String>,
    dir: std::path::PathBuf,
}

struct Sim {
    docker: Docker,
    nodes: Vec<Node>,
    /// The nodes' folders, removed with the simulator.
    _dir: tempfile::TempDir,
    token: Option<String>,
    /// The namespace capabilities the token's policy grants (`None`: every one).
    capabilities: Option<Vec<String>>,
    /// Bumped on every change; blocking queries wait on it.
    index: watch::Sender<u64>,
    state: Mutex<Inner>,
    instance: String,
    /// A fault: each log stream breaks (mid-frame) after this many data frames; 0: never.
    break_logs_after: std::sync::atomic::AtomicUsize,
    /// Log streams cut by that fault.
    cut_logs: std::sync::atomic::AtomicUsize,
    /// A fault: the servers have lost their leader; every call fails with a 500.
    outage: std::sync::atomic::AtomicBool,
    /// Blocking queries answered so far.
    queries: std::sync::atomic::AtomicUsize,
    /// A fault: the servers have no connection to the client; its log streams are cut and
    /// refused, while the servers answer for its allocations.
    client_away: std::sync::atomic::AtomicBool,
    /// Heartbeat frames sent on log streams.
    heartbeats: std::sync::atomic::AtomicUsize,
    /// Log files of allocations placed from now on: bytes per file and files kept (`None`:
    /// the task's `LogConfig`, else Nomad's defaults, 10 files of 10 MB).
    log_rotation: Mutex<Option<(usize, usize)>>,
    /// A fault: the client's prestart hook of this name fails every task with this error.
    failing_hook: Mutex<Option<(String, String)>>,
    outage_began: Notify,
}

/// The index of the allocations table: the last index that wrote an allocation, 0 while
/// none has been.
fn allocs_index(state: &Inner) -> u64 {
    state
        .allocs
        .values()
        .map(|alloc| alloc.modify_index)
        .max()
        .unwrap_or(0)
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<(String, String), SimJob>,
    /// Every job as it was registered, purged ones included, by job ID.
    registered: BTreeMap<String, Value>,
    allocs: BTreeMap<String, SimAlloc>,
    evals: Vec<Value>,
    /// Jobs waiting for room on the node, in order.
    blocked: Vec<(String, String)>,
    /// Containers started per job ID (each run of a task, restarts included).
    runs: HashMap<String, u32>,
    volumes: Vec<String>,
    /// Namespaces created besides `default`, which every cluster has.
    namespaces: Vec<String>,
    /// CPU and memory taken on each node, by index.
    used: Vec<(u64, u64)>,
}

struct SimJob {
    job: Value,
    stopped: bool,
    create_index: u64,
    modify_index: u64,
    reschedules_left: u64,
}

struct SimAlloc {
    id: String,
    eval_id: String,
    namespace: String,
    job_id: String,
    group: String,
    task: String,
    client_status: String,
    desired_status: String,
    client_description: String,
    task_state: String,
    failed: bool,
    restarts: u64,
    started_at: Option<String>,
    finished_at: Option<String>,
    events: Vec<Value>,
    create_index: u64,
    modify_index: u64,
    create_time: i64,
    cpu: u64,
    memory: u64,
    /// The node it is placed on, by index.
    node: usize,
    logs: [Arc<Log>; 2],
    stop: Arc<Notify>,
    stopping: bool,
    /// Its node went away: its client reports nothing more, and Nomad replaces it.
    lost: bool,
    /// Its client garbage-collected it (ended, its directory deleted): the servers still
    /// know it, its files are gone.
    collected: bool,
    /// Why it is evicted (preempted), if it is: Nomad kills it and replaces it.
    evicted: Option<String>,
}

/// One task log as Nomad's logmon writes it (`client/logmon/logging/rotator.go`), kept in
/// memory: numbered files `alloc/logs/<task>.<stdout|stderr>.<n>`, the next begun once the
/// current one is full (at a line's end where a line fits), only the newest `max_files`
/// kept. A reader holds the file it reads, as an open descriptor keeps a deleted file.
struct Log {
    /// `None` until logmon creates the first file, as the task starts.
    files: Mutex<Option<VecDeque<LogFile>>>,
    grew: Notify,
    file_bytes: usize,
    max_files: usize,
}

#[derive(Clone)]
struct LogFile {
    index: u64,
    data: Arc<Mutex<Vec<u8>>>,
}

impl LogFile {
    fn new(index: u64) -> LogFile {
        LogFile {
            index,
            data: Default::default(),
        }
    }

    fn len(&self) -> usize {
        self.data.lock().unwrap().len()
    }
}

impl Log {
    fn new(file_bytes: usize, max_files: usize) -> Log {
        Log {
            files: Mutex::new(None),
            grew: Notify::new(),
            file_bytes: file_bytes.max(1),
            max_files: max_files.max(1),
        }
    }

    fn create(&self) {
        self.files
            .lock()
            .unwrap()
            .get_or_insert_with(|| VecDeque::from([LogFile::new(0)]));
        self.grew.notify_waiters();
    }

    fn append(&self, bytes: &[u8]) {
        let mut files = self.files.lock().unwrap();
        let files = files.get_or_insert_with(|| VecDeque::from([LogFile::new(0)]));
        let mut rest = bytes;
        while !rest.is_empty() {
            let current = files.back().expect("a log file").clone();
            let mut data = current.data.lock().unwrap();
            let room = self.file_bytes.saturating_sub(data.len());
            let n = if rest.len() <= room {
                rest.len()
            } else if let Some(newline) = rest[..room].iter().rposition(|b| *b == b'\n') {
                newline + 1
            } else if rest.len() > self.file_bytes {
                room // no line fits in any file: fill this one
            } else {
                0
            };
            data.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            drop(data);
            if !rest.is_empty() {
                files.push_back(LogFile::new(current.index + 1));
                while files.len() > self.max_files {
                    files.pop_front();
                }
            }
        }
        self.grew.notify_waiters();
    }

    /// The files on disk, oldest first; `None` before the first is created.
    fn list(&self) -> Option<Vec<LogFile>> {
        self.files
            .lock()
            .unwrap()
            .as_ref()
            .map(|files| files.iter().cloned().collect())
    }
}

/// The file to read from and where, as `client/fs_endpoint.go`'s `findClosest` picks it:
/// the first file whose index is at least `index` (else the newest), then `offset` bytes on
/// through the files after it (back through the files before it when negative), clamped to
/// the ends.
fn find_closest(files: &[LogFile], index: u64, offset: i64) -> Option<(usize, u64)> {
    if files.is_empty() {
        return None;
    }
    let mut at = files
        .iter()
        .position(|f| f.index >= index)
        .unwrap_or(files.len() - 1);
    let mut offset = offset;
    loop {
        let size = files[at].len() as i64;
        if offset == 0 {
            break;
        } else if offset < 0 {
            if size + offset >= 0 {
                offset += size;
                break;
            } else if at == 0 {
                offset = 0;
                break;
            }
            offset += size;
            at -= 1;
        } else if offset <= size {
            break;
        } else if at == files.len() - 1 {
            offset = size;
            break;
        } else {
            offset -= size;
            at += 1;
        }
    }
    Some((at, offset as u64))
}

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn uuid() -> String {
    let bytes: [u8; 16] = rand_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn rand_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_i64(now_nanos());
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    out
}

/// A task event as Nomad's `api.TaskEvent` has it (deprecated flat fields included).
fn event(kind: &str, message: &str, details: Value) -> Value {
    let details = if details.is_null() {
        json!({})
    } else {
        details
    };
    let exit_code = details
        .get("exit_code")
        .and_then(|c| c.as_str())
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(0);
    let fails = details.get("fails_task").is_some();
    json!({
        "Type": kind,
        "Time": now_nanos(),
        "Message": "",
        "DisplayMessage": message,
        "Details": details,
        "FailsTask": fails,
        "RestartReason": "", "SetupError": "", "DriverError": "", "DriverMessage": "",
        "ExitCode": exit_code, "Signal": 0, "StopReason": "", "KillTimeout": 0,
        "KillError": "", "StartDelay": 0, "DownloadError": "", "ValidationError": "",
        "DiskLimit": 0, "DiskSize": 0, "FailedSibling": "", "VaultError": "",
        "TaskSignalReason": "", "TaskSignal": "", "GenericSource": "",
    })
}

/// Parses a Go duration as Nomad's `wait` takes it: `30s`, `500ms`, `1m`.
fn go_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => return None,
    })
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, text.to_owned()).into_response()
}

impl NomadSim {
    /// A simulator on 127.0.0.1; with `token`, every call must carry it in `X-Nomad-Token`.
    pub async fn start(token: Option<&str>) -> NomadSim {
        NomadSim::start_with(token, None).await
    }

    /// A simulator whose token's policy grants only these namespace capabilities
    /// (`list-jobs`, `read-job`, `submit-job`, `read-logs`, ...): each endpoint checks the one
    /// Nomad checks, and answers a denial as Nomad does.
    pub async fn start_with_policy(token: &str, capabilities: &[&str]) -> NomadSim {
        NomadSim::start_with(
            Some(token),
            Some(capabilities.iter().map(|c| c.to_string()).collect()),
        )
        .await
    }

    /// A simulator with one client node per entry, each with that `meta` (`sim-node-1`,
    /// `sim-node-2`, ...): a try lands on the first node its constraints and resources allow,
    /// and each node's allocations have directories of their own.
    pub async fn start_with_nodes(token: Option<&str>, nodes: &[&[(&str, &str)]]) -> NomadSim {
        NomadSim::start_full(token, None, nodes).await
    }

    async fn start_with(token: Option<&str>, capabilities: Option<Vec<String>>) -> NomadSim {
        NomadSim::start_full(token, capabilities, &[&[]]).await
    }

    async fn start_full(
        token: Option<&str>,
        capabilities: Option<Vec<String>>,
        nodes: &[&[(&str, &str)]],
    ) -> NomadSim {
        let dir = tempfile::tempdir().expect("the nodes' folders");
        let nodes: Vec<Node> = nodes
            .iter()
            .enumerate()
            .map(|(at, meta)| {
                let name = if at == 0 {
                    NODE_NAME.to_owned()
                } else {
                    format!("sim-node-{}", at + 1)
                };
                let node_dir = dir.path().join(&name);
                std::fs::create_dir_all(&node_dir).unwrap();
                Node {
                    id: if at == 0 {
                        NODE_ID.to_owned()
                    } else {
                        format!("5a1e0000-0000-4000-8000-{:012}", at + 1)
                    },
                    name,
                    meta: meta
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    dir: node_dir,
                }
            })
            .collect();
        let docker = Docker::connect_with_local_defaults().expect("docker client");
        docker
            .ping()
            .await
            .expect("the Nomad simulator runs tasks on the local Docker engine, which must run");
        let state = Inner {
            used: vec![(0, 0); nodes.len()],
            ..Default::default()
        };
        let sim = Arc::new(Sim {
            docker,
            nodes,
            _dir: dir,
            token: token.map(str::to_owned),
            capabilities,
            index: watch::channel(1).0,
            state: Mutex::new(state),
            instance: uuid()[..8].to_owned(),
            break_logs_after: Default::default(),
            cut_logs: Default::default(),
            outage: Default::default(),
            failing_hook: Default::default(),
            queries: Default::default(),
            heartbeats: Default::default(),
            client_away: Default::default(),
            log_rotation: Default::default(),
            outage_began: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/status/leader", get(leader))
            .route("/v1/jobs", get(list_jobs).post(register).put(register))
            .route("/v1/job/{id}", get(read_job).delete(deregister))
            .route("/v1/job/{id}/allocations", get(job_allocations))
            .route("/v1/job/{id}/evaluations", get(job_evaluations))
            .route("/v1/allocation/{id}", get(read_allocation))
            .route("/v1/client/fs/logs/{id}", get(logs))
            .route("/v1/client/fs/ls/{id}", get(list_files))
            .route("/v1/client/fs/cat/{id}", get(cat_file))
            .route("/v1/namespace/{name}", get(read_namespace))
            .layer(axum::middleware::from_fn_with_state(sim.clone(), acl))
            .with_state(sim.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        NomadSim {
            address: format!("http://{address}"),
            sim,
            server,
        }
    }

    /// A fault: from now on every log stream breaks after `frames` data frames, in the middle
    /// of the next frame, as a dropped connection would.
    pub fn break_log_streams_after(&self, frames: usize) {
        self.sim
            .break_logs_after
            .store(frames, std::sync::atomic::Ordering::SeqCst);
    }

    /// A fault: while on, every call fails as Nomad's HTTP API does without a cluster leader
    /// (500 `No cluster leader`); allocations keep running meanwhile, as on real clients.
    /// Makes the client's prestart hook `hook` fail every task from now on with `error`, as
    /// a hook that cannot do its part does (a template that cannot render, a volume that
    /// cannot be claimed).
    pub fn fail_prestart_hook(&self, hook: &str, error: &str) {
        *self.sim.failing_hook.lock().unwrap() = Some((hook.to_owned(), error.to_owned()));
    }

    /// Creates a namespace (`nomad namespace apply`): a job registers only into one that
    /// exists.
    pub fn create_namespace(&self, name: &str) {
        let mut state = self.sim.state.lock().unwrap();
        if !state.has_namespace(name) {
            state.namespaces.push(name.to_owned());
        }
        drop(state);
        self.sim.bump();
    }

    /// Allocations placed from now on rotate their logs every `file_bytes`, keeping
    /// `max_files` files, as logmon does with a task's `LogConfig` (whose least is 1 MB, so
    /// a test would write tens of MB to see a rotation at Nomad's sizes).
    pub fn rotate_logs(&self, file_bytes: usize, max_files: usize) {
        *self.sim.log_rotation.lock().unwrap() = Some((file_bytes, max_files));
    }

    /// The client garbage-collects the ended allocations of `job_id` (as it does past
    /// `gc_max_allocs`, or short of disk: `client/gc.go`): their logs are gone, the servers
    /// still answer for them.
    pub fn collect_on_client(&self, job_id: &str) {
        let mut state = self.sim.state.lock().unwrap();
        for alloc in state.allocs.values_mut() {
            if alloc.job_id == job_id && is_terminal(alloc) {
                alloc.collected = true;
            }
        }
    }

    /// A fault: while on, the servers have no connection to the client (its RPC connection
    /// dropped; it still runs its tasks): log streams are cut, and asked for again they
    /// answer 404 `No path to node` (nomad/client_fs_endpoint.go); allocations are answered.
    pub fn disconnect_client(&self, on: bool) {
        self.sim
            .client_away
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Heartbeat frames (`{}`) sent on log streams so far.
    pub fn log_heartbeats(&self) -> usize {
        self.sim
            .heartbeats
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many blocking queries the simulator has answered (a client that spins asks
    /// thousands).
    pub fn blocking_queries(&self) -> usize {
        self.sim.queries.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The node goes away: every running allocation is lost (its client reports no more
    /// events; the container is gone) and, as `scheduler/reconciler` does for a lost node
    /// whatever the reschedule policy, replaced unless its job is stopped.
    pub fn lose_node(&self) {
        self.mark_running(|alloc| alloc.lost = true);
    }

    /// The running allocation of `job_id` is preempted by a higher-priority one: evicted
    /// (`DesiredStatus` `evict`), its task killed, and, being a batch allocation, replaced
    /// unless its job is stopped.
    pub fn preempt(&self, job_id: &str) {
        let preemptor = uuid();
        let job_id = job_id.to_owned();
        let mut state = self.sim.state.lock().unwrap();
        for alloc in state.allocs.values_mut() {
            if alloc.job_id == job_id && !is_terminal(alloc) {
                alloc.evicted = Some(format!("Preempted by alloc ID {preemptor}"));
                alloc.desired_status = "evict".to_owned();
                alloc.stop.notify_one();
            }
        }
        drop(state);
        self.sim.bump();
    }

    fn mark_running(&self, change: impl Fn(&mut SimAlloc)) {
        let mut state = self.sim.state.lock().unwrap();
        for alloc in state.allocs.values_mut() {
            if !is_terminal(alloc) {
                change(alloc);
                alloc.stop.notify_one();
            }
        }
        drop(state);
        self.sim.bump();
    }

    pub fn set_outage(&self, on: bool) {
        self.sim
            .outage
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            // Calls waiting in blocking queries and log streams fail too.
            self.sim.outage_began.notify_waiters();
        }
    }

    /// How many log streams [`NomadSim::break_log_streams_after`] has cut.
    pub fn cut_log_streams(&self) -> usize {
        self.sim.cut_logs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many containers the tasks of a Nomad job have run (restarts included).
    pub fn runs(&self, job_id: &str) -> u32 {
        self.sim
            .state
            .lock()
            .unwrap()
            .runs
            .get(job_id)
            .copied()
            .unwrap_or(0)
    }

    /// The registered jobs' IDs.
    pub fn jobs(&self) -> Vec<String> {
        let state = self.sim.state.lock().unwrap();
        state.jobs.keys().map(|(_, id)| id.clone()).collect()
    }

    /// A job as it was last registered, even once it has been purged.
    pub fn registered_job(&self, job_id: &str) -> Option<Value> {
        let state = self.sim.state.lock().unwrap();
        state.registered.get(job_id).cloned()
    }

    /// A registered job as the simulator holds it.
    pub fn job(&self, job_id: &str) -> Option<Value> {
        let state = self.sim.state.lock().unwrap();
        state
            .jobs
            .iter()
            .find(|((_, id), _)| id == job_id)
            .map(|(_, job)| job.job.clone())
    }

    /// Allocation IDs of a job, newest last.
    pub fn allocations(&self, job_id: &str) -> Vec<String> {
        let state = self.sim.state.lock().unwrap();
        let mut allocs: Vec<&SimAlloc> = state
            .allocs
            .values()
            .filter(|a| a.job_id == job_id)
            .collect();
        allocs.sort_by_key(|a| a.create_index);
        allocs.iter().map(|a| a.id.clone()).collect()
    }
}

impl Drop for NomadSim {
    fn drop(&mut self) {
        self.server.abort();
        // Containers still running and the volumes tasks mounted go with the simulator.
        let instance = self.sim.instance.clone();
        let volumes = self.sim.state.lock().unwrap().volumes.clone();
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker rm -f $(docker ps -aq --filter label={SIM_LABEL}={instance}) >/dev/null 2>&1; docker volume rm {} >/dev/null 2>&1; true",
                volumes.join(" ")
            ))
            .status();
    }
}

async fn acl(
    State(sim): State<Arc<Sim>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if sim.outage.load(std::sync::atomic::Ordering::SeqCst) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
    }
    // Nomad's status endpoints need no token; everything else does (with ACLs on).
    let open = request.uri().path().starts_with("/v1/status/");
    if let Some(token) = sim.token.as_ref().filter(|_| !open) {
        let given = request
            .headers()
            .get("X-Nomad-Token")
            .and_then(|v| v.to_str().ok());
        if given != Some(token.as_str()) {
            return error(StatusCode::FORBIDDEN, "Permission denied");
        }
    }
    if let (Some(granted), Some(needed)) = (&sim.capabilities, capability(&request)) {
        // `AllowNamespace`: any capability in the namespace will do.
        let allowed = if needed == "any" {
            !granted.is_empty()
        } else {
            granted.iter().any(|c| c == needed)
        };
        if !allowed {
            // The HTTP endpoints answer `structs.ErrPermissionDenied` with 403; the log
            // stream, a streaming RPC to the client, fails with a 500 whose body says it
            // (`command/agent/fs_endpoint.go`, `streamFile`: the RPC's error is not coded).
            let status = if needed == "read-logs" {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::FORBIDDEN
            };
            return error(status, "Permission denied");
        }
    }
    next.run(request).await
}

/// The namespace capability Nomad checks for a request (`nomad/job_endpoint.go`: `List`
/// list-jobs, `GetJob`, `Allocations`, `Evaluations` read-job, `Register`, `Deregister`
/// submit-job; `nomad/alloc_endpoint.go`: `GetAlloc` read-job; `client/fs_endpoint.go`:
/// `logs` read-logs).
fn capability(request: &axum::extract::Request) -> Option<&'static str> {
    let path = request.uri().path();
    let method = request.method();
    if path.starts_with("/v1/status/") {
        return None;
    }
    Some(if path.starts_with("/v1/client/fs/logs/") {
        "read-logs"
    } else if path.starts_with("/v1/client/fs/") {
        // client/fs_endpoint.go: List, Stat, Stream (cat) need read-fs.
        "read-fs"
    } else if path.starts_with("/v1/namespace/") {
        // nomad/namespace_endpoint.go `GetNamespace`: `AllowNamespace`.
        "any"
    } else if path == "/v1/jobs" {
        if method == axum::http::Method::GET {
            "list-jobs"
        } else {
            "submit-job"
        }
    } else if path.starts_with("/v1/job/") && method == axum::http::Method::DELETE {
        "submit-job"
    } else {
        "read-job"
    })
}

type Params = Query<HashMap<String, String>>;

fn namespace(params: &HashMap<String, String>) -> String {
    params
        .get("namespace")
        .cloned()
        .unwrap_or_else(|| "default".to_owned())
}

impl Inner {
    fn has_namespace(&self, name: &str) -> bool {
        name == "default" || self.namespaces.iter().any(|n| n == name)
    }
}

impl Sim {
    fn bump(&self) -> u64 {
        let mut next = 0;
        self.index.send_modify(|index| {
            *index += 1;
            next = *index;
        });
        next
    }

    fn current(&self) -> u64 {
        *self.index.borrow()
    }

    /// A blocking query: waits until the index passes `index` (or `wait` ends), then
    /// answers with `read` and the current index in `X-Nomad-Index`.
    async fn blocking(
        &self,
        params: &HashMap<String, String>,
        read: impl Fn(&Inner) -> Result<Value, Response>,
    ) -> Response {
        self.blocking_on(params, None, read).await
    }

    /// A blocking query on one table's index (`table`; the latest index of all when `None`),
    /// as `nomad/rpc.go`'s `blockingRPC` runs it: with `index` 0 it answers at once; else it
    /// answers once the table's index passes `index`, or when `wait` (at most 300 s,
    /// `structs.MaxBlockingRPCQueryTime`) ends. The index it answers with is the table's,
    /// which is 0 on a fresh cluster for a table nothing has written yet (`Job.Allocations`
    /// reads `state.Index("allocs")` and does not raise it to 1).
    async fn blocking_on(
        &self,
        params: &HashMap<String, String>,
        table: Option<fn(&Inner) -> u64>,
        read: impl Fn(&Inner) -> Result<Value, Response>,
    ) -> Response {
        let min: u64 = params
            .get("index")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let wait = params
            .get("wait")
            .and_then(|w| go_duration(w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(300));
        let table_index = |sim: &Sim| match table {
            Some(table) => table(&sim.state.lock().unwrap()),
            None => sim.current(),
        };
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut changes = self.index.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        while min > 0 && table_index(self) <= min {
            let seen = self.current();
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, changes.wait_for(|index| *index > seen)) => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = self.outage_began.notified() => break,
            }
        }
        if self.outage.load(std::sync::atomic::Ordering::SeqCst) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
        }
        let index = table_index(self);
        let value = read(&self.state.lock().unwrap());
        match value {
            Ok(value) => {
                let mut headers = HeaderMap::new();
                headers.insert("X-Nomad-Index", HeaderValue::from(index));
                headers.insert("X-Nomad-KnownLeader", HeaderValue::from_static("true"));
                headers.insert("X-Nomad-LastContact", HeaderValue::from_static("0"));
                (headers, Json(value)).into_response()
            }
            Err(response) => response,
        }
    }
}
