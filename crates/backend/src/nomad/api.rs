//! Nomad's HTTP API as the backend uses it: requests with the token, namespace and region,
//! blocking queries (`index`/`wait`, `X-Nomad-Index`), and the wire types (the Go field
//! names of Nomad's `api` package).

#[allow(unused_imports)]
use super::*;

/// A failed call to Nomad.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Nomad could not be reached (connection refused, reset, timed out).
    Unreachable(String),
    /// Nomad answered with an error status and this body.
    Status(u16, String),
}

impl ApiError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status(404, _))
    }

    /// Nomad's servers cannot answer for now (no leader, no path to one, a proxy in front
    /// without Nomad behind it), rather than refusing what was asked: `structs.ErrNoLeader`
    /// ("No cluster leader"), `ErrNoRegionPath`, and RPC errors (`nomad/structs/errors.go`).
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            ApiError::Unreachable(_) => true,
            ApiError::Status(502..=504, _) => true,
            ApiError::Status(500, body) => {
                let body = body.to_lowercase();
                ["no cluster leader", "no path to region", "rpc error", "eof"]
                    .iter()
                    .any(|mark| body.contains(mark))
            }
            ApiError::Status(..) => false,
        }
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
pub(crate) struct Allocation {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "JobID")]
    pub(crate) job_id: String,
    pub(crate) node_name: String,
    pub(crate) client_status: String,
    pub(crate) client_description: String,
    /// `run`, `stop` or `evict` (preempted, or drained off its node).
    #[serde(default)]
    pub(crate) desired_status: String,
    #[serde(default)]
    pub(crate) desired_description: String,
    pub(crate) task_states: Option<BTreeMap<String, TaskState>>,
    pub(crate) create_index: u64,
}

impl Allocation {
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.client_status.as_str(), "complete" | "failed" | "lost")
    }

    pub(crate) fn events(&self) -> &[TaskEvent] {
        self.task_states
            .as_ref()
            .and_then(|states| states.get(TASK))
            .map(|state| state.events.as_deref().unwrap_or_default())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct TaskState {
    pub(crate) events: Option<Vec<TaskEvent>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct TaskEvent {
    #[serde(rename = "Type")]
    pub(crate) kind: String,
    pub(crate) display_message: String,
    pub(crate) details: Option<BTreeMap<String, String>>,
    pub(crate) fails_task: bool,
    /// When it happened, in Unix nanoseconds.
    pub(crate) time: i64,
}

impl TaskEvent {
    pub(crate) fn detail(&self, key: &str) -> Option<&str> {
        self.details.as_ref()?.get(key).map(String::as_str)
    }

    pub(crate) fn message(&self) -> String {
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
pub(crate) struct StreamFrame {
    pub(crate) data: Option<String>,
    pub(crate) file_event: Option<String>,
    /// The log file the data is from (`alloc/logs/<task>.<type>.<n>`).
    pub(crate) file: Option<String>,
    /// Where the frame's data ends in that file.
    pub(crate) offset: u64,
}

/// A job as listed (`api.JobListStub`, with `meta=true`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct JobStub {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) meta: Option<BTreeMap<String, String>>,
}

/// An evaluation, for why a job was not placed (`api.Evaluation`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Evaluation {
    pub(crate) status_description: String,
    #[serde(rename = "FailedTGAllocs")]
    pub(crate) failed_tg_allocs: Option<BTreeMap<String, AllocationMetric>>,
    pub(crate) create_index: u64,
}

/// Why a task group could not be placed (`api.AllocationMetric`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct AllocationMetric {
    pub(crate) nodes_evaluated: u64,
    pub(crate) nodes_filtered: u64,
    pub(crate) nodes_exhausted: u64,
    pub(crate) class_filtered: Option<BTreeMap<String, u64>>,
    pub(crate) constraint_filtered: Option<BTreeMap<String, u64>>,
    pub(crate) class_exhausted: Option<BTreeMap<String, u64>>,
    pub(crate) dimension_exhausted: Option<BTreeMap<String, u64>>,
    pub(crate) quota_exhausted: Option<Vec<String>>,
    pub(crate) nodes_available: Option<BTreeMap<String, u64>>,
}

impl AllocationMetric {
    /// Nomad's own wording, as `nomad job status` prints it (`command/monitor.go`,
    /// `formatAllocMetrics`).
    pub(crate) fn describe(&self) -> String {
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

impl NomadBackend {
    /// A request to `path` with the token, namespace and region, plus `query`.
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
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

    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
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
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
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
    pub(crate) async fn watch<T: serde::de::DeserializeOwned>(
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
        // The next query waits for an index past this one; Nomad answers at once for index
        // 0 (`nomad/rpc.go`, `blockingRPC`), and a table nothing has written yet has index
        // 0 on a fresh cluster (`Job.Allocations`): waiting past 1 at least keeps the next
        // query a blocking one instead of a spin.
        let index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(index)
            .max(1);
        let value = response
            .json()
            .await
            .map_err(|e| ApiError::Unreachable(format!("reading Nomad's answer: {e}")))?;
        Ok((value, index))
    }

    pub(crate) async fn purge(&self, nomad_job: &str) -> Result<(), ApiError> {
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

    /// Stops the job without purging it: Nomad places no allocation for a stopped job (a
    /// lost node's, a preempted one's replacement included), and its allocations stay
    /// readable for the exit and the logs until [`NomadBackend::purge`].
    pub(crate) async fn stop_job(&self, nomad_job: &str) -> Result<(), ApiError> {
        match self
            .send(self.request(
                reqwest::Method::DELETE,
                &format!("/v1/job/{}", segment(nomad_job)),
                &[],
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub(crate) async fn purge_quietly(&self, nomad_job: &str) {
        if let Err(error) = self.purge(nomad_job).await {
            warn!(nomad_job, error = %error, "could not deregister the try's Nomad job");
        }
    }

    /// Registers the try's job, only if no job of that ID exists.
    pub(crate) async fn register(&self, job: Value) -> Result<(), ApiError> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/jobs", &[])
                .json(&json!({"Job": job, "EnforceIndex": true, "JobModifyIndex": 0})),
        )
        .await
        .map(|_| ())
    }

    /// Why Nomad has not placed the job, in its words (`None` when it has not said).
    pub(crate) async fn placement_problem(&self, nomad_job: &str) -> Option<String> {
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
}
