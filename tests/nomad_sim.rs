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

use std::collections::{BTreeMap, HashMap};
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

struct Sim {
    docker: Docker,
    token: Option<String>,
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
    outage_began: Notify,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<(String, String), SimJob>,
    allocs: BTreeMap<String, SimAlloc>,
    evals: Vec<Value>,
    /// Jobs waiting for room on the node, in order.
    blocked: Vec<(String, String)>,
    /// Containers started per job ID (each run of a task, restarts included).
    runs: HashMap<String, u32>,
    volumes: Vec<String>,
    used_cpu: u64,
    used_memory: u64,
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
    logs: [Arc<Log>; 2],
    stop: Arc<Notify>,
    stopping: bool,
}

/// One task log (`alloc/logs/<task>.<stdout|stderr>.0`), kept in memory.
#[derive(Default)]
struct Log {
    data: Mutex<Option<Vec<u8>>>,
    grew: Notify,
}

impl Log {
    fn create(&self) {
        self.data.lock().unwrap().get_or_insert_with(Vec::new);
        self.grew.notify_waiters();
    }
    fn append(&self, bytes: &[u8]) {
        self.data
            .lock()
            .unwrap()
            .get_or_insert_with(Vec::new)
            .extend_from_slice(bytes);
        self.grew.notify_waiters();
    }
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
        let docker = Docker::connect_with_local_defaults().expect("docker client");
        docker
            .ping()
            .await
            .expect("the Nomad simulator runs tasks on the local Docker engine, which must run");
        let sim = Arc::new(Sim {
            docker,
            token: token.map(str::to_owned),
            index: watch::channel(1).0,
            state: Mutex::new(Inner::default()),
            instance: uuid()[..8].to_owned(),
            break_logs_after: Default::default(),
            cut_logs: Default::default(),
            outage: Default::default(),
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
    next.run(request).await
}

type Params = Query<HashMap<String, String>>;

fn namespace(params: &HashMap<String, String>) -> String {
    params
        .get("namespace")
        .cloned()
        .unwrap_or_else(|| "default".to_owned())
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
        let min: u64 = params
            .get("index")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let wait = params
            .get("wait")
            .and_then(|w| go_duration(w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        let mut changes = self.index.subscribe();
        if min > 0 {
            tokio::select! {
                _ = tokio::time::timeout(wait, changes.wait_for(|index| *index > min)) => {}
                _ = self.outage_began.notified() => {}
            }
        }
        if self.outage.load(std::sync::atomic::Ordering::SeqCst) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
        }
        let index = self.current();
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

async fn leader() -> Json<Value> {
    Json(json!("127.0.0.1:4647"))
}

fn job_status(state: &Inner, namespace: &str, id: &str, job: &SimJob) -> &'static str {
    let allocs: Vec<&SimAlloc> = state
        .allocs
        .values()
        .filter(|a| a.namespace == namespace && a.job_id == id)
        .collect();
    if job.stopped || (!allocs.is_empty() && allocs.iter().all(|a| is_terminal(a))) {
        "dead"
    } else if allocs.iter().any(|a| a.client_status == "running") {
        "running"
    } else {
        "pending"
    }
}

fn is_terminal(alloc: &SimAlloc) -> bool {
    matches!(alloc.client_status.as_str(), "complete" | "failed" | "lost")
}

async fn list_jobs(State(sim): State<Arc<Sim>>, Query(params): Params) -> Response {
    let ns = namespace(&params);
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let with_meta = params.get("meta").is_some_and(|m| m == "true");
    sim.blocking(&params, |state| {
        Ok(Value::Array(
            state
                .jobs
                .iter()
                .filter(|((n, id), _)| *n == ns && id.starts_with(&prefix))
                .map(|((n, id), job)| {
                    let mut stub = json!({
                        "ID": id, "ParentID": "", "Name": job.job["Name"], "Namespace": n,
                        "Datacenters": job.job["Datacenters"], "Type": "batch",
                        "Priority": 50, "Periodic": false, "ParameterizedJob": false,
                        "Stop": job.stopped, "Status": job_status(state, n, id, job),
                        "StatusDescription": "", "CreateIndex": job.create_index,
                        "ModifyIndex": job.modify_index, "JobModifyIndex": job.modify_index,
                        "SubmitTime": now_nanos(),
                    });
                    if with_meta {
                        stub["Meta"] = job.job["Meta"].clone();
                    }
                    stub
                })
                .collect(),
        ))
    })
    .await
}

async fn read_job(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking(&params, |state| {
        let job = state
            .jobs
            .get(&(ns.clone(), id.clone()))
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "job not found"))?;
        let mut value = job.job.clone();
        value["Status"] = json!(job_status(state, &ns, &id, job));
        value["Stop"] = json!(job.stopped);
        value["CreateIndex"] = json!(job.create_index);
        value["ModifyIndex"] = json!(job.modify_index);
        value["JobModifyIndex"] = json!(job.modify_index);
        Ok(value)
    })
    .await
}

fn task_resources(task: &Value) -> (u64, u64) {
    let resources = &task["Resources"];
    (
        resources["CPU"].as_u64().unwrap_or(100),
        resources["MemoryMB"].as_u64().unwrap_or(300),
    )
}

/// Checks a job as Nomad's `Job.Validate` would for the parts the simulator runs.
fn validate(job: &Value) -> Result<(), String> {
    let id = job["ID"].as_str().unwrap_or_default();
    if id.is_empty() {
        return Err("1 error occurred:\n\t* Missing job ID".to_owned());
    }
    if job["Type"].as_str().unwrap_or("service") != "batch" {
        return Err(format!(
            "job {id:?}: the simulator runs batch jobs only (Type {:?}; Nomad's default is service)",
            job["Type"]
        ));
    }
    let groups = job["TaskGroups"].as_array().cloned().unwrap_or_default();
    if groups.len() != 1 {
        return Err(format!(
            "job {id:?}: the simulator runs jobs of one task group"
        ));
    }
    let group = &groups[0];
    let restart = &group["RestartPolicy"];
    if !restart.is_null() {
        let mode = restart["Mode"].as_str().unwrap_or("");
        if mode != "fail" && mode != "delay" {
            return Err(format!("Unsupported restart mode: {mode:?}"));
        }
        if restart["Attempts"].as_u64() == Some(0) && mode != "fail" {
            return Err("Restart policy \"delay\" mode with zero attempts is invalid; use \"fail\" mode instead".to_owned());
        }
    }
    let tasks = group["Tasks"].as_array().cloned().unwrap_or_default();
    if tasks.len() != 1 {
        return Err(format!("job {id:?}: the simulator runs groups of one task"));
    }
    let task = &tasks[0];
    if task["Driver"] != "docker" {
        return Err(format!(
            "task {:?}: Missing or unsupported driver {:?}",
            task["Name"], task["Driver"]
        ));
    }
    if task["Config"]["image"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(format!(
            "task {:?}: docker config: image is required",
            task["Name"]
        ));
    }
    for template in task["Templates"].as_array().into_iter().flatten() {
        if template["DestPath"].as_str().unwrap_or_default().is_empty() {
            return Err("template: must specify a destination".to_owned());
        }
    }
    Ok(())
}

async fn register(
    State(sim): State<Arc<Sim>>,
    Query(params): Params,
    Json(body): Json<Value>,
) -> Response {
    let job = body["Job"].clone();
    if let Err(problem) = validate(&job) {
        return error(StatusCode::BAD_REQUEST, &problem);
    }
    let ns = job["Namespace"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| namespace(&params));
    let id = job["ID"].as_str().unwrap().to_owned();
    let enforce = body["EnforceIndex"].as_bool().unwrap_or(false);
    let expected = body["JobModifyIndex"].as_u64().unwrap_or(0);
    let (eval_id, index) = {
        let mut state = sim.state.lock().unwrap();
        let existing = state.jobs.get(&(ns.clone(), id.clone()));
        if enforce {
            match existing {
                Some(_) if expected == 0 => {
                    // nomad/job_endpoint.go: RegisterEnforceIndexErrPrefix
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Enforcing job modify index 0: job already exists",
                    );
                }
                Some(job) if job.modify_index != expected => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "Enforcing job modify index {expected}: job exists with conflicting job modify index: {}",
                            job.modify_index
                        ),
                    );
                }
                None if expected != 0 => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("Enforcing job modify index {expected}: job does not exist"),
                    );
                }
                _ => {}
            }
        }
        let index = sim.bump();
        // Nomad's batch default: one reschedule (nomad/structs: DefaultBatchJobReschedulePolicy).
        let reschedule = &job["TaskGroups"][0]["ReschedulePolicy"];
        let reschedules_left = if reschedule.is_null() {
            1
        } else if reschedule["Unlimited"].as_bool() == Some(true) {
            u64::MAX
        } else {
            reschedule["Attempts"].as_u64().unwrap_or(0)
        };
        state.jobs.insert(
            (ns.clone(), id.clone()),
            SimJob {
                job: job.clone(),
                stopped: false,
                create_index: index,
                modify_index: index,
                reschedules_left,
            },
        );
        (uuid(), index)
    };
    evaluate(&sim, &ns, &id, &eval_id, "job-register");
    let mut headers = HeaderMap::new();
    headers.insert("X-Nomad-Index", HeaderValue::from(index));
    (
        headers,
        Json(json!({
            "EvalID": eval_id, "EvalCreateIndex": index, "JobModifyIndex": index,
            "Warnings": "", "Index": index, "LastContact": 0, "KnownLeader": true,
        })),
    )
        .into_response()
}

