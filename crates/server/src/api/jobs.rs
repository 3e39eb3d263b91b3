//! `/api/v1/jobs`: list, show, pause, trigger, backfill.

#[allow(unused_imports)]
use super::*;

/// A job of the jobs folder, with its last runs.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobSummary {
    job_id: String,
    description: Option<String>,
    /// Its cron expression, or none for a job that runs only when triggered.
    schedule: Option<String>,
    timezone: String,
    paused: bool,
    #[schema(format = DateTime)]
    next_run_at: Option<String>,
    /// Newest last.
    last_runs: Vec<LastRun>,
}

/// A run among a job's last ones.
#[derive(Serialize, ToSchema)]
pub(crate) struct LastRun {
    run_id: String,
    #[schema(schema_with = views::run_state)]
    state: String,
}

pub(super) fn job_summary(job: &Job, paused: bool, last_runs: &[RunRecord]) -> JobSummary {
    JobSummary {
        job_id: job.id.clone(),
        description: job.description.clone(),
        schedule: job.timetable.schedule.expression().map(str::to_owned),
        timezone: job.timetable.timezone.name().to_owned(),
        paused,
        next_run_at: job.timetable.next_run_at(Utc::now()).map(time),
        last_runs: last_runs
            .iter()
            .map(|r| LastRun {
                run_id: r.run_id.clone(),
                state: r.state.as_str().to_owned(),
            })
            .collect(),
    }
}

/// The jobs of the jobs folder, and the errors of its invalid job files.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobList {
    items: Vec<JobSummary>,
    errors: Vec<String>,
}

/// Jobs of the jobs folder, with their last runs; the errors of invalid job files
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/jobs", operation_id = "listJobs", responses(
    (status = 200, description = "jobs", body = JobList),
))]
pub(super) async fn list_jobs(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<JobList>> {
    caller.require(Role::Viewer)?;
    let found = state.jobs();
    let paused = state.paused_jobs().await?;
    let mut items = Vec::new();
    for loaded in &found.jobs {
        let last_runs = state.last_runs(&loaded.job.id, 10).await?;
        items.push(job_summary(
            &loaded.job,
            paused.contains(&loaded.job.id),
            &last_runs,
        ));
    }
    let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
    Ok(Json(JobList { items, errors }))
}

/// A job with its tasks (the DAG), params and file.
#[derive(Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobDetail {
    #[serde(flatten)]
    summary: JobSummary,
    version: String,
    file: String,
    source: String,
    #[schema(value_type = Object)]
    params: Value,
    tasks: Vec<TaskSummary>,
}

/// A task of a job.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskSummary {
    task_id: String,
    image: String,
    depends_on: Vec<String>,
    trigger_rule: String,
    pool: String,
    retries: u32,
    connections: Vec<String>,
}

/// A job with its tasks (the DAG), params and file
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", operation_id = "getJob", params(JobPath), responses(
    (status = 200, description = "the job", body = JobDetail),
    (status = 404, description = "no such job", body = ErrorBody),
))]
pub(super) async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
) -> ApiResult<Json<JobDetail>> {
    caller.require(Role::Viewer)?;
    let (job, path, source) = actions::load_job(&state.jobs_dir, &job_id)?;
    let paused = state.paused_jobs().await?.contains(&job.id);
    let last_runs = state.last_runs(&job.id, 10).await?;
    Ok(Json(JobDetail {
        summary: job_summary(&job, paused, &last_runs),
        version: job.version.clone(),
        file: path,
        source,
        params: Value::Object(job.params.clone()),
        tasks: job
            .tasks
            .iter()
            .map(|task| TaskSummary {
                task_id: task.id.clone(),
                image: task.image.clone(),
                depends_on: task.depends_on.clone(),
                trigger_rule: task.trigger_rule.as_str().to_owned(),
                pool: task.pool.clone(),
                retries: task.retry.retries,
                connections: task.connections.clone(),
            })
            .collect(),
    }))
}

/// Whether a job's schedule makes runs.
#[derive(Serialize, ToSchema)]
pub(crate) struct Paused {
    job_id: String,
    paused: bool,
}

/// Stops the job's schedule from making runs
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/pause", operation_id = "pauseJob", params(JobPath), responses(
    (status = 200, description = "paused", body = Paused),
    (status = 404, description = "no such job", body = ErrorBody),
))]
pub(super) async fn pause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
) -> ApiResult<Json<Paused>> {
    set_paused(caller, state, job_id, true).await
}

