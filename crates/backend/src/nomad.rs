//! The Nomad backend: one Nomad `batch` job per try, through Nomad's HTTP API.
//!
//! Each try is a job of one task group holding one `docker`-driver task. Nomad's own restarts
//! and reschedules are off (`RestartPolicy {Attempts: 0, Mode: "fail"}`,
//! `ReschedulePolicy {Attempts: 0, Unlimited: false}`): Stevedore alone retries. Nomad places
//! the job; the backend follows its allocation with blocking queries (`index`/`wait`,
//! `X-Nomad-Index`), streams stdout and stderr from `/v1/client/fs/logs/:alloc` (framed,
//! base64 `Data`, resumed by byte offset so a reconnect never repeats a line), takes the exit
//! code from the task's `Terminated` event, and kills by deregistering the job with
//! `purge=true`. A try's job ID is derived from the try itself and registered with
//! `EnforceIndex` at index 0, so Nomad refuses a second job of the same try whoever asks, and
//! a scheduler that restarts finds (adopts) its tries' jobs by that ID; the job's `Meta`
//! carries job, run, task and try for listing.
//!
//! Field names are the Go field names of Nomad's `api` package; durations are integer
//! nanoseconds. See docs/backends.md for what the backend does and the Nomad sources it
//! follows.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use stevedore_domain::image::ImageRef;
use stevedore_domain::job::PullPolicy;
use stevedore_domain::state::FailureReason;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::lines::LineSplitter;
use crate::*;

/// The one task group and the one task of every try's job.
pub const GROUP: &str = "try";
pub const TASK: &str = "task";
/// Where the state file is inside the task: Nomad renders templates into the task's `local/`
/// directory, which the docker driver mounts at `/local`.
pub const NOMAD_STATE_FILE: &str = "/local/stevedore-state.json";
/// Nomad's defaults for a task that names no resources (`api/resources.go`).
const DEFAULT_CPU_MHZ: u64 = 100;
const DEFAULT_MEMORY_MB: u64 = 300;
/// Template delimiters no state document contains, so the state is copied, never rendered.
const LEFT_DELIM: &str = "[[stevedore-state-not-a-template";
const RIGHT_DELIM: &str = "stevedore-state-not-a-template]]";

/// Where and how to reach Nomad. [`NomadConfig::from_env`] reads the `NOMAD_*` variables
/// Nomad's own CLI honours and Stevedore's `STEVEDORE_NOMAD_*` settings. `Debug` never shows the token.
#[derive(Clone)]
pub struct NomadConfig {
    /// `NOMAD_ADDR`, by default `http://127.0.0.1:4646`.
    pub address: String,
    /// `NOMAD_TOKEN`, sent as `X-Nomad-Token`. Never logged.
    pub token: Option<String>,
    /// `NOMAD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `NOMAD_REGION`.
    pub region: Option<String>,
    /// `STEVEDORE_NOMAD_DATACENTERS` (comma-separated), by default `*` (every datacenter).
    pub datacenters: Vec<String>,
    /// `NOMAD_CACERT`: the CA that signed Nomad's certificate (an `https://` address).
    pub ca_cert: Option<std::path::PathBuf>,
    /// `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`: a client certificate for mTLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `STEVEDORE_NOMAD_PLACEMENT_TIMEOUT`: how long a try may wait for Nomad to place it
    /// before it fails with Nomad's reason (default 2 minutes).
    pub placement_timeout: Duration,
    /// `STEVEDORE_NOMAD_MHZ_PER_CPU`: what one CPU of a task's `resources.cpu` is in Nomad's
    /// MHz (default 1000).
    pub mhz_per_cpu: u64,
    /// `STEVEDORE_NOMAD_WORKSPACE_VOLUMES`: mount the run's workspace as a docker volume
    /// (needs `volumes { enabled = true }` in the clients' docker plugin config; default on).
    pub workspace_volumes: bool,
    /// How long one blocking query waits (`wait`), by default 30 s.
    pub wait: Duration,
}

impl std::fmt::Debug for NomadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("datacenters", &self.datacenters)
            .field("placement_timeout", &self.placement_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for NomadConfig {
    fn default() -> Self {
        NomadConfig {
            address: "http://127.0.0.1:4646".to_owned(),
            token: None,
            namespace: None,
            region: None,
            datacenters: vec!["*".to_owned()],
            ca_cert: None,
            client_cert: None,
            placement_timeout: Duration::from_secs(120),
            mhz_per_cpu: 1000,
            workspace_volumes: true,
            wait: Duration::from_secs(30),
        }
    }
}

impl NomadConfig {
    /// The configuration from the environment; an error names the variable that is wrong.
    pub fn from_env() -> Result<NomadConfig, String> {
        NomadConfig::from_settings(&|name| std::env::var(name).ok())
    }

    /// The same from `setting(name)`: the value of the variable `name` (`NOMAD_ADDR`, ...)
    /// as the caller resolved it (the command line gives its settings this way).
    pub fn from_settings(setting: &dyn Fn(&str) -> Option<String>) -> Result<NomadConfig, String> {
        let var = |name: &str| setting(name).filter(|v| !v.trim().is_empty());
        let mut config = NomadConfig::default();
        if let Some(address) = var("NOMAD_ADDR") {
            config.address = address.trim_end_matches('/').to_owned();
        }
        config.token = var("NOMAD_TOKEN");
        config.namespace = var("NOMAD_NAMESPACE");
        config.region = var("NOMAD_REGION");
        if let Some(list) = var("STEVEDORE_NOMAD_DATACENTERS") {
            config.datacenters = list
                .split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect();
        }
        config.ca_cert = var("NOMAD_CACERT").map(Into::into);
        config.client_cert = match (var("NOMAD_CLIENT_CERT"), var("NOMAD_CLIENT_KEY")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                return Err(
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY must be set together".to_owned(),
                )
            }
        };
        if let Some(text) = var("STEVEDORE_NOMAD_PLACEMENT_TIMEOUT") {
            config.placement_timeout = stevedore_domain::duration::parse_duration(&text)
                .map_err(|e| format!("STEVEDORE_NOMAD_PLACEMENT_TIMEOUT: {e}"))?;
        }
        if let Some(text) = var("STEVEDORE_NOMAD_MHZ_PER_CPU") {
            config.mhz_per_cpu = text.parse().ok().filter(|mhz| *mhz > 0).ok_or_else(|| {
                format!("STEVEDORE_NOMAD_MHZ_PER_CPU: `{text}` is not a positive number")
            })?;
        }
        if let Some(text) = var("STEVEDORE_NOMAD_WORKSPACE_VOLUMES") {
            config.workspace_volumes = match text.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    return Err(format!(
                        "STEVEDORE_NOMAD_WORKSPACE_VOLUMES: `{other}` is not true or false"
                    ))
                }
            };
        }
        Ok(config)
    }
}