/// Places the job's group on the node, or records why not (a blocked evaluation).
fn evaluate(sim: &Arc<Sim>, ns: &str, id: &str, eval_id: &str, triggered_by: &str) {
    let mut state = sim.state.lock().unwrap();
    let Some(job) = state.jobs.get(&(ns.to_owned(), id.to_owned())) else {
        return;
    };
    if job.stopped {
        return;
    }
    let job_value = job.job.clone();
    let group = job_value["TaskGroups"][0].clone();
    let task = group["Tasks"][0].clone();
    let (cpu, memory) = task_resources(&task);
    let datacenters: Vec<String> = job_value["Datacenters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let in_datacenter = datacenters.is_empty()
        || datacenters.iter().any(|d| {
            d == "*"
                || d == DATACENTER
                || (d.ends_with('*') && DATACENTER.starts_with(d.trim_end_matches('*')))
        });
    let mut constraint_filtered = serde_json::Map::new();
    for constraint in job_value["Constraints"].as_array().into_iter().flatten() {
        // The node has no meta: every `${meta.*}` constraint filters it out.
        let text = format!(
            "{} {} {}",
            constraint["LTarget"].as_str().unwrap_or_default(),
            constraint["Operand"].as_str().unwrap_or("="),
            constraint["RTarget"].as_str().unwrap_or_default()
        );
        constraint_filtered.insert(text, json!(1));
    }
    let mut dimension = serde_json::Map::new();
    if state.used_cpu + cpu > NODE_CPU_MHZ {
        dimension.insert("cpu".to_owned(), json!(1));
    }
    if state.used_memory + memory > NODE_MEMORY_MB {
        dimension.insert("memory".to_owned(), json!(1));
    }
    let index = sim.bump();
    let fits = in_datacenter && constraint_filtered.is_empty() && dimension.is_empty();
    let failed = if fits {
        Value::Null
    } else {
        let metric = json!({
            "NodesEvaluated": if in_datacenter { 1 } else { 0 },
            "NodesFiltered": if constraint_filtered.is_empty() { 0 } else { 1 },
            "NodesAvailable": if in_datacenter { json!({DATACENTER: 1}) } else { json!({}) },
            "ClassFiltered": null,
            "ConstraintFiltered": if constraint_filtered.is_empty() { Value::Null } else { Value::Object(constraint_filtered) },
            "NodesExhausted": if dimension.is_empty() { 0 } else { 1 },
            "ClassExhausted": null,
            "DimensionExhausted": if dimension.is_empty() { Value::Null } else { Value::Object(dimension) },
            "QuotaExhausted": null, "ResourcesExhausted": null, "Scores": null,
            "AllocationTime": 12_345, "CoalescedFailures": 0, "ScoreMetaData": null,
        });
        json!({ group["Name"].as_str().unwrap_or("group"): metric })
    };
    state.evals.push(json!({
        "ID": eval_id, "Priority": 50, "Type": "batch", "TriggeredBy": triggered_by,
        "Namespace": ns, "JobID": id, "JobModifyIndex": index, "NodeID": "",
        "Status": "complete", "StatusDescription": "",
        "BlockedEval": if fits { String::new() } else { uuid() },
        "FailedTGAllocs": failed, "QueuedAllocations": { group["Name"].as_str().unwrap_or("group"): if fits { 0 } else { 1 } },
        "CreateIndex": index, "ModifyIndex": index, "CreateTime": now_nanos(), "ModifyTime": now_nanos(),
    }));
    if !fits {
        if !state.blocked.iter().any(|(n, j)| n == ns && j == id) {
            state.blocked.push((ns.to_owned(), id.to_owned()));
        }
        return;
    }
    state.blocked.retain(|(n, j)| !(n == ns && j == id));
    state.used_cpu += cpu;
    state.used_memory += memory;
    let alloc_id = uuid();
    let task_name = task["Name"].as_str().unwrap_or("task").to_owned();
    let alloc = SimAlloc {
        id: alloc_id.clone(),
        eval_id: eval_id.to_owned(),
        namespace: ns.to_owned(),
        job_id: id.to_owned(),
        group: group["Name"].as_str().unwrap_or("group").to_owned(),
        task: task_name,
        client_status: "pending".to_owned(),
        desired_status: "run".to_owned(),
        client_description: "No tasks have started".to_owned(),
        task_state: "pending".to_owned(),
        failed: false,
        restarts: 0,
        started_at: None,
        finished_at: None,
        events: vec![event("Received", "Task received by client", Value::Null)],
        create_index: index,
        modify_index: index,
        create_time: now_nanos(),
        cpu,
        memory,
        logs: [Arc::new(Log::default()), Arc::new(Log::default())],
        stop: Arc::new(Notify::new()),
        stopping: false,
    };
    state.allocs.insert(alloc_id.clone(), alloc);
    drop(state);
    let sim = sim.clone();
    tokio::spawn(async move { run_alloc(sim, alloc_id, job_value).await });
}

fn alloc_json(alloc: &SimAlloc) -> Value {
    json!({
        "ID": alloc.id, "EvalID": alloc.eval_id,
        "Name": format!("{}.{}[0]", alloc.job_id, alloc.group),
        "Namespace": alloc.namespace, "NodeID": NODE_ID, "NodeName": NODE_NAME,
        "JobID": alloc.job_id, "JobType": "batch", "JobVersion": 0, "TaskGroup": alloc.group,
        "AllocatedResources": {"Tasks": {alloc.task.clone(): {"Cpu": {"CpuShares": alloc.cpu}, "Memory": {"MemoryMB": alloc.memory}}}},
        "DesiredStatus": alloc.desired_status, "DesiredDescription": if alloc.desired_status == "stop" { "alloc is being stopped" } else { "" },
        "ClientStatus": alloc.client_status, "ClientDescription": alloc.client_description,
        "TaskStates": { alloc.task.clone(): {
            "State": alloc.task_state, "Failed": alloc.failed, "Restarts": alloc.restarts,
            "LastRestart": null,
            "StartedAt": alloc.started_at, "FinishedAt": alloc.finished_at,
            "Events": alloc.events,
        }},
        "DeploymentStatus": null, "FollowupEvalID": "", "NextAllocation": "",
        "RescheduleTracker": null, "PreemptedAllocations": null, "PreemptedByAllocation": "",
        "CreateIndex": alloc.create_index, "ModifyIndex": alloc.modify_index,
        "CreateTime": alloc.create_time, "ModifyTime": now_nanos(),
    })
}

async fn job_allocations(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking(&params, |state| {
        Ok(Value::Array(
            state
                .allocs
                .values()
                .filter(|a| a.namespace == ns && a.job_id == id)
                .map(alloc_json)
                .collect(),
        ))
    })
    .await
}

async fn job_evaluations(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking(&params, |state| {
        Ok(Value::Array(
            state
                .evals
                .iter()
                .filter(|e| e["Namespace"] == ns.as_str() && e["JobID"] == id.as_str())
                .cloned()
                .collect(),
        ))
    })
    .await
}

async fn read_allocation(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    sim.blocking(&params, |state| {
        state
            .allocs
            .get(&id)
            .map(alloc_json)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "alloc not found"))
    })
    .await
}

