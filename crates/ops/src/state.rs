//! Operating incremental state (docs/connectors.md, "Operating state"): what a task's
//! committed state is, every state it committed (each successful run's, each operator's set
//! or clear), and an operator setting or clearing it, for the CLI, the REST API and the UI
//! alike. A run that is already running keeps the state its tries started with; a set or a
//! clear is what the next run's tries get.

use std::path::Path;

use serde_json::Value;
use stevedore_domain::protocol::TryLimits;
use stevedore_store::Store;

use crate::actions::{load_job, ActionError, Result};
use crate::views::StateView;

/// The most entries `state history` returns at once.
pub const MAX_HISTORY: u32 = 1000;

/// A task's committed state now: `None` when it has none (never committed, or cleared).
/// The entry tells who committed it and when.
pub async fn show(store: &dyn Store, job_id: &str, task_id: &str) -> Result<Option<StateView>> {
    let latest = store.state_history(job_id, task_id, 1).await?;
    let current = store.committed_state(job_id, task_id).await?;
    Ok(match (latest.first(), current) {
        (Some(entry), Some(_)) if entry.value.is_some() => Some(StateView::from(entry)),
        // Committed before histories were kept, or the history disagrees: the state itself
        // is what the next try gets.
        (entry, Some(value)) => Some(StateView {
            job_id: job_id.to_owned(),
            task_id: task_id.to_owned(),
            value: Some(value),
            action: "run".to_owned(),
            run_id: None,
            actor: None,
            committed_at: entry
                .map(|e| crate::views::time(e.committed_at))
                .unwrap_or_default(),
        }),
        (_, None) => None,
    })
}

/// Every committed state of a task, newest first (at most `limit`, capped at
/// [`MAX_HISTORY`]).
pub async fn history(
    store: &dyn Store,
    job_id: &str,
    task_id: &str,
    limit: u32,
) -> Result<Vec<StateView>> {
    let entries = store
        .state_history(job_id, task_id, limit.clamp(1, MAX_HISTORY))
        .await?;
    Ok(entries.iter().map(StateView::from).collect())
}

/// Sets (`Some`) or clears (`None`) a task's committed state as `actor`. The task must be
/// in the job's file; a value must be JSON other than `null` and no larger than a try's
/// state may be (`max_output_bytes`, 1 MiB).
pub async fn set(
    store: &dyn Store,
    jobs_dir: &Path,
    job_id: &str,
    task_id: &str,
    value: Option<Value>,
    actor: &str,
) -> Result<StateView> {
    let (job, _, _) = load_job(jobs_dir, job_id)?;
    // A mapped task's instances each keep their own state, under their key `task[N]`.
    if job.instance(task_id).is_none() {
        return Err(ActionError::Invalid(format!(
            "job `{job_id}` has no task `{task_id}` (its tasks: {})",
            job.tasks
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(value) = &value {
        if value.is_null() {
            return Err(ActionError::Invalid(
                "the state is null: clear it instead (stevedore state clear)".to_owned(),
            ));
        }
        let size = value.to_string().len();
        let limit = TryLimits::default().max_output_bytes;
        if size > limit {
            return Err(ActionError::Invalid(format!(
                "the state is {size} bytes of JSON, over the {limit} a try's state may be (max_output_bytes)"
            )));
        }
    }
    let entry = store
        .set_committed_state(job_id, task_id, value.as_ref(), actor)
        .await?;
    Ok(StateView::from(&entry))
}