pub struct NomadBackend {
    config: NomadConfig,
    http: reqwest::Client,
}

/// A failed call to Nomad.
#[derive(Debug)]
enum ApiError {
    /// Nomad could not be reached (connection refused, reset, timed out).
    Unreachable(String),
    /// Nomad answered with an error status and this body.
    Status(u16, String),
}

impl ApiError {
    fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status(404, _))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable(text) => write!(f, "{text}"),
            ApiError::Status(code, body) => write!(f, "Nomad answered {code}: {}", body.trim()),
        }
    }
}

/// What the backend reads of an allocation (`api.Allocation` / `api.AllocationListStub`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Allocation {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "JobID")]
    job_id: String,
    node_name: String,
    client_status: String,
    client_description: String,
    task_states: Option<BTreeMap<String, TaskState>>,
    create_index: u64,
}

impl Allocation {
    fn is_terminal(&self) -> bool {
        matches!(self.client_status.as_str(), "complete" | "failed" | "lost")
    }

    fn events(&self) -> &[TaskEvent] {
        self.task_states
            .as_ref()
            .and_then(|states| states.get(TASK))
            .map(|state| state.events.as_deref().unwrap_or_default())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TaskState {
    events: Option<Vec<TaskEvent>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TaskEvent {
    #[serde(rename = "Type")]
    kind: String,
    display_message: String,
    details: Option<BTreeMap<String, String>>,
    fails_task: bool,
}

impl TaskEvent {
    fn detail(&self, key: &str) -> Option<&str> {
        self.details.as_ref()?.get(key).map(String::as_str)
    }

    fn message(&self) -> String {
        if !self.display_message.is_empty() {
            return self.display_message.clone();
        }
        ["driver_error", "setup_error", "validation_error", "message"]
            .iter()
            .find_map(|key| self.detail(key))
            .unwrap_or(&self.kind)
            .to_owned()
    }
}

/// One frame of a log stream (`api.StreamFrame`); `{}` is a heartbeat.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StreamFrame {
    data: Option<String>,
    file_event: Option<String>,
}

/// A job as listed (`api.JobListStub`, with `meta=true`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct JobStub {
    #[serde(rename = "ID")]
    id: String,
    meta: Option<BTreeMap<String, String>>,
}

/// An evaluation, for why a job was not placed (`api.Evaluation`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Evaluation {
    status_description: String,
    #[serde(rename = "FailedTGAllocs")]
    failed_tg_allocs: Option<BTreeMap<String, AllocationMetric>>,
    create_index: u64,
}

/// Why a task group could not be placed (`api.AllocationMetric`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AllocationMetric {
    nodes_evaluated: u64,
    nodes_filtered: u64,
    nodes_exhausted: u64,
    class_filtered: Option<BTreeMap<String, u64>>,
    constraint_filtered: Option<BTreeMap<String, u64>>,
    class_exhausted: Option<BTreeMap<String, u64>>,
    dimension_exhausted: Option<BTreeMap<String, u64>>,
    quota_exhausted: Option<Vec<String>>,
    nodes_available: Option<BTreeMap<String, u64>>,
}

impl AllocationMetric {
    /// Nomad's own wording, as `nomad job status` prints it (`command/monitor.go`,
    /// `formatAllocMetrics`).
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.nodes_evaluated == 0 {
            parts.push("No nodes were eligible for evaluation".to_owned());
        }
        for (dc, available) in self.nodes_available.iter().flatten() {
            if *available == 0 {
                parts.push(format!("No nodes are available in datacenter {dc:?}"));
            }
        }
        for (class, count) in self.class_filtered.iter().flatten() {
            parts.push(format!("Class {class:?}: {count} nodes excluded by filter"));
        }
        for (constraint, count) in self.constraint_filtered.iter().flatten() {
            parts.push(format!(
                "Constraint {constraint:?}: {count} nodes excluded by filter"
            ));
        }
        if self.nodes_exhausted > 0 {
            parts.push(format!(
                "Resources exhausted on {} nodes",
                self.nodes_exhausted
            ));
        }
        for (class, count) in self.class_exhausted.iter().flatten() {
            parts.push(format!("Class {class:?} exhausted on {count} nodes"));
        }
        for (dimension, count) in self.dimension_exhausted.iter().flatten() {
            parts.push(format!(
                "Dimension {dimension:?} exhausted on {count} nodes"
            ));
        }
        for quota in self.quota_exhausted.iter().flatten() {
            parts.push(format!("Quota limit hit {quota:?}"));
        }
        if parts.is_empty() && self.nodes_filtered > 0 {
            parts.push(format!("{} nodes excluded by filter", self.nodes_filtered));
        }
        parts.join("; ")
    }
}