async fn deregister(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    let purge = params.get("purge").is_some_and(|p| p == "true");
    let index = {
        let mut state = sim.state.lock().unwrap();
        let key = (ns.clone(), id.clone());
        if !state.jobs.contains_key(&key) {
            return error(StatusCode::NOT_FOUND, "job not found");
        }
        let index = sim.bump();
        if purge {
            state.jobs.remove(&key);
        } else if let Some(job) = state.jobs.get_mut(&key) {
            job.stopped = true;
            job.modify_index = index;
        }
        state.blocked.retain(|(n, j)| !(n == &ns && j == &id));
        for alloc in state.allocs.values_mut() {
            if alloc.namespace == ns && alloc.job_id == id && !is_terminal(alloc) {
                alloc.desired_status = "stop".to_owned();
                alloc.modify_index = index;
                alloc.stopping = true;
                alloc.stop.notify_one();
            }
        }
        index
    };
    sim.bump();
    Json(json!({
        "EvalID": uuid(), "EvalCreateIndex": index, "JobModifyIndex": index,
        "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index, "LastContact": 0, "KnownLeader": true,
    }))
    .into_response()
}

/// Changes an allocation and wakes the blocking queries.
fn update(sim: &Sim, alloc_id: &str, change: impl FnOnce(&mut SimAlloc)) {
    {
        let mut state = sim.state.lock().unwrap();
        let Some(alloc) = state.allocs.get_mut(alloc_id) else {
            return;
        };
        change(alloc);
    }
    let index = sim.bump();
    if let Some(alloc) = sim.state.lock().unwrap().allocs.get_mut(alloc_id) {
        alloc.modify_index = index;
    }
}

