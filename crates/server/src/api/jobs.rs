//! `/api/v1/jobs`: list, show, pause, trigger, backfill.

#[allow(unused_imports)]
use super::*;

pub(super) fn job_summary(job: &Job, paused: bool, last_runs: &[RunRecord]) -> Value {
    json!({
        "job_id": job.id,
        "description": job.description,
        "schedule": job.timetable.schedule.expression(),
        "timezone": job.timetable.timezone.name(),
        "paused": paused,
        "next_run_at": job.timetable.next_run_at(Utc::now()).map(time),
        "last_runs": last_runs.iter().map(|r| json!({"run_id": r.run_id, "state": r.state.as_str()})).collect::<Vec<_>>(),
    })
}

pub(super) async fn list_jobs(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({"items": items, "errors": errors})))
}

pub(super) async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let (job, path, source) = actions::load_job(&state.jobs_dir, &job_id)?;
    let paused = state.paused_jobs().await?.contains(&job.id);
    let last_runs = state.last_runs(&job.id, 10).await?;
    let mut value = job_summary(&job, paused, &last_runs);
    value["version"] = json!(job.version);
    value["file"] = json!(path);
    value["source"] = json!(source);
    value["params"] = Value::Object(job.params.clone());
    value["tasks"] = job
        .tasks
        .iter()
        .map(|task| {
            json!({
                "task_id": task.id,
                "image": task.image,
                "depends_on": task.depends_on,
                "trigger_rule": task.trigger_rule.as_str(),
                "pool": task.pool,
                "retries": task.retry.retries,
                "connections": task.connections,
            })
        })
        .collect();
    Ok(Json(value))
}

pub(super) async fn pause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(caller, state, job_id, true).await
}

pub(super) async fn unpause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(caller, state, job_id, false).await
}

pub(super) async fn set_paused(
    caller: Caller,
    state: AppState,
    job_id: String,
    paused: bool,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    actions::set_paused(state.store.as_ref(), &state.jobs_dir, &job_id, paused).await?;
    tracing::info!(job_id = %job_id, paused, by = %caller.name, "job paused state set");
    Ok(Json(json!({"job_id": job_id, "paused": paused})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    #[serde(default)]
    params: Map<String, Value>,
}

pub(super) async fn trigger_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Body(body): Body<TriggerBody>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Operator)?;
    let run =
        actions::trigger(state.store.as_ref(), &state.jobs_dir, &job_id, &body.params).await?;
    tracing::info!(run_id = %run.run_id, job_id = %job_id, by = %caller.name, "run triggered");
    Ok((StatusCode::CREATED, Json(run_json(&run))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackfillBody {
    from: String,
    to: String,
    #[serde(default)]
    rerun_failed: bool,
}

/// `POST /api/v1/jobs/{job_id}/backfill`: [`stevedore_ops::backfill`], as `jobs backfill`.
pub(super) async fn backfill_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
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
    Ok((StatusCode::CREATED, Json(backfill_json(&done))))
}

pub fn backfill_json(done: &stevedore_ops::backfill::Backfill) -> Value {
    json!({
        "from": done.from.map(views::instant),
        "to": done.to.map(views::instant),
        "intervals": done.intervals,
        "created": done.created,
        "rerun": done.rerun,
        "kept": done.kept,
    })
}

// Runs.
