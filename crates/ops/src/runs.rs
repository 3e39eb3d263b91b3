//! Creating runs: the scheduled ones a cron schedule makes due, and manual triggers.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use stevedore_domain::job::Job;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::RunTrigger;
use stevedore_store::{NewRun, RunRecord, Store, StoreError};

/// The run of `job` (its current version) for one data interval.
pub fn new_run(
    job: &Job,
    trigger: RunTrigger,
    logical_date: DateTime<Utc>,
    interval: DataInterval,
    params: Map<String, Value>,
) -> NewRun {
    NewRun {
        job_id: job.id.clone(),
        job_version: job.version.clone(),
        trigger,
        logical_date,
        data_interval: interval,
        params: Value::Object(params),
        task_ids: job.tasks.iter().map(|task| task.id.clone()).collect(),
        full_refresh: Vec::new(),
    }
}

/// The job's default params with a trigger's overrides on top.
pub fn merge_params(job: &Job, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut params = job.params.clone();
    for (key, value) in overrides {
        params.insert(key.clone(), value.clone());
    }
    params
}

/// Creates a manual run now: logical date is the trigger time, the data interval the
/// latest complete one of the schedule (Airflow's inference for manual runs).
pub async fn trigger_manual(
    store: &dyn Store,
    job: &Job,
    overrides: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<RunRecord, StoreError> {
    trigger_manual_refreshing(store, job, overrides, Vec::new(), now).await
}

/// [`trigger_manual`], with `full_refresh` naming the tasks that run without their committed
/// state (`jobs trigger --full-refresh`).
pub async fn trigger_manual_refreshing(
    store: &dyn Store,
    job: &Job,
    overrides: &Map<String, Value>,
    full_refresh: Vec<String>,
    now: DateTime<Utc>,
) -> Result<RunRecord, StoreError> {
    let interval = job.timetable.manual_interval(now);
    let mut run = new_run(
        job,
        RunTrigger::Manual,
        now,
        interval,
        merge_params(job, overrides),
    );
    run.full_refresh = full_refresh;
    store.create_run(run).await
}

/// Creates a run of an asset-triggered job (`schedule: {assets: ...}` or `{after: ...}`)
/// when its assets' updates since its last such run call for one: its params carry them as
/// `triggering_asset_events`. `None` for a job without such a schedule, or when none is due.
pub async fn trigger_by_assets(
    store: &dyn Store,
    job: &Job,
    now: DateTime<Utc>,
) -> Result<Option<RunRecord>, StoreError> {
    let Some(trigger) = &job.asset_trigger else {
        return Ok(None);
    };
    let interval = job.timetable.manual_interval(now);
    let run = new_run(
        job,
        RunTrigger::Asset,
        now,
        interval,
        merge_params(job, &Map::new()),
    );
    store.trigger_asset_run(trigger, run).await
}

/// Creates a run of a job with `events:` when a batch of the events posted to it is due:
/// `max_batch` of them wait, or the oldest has waited `max_wait`. The run gets those events
/// (its params carry `event_count`). `None` for a job without `events:`, or when none is due.
pub async fn trigger_by_events(
    store: &dyn Store,
    job: &Job,
    now: DateTime<Utc>,
) -> Result<Option<RunRecord>, StoreError> {
    let Some(events) = &job.events else {
        return Ok(None);
    };
    let waited = chrono::TimeDelta::from_std(events.max_wait).unwrap_or(chrono::TimeDelta::MAX);
    let interval = job.timetable.manual_interval(now);
    let run = new_run(
        job,
        RunTrigger::Event,
        now,
        interval,
        merge_params(job, &Map::new()),
    );
    store
        .batch_events(events.max_batch, now - waited, run)
        .await
}

/// Creates every scheduled run that is due at `now` (one without catchup, each missed
/// interval in order with it, at most `limit` per call). Returns how many were created.
pub async fn create_due_runs(
    store: &dyn Store,
    job: &Job,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut created = 0;
    let mut last = store.last_scheduled_interval(&job.id).await?;
    while created < limit {
        let Some(interval) = job.timetable.next_interval(last, now) else {
            break;
        };
        if interval.end > now {
            break;
        }
        let run = new_run(
            job,
            RunTrigger::Scheduled,
            interval.start,
            interval,
            job.params.clone(),
        );
        match store.create_run(run).await {
            Ok(_) => created += 1,
            // Another scheduler made it first: fine, move on.
            Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
        last = Some(interval);
    }
    Ok(created)
}

/// The outputs one task of a run published (its latest try's: a new try starts with none),
/// by key.
pub async fn task_outputs(
    store: &dyn Store,
    run_id: &str,
    task_id: &str,
) -> Result<std::collections::BTreeMap<String, Value>, StoreError> {
    Ok(store
        .outputs(run_id)
        .await?
        .into_iter()
        .filter(|(task, _, _)| task == task_id)
        .map(|(_, key, value)| (key, value))
        .collect())
}