fn push_event(sim: &Sim, alloc_id: &str, value: Value) {
    update(sim, alloc_id, |alloc| alloc.events.push(value));
}

/// What running one container of the task ended with.
enum Ran {
    Exited {
        code: i64,
        killed: bool,
    },
    DriverFailure,
    /// Stopped before its container started.
    NeverStarted,
}

/// Runs an allocation's task as containers on the local engine, as a Nomad client with the
/// docker driver would, honouring the group's restart policy; then frees its resources and
/// places what was waiting, and reschedules a failed allocation per the reschedule policy.
async fn run_alloc(sim: Arc<Sim>, alloc_id: String, job: Value) {
    let group = &job["TaskGroups"][0];
    let task = &group["Tasks"][0];
    let restart = &group["RestartPolicy"];
    // Nomad's batch default: 3 attempts in 24 h, 15 s apart, mode fail.
    let (mut attempts_left, delay) = if restart.is_null() {
        (3u64, Duration::from_secs(15))
    } else {
        (
            restart["Attempts"].as_u64().unwrap_or(0),
            Duration::from_nanos(restart["Delay"].as_u64().unwrap_or(0)),
        )
    };
    push_event(
        &sim,
        &alloc_id,
        event("Task Setup", "Building Task Directory", Value::Null),
    );
    let (logs, stop) = {
        let state = sim.state.lock().unwrap();
        let alloc = &state.allocs[&alloc_id];
        (alloc.logs.clone(), alloc.stop.clone())
    };
    let outcome = loop {
        let ran = run_container(&sim, &alloc_id, &job, task, &logs, &stop).await;
        let failed = match &ran {
            Ran::Exited { code, killed, .. } => *code != 0 && !killed,
            Ran::DriverFailure => true,
            Ran::NeverStarted => false,
        };
        let stopping = sim.state.lock().unwrap().allocs[&alloc_id].stopping;
        if failed && !stopping && attempts_left > 0 {
            attempts_left -= 1;
            push_event(
                &sim,
                &alloc_id,
                event(
                    "Restarting",
                    &format!("Task restarting in {delay:?}"),
                    json!({"restart_reason": "Restart within policy", "start_delay": delay.as_nanos().to_string()}),
                ),
            );
            update(&sim, &alloc_id, |a| a.restarts += 1);
            tokio::time::sleep(delay).await;
            continue;
        }
        break ran;
    };
    let failed = match &outcome {
        Ran::Exited { code, killed, .. } => *code != 0 && !killed,
        Ran::DriverFailure => true,
        Ran::NeverStarted => false,
    };
    if failed {
        push_event(
            &sim,
            &alloc_id,
            event(
                "Not Restarting",
                "Exceeded allowed attempts 0 in interval 24h0m0s and mode is \"fail\"",
                json!({"fails_task": "true", "restart_reason": "Exceeded allowed attempts 0 in interval 24h0m0s and mode is \"fail\""}),
            ),
        );
    }
    let killed = matches!(
        outcome,
        Ran::Exited { killed: true, .. } | Ran::NeverStarted
    );
    update(&sim, &alloc_id, |alloc| {
        alloc.task_state = "dead".to_owned();
        alloc.failed = failed;
        alloc.finished_at = Some(now_rfc3339());
        alloc.client_status = if failed { "failed" } else { "complete" }.to_owned();
        alloc.client_description = if failed {
            "Failed tasks".to_owned()
        } else {
            "All tasks have completed".to_owned()
        };
        if killed {
            alloc.desired_status = "stop".to_owned();
        }
    });
    // Free the node and place what waits; reschedule a failed allocation if allowed.
    let (waiting, reschedule) = {
        let mut state = sim.state.lock().unwrap();
        let (cpu, memory, ns, job_id) = {
            let alloc = &state.allocs[&alloc_id];
            (
                alloc.cpu,
                alloc.memory,
                alloc.namespace.clone(),
                alloc.job_id.clone(),
            )
        };
        state.used_cpu -= cpu;
        state.used_memory -= memory;
        let mut reschedule = None;
        if failed {
            if let Some(job) = state.jobs.get_mut(&(ns.clone(), job_id.clone())) {
                if !job.stopped && job.reschedules_left > 0 {
                    job.reschedules_left -= 1;
                    reschedule = Some((ns, job_id));
                }
            }
        }
        (state.blocked.clone(), reschedule)
    };
    if let Some((ns, job_id)) = reschedule {
        evaluate(&sim, &ns, &job_id, &uuid(), "alloc-failure");
    }
    for (ns, job_id) in waiting {
        evaluate(&sim, &ns, &job_id, &uuid(), "queued-allocs");
    }
}