/// A try's Nomad job ID: derived from the try itself (like the docker backend's container
/// name), so Nomad refuses a second job of the same try.
pub fn job_id(job_id: &str, task_id: &str, run_id: &str, try_number: u32) -> String {
    format!("stevedore-{job_id}-{task_id}-{run_id}-{try_number}")
}

/// Percent-encodes one path segment (job IDs may hold `:` or `+` from run IDs).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Why a wait for the allocation ended early.
enum Interrupted {
    Killed(KillReason),
    Api(ApiError),
}

impl NomadBackend {
    pub fn new(config: NomadConfig) -> Result<NomadBackend, BackendError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                BackendError::Unavailable(format!("NOMAD_CACERT {}: {e}", path.display()))
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                BackendError::Unavailable(format!("NOMAD_CACERT {}: {e}", path.display()))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = std::fs::read(cert).map_err(|e| {
                BackendError::Unavailable(format!("NOMAD_CLIENT_CERT {}: {e}", cert.display()))
            })?;
            pem.extend(std::fs::read(key).map_err(|e| {
                BackendError::Unavailable(format!("NOMAD_CLIENT_KEY {}: {e}", key.display()))
            })?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                BackendError::Unavailable(format!("NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| {
            BackendError::Unavailable(format!("cannot build the Nomad client: {e}"))
        })?;
        Ok(NomadBackend { config, http })
    }

    pub fn from_env() -> Result<NomadBackend, BackendError> {
        NomadBackend::new(NomadConfig::from_env().map_err(BackendError::Unavailable)?)
    }

    pub fn address(&self) -> &str {
        &self.config.address
    }

