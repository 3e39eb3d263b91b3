//! Operator actions, shared by the CLI, the REST API and the web UI: trigger, pause, cancel,
//! clear and mark. Each is a small change to the store; the scheduler picks it up on its
//! next pass.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Map, Value};
use stevedore_domain::job::{parse_job, Job};
use stevedore_domain::state::{RunState, TaskState};
use stevedore_store::{RunRecord, Store, StoreError};

use crate::jobs_dir::load_jobs_dir;
use crate::runs::trigger_manual_refreshing;

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such job, run or task.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (bad params, a state that cannot be set by hand).
    #[error("{0}")]
    Invalid(String),
    /// An input that is not of its form (a name, a variable name, a number).
    #[error("{0}")]
    BadInput(String),
    /// Something that should not fail did (no randomness for a nonce, say).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, ActionError>;

/// A valid job of the jobs folder, with its file path and text; the folder's errors in the
/// message when it is not there.
pub fn load_job(jobs_dir: &Path, job_id: &str) -> Result<(Arc<Job>, String, String)> {
    let found = load_jobs_dir(jobs_dir);
    if let Some(loaded) = found.get(job_id) {
        return Ok((
            loaded.job.clone(),
            loaded.path.display().to_string(),
            loaded.source.clone(),
        ));
    }
    let mut message = format!(
        "job `{job_id}` is not a valid job in {}",
        jobs_dir.display()
    );
    for problem in &found.errors {
        message.push_str(&format!("\n  {problem}"));
    }
    Err(ActionError::NotFound(message))
}