async fn run_container(
    sim: &Arc<Sim>,
    alloc_id: &str,
    job: &Value,
    task: &Value,
    logs: &[Arc<Log>; 2],
    stop: &Arc<Notify>,
) -> Ran {
    let docker = &sim.docker;
    if sim.state.lock().unwrap().allocs[alloc_id].stopping {
        push_event(
            sim,
            alloc_id,
            event("Killed", "Task successfully killed", Value::Null),
        );
        return Ran::NeverStarted;
    }
    let config = &task["Config"];
    let image = config["image"].as_str().unwrap_or_default().to_owned();
    let fail = |message: String| {
        push_event(
            sim,
            alloc_id,
            event(
                "Driver Failure",
                &message,
                json!({"driver_error": message, "fails_task": "true"}),
            ),
        );
        Ran::DriverFailure
    };
    // The docker driver pulls an image the node does not have, or every time with force_pull.
    let present = docker.inspect_image(&image).await.is_ok();
    if !present || config["force_pull"].as_bool() == Some(true) {
        push_event(
            sim,
            alloc_id,
            event(
                "Driver",
                &format!("Downloading image"),
                json!({"image": image}),
            ),
        );
        let (name, tag) = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
            _ => (image.clone(), "latest".to_owned()),
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(&name)
            .tag(&tag)
            .build();
        let auth = &config["auth"];
        let credentials = (!auth.is_null()).then(|| bollard::auth::DockerCredentials {
            username: auth["username"].as_str().map(str::to_owned),
            password: auth["password"].as_str().map(str::to_owned),
            serveraddress: auth["server_address"].as_str().map(str::to_owned),
            ..Default::default()
        });
        let mut pull = docker.create_image(Some(options), None, credentials);
        while let Some(step) = pull.next().await {
            if let Err(error) = step {
                let text = match &error {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code,
                        message,
                    } => format!("API error ({status_code}): {message}"),
                    other => other.to_string(),
                };
                // drivers/docker/driver.go: "Failed to pull `%s`: %s"
                return fail(format!("Failed to pull `{image}`: {text}"));
            }
        }
    }
    let mut env: Vec<String> = task["Env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let job_id = job["ID"].as_str().unwrap_or_default();
    env.extend([
        format!("NOMAD_ALLOC_ID={alloc_id}"),
        format!("NOMAD_JOB_ID={job_id}"),
        format!(
            "NOMAD_TASK_NAME={}",
            task["Name"].as_str().unwrap_or_default()
        ),
        "NOMAD_ALLOC_DIR=/alloc".to_owned(),
        "NOMAD_TASK_DIR=/local".to_owned(),
        format!("NOMAD_DC={DATACENTER}"),
    ]);
    let mut labels: HashMap<String, String> = HashMap::new();
    for map in config["labels"].as_array().into_iter().flatten() {
        for (k, v) in map.as_object().into_iter().flatten() {
            labels.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    labels.insert(SIM_LABEL.to_owned(), sim.instance.clone());
    labels.insert(
        "com.hashicorp.nomad.alloc_id".to_owned(),
        alloc_id.to_owned(),
    );
    let mut mounts = Vec::new();
    let mut tmpfs = HashMap::new();
    let read_only = config["readonly_rootfs"].as_bool().unwrap_or(false);
    if read_only {
        // Nomad bind-mounts the task's local/ folder, which stays writable.
        mounts.push(Mount {
            typ: Some(MountType::VOLUME),
            target: Some("/local".to_owned()),
            ..Default::default()
        });
    }
    for mount in config["mount"].as_array().into_iter().flatten() {
        if mount["type"] == "tmpfs" {
            let size = mount["tmpfs_options"]["size"].as_u64().unwrap_or(0);
            tmpfs.insert(
                mount["target"].as_str().unwrap_or_default().to_owned(),
                format!("rw,size={size}"),
            );
            continue;
        }
        if mount["type"] != "volume" {
            return fail(format!("mount type {:?} is not simulated", mount["type"]));
        }
        let source = mount["source"].as_str().unwrap_or_default().to_owned();
        {
            let mut state = sim.state.lock().unwrap();
            if !state.volumes.contains(&source) {
                state.volumes.push(source.clone());
            }
        }
        mounts.push(Mount {
            typ: Some(MountType::VOLUME),
            source: Some(source),
            target: mount["target"].as_str().map(str::to_owned),
            read_only: mount["readonly"].as_bool(),
            ..Default::default()
        });
    }
    let (cpu, memory) = task_resources(task);
    let name = format!(
        "{}-{alloc_id}-{}",
        task["Name"].as_str().unwrap_or("task"),
        sim.state
            .lock()
            .unwrap()
            .runs
            .get(job_id)
            .copied()
            .unwrap_or(0)
    );
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: config["entrypoint"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }),
        cmd: config["args"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }),
        env: Some(env),
        labels: Some(labels),
        user: task["User"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned),
        host_config: Some(HostConfig {
            memory: Some((memory * 1024 * 1024) as i64),
            cpu_shares: Some(cpu as i64),
            mounts: Some(mounts),
            readonly_rootfs: Some(read_only),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            pids_limit: config["pids_limit"].as_i64(),
            ..Default::default()
        }),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let created = match docker.create_container(Some(options), body).await {
        Ok(created) => created,
        Err(error) => return fail(format!("failed to create container: {error}")),
    };
    let container = created.id;
    // Templates render into the task directory; `local/` is mounted at /local.
    for template in task["Templates"].as_array().into_iter().flatten() {
        let text = template["EmbeddedTmpl"].as_str().unwrap_or_default();
        let left = template["LeftDelim"].as_str().unwrap_or("{{");
        if text.contains(left) {
            remove(docker, &container).await;
            let message = format!(
                "Template failed: {:?}: the simulator does not render template actions",
                template["DestPath"]
            );
            return fail(message);
        }
        let dest = template["DestPath"].as_str().unwrap_or_default();
        if let Err(error) = upload(docker, &container, dest, text, read_only).await {
            remove(docker, &container).await;
            return fail(format!("Template failed: {error}"));
        }
    }
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .logs(false)
        .build();
    let mut output = match docker.attach_container(&container, Some(attach)).await {
        Ok(attached) => attached.output,
        Err(error) => {
            remove(docker, &container).await;
            return fail(format!("failed to attach: {error}"));
        }
    };
    if let Err(error) = docker.start_container(&container, None).await {
        remove(docker, &container).await;
        return fail(format!("failed to start container {container}: {error}"));
    }
    *sim.state
        .lock()
        .unwrap()
        .runs
        .entry(job_id.to_owned())
        .or_default() += 1;
    for log in logs {
        log.create();
    }
    update(sim, alloc_id, |alloc| {
        alloc.task_state = "running".to_owned();
        alloc.client_status = "running".to_owned();
        alloc.client_description = "Tasks are running".to_owned();
        alloc.started_at.get_or_insert_with(now_rfc3339);
        alloc
            .events
            .push(event("Started", "Task started by client", Value::Null));
    });
    let pump = {
        let logs = logs.clone();
        async move {
            while let Some(Ok(chunk)) = output.next().await {
                match chunk {
                    bollard::container::LogOutput::StdOut { message } => logs[0].append(&message),
                    bollard::container::LogOutput::StdErr { message } => logs[1].append(&message),
                    _ => {}
                }
            }
        }
    };
    let kill_signal = task["KillSignal"].as_str().unwrap_or("SIGINT").to_owned();
    let kill_timeout = Duration::from_nanos(task["KillTimeout"].as_u64().unwrap_or(5_000_000_000));
    let waiter = async {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = docker.wait_container(&container, Some(options));
        let mut killed = false;
        // A stop asked before this waiter existed left a permit (`notify_one`).
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                result = wait.next() => {
                    let code = match result {
                        Some(Ok(response)) => response.status_code,
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                        _ => -1,
                    };
                    return (code, killed);
                }
                _ = &mut stopped, if !killed => {
                    killed = true;
                    push_event(sim, alloc_id, event("Killing", &format!("Sent interrupt. Waiting {kill_timeout:?} before force killing"), json!({"kill_timeout": kill_timeout.as_nanos().to_string()})));
                    let signal = KillContainerOptionsBuilder::default().signal(&kill_signal).build();
                    let _ = docker.kill_container(&container, Some(signal)).await;
                    let docker = docker.clone();
                    let container = container.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(kill_timeout).await;
                        let signal = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                        let _ = docker.kill_container(&container, Some(signal)).await;
                    });
                }
            }
        }
    };
    let ((code, killed), ()) = tokio::join!(waiter, pump);
    let oom = docker
        .inspect_container(&container, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    let signal = if code > 128 { code - 128 } else { 0 };
    let message = if oom {
        format!("Exit Code: {code}, Exit Message: \"OOM Killed\"")
    } else {
        format!("Exit Code: {code}")
    };
    push_event(
        sim,
        alloc_id,
        event(
            "Terminated",
            &message,
            json!({
                "exit_code": code.to_string(), "signal": signal.to_string(), "oom_killed": oom.to_string(),
                "exit_message": if oom { "OOM Killed" } else { "" },
            }),
        ),
    );
    if killed {
        push_event(
            sim,
            alloc_id,
            event("Killed", "Task successfully killed", Value::Null),
        );
    }
    remove(docker, &container).await;
    Ran::Exited { code, killed }
}