    fn unavailable(&self, error: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!(
            "cannot reach Nomad at {}: {error}",
            self.config.address
        ))
    }

    /// A request to `path` with the token, namespace and region, plus `query`.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.config.address));
        if let Some(token) = &self.config.token {
            request = request.header("X-Nomad-Token", token);
        }
        let mut params: Vec<(&str, String)> = query.to_vec();
        if let Some(namespace) = &self.config.namespace {
            params.push(("namespace", namespace.clone()));
        }
        if let Some(region) = &self.config.region {
            params.push(("region", region.clone()));
        }
        request.query(&params)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(ApiError::Status(status.as_u16(), body))
    }

    /// A GET decoded as `T`, with the `X-Nomad-Index` of the answer.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(T, u64), ApiError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path, query))
            .await?;
        let index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let value = response
            .json()
            .await
            .map_err(|e| ApiError::Unreachable(format!("reading Nomad's answer: {e}")))?;
        Ok((value, index))
    }

    /// A blocking query: answers once `path`'s index passes `index`, or after `wait`.
    async fn watch<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        index: u64,
    ) -> Result<(T, u64), ApiError> {
        let wait = self.config.wait;
        let request = self
            .request(
                reqwest::Method::GET,
                path,
                &[
                    ("index", index.to_string()),
                    ("wait", format!("{}ms", wait.as_millis())),
                ],
            )
            // Nomad adds up to wait/16 of jitter to the wait.
            .timeout(wait + wait / 8 + Duration::from_secs(10));
        let response = self.send(request).await?;
        let index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(index);
        let value = response
            .json()
            .await
            .map_err(|e| ApiError::Unreachable(format!("reading Nomad's answer: {e}")))?;
        Ok((value, index))
    }

    async fn purge(&self, nomad_job: &str) -> Result<(), ApiError> {
        match self
            .send(self.request(
                reqwest::Method::DELETE,
                &format!("/v1/job/{}", segment(nomad_job)),
                &[("purge", "true".to_owned())],
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn purge_quietly(&self, nomad_job: &str) {
        if let Err(error) = self.purge(nomad_job).await {
            warn!(nomad_job, error = %error, "could not deregister the try's Nomad job");
        }
    }

    /// The job a try is: one group, one docker task, Nomad's restarts and reschedules off.
    fn job_body(&self, spec: &LaunchSpec, image: &ImageRef) -> Value {
        let id = job_id(&spec.job_id, &spec.task_id, &spec.run_id, spec.try_number);
        let meta = BTreeMap::from([
            (LABEL_JOB.to_owned(), spec.job_id.clone()),
            (LABEL_RUN.to_owned(), spec.run_id.clone()),
            (LABEL_TASK.to_owned(), spec.task_id.clone()),
            (LABEL_TRY.to_owned(), spec.try_number.to_string()),
        ]);
        let mut labels: BTreeMap<String, String> = spec.labels.clone();
        labels.extend(meta.clone());
        let mut env = spec.env.clone();
        let mut config = json!({
            "image": image.to_string(),
            "args": spec.args,
            "labels": [labels],
            "force_pull": spec.pull_policy == PullPolicy::Always,
        });
        if let Some(command) = &spec.command {
            config["entrypoint"] = json!(command);
        }
        let mut mounts = Vec::new();
        if self.config.workspace_volumes {
            mounts.push(json!({
                "type": "volume",
                "target": WORKSPACE_DIR,
                "source": format!("stevedore-run-{}", spec.run_id),
                "readonly": false,
            }));
            env.insert("STEVEDORE_WORKSPACE".to_owned(), WORKSPACE_DIR.to_owned());
        }
        let isolation = &spec.isolation;
        if let Some(limit) = isolation.pids_limit {
            config["pids_limit"] = json!(limit);
        }
        if isolation.read_only_rootfs {
            // The task's `local/` and `alloc/` folders (the state file's) stay writable: Nomad
            // bind-mounts them. /tmp becomes a small tmpfs, as with the docker backend.
            config["readonly_rootfs"] = json!(true);
            mounts.push(json!({
                "type": "tmpfs",
                "target": "/tmp",
                "readonly": false,
                "tmpfs_options": {"size": 64 * 1024 * 1024},
            }));
        }
        if !mounts.is_empty() {
            config["mount"] = Value::Array(mounts);
        }
        if let Some(auth) = &spec.registry_auth {
            let server = auth.server.clone().or_else(|| image.registry.clone());
            config["auth"] = json!({
                "username": auth.username,
                "password": auth.password,
                "server_address": server.unwrap_or_default(),
            });
        }
        let mut templates = Vec::new();
        if let Some(state) = &spec.state {
            env.insert(
                "STEVEDORE_STATE_FILE".to_owned(),
                NOMAD_STATE_FILE.to_owned(),
            );
            templates.push(json!({
                "EmbeddedTmpl": state,
                "DestPath": NOMAD_STATE_FILE.trim_start_matches('/'),
                "LeftDelim": LEFT_DELIM,
                "RightDelim": RIGHT_DELIM,
                "ChangeMode": "noop",
                "Perms": "0644",
            }));
        }
        let cpu = spec
            .resources
            .cpu
            .map(|cpu| ((cpu * self.config.mhz_per_cpu as f64).ceil() as u64).max(1))
            .unwrap_or(DEFAULT_CPU_MHZ);
        let memory = spec
            .resources
            .memory_bytes
            .map(|bytes| bytes.div_ceil(1024 * 1024).max(1))
            .unwrap_or(DEFAULT_MEMORY_MB);
        let mut job = json!({
            "ID": id,
            "Name": id,
            "Type": "batch",
            "Datacenters": self.config.datacenters,
            "Meta": meta,
            "TaskGroups": [{
                "Name": GROUP,
                "Count": 1,
                "RestartPolicy": {
                    "Attempts": 0,
                    "Mode": "fail",
                    "Interval": 86_400_000_000_000u64,
                    "Delay": 0,
                },
                "ReschedulePolicy": {"Attempts": 0, "Unlimited": false},
                "Tasks": [{
                    "Name": TASK,
                    "Driver": "docker",
                    "Config": config,
                    "Env": env,
                    "Meta": meta,
                    "Resources": {"CPU": cpu, "MemoryMB": memory},
                    "User": isolation.user.clone().unwrap_or_default(),
                    // Like the docker backend: a kill is immediate.
                    "KillSignal": "SIGKILL",
                    "KillTimeout": 5_000_000_000u64,
                    "Templates": templates,
                }],
            }],
        });
        if let Some(namespace) = &self.config.namespace {
            job["Namespace"] = json!(namespace);
        }
        if let Some(region) = &self.config.region {
            job["Region"] = json!(region);
        }
        if !spec.placement.is_empty() {
            job["Constraints"] = Value::Array(
                spec.placement
                    .iter()
                    .map(|(key, value)| {
                        json!({"LTarget": format!("${{meta.{key}}}"), "RTarget": value, "Operand": "="})
                    })
                    .collect(),
            );
        }
        job
    }

    /// Registers the try's job, only if no job of that ID exists.
    async fn register(&self, job: Value) -> Result<(), ApiError> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/jobs", &[])
                .json(&json!({"Job": job, "EnforceIndex": true, "JobModifyIndex": 0})),
        )
        .await
        .map(|_| ())
    }

    /// Why Nomad has not placed the job, in its words (`None` when it has not said).
    async fn placement_problem(&self, nomad_job: &str) -> Option<String> {
        let (evaluations, _): (Vec<Evaluation>, u64) = self
            .get(&format!("/v1/job/{}/evaluations", segment(nomad_job)), &[])
            .await
            .ok()?;
        let latest = evaluations.into_iter().max_by_key(|e| e.create_index)?;
        let failed = latest.failed_tg_allocs.unwrap_or_default();
        let described: Vec<String> = failed
            .iter()
            .map(|(group, metric)| {
                format!(
                    "task group {group:?} failed to place: {}",
                    metric.describe()
                )
            })
            .collect();
        if !described.is_empty() {
            return Some(described.join("; "));
        }
        (!latest.status_description.is_empty()).then_some(latest.status_description)
    }

    /// Waits until Nomad places the job's allocation: `Ok(None)` when it is not placed within
    /// the placement timeout.
    async fn placed(
        &self,
        nomad_job: &str,
        kill: &mut KillReceiver,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<Option<Allocation>, Interrupted> {
        let deadline = tokio::time::Instant::now() + self.config.placement_timeout;
        let path = format!("/v1/job/{}/allocations", segment(nomad_job));
        let mut index = 0;
        let mut said_waiting = false;
        let mut listening = true;
        loop {
            let asked = kill.borrow().clone();
            if let Some(reason) = asked {
                return Err(Interrupted::Killed(reason));
            }
            let answer = tokio::select! {
                answer = self.watch::<Vec<Allocation>>(&path, index) => answer,
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                changed = kill.changed(), if listening => {
                    // Dropped: nobody will ask for a kill; keep waiting without the switch.
                    listening = changed.is_ok();
                    continue;
                }
            };
            let (allocations, next) = answer.map_err(Interrupted::Api)?;
            if let Some(allocation) = allocations.into_iter().max_by_key(|a| a.create_index) {
                return Ok(Some(allocation));
            }
            if !said_waiting {
                if let Some(problem) = self.placement_problem(nomad_job).await {
                    said_waiting = true;
                    let _ = events
                        .send(TryEvent::Note(format!(
                            "waiting for Nomad to place the try: {problem}"
                        )))
                        .await;
                }
            }
            index = next;
        }
    }

    /// Follows the allocation until it is terminal, deregistering the job when `kill` fires.
    /// Returns the last allocation read and the kill, if any.
    async fn follow_allocation(
        &self,
        mut allocation: Allocation,
        nomad_job: &str,
        kill: &mut KillReceiver,
        terminal: &watch::Sender<bool>,
    ) -> Result<(Allocation, Option<KillReason>), ApiError> {
        let path = format!("/v1/allocation/{}", segment(&allocation.id));
        let mut index = 0;
        let mut killed: Option<KillReason> = kill.borrow().clone();
        let mut listening = true;
        if killed.is_some() {
            self.purge(nomad_job).await?;
        }
        while !allocation.is_terminal() {
            let answer = tokio::select! {
                answer = self.watch::<Allocation>(&path, index) => answer,
                changed = kill.changed(), if killed.is_none() && listening => {
                    if changed.is_err() {
                        listening = false;
                        continue;
                    }
                    let asked = kill.borrow().clone();
                    if let Some(reason) = asked {
                        killed = Some(reason);
                        self.purge(nomad_job).await?;
                    }
                    continue;
                }
            };
            let (read, next) = answer?;
            allocation = read;
            index = next;
        }
        let _ = terminal.send(true);
        Ok((allocation, killed))
    }

    /// Streams one of the task's logs as lines until the allocation is terminal and the log
    /// is read to its end. Resumes by byte offset after a broken connection, so no line is
    /// sent twice; the first `skip` lines (stored already) are not sent at all.
    async fn follow_log(
        &self,
        allocation_id: &str,
        stream: Stream,
        mut skip: u64,
        max_line_bytes: usize,
        mut terminal: watch::Receiver<bool>,
        events: &mpsc::Sender<TryEvent>,
    ) {
        let kind = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let path = format!("/v1/client/fs/logs/{}", segment(allocation_id));
        let mut offset: u64 = 0;
        let mut splitter = LineSplitter::new(max_line_bytes);
        let mut pending: Vec<TryEvent> = Vec::new();
        let mut failures = 0u32;
        // The first `skip` lines are stored already.
        let mut keep = |stream, timestamp, text, dropped| {
            if skip > 0 {
                skip -= 1;
                return None;
            }
            Some(TryEvent::Line {
                stream,
                timestamp,
                text,
                dropped,
            })
        };
        'connect: loop {
            // Once the allocation is terminal, read what is left without following: that
            // answer ends at the end of the log (a followed one never does).
            let follow = !*terminal.borrow();
            let request = self.request(
                reqwest::Method::GET,
                &path,
                &[
                    ("task", TASK.to_owned()),
                    ("type", kind.to_owned()),
                    ("origin", "start".to_owned()),
                    ("offset", offset.to_string()),
                    ("follow", follow.to_string()),
                ],
            );
            let response = match self.send(request).await {
                Ok(response) => response,
                Err(error) => {
                    // 404: the task has not started yet, or it never wrote this log.
                    if !follow && (error.is_not_found() || failures >= 5) {
                        if !error.is_not_found() {
                            warn!(allocation_id, kind, error = %error, "the rest of the log could not be read");
                        }
                        break 'connect;
                    }
                    if !error.is_not_found() {
                        failures += 1;
                        debug!(allocation_id, kind, error = %error, "log stream refused; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = terminal.changed() => {}
                    }
                    continue 'connect;
                }
            };
            let mut body = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    changed = terminal.changed(), if follow => {
                        if changed.is_err() || *terminal.borrow() {
                            // Terminal: drop the followed stream, read the rest to its end.
                            continue 'connect;
                        }
                        continue;
                    }
                };
                let bytes = match chunk {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) => {
                        failures += 1;
                        debug!(allocation_id, kind, error = %error, "log stream broke; resuming");
                        if failures > 20 {
                            warn!(
                                allocation_id,
                                kind, "log stream keeps breaking; giving up on the rest"
                            );
                            break 'connect;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'connect;
                    }
                    None if follow => continue 'connect,
                    None => break 'connect,
                };
                buffer.extend_from_slice(&bytes);
                // Frames are JSON objects one after another; the last may be incomplete.
                let mut frames =
                    serde_json::Deserializer::from_slice(&buffer).into_iter::<StreamFrame>();
                let mut used = 0;
                let mut garbled = false;
                let now = Utc::now();
                while let Some(frame) = frames.next() {
                    let frame = match frame {
                        Ok(frame) => frame,
                        // The rest of this frame is still on its way.
                        Err(error) if error.is_eof() => break,
                        Err(error) => {
                            warn!(allocation_id, kind, error = %error, "a log frame is not JSON; reading again from the last whole frame");
                            garbled = true;
                            break;
                        }
                    };
                    used = frames.byte_offset();
                    if frame.file_event.is_some_and(|e| e == "file truncated") {
                        warn!(allocation_id, kind, "the task's log was truncated");
                    }
                    let Some(data) = frame.data.filter(|d| !d.is_empty()) else {
                        continue; // a heartbeat
                    };
                    let Ok(data) = base64::engine::general_purpose::STANDARD.decode(data) else {
                        warn!(allocation_id, kind, "a log frame's Data is not base64");
                        continue;
                    };
                    offset += data.len() as u64;
                    failures = 0;
                    splitter.push(
                        stream,
                        now,
                        &data,
                        &mut |stream, timestamp, text, dropped| {
                            pending.extend(keep(stream, timestamp, text, dropped))
                        },
                    );
                }
                buffer.drain(..used);
                for event in pending.drain(..) {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                if garbled {
                    failures += 1;
                    if failures > 20 {
                        break 'connect;
                    }
                    continue 'connect;
                }
            }
        }
        splitter.finish(&mut |stream, timestamp, text, dropped| {
            pending.extend(keep(stream, timestamp, text, dropped))
        });
        for event in pending {
            let _ = events.send(event).await;
        }
    }

    /// Follows a placed allocation to its end: its logs and its exit.
    async fn run_allocation(
        &self,
        allocation: Allocation,
        nomad_job: &str,
        skip: (u64, u64),
        max_line_bytes: usize,
        kill: &mut KillReceiver,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<TryExit, BackendError> {
        let (terminal_tx, terminal_rx) = watch::channel(allocation.is_terminal());
        let allocation_id = allocation.id.clone();
        let (_, _, followed) = tokio::join!(
            self.follow_log(
                &allocation_id,
                Stream::Stdout,
                skip.0,
                max_line_bytes,
                terminal_rx.clone(),
                events
            ),
            self.follow_log(
                &allocation_id,
                Stream::Stderr,
                skip.1,
                max_line_bytes,
                terminal_rx,
                events
            ),
            async {
                let followed = self
                    .follow_allocation(allocation, nomad_job, kill, &terminal_tx)
                    .await;
                // Let the log followers finish, whatever happened.
                let _ = terminal_tx.send(true);
                followed
            }
        );
        let (allocation, killed) = followed.map_err(|error| {
            BackendError::Disconnected(format!(
                "lost Nomad at {} while allocation {allocation_id} ran: {error}",
                self.config.address
            ))
        })?;
        Ok(exit_of(&allocation, killed))
    }
}

/// How the task of a terminal allocation ended, from its events.
fn exit_of(allocation: &Allocation, killed: Option<KillReason>) -> TryExit {
    let events = allocation.events();
    let terminated = events.iter().rev().find(|e| e.kind == "Terminated");
    let exit_code = terminated
        .and_then(|e| e.detail("exit_code"))
        .and_then(|code| code.parse::<i64>().ok());
    if let Some(reason) = killed {
        return TryExit {
            exit_code,
            failure: Some(reason.as_failure()),
        };
    }
    if terminated.and_then(|e| e.detail("oom_killed")) == Some("true") {
        return TryExit {
            exit_code,
            failure: Some(FailureReason::Backend(
                "killed by the kernel: out of memory".to_owned(),
            )),
        };
    }
    if exit_code.is_some() {
        return TryExit {
            exit_code,
            failure: None,
        };
    }
    // The task never ran to an exit: the event that failed it says why.
    // The event that says why comes before `Not Restarting`, which only says it is final.
    let failing = events
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.kind.as_str(),
                "Driver Failure"
                    | "Setup Failure"
                    | "Failed Validation"
                    | "Failed Artifact Download"
                    | "Template"
            )
        })
        .or_else(|| events.iter().rev().find(|e| e.fails_task));
    let failure = match failing {
        Some(event) => {
            let message = event.message();
            let lower = message.to_lowercase();
            if event.kind == "Driver Failure" && (lower.contains("pull") || lower.contains("image"))
            {
                FailureReason::Image(format!("Nomad: {message}"))
            } else {
                FailureReason::Backend(format!("Nomad: {}: {message}", event.kind))
            }
        }
        None if allocation.client_status == "lost" => FailureReason::Backend(format!(
            "Nomad lost the allocation {} on node {}: {}",
            allocation.id, allocation.node_name, allocation.client_description
        )),
        None => FailureReason::Backend(format!(
            "Nomad allocation {} ended {} without an exit code: {}",
            allocation.id, allocation.client_status, allocation.client_description
        )),
    };
    TryExit {
        exit_code: None,
        failure: Some(failure),
    }
}