/// Checks a trigger's params against the job's: each must be one of them, of the same JSON
/// type as its default (any integer for an integer, any number for a float).
pub fn validate_params(job: &Job, overrides: &Map<String, Value>) -> Result<()> {
    let mut problems = Vec::new();
    for (key, value) in overrides {
        let Some(default) = job.params.get(key) else {
            let known: Vec<&str> = job.params.keys().map(String::as_str).collect();
            problems.push(if known.is_empty() {
                format!("param `{key}`: job `{}` has no params", job.id)
            } else {
                format!(
                    "param `{key}` is not one of the job's params ({})",
                    known.join(", ")
                )
            });
            continue;
        };
        let fits = match default {
            Value::Null => true,
            Value::Bool(_) => value.is_boolean(),
            Value::Number(n) if n.is_f64() => value.is_number(),
            Value::Number(_) => value.is_i64() || value.is_u64(),
            Value::String(_) => value.is_string(),
            Value::Array(_) => value.is_array(),
            Value::Object(_) => value.is_object(),
        };
        if !fits {
            problems.push(format!(
                "param `{key}` must be {} like its default {default}, not {value}",
                json_kind(default)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ActionError::Invalid(problems.join("; ")))
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Creates a manual run of the job's current file, with validated params.
pub async fn trigger(
    store: &dyn Store,
    jobs_dir: &Path,
    job_id: &str,
    overrides: &Map<String, Value>,
) -> Result<RunRecord> {
    trigger_refreshing(store, jobs_dir, job_id, overrides, None).await
}

/// Which tasks of a manual run start without their committed state: `--full-refresh` alone
/// means every task of the job, `--full-refresh --task T` only T.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FullRefresh {
    #[default]
    None,
    All,
    Tasks(Vec<String>),
}

/// [`trigger`], with a full refresh of some or every task: they run without their committed
/// state, as on their first run (Airbyte's full refresh); the state they commit if the run
/// succeeds replaces the old one.
pub async fn trigger_refreshing(
    store: &dyn Store,
    jobs_dir: &Path,
    job_id: &str,
    overrides: &Map<String, Value>,
    full_refresh: Option<FullRefresh>,
) -> Result<RunRecord> {
    let (job, path, source) = load_job(jobs_dir, job_id)?;
    validate_params(&job, overrides)?;
    let tasks = match full_refresh.unwrap_or_default() {
        FullRefresh::None => Vec::new(),
        FullRefresh::All => job.tasks.iter().map(|t| t.id.clone()).collect(),
        FullRefresh::Tasks(tasks) => {
            for task in &tasks {
                if !job.tasks.iter().any(|t| &t.id == task) {
                    return Err(ActionError::Invalid(format!(
                        "--full-refresh: job `{}` has no task `{task}` (its tasks: {})",
                        job.id,
                        job.tasks
                            .iter()
                            .map(|t| t.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            tasks
        }
    };
    store
        .upsert_job(&job.id, &job.version, &path, &source)
        .await?;
    Ok(trigger_manual_refreshing(store, &job, overrides, tasks, Utc::now()).await?)
}

/// Pauses or unpauses a job (recording it first if the scheduler has not seen it yet).
pub async fn set_paused(
    store: &dyn Store,
    jobs_dir: &Path,
    job_id: &str,
    paused: bool,
) -> Result<()> {
    if store.list_jobs().await?.iter().any(|r| r.job_id == job_id) {
        store.set_paused(job_id, paused).await?;
    } else {
        // Recorded and paused in one write: no scheduling pass sees it unpaused between.
        let (job, path, source) = load_job(jobs_dir, job_id)?;
        store
            .record_job_paused(&job.id, &job.version, &path, &source, paused)
            .await?;
    }
    Ok(())
}

/// The job version a run was created with.
pub async fn run_job(store: &dyn Store, run: &RunRecord) -> Result<Job> {
    let source = store.job_source(&run.job_id, &run.job_version).await?;
    parse_job(&run.job_id, &source).map_err(|errors| {
        ActionError::Invalid(format!(
            "the run's job version no longer parses: {}",
            errors[0]
        ))
    })
}

/// Cancels a queued or running run: the scheduler kills its running tries, skips what has
/// not started and fails the run on its next pass. Returns the run as it is now. A run that
/// has ended cannot be cancelled, at every door alike: `StoreError::Conflict` ("run … has
/// already ended (success)"), a 409 in the API and the UI.
pub async fn cancel(store: &dyn Store, run: &RunRecord) -> Result<RunRecord> {
    let ended = |run: &RunRecord| {
        ActionError::Store(StoreError::Conflict(format!(
            "run {} has already ended ({})",
            run.run_id, run.state
        )))
    };
    if run.state.is_finished() {
        return Err(ended(run));
    }
    match store.request_cancel(&run.run_id).await {
        Ok(()) => Ok(store.get_run(&run.run_id).await?),
        // It ended between the read and the request.
        Err(StoreError::Conflict(_)) => Err(ended(&store.get_run(&run.run_id).await?)),
        Err(error) => Err(error.into()),
    }
}

/// Clears a task instance (a new try with a fresh retry budget), and with `downstream`
/// every task downstream of it; the run runs again. `key` is a task id, or `task[N]` for
/// one instance of a mapped task: a mapped task cleared whole is expanded again from its
/// list as it is then, an instance cleared alone keeps its item. Returns what was cleared.
pub async fn clear(
    store: &dyn Store,
    run: &RunRecord,
    key: &str,
    downstream: bool,
) -> Result<Vec<String>> {
    let job = run_job(store, run).await?;
    let (task_id, index) = stevedore_domain::mapping::split_key(key);
    let Some(task) = job.task(task_id) else {
        return Err(ActionError::NotFound(format!(
            "run {} has no task `{task_id}`",
            run.run_id
        )));
    };
    if index.is_some() && task.for_each.is_none() {
        return Err(ActionError::Invalid(format!(
            "task `{task_id}` is not mapped: it has no map index"
        )));
    }
    let mut cleared = vec![key.to_owned()];
    if downstream {
        let edges = job.downstream();
        let mut stack = vec![task_id];
        while let Some(id) = stack.pop() {
            for next in edges.get(id).into_iter().flatten() {
                if !cleared.iter().any(|c| c == next) {
                    cleared.push(next.to_string());
                    stack.push(next);
                }
            }
        }
    }
    store.clear_task_instances(&run.run_id, &cleared).await?;
    Ok(cleared)
}

/// Sets a task instance's state by hand (`success` or `failed`); a running try is stopped
/// and a finished run decides its outcome again. `task_id` is a task instance key
/// (`task[N]` for an instance of a mapped task).
pub async fn mark(store: &dyn Store, run: &RunRecord, task_id: &str, state: &str) -> Result<()> {
    let state: TaskState = match state {
        "success" | "failed" => state.parse().map_err(ActionError::Invalid)?,
        other => {
            return Err(ActionError::Invalid(format!(
                "a task instance can be marked success or failed, not `{other}`"
            )))
        }
    };
    let instances = store.task_instances(&run.run_id).await?;
    if !instances.iter().any(|ti| ti.task_id == task_id) {
        let prefix = format!("{task_id}[");
        if instances.iter().any(|ti| ti.task_id.starts_with(&prefix)) {
            return Err(ActionError::Invalid(format!(
                "task `{task_id}` is mapped in run {}: mark one of its instances (`{task_id}[N]`, \
                 `--map-index N`)",
                run.run_id
            )));
        }
        return Err(ActionError::NotFound(format!(
            "run {} has no task `{task_id}`",
            run.run_id
        )));
    }
    store
        .set_task_state(&run.run_id, task_id, state, Utc::now())
        .await?;
    if run.state.is_finished() {
        store
            .set_run_state(&run.run_id, RunState::Running, Utc::now())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        parse_job(
            "j.yaml",
            "id: j\nparams: {records: 10, ratio: 0.5, name: x, on: true, anything: null}\ntasks:\n  - id: t\n    image: i:1\n",
        )
        .unwrap()
    }

    fn params(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn params_must_be_the_jobs_own_and_of_their_defaults_type() {
        let job = job();
        assert!(validate_params(
            &job,
            &params(r#"{"records": 3, "ratio": 2, "name": "y", "on": false, "anything": [1]}"#)
        )
        .is_ok());
        let error = validate_params(&job, &params(r#"{"records": "many", "nope": 1}"#))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("param `records` must be an integer like its default 10, not \"many\""),
            "{error}"
        );
        assert!(
            error.contains("param `nope` is not one of the job's params"),
            "{error}"
        );
        assert!(validate_params(&job, &params(r#"{"records": 1.5}"#)).is_err());
    }
}
