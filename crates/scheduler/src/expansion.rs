//! Expanding mapped tasks: when its upstreams let a task with `for_each` run, its list is
//! rendered from the run's params or its upstreams' outputs, and its unexpanded task
//! instance becomes one instance per item (`stevedore_domain::mapping`), is `skipped` (an
//! empty list, as in Airflow) or fails with the reason its list could not be made.

#[allow(unused_imports)]
use super::*;

use serde_json::Value;
use stevedore_domain::mapping::{self, ForEach};
use stevedore_domain::template::Variable;
use stevedore_store::{GiveUp, TaskInstanceRecord};

impl Scheduler {
    /// The run's outputs as `for_each` sees them (a mapped upstream's gathered into a list),
    /// read only when one of `tasks` maps over an output.
    pub(crate) async fn outputs_for_mapping(
        &self,
        run: &RunRecord,
        tasks: &[Task],
        states: &HashMap<String, TaskState>,
    ) -> anyhow::Result<HashMap<(String, String), Value>> {
        let keys: Vec<String> = states.keys().cloned().collect();
        let sources: std::collections::BTreeSet<&str> = tasks
            .iter()
            .filter_map(|task| match &task.for_each {
                Some(ForEach::Variable(Variable::Output { task, .. })) => Some(task.as_str()),
                _ => None,
            })
            .collect();
        source_outputs(self.store.as_ref(), &run.run_id, sources, &keys).await
    }

    /// Expands mapped `task` in `run` (its unexpanded instance is `scheduled` in `states`),
    /// and updates `states` to match what the store now holds. Returns the state the pass
    /// still has to write for the unexpanded instance (`skipped` for an empty list).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn expand(
        &self,
        job: &Job,
        run: &RunRecord,
        task: &Task,
        outputs: &HashMap<(String, String), Value>,
        instances: &[TaskInstanceRecord],
        states: &mut HashMap<String, TaskState>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<TaskState>> {
        let Some(for_each) = &task.for_each else {
            anyhow::bail!("task `{}` is not mapped", task.id);
        };
        let value_of = |variable: &Variable| match variable {
            Variable::Param(name) => run.params.get(name).cloned(),
            Variable::Output { task, key } => outputs.get(&(task.clone(), key.clone())).cloned(),
            _ => None,
        };
        match mapping::items(for_each, &value_of) {
            Ok(items) if items.is_empty() => {
                info!(run_id = %run.run_id, task_id = %task.id, "mapped task has an empty list: skipped");
                mapping::expand(states, &task.id, 0);
                Ok(Some(TaskState::Skipped))
            }
            Ok(items) => {
                let count = items.len() as u32;
                if !self
                    .store
                    .expand_task(&run.run_id, &task.id, &items)
                    .await?
                {
                    anyhow::bail!(
                        "task `{}` changed while it was expanded; the next pass reads it again",
                        task.id
                    );
                }
                mapping::expand(states, &task.id, count);
                info!(run_id = %run.run_id, task_id = %task.id, instances = count, "mapped task expanded");
                Ok(None)
            }
            Err(reason) => {
                let tries = instances
                    .iter()
                    .find(|ti| ti.task_id == task.id)
                    .map_or(0, |ti| ti.try_number);
                let failed = self.expansion_failure(job, run, task, tries + 1, reason, now);
                warn!(run_id = %run.run_id, task_id = %task.id, reason = %failed.reason, "mapped task cannot be expanded: failed");
                if !self.store.fail_before_start(&failed).await? {
                    anyhow::bail!(
                        "task `{}` changed while it was failed; the next pass reads it again",
                        task.id
                    );
                }
                if !failed.notifications.is_empty() {
                    self.notifications_waiting.notify_one();
                }
                states.insert(task.id.clone(), TaskState::Failed);
                Ok(None)
            }
        }
    }

    /// A mapped task whose list cannot be made fails at once, without a retry: a retry
    /// would render the same upstream outputs again.
    fn expansion_failure(
        &self,
        job: &Job,
        run: &RunRecord,
        task: &Task,
        try_number: u32,
        reason: String,
        now: DateTime<Utc>,
    ) -> GiveUp {
        let notifications = alerts::task_event(TaskState::Failed)
            .map(|event| {
                alerts::for_task(
                    job,
                    task,
                    alerts::RunRef::from(run),
                    event,
                    None,
                    try_number,
                    TaskState::Failed,
                    Some(&reason),
                    now,
                )
            })
            .unwrap_or_default();
        crate::pass::give_up(
            run,
            task,
            try_number,
            reason,
            (TaskState::Failed, None),
            now,
            notifications,
        )
    }
}

/// The outputs of the tasks `sources` in run `run_id`, as templates and `for_each` see
/// them: a mapped task's gathered into a list in map-index order, with a place for each of
/// its instances among `keys` (the run's task instance keys; none needed when no source is
/// mapped).
pub(crate) async fn source_outputs<'a>(
    store: &dyn Store,
    run_id: &str,
    sources: impl IntoIterator<Item = &'a str>,
    keys: &[String],
) -> anyhow::Result<HashMap<(String, String), Value>> {
    let mut outputs = HashMap::new();
    for source in sources {
        let found = store.task_outputs(run_id, source).await?;
        outputs.extend(mapping::gather_outputs(found, keys));
    }
    Ok(outputs)
}