/// Lets the job's schedule make runs again
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/unpause", operation_id = "unpauseJob", params(JobPath), responses(
    (status = 200, description = "unpaused", body = Paused),
    (status = 404, description = "no such job", body = ErrorBody),
))]
pub(super) async fn unpause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
) -> ApiResult<Json<Paused>> {
    set_paused(caller, state, job_id, false).await
}

pub(super) async fn set_paused(
    caller: Caller,
    state: AppState,
    job_id: String,
    paused: bool,
) -> ApiResult<Json<Paused>> {
    caller.require(Role::Operator)?;
    actions::set_paused(state.store.as_ref(), &state.jobs_dir, &job_id, paused).await?;
    tracing::info!(job_id = %job_id, paused, by = %caller.name, "job paused state set");
    Ok(Json(Paused { job_id, paused }))
}

/// A manual run's params.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Trigger)]
pub(super) struct TriggerBody {
    /// Overrides of the job's params.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Map<String, Value>,
    /// Runs the tasks without their committed state, as on their first run (every task, or
    /// those of `full_refresh_tasks`); what they commit replaces the old state.
    #[serde(default)]
    #[schema(default = false)]
    full_refresh: bool,
    /// With `full_refresh`: only these tasks.
    #[serde(default)]
    full_refresh_tasks: Vec<String>,
}

/// Creates a manual run; params must be the job's own, of their defaults' types
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/runs", operation_id = "triggerRun", params(JobPath), request_body = TriggerBody, responses(
    (status = 201, description = "the run, queued", body = views::RunView),
    (status = 404, description = "no such job", body = ErrorBody),
    (status = 422, description = "a param is not the job's, or not of its default's type; a full refresh of a task the job does not have", body = ErrorBody),
))]
pub(super) async fn trigger_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
    Body(body): Body<TriggerBody>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let full_refresh = match (body.full_refresh, body.full_refresh_tasks.is_empty()) {
        (false, true) => None,
        (false, false) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "full_refresh_tasks needs full_refresh: true",
            ))
        }
        (true, true) => Some(actions::FullRefresh::All),
        (true, false) => Some(actions::FullRefresh::Tasks(body.full_refresh_tasks)),
    };
    let run = actions::trigger_refreshing(
        state.store.as_ref(),
        &state.jobs_dir,
        &job_id,
        &body.params,
        full_refresh,
    )
    .await?;
    tracing::info!(run_id = %run.run_id, job_id = %job_id, by = %caller.name, "run triggered");
    Ok((StatusCode::CREATED, Json(views::RunView::from(&run))))
}

/// The range of a backfill.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BackfillRequest)]
pub(super) struct BackfillBody {
    /// First logical date (the job's timezone unless it has an offset), such as 2024-01-01.
    from: String,
    /// Last logical date, included.
    to: String,
    #[serde(default)]
    #[schema(default = false)]
    rerun_failed: bool,
}

/// Creates the runs of every data interval whose start lies in [from, to], in order; with rerun_failed, failed runs of the range run again
///
/// Needs a token with the operator role. [`stevedore_ops::backfill`], as `jobs backfill`.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/backfill", operation_id = "backfillJob", params(JobPath), request_body = BackfillBody, responses(
    (status = 201, description = "what the backfill created", body = views::BackfillView),
    (status = 400, description = "a body that is not a backfill request", body = ErrorBody),
    (status = 404, description = "no such job", body = ErrorBody),
    (status = 422, description = "a job without a schedule, a date that does not parse, an empty or too long range", body = ErrorBody),
))]
pub(super) async fn backfill_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
    Body(body): Body<BackfillBody>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let request = stevedore_ops::backfill::BackfillRequest {
        job_id: job_id.clone(),
        from: body.from,
        to: body.to,
        rerun_failed: body.rerun_failed,
    };
    let done = stevedore_ops::backfill::backfill(
        state.store.as_ref(),
        &state.jobs_dir,
        &request,
        |_, _| {},
    )
    .await?;
    tracing::info!(job_id = %job_id, created = done.created.len(), rerun = done.rerun.len(), by = %caller.name, "backfill");
    Ok((StatusCode::CREATED, Json(views::BackfillView::from(&done))))
}

// Runs.
