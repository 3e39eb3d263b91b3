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

mod api;
mod config;
mod cursor;
mod exit;
mod files;
mod follow;
mod job;
mod tls;

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

use api::*;
pub use config::NomadConfig;
use exit::*;

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

pub struct NomadBackend {
    config: NomadConfig,
    http: reqwest::Client,
    /// What request URLs begin with: the address, or with `NOMAD_TLS_SERVER_NAME` the
    /// address with that name for its host (resolved to the address's host).
    base: String,
}

/// A try's Nomad job ID: derived from the try itself (like the docker backend's container
/// name), so Nomad refuses a second job of the same try.
pub fn job_id(job_id: &str, task_id: &str, run_id: &str, try_number: u32) -> String {
    format!(
        "stevedore-{job_id}-{}-{run_id}-{try_number}",
        stevedore_domain::mapping::name_part(task_id)
    )
}

/// Percent-encodes one path segment (job IDs may hold `:` or `+` from run IDs).
fn segment(text: &str) -> String {
    stevedore_artifacts::path_segment(text)
}

/// Why a wait for the allocation ended early.
pub(crate) enum Interrupted {
    Killed(StopReason),
    Api(ApiError),
}

impl NomadBackend {
    pub fn new(config: NomadConfig) -> Result<NomadBackend, BackendError> {
        let unavailable = |message: String| BackendError::Unavailable(message);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        let mut authorities: Vec<std::path::PathBuf> = config.ca_cert.iter().cloned().collect();
        if let Some(folder) = &config.ca_path {
            // As go-rootcerts' `LoadCAPath` (Nomad's `api`): every file in the folder.
            let entries = std::fs::read_dir(folder)
                .map_err(|e| unavailable(format!("NOMAD_CAPATH {}: {e}", folder.display())))?;
            let mut files: Vec<std::path::PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.is_file())
                .collect();
            files.sort();
            authorities.extend(files);
        }
        for path in &authorities {
            let pem = std::fs::read(path)
                .map_err(|e| unavailable(format!("CA certificate {}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certificates| !certificates.is_empty())
                .ok_or_else(|| {
                    unavailable(format!(
                        "CA certificate {}: no PEM certificate in it",
                        path.display()
                    ))
                })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = std::fs::read(cert)
                .map_err(|e| unavailable(format!("NOMAD_CLIENT_CERT {}: {e}", cert.display())))?;
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| unavailable(format!("NOMAD_CLIENT_KEY {}: {e}", key.display())))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| unavailable(format!("NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY: {e}")))?;
            builder = builder.identity(identity);
        }
        if config.skip_verify {
            warn!("NOMAD_SKIP_VERIFY: Nomad's certificate is not checked");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let mut base = config.address.clone();
        if let Some(name) = config.tls_server_name.as_deref().filter(|n| !n.is_empty()) {
            let (named, resolver) = tls::server_name(&config.address, name).map_err(unavailable)?;
            base = named;
            builder = builder.dns_resolver(std::sync::Arc::new(resolver));
        }
        let http = builder
            .build()
            .map_err(|e| unavailable(format!("cannot build the Nomad client: {e}")))?;
        Ok(NomadBackend { config, http, base })
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
}

#[async_trait]
impl Backend for NomadBackend {
    fn name(&self) -> &'static str {
        "nomad"
    }

    /// Lists the tries' jobs (one at most): unlike `/v1/status/leader`, that needs the
    /// token's `read-job` in the namespace, so a wrong token or namespace shows up here.
    async fn health(&self) -> Result<(), BackendError> {
        let capabilities = "the token needs list-jobs, read-job, submit-job and read-logs in the namespace: deploy/nomad/stevedore-policy.hcl";
        self.get::<Value>(
            "/v1/jobs",
            &[
                ("prefix", "stevedore-".to_owned()),
                ("per_page", "1".to_owned()),
            ],
        )
        .await
        .map_err(|error| match error {
            ApiError::Status(403, _) => self.unavailable(format!("{error} ({capabilities})")),
            error => self.unavailable(error),
        })?;
        // Nomad lists the jobs of a namespace that does not exist as none, and refuses
        // every job registered into it: said here, before any try is.
        if let Some(namespace) = self.config.namespace.as_deref() {
            let path = format!("/v1/namespace/{}", segment(namespace));
            self.get::<Value>(&path, &[]).await.map_err(|error| match error {
                ApiError::Status(404, _) => self.unavailable(format!(
                    "Nomad has no namespace `{namespace}` (NOMAD_NAMESPACE): create it with `nomad namespace apply {namespace}`"
                )),
                ApiError::Status(403, _) => {
                    self.unavailable(format!("{error} (namespace `{namespace}`: {capabilities})"))
                }
                error => self.unavailable(error),
            })?;
        }
        Ok(())
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
        // Inputs need URLs the client can fetch; a store that cannot sign them fails the try
        // naming the file and what to set (`input_artifacts`), never an empty workspace.
        let artifacts = match spec.workspace.as_ref() {
            Some(exchange) => match self.input_artifacts(&spec.run_id, exchange).await {
                Ok(artifacts) => artifacts,
                Err(Ok(reason)) => return failed(reason),
                Err(Err(error)) => return Err(error),
            },
            None => Vec::new(),
        };
        let inputs = spec
            .workspace
            .as_ref()
            .map(|exchange| exchange.inputs.clone())
            .unwrap_or_default();
        match self
            .register(self.job_body(&spec, &image, &artifacts))
            .await
        {
            Ok(()) => {}
            Err(ApiError::Unreachable(error)) => return Err(self.unavailable(error)),
            // Nomad answers 500 both for a job it refuses and for an outage: a cluster
            // without a leader, or a server that cannot reach one, holds the try (it was not
            // registered) instead of failing it.
            Err(error @ ApiError::Status(500 | 502 | 503 | 504, _)) if error.is_outage() => {
                return Err(self.unavailable(error))
            }
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
        Ok(files::artifact_failure(exit, &inputs))
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
                            return Ok(Adopted::NotStarted { left: None });
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

    /// Reads the files through the client's file system API (`container_id` is the
    /// allocation ID; a Nomad job's ID when no allocation was ever placed: nothing to read).
    async fn capture(
        &self,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        if container_id.starts_with("stevedore-") {
            return Ok(Vec::new());
        }
        self.capture_allocation(container_id, run_id, store, staged, limits)
            .await
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
            workspace: None,
        };
        let job = backend.job_body(&spec, &ImageRef::parse(&spec.image).unwrap(), &[]);
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
