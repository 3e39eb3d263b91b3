//! The JSON shapes of runs, task instances and tries: one set of serde types that the CLI's
//! `-o json`, the REST API and the OpenAPI document all use, so they cannot disagree
//! (restate's `admin-rest-model`, shared by its server and its CLI).
//!
//! Times are RFC 3339 in UTC: logical dates and data intervals in whole seconds (they are
//! schedule instants), the times things happened (queued, started, ended, next try) with
//! microseconds.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use stevedore_store::{RunRecord, TaskInstanceRecord, TryRecord};

/// A schedule instant: `2024-01-01T00:00:00Z`.
pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// When something happened: `2024-01-01T00:00:01.123456Z`.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub job_id: String,
    pub job_version: String,
    pub trigger: String,
    pub state: String,
    pub logical_date: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    pub params: Value,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub cancel_requested: bool,
}

impl From<&RunRecord> for RunView {
    fn from(run: &RunRecord) -> RunView {
        RunView {
            run_id: run.run_id.clone(),
            job_id: run.job_id.clone(),
            job_version: run.job_version.clone(),
            trigger: run.trigger.as_str().to_owned(),
            state: run.state.as_str().to_owned(),
            logical_date: instant(run.logical_date),
            data_interval_start: instant(run.data_interval.start),
            data_interval_end: instant(run.data_interval.end),
            params: run.params.clone(),
            queued_at: time(run.queued_at),
            started_at: run.started_at.map(time),
            ended_at: run.ended_at.map(time),
            cancel_requested: run.cancel_requested,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TryView {
    pub run_id: String,
    pub task_id: String,
    pub try_number: u32,
    pub state: String,
    pub backend: String,
    pub container_id: Option<String>,
    pub image: String,
    pub image_digest: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
}

impl From<&TryRecord> for TryView {
    fn from(attempt: &TryRecord) -> TryView {
        TryView {
            run_id: attempt.run_id.clone(),
            task_id: attempt.task_id.clone(),
            try_number: attempt.try_number,
            state: attempt.state.as_str().to_owned(),
            backend: attempt.backend.clone(),
            container_id: attempt.container_id.clone(),
            image: attempt.image_ref.clone(),
            image_digest: attempt.image_digest.clone(),
            started_at: time(attempt.started_at),
            ended_at: attempt.ended_at.map(time),
            exit_code: attempt.exit_code,
            failure_reason: attempt.failure_reason.clone(),
        }
    }
}

/// A task instance, with what its latest try says (exit code, digest, reason).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskInstanceView {
    pub run_id: String,
    pub task_id: String,
    pub state: String,
    pub try_number: u32,
    pub next_try_at: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
    pub image_digest: Option<String>,
    pub failure_reason: Option<String>,
}

impl TaskInstanceView {
    pub fn new(ti: &TaskInstanceRecord, tries: &[TryRecord]) -> TaskInstanceView {
        let last = tries.last();
        TaskInstanceView {
            run_id: ti.run_id.clone(),
            task_id: ti.task_id.clone(),
            state: ti.state.as_str().to_owned(),
            try_number: ti.try_number,
            next_try_at: ti.next_try_at.map(time),
            started_at: ti.started_at.map(time),
            ended_at: ti.ended_at.map(time),
            exit_code: last.and_then(|t| t.exit_code),
            image_digest: last.and_then(|t| t.image_digest.clone()),
            failure_reason: last.and_then(|t| t.failure_reason.clone()),
        }
    }
}

/// A task instance of a run's detail: the instance and every try of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskInstanceDetail {
    #[serde(flatten)]
    pub instance: TaskInstanceView,
    pub tries: Vec<TryView>,
}

/// A run with its task instances and their tries (`runs show`, `GET /api/v1/runs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub task_instances: Vec<TaskInstanceDetail>,
}

/// The detail of `run`, read from the store.
pub async fn run_detail(
    store: &dyn stevedore_store::Store,
    run: &RunRecord,
) -> Result<RunDetail, stevedore_store::StoreError> {
    let mut task_instances = Vec::new();
    for ti in store.task_instances(&run.run_id).await? {
        let tries = store.tries(&run.run_id, &ti.task_id).await?;
        task_instances.push(TaskInstanceDetail {
            instance: TaskInstanceView::new(&ti, &tries),
            tries: tries.iter().map(TryView::from).collect(),
        });
    }
    Ok(RunDetail {
        run: RunView::from(run),
        task_instances,
    })
}
