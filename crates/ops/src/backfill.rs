//! Backfill: the runs of every data interval whose start lies in a range, created in order
//! (Airflow's `dags backfill`), for the CLI, the REST API and the UI alike. Intervals that
//! have a run already keep it, unless `rerun_failed` clears the failed task instances of
//! a failed one.

use chrono::{DateTime, Utc};
use stevedore_domain::job::parse_date;
use stevedore_domain::schedule::Schedule;
use stevedore_domain::state::{RunState, RunTrigger, TaskState};
use stevedore_store::{RunFilter, Store, StoreError};

use crate::actions::{load_job, ActionError, Result};
use crate::runs::new_run;

/// The most intervals one backfill creates; a longer range is refused, to be done in parts.
pub const BACKFILL_LIMIT: usize = 10_000;

/// A backfill's range, as people write it.
#[derive(Clone, Debug)]
pub struct BackfillRequest {
    pub job_id: String,
    /// First logical date, in the job's timezone unless it has an offset.
    pub from: String,
    /// Last logical date, included.
    pub to: String,
    /// Runs of the range that failed run again (their failed task instances cleared).
    pub rerun_failed: bool,
}

/// What a backfill did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backfill {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Intervals in the range.
    pub intervals: usize,
    /// Runs created, in logical-date order.
    pub created: Vec<String>,
    /// Failed runs cleared to run again.
    pub rerun: Vec<String>,
    /// Intervals whose run was left as it is.
    pub kept: usize,
}

impl Backfill {
    /// The runs to wait for: the created ones, then the rerun ones.
    pub fn runs(&self) -> impl Iterator<Item = &String> {
        self.created.iter().chain(&self.rerun)
    }
}

/// Creates the runs of `request`'s range; `progress` is called after each interval.
/// A bad range or a job without a schedule is [`ActionError::Invalid`], naming the field.
pub async fn backfill(
    store: &dyn Store,
    jobs_dir: &std::path::Path,
    request: &BackfillRequest,
    mut progress: impl FnMut(usize, usize),
) -> Result<Backfill> {
    let (job, path, source) = load_job(jobs_dir, &request.job_id)?;
    let timetable = &job.timetable;
    if matches!(timetable.schedule, Schedule::Manual) {
        return Err(ActionError::Invalid(format!(
            "job `{}` has no schedule, so it has no intervals to backfill",
            job.id
        )));
    }
    let from = parse_date(&request.from, timetable.timezone)
        .map_err(|e| ActionError::Invalid(format!("from {e}")))?;
    let to = parse_date(&request.to, timetable.timezone)
        .map_err(|e| ActionError::Invalid(format!("to {e}")))?;
    if to < from {
        return Err(ActionError::Invalid("to is before from".to_owned()));
    }
    let intervals: Vec<_> = timetable
        .intervals_from(from, BACKFILL_LIMIT + 1)
        .into_iter()
        .take_while(|i| i.start <= to)
        .collect();
    if intervals.len() > BACKFILL_LIMIT {
        return Err(ActionError::Invalid(format!(
            "the range holds more than {BACKFILL_LIMIT} intervals; backfill it in parts"
        )));
    }
    store
        .upsert_job(&job.id, &job.version, &path, &source)
        .await?;
    let existing = store
        .list_runs(&RunFilter {
            job_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await?;
    let mut done = Backfill {
        from: Some(from),
        to: Some(to),
        intervals: intervals.len(),
        ..Default::default()
    };
    for (index, interval) in intervals.iter().enumerate() {
        let new = new_run(
            &job,
            RunTrigger::Backfill,
            interval.start,
            *interval,
            job.params.clone(),
        );
        match store.create_run(new).await {
            Ok(run) => done.created.push(run.run_id),
            Err(StoreError::Conflict(_)) => {
                let run = existing
                    .iter()
                    .find(|r| r.logical_date == interval.start && r.trigger != RunTrigger::Manual);
                match run {
                    Some(run) if request.rerun_failed && run.state == RunState::Failed => {
                        let failed: Vec<String> = store
                            .task_instances(&run.run_id)
                            .await?
                            .into_iter()
                            .filter(|ti| {
                                matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed)
                            })
                            .map(|ti| ti.task_id)
                            .collect();
                        store.clear_task_instances(&run.run_id, &failed).await?;
                        done.rerun.push(run.run_id.clone());
                    }
                    _ => done.kept += 1,
                }
            }
            Err(error) => return Err(error.into()),
        }
        progress(index + 1, intervals.len());
    }
    Ok(done)
}