async fn remove(docker: &Docker, container: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(container, Some(options)).await;
}

/// Copies a rendered template to `dest` (relative to the task's root). With `into_local`
/// (a read-only root filesystem) it goes into the `/local` volume, as Nomad's bind mount of
/// the task directory stays writable: the engine copies into a read-only container only
/// inside a volume.
async fn upload(
    docker: &Docker,
    container: &str,
    dest: &str,
    text: &str,
    into_local: bool,
) -> Result<(), String> {
    let (root, dest) = match dest.strip_prefix("local/") {
        Some(inside) if into_local => ("/local", inside),
        _ => ("/", dest),
    };
    let mut archive = tar::Builder::new(Vec::new());
    if let Some((dir, _)) = dest.rsplit_once('/') {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header
            .set_path(format!("{dir}/"))
            .map_err(|e| e.to_string())?;
        header.set_mode(0o777);
        header.set_size(0);
        header.set_cksum();
        archive
            .append(&header, std::io::empty())
            .map_err(|e| e.to_string())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_path(dest).map_err(|e| e.to_string())?;
    header.set_mode(0o644);
    header.set_size(text.len() as u64);
    header.set_cksum();
    archive
        .append(&header, text.as_bytes())
        .map_err(|e| e.to_string())?;
    let bytes = archive.into_inner().map_err(|e| e.to_string())?;
    let options = UploadToContainerOptionsBuilder::default()
        .path(root)
        .build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

/// `GET /v1/client/fs/logs/:alloc`: frames of the task's log from `offset` (from the start),
/// heartbeats while nothing is written, and with `follow=true` no end.
async fn logs(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let Some(task) = params.get("task") else {
        return error(StatusCode::BAD_REQUEST, "must include task name");
    };
    let kind = params.get("type").map(String::as_str).unwrap_or_default();
    let which = match kind {
        "stdout" => 0,
        "stderr" => 1,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "must include a log type of stdout or stderr",
            )
        }
    };
    let follow = params.get("follow").is_some_and(|f| f == "true");
    if params.get("plain").is_some_and(|p| p == "true") {
        return error(
            StatusCode::BAD_REQUEST,
            "the simulator serves framed logs only",
        );
    }
    let origin_end = params.get("origin").is_some_and(|o| o == "end");
    let offset: u64 = params
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let log = {
        let state = sim.state.lock().unwrap();
        let Some(alloc) = state.allocs.get(&id) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!("Unknown allocation \"{id}\""),
            );
        };
        if &alloc.task != task {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown task name {task:?}"),
            );
        }
        alloc.logs[which].clone()
    };
    let size = match log.data.lock().unwrap().as_ref() {
        Some(data) => data.len() as u64,
        // client/fs_endpoint.go notFoundErr
        None => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("log entry for task {task:?} and log type {kind:?} not found"),
            )
        }
    };
    let start = if origin_end {
        size.saturating_sub(offset)
    } else {
        offset.min(size)
    };
    let file = format!("alloc/logs/{task}.{kind}.0");
    let cuts = sim.clone();
    let break_after = sim
        .break_logs_after
        .load(std::sync::atomic::Ordering::SeqCst);
    // State: the log, where the next frame starts, data frames sent, broken mid-frame.
    let frames = futures_util::stream::unfold(
        (log, start, 0usize, false),
        move |(log, mut position, mut sent, broken)| {
            let file = file.clone();
            let cuts = cuts.clone();
            async move {
                if broken {
                    let cut =
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated cut");
                    return Some((Err(cut), (log, position, sent, true)));
                }
                loop {
                    if cuts.outage.load(std::sync::atomic::Ordering::SeqCst) {
                        let cut = std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "no cluster leader",
                        );
                        return Some((Err(cut), (log, position, sent, true)));
                    }
                    let watched = log.clone();
                    let grew = watched.grew.notified();
                    let chunk = {
                        let data = log.data.lock().unwrap();
                        let data = data.as_deref().unwrap_or_default();
                        let end = (position as usize + 64 * 1024).min(data.len());
                        data[position as usize..end].to_vec()
                    };
                    if !chunk.is_empty() {
                        position += chunk.len() as u64;
                        // Offset: where the frame's data ends in the file (client/lib/streamframer).
                        let frame = json!({
                            "Offset": position,
                            "Data": base64::engine::general_purpose::STANDARD.encode(&chunk),
                            "File": file,
                        });
                        let mut bytes = serde_json::to_vec(&frame).unwrap();
                        bytes.push(b'\n');
                        if break_after > 0 && sent == break_after {
                            cuts.cut_logs
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            bytes.truncate(bytes.len() / 2);
                            return Some((Ok(bytes), (log, position, sent, true)));
                        }
                        sent += 1;
                        return Some((
                            Ok::<_, std::io::Error>(bytes),
                            (log, position, sent, false),
                        ));
                    }
                    if !follow {
                        return None;
                    }
                    // Nomad batches for 200 ms and beats every 10 s; a shorter beat here.
                    if tokio::time::timeout(Duration::from_secs(1), grew)
                        .await
                        .is_err()
                    {
                        return Some((Ok(b"{}\n".to_vec()), (log, position, sent, false)));
                    }
                }
            }
        },
    );
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Body::from_stream(frames))
        .unwrap()
}