/// An error and its causes, for a message that says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = cause_of(source);
    }
    text
}

fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(|e| e.source())
}

#[async_trait]
impl Backend for NomadBackend {
    fn name(&self) -> &'static str {
        "nomad"
    }

    /// Lists the tries' jobs (one at most): unlike `/v1/status/leader`, that needs the
    /// token's `read-job` in the namespace, so a wrong token or namespace shows up here.
    async fn health(&self) -> Result<(), BackendError> {
        self.get::<Value>(
            "/v1/jobs",
            &[
                ("prefix", "stevedore-".to_owned()),
                ("per_page", "1".to_owned()),
            ],
        )
        .await
        .map(|_| ())
        .map_err(|error| self.unavailable(error))
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        let failed = |reason| {
            Ok(TryExit {
                exit_code: None,
                failure: Some(reason),
            })
        };
        let image = match ImageRef::parse(&spec.image) {
            Ok(image) => image,
            Err(message) => return failed(FailureReason::Image(message)),
        };
        if spec.pull_policy == PullPolicy::Never {
            return failed(FailureReason::Image(format!(
                "image `{image}`: pull_policy never is not supported by the nomad backend (Nomad's docker driver pulls an image that is not on the node)"
            )));
        }
        if spec
            .state
            .as_deref()
            .is_some_and(|s| s.contains(LEFT_DELIM))
        {
            return failed(FailureReason::Backend(
                "the task's state holds the nomad backend's template delimiter".to_owned(),
            ));
        }
        let nomad_job = job_id(&spec.job_id, &spec.task_id, &spec.run_id, spec.try_number);
        match self.register(self.job_body(&spec, &image)).await {
            Ok(()) => {}
            Err(ApiError::Unreachable(error)) => return Err(self.unavailable(error)),
            Err(ApiError::Status(code, body))
                if body.contains("job already exists")
                    || (code == 500 && body.contains("enforcing job modify index")) =>
            {
                return failed(FailureReason::Backend(format!(
                    "a Nomad job of this try (`{nomad_job}`) exists already: another scheduler launched it; it is left alone"
                )));
            }
            Err(error) => {
                return failed(FailureReason::Backend(format!(
                    "Nomad refused the try's job `{nomad_job}`: {error}"
                )))
            }
        }
        let allocation = match self.placed(&nomad_job, &mut kill, &events).await {
            Ok(Some(allocation)) => allocation,
            Ok(None) => {
                let problem = self
                    .placement_problem(&nomad_job)
                    .await
                    .unwrap_or_else(|| "no allocation was placed".to_owned());
                self.purge_quietly(&nomad_job).await;
                return failed(FailureReason::Backend(format!(
                    "Nomad did not place the try within {}s: {problem}",
                    self.config.placement_timeout.as_secs()
                )));
            }
            Err(Interrupted::Killed(reason)) => {
                self.purge_quietly(&nomad_job).await;
                return failed(reason.as_failure());
            }
            Err(Interrupted::Api(error)) => {
                // Registered but not followed: the scheduler re-attaches (adopts) later.
                return Err(BackendError::Disconnected(format!(
                    "lost Nomad at {} while waiting for `{nomad_job}` to be placed: {error}",
                    self.config.address
                )));
            }
        };
        // Notes go before `Launched`: the output counted for adoption starts there.
        let _ = events
            .send(TryEvent::Note(format!(
                "Nomad placed the try as allocation {} of job {nomad_job} on node {}",
                allocation.id, allocation.node_name
            )))
            .await;
        let _ = events
            .send(TryEvent::Launched {
                container_id: allocation.id.clone(),
                image_digest: None,
            })
            .await;
        let exit = self
            .run_allocation(
                allocation,
                &nomad_job,
                (0, 0),
                spec.max_line_bytes,
                &mut kill,
                &events,
            )
            .await?;
        if !spec.keep_exited {
            self.purge_quietly(&nomad_job).await;
        }
        Ok(exit)
    }

    fn can_adopt(&self) -> bool {
        true
    }

    async fn adopt(
        &self,
        adoption: &Adoption,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<Adopted, BackendError> {
        let nomad_job = job_id(
            &adoption.job_id,
            &adoption.task_id,
            &adoption.run_id,
            adoption.try_number,
        );
        let path = format!("/v1/job/{}/allocations", segment(&nomad_job));
        let allocations = match self.get::<Vec<Allocation>>(&path, &[]).await {
            Ok((allocations, _)) => allocations,
            Err(error) if error.is_not_found() => Vec::new(),
            Err(ApiError::Unreachable(error)) => return Err(self.unavailable(error)),
            Err(error) => {
                return Ok(Adopted::Exit(TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Backend(format!(
                        "cannot read the allocations of `{nomad_job}`: {error}"
                    ))),
                }))
            }
        };
        let allocation = match allocations.into_iter().max_by_key(|a| a.create_index) {
            Some(allocation) => allocation,
            None => {
                // Is the job there, waiting to be placed?
                match self
                    .get::<Value>(&format!("/v1/job/{}", segment(&nomad_job)), &[])
                    .await
                {
                    Ok(_) => match self.placed(&nomad_job, &mut kill, &events).await {
                        Ok(Some(allocation)) => allocation,
                        Ok(None) => {
                            self.purge_quietly(&nomad_job).await;
                            return Ok(Adopted::NotStarted);
                        }
                        Err(Interrupted::Killed(reason)) => {
                            self.purge_quietly(&nomad_job).await;
                            return Ok(Adopted::Exit(TryExit {
                                exit_code: None,
                                failure: Some(reason.as_failure()),
                            }));
                        }
                        Err(Interrupted::Api(error)) => return Err(self.unavailable(error)),
                    },
                    Err(error) if error.is_not_found() => return Ok(Adopted::Missing),
                    Err(error) => return Err(self.unavailable(error)),
                }
            }
        };
        let _ = events
            .send(TryEvent::Launched {
                container_id: allocation.id.clone(),
                image_digest: None,
            })
            .await;
        let exit = self
            .run_allocation(
                allocation,
                &nomad_job,
                (adoption.stored_stdout, adoption.stored_stderr),
                adoption.max_line_bytes,
                &mut kill,
                &events,
            )
            .await?;
        Ok(Adopted::Exit(exit))
    }

    /// `container_id` is an allocation ID (what a try records) or a try's Nomad job ID
    /// (what [`Backend::list_running`] lists); either way the try's job is purged.
    async fn discard(&self, container_id: &str) -> Result<(), BackendError> {
        self.remove(container_id).await
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        let (jobs, _): (Vec<JobStub>, u64) = self
            .get(
                "/v1/jobs",
                &[
                    ("prefix", "stevedore-".to_owned()),
                    ("meta", "true".to_owned()),
                ],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(jobs
            .into_iter()
            .filter_map(|job| {
                let meta = job.meta?;
                Some(RunningTry {
                    container_id: job.id,
                    job_id: meta.get(LABEL_JOB)?.clone(),
                    run_id: meta.get(LABEL_RUN)?.clone(),
                    task_id: meta.get(LABEL_TASK)?.clone(),
                    try_number: meta.get(LABEL_TRY)?.parse().ok()?,
                })
            })
            .collect())
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        let nomad_job = if container_id.starts_with("stevedore-") {
            container_id.to_owned()
        } else {
            match self
                .get::<Allocation>(&format!("/v1/allocation/{}", segment(container_id)), &[])
                .await
            {
                Ok((allocation, _)) => allocation.job_id,
                Err(error) if error.is_not_found() => return Ok(()),
                Err(error) => return Err(self.unavailable(error)),
            }
        };
        self.purge(&nomad_job)
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Nomad's API cannot list or remove the docker volumes on its clients: workspaces of
    /// tries run on Nomad are left to the operator (docs/backends.md).
    async fn workspaces(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    async fn remove_workspace(&self, _run_id: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_never_shown() {
        let config = NomadConfig {
            token: Some("hunter2-token".into()),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn job_ids_are_path_safe() {
        assert_eq!(
            segment("stevedore-a-b-manual__2026-12-01T10:00:00+00:00-1"),
            "stevedore-a-b-manual__2026-12-01T10%3A00%3A00%2B00%3A00-1"
        );
    }

    #[test]
    fn placement_failures_read_like_nomad() {
        let metric: AllocationMetric = serde_json::from_value(json!({
            "NodesEvaluated": 1, "NodesExhausted": 1,
            "DimensionExhausted": {"memory": 1}, "NodesAvailable": {"dc1": 1}
        }))
        .unwrap();
        assert_eq!(
            metric.describe(),
            "Resources exhausted on 1 nodes; Dimension \"memory\" exhausted on 1 nodes"
        );
    }

    #[test]
    fn the_exit_comes_from_the_terminated_event() {
        let allocation: Allocation = serde_json::from_value(json!({
            "ID": "a1", "ClientStatus": "failed",
            "TaskStates": {"task": {"State": "dead", "Failed": true, "Events": [
                {"Type": "Started", "Time": 1, "Details": {}},
                {"Type": "Terminated", "Time": 2, "Details": {"exit_code": "3", "signal": "0", "oom_killed": "false"}},
            ]}}
        }))
        .unwrap();
        assert_eq!(
            exit_of(&allocation, None),
            TryExit {
                exit_code: Some(3),
                failure: None
            }
        );
        let pulled: Allocation = serde_json::from_value(json!({
            "ID": "a2", "ClientStatus": "failed",
            "TaskStates": {"task": {"Events": [
                {"Type": "Driver Failure", "DisplayMessage": "Failed to pull `x:1`: not found", "FailsTask": true},
            ]}}
        }))
        .unwrap();
        assert!(
            matches!(exit_of(&pulled, None).failure, Some(FailureReason::Image(m)) if m.contains("Failed to pull"))
        );
    }

    #[test]
    fn a_job_runs_one_docker_task_nomad_never_restarts() {
        let backend = NomadBackend::new(NomadConfig::default()).unwrap();
        let spec = LaunchSpec {
            job_id: "j".into(),
            run_id: "r".into(),
            task_id: "t".into(),
            try_number: 2,
            image: "127.0.0.1:5000/x:1".into(),
            pull_policy: PullPolicy::IfNotPresent,
            command: None,
            args: vec!["run".into()],
            env: BTreeMap::from([("A".to_owned(), "b".to_owned())]),
            resources: Resources {
                cpu: Some(0.5),
                memory_bytes: Some(256 * 1024 * 1024),
            },
            state: Some("{\"cursor\":1}".into()),
            registry_auth: None,
            placement: Default::default(),
            labels: Default::default(),
            keep_exited: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            isolation: Default::default(),
        };
        let job = backend.job_body(&spec, &ImageRef::parse(&spec.image).unwrap());
        assert_eq!(job["Type"], "batch");
        let group = &job["TaskGroups"][0];
        assert_eq!(group["RestartPolicy"]["Attempts"], 0);
        assert_eq!(group["RestartPolicy"]["Mode"], "fail");
        assert_eq!(
            group["ReschedulePolicy"],
            json!({"Attempts": 0, "Unlimited": false})
        );
        let task = &group["Tasks"][0];
        assert_eq!(task["Resources"], json!({"CPU": 500, "MemoryMB": 256}));
        assert_eq!(task["Env"]["STEVEDORE_STATE_FILE"], NOMAD_STATE_FILE);
        assert_eq!(task["Meta"][LABEL_TRY], "2");
        assert_eq!(task["Config"]["labels"][0][LABEL_RUN], "r");
    }
}
