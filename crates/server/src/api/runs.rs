//! `/api/v1/runs`: list, show, cancel; a run's task instances, cleared and marked.

#[allow(unused_imports)]
use super::*;

pub fn run_json(run: &RunRecord) -> Value {
    serde_json::to_value(views::RunView::from(run)).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    job_id: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(super) async fn list_runs(
    caller: Caller,
    State(state): State<AppState>,
    Params(query): Params<RunsQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let limit = page_size(query.limit)?;
    let states = match &query.state {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<RunState>())
            .collect::<Result<_, _>>()
            .map_err(ApiError::bad_request)?,
    };
    // The cursor is the last run id of the previous page: any text is a valid position.
    let before = query.cursor.filter(|c| !c.is_empty());
    // One more than the page tells whether there is a next page.
    let mut runs = state
        .store
        .list_runs(&RunFilter {
            job_id: query.job_id,
            states,
            limit: Some(limit + 1),
            before,
        })
        .await?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|run| run.run_id.clone())
    } else {
        None
    };
    Ok(Json(json!({
        "items": runs.iter().map(run_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// A run by its full id (the CLI takes prefixes; the API, whose ids come from its own
/// answers, does not).
pub(super) async fn find_run(state: &AppState, run_id: &str) -> ApiResult<RunRecord> {
    Ok(state.store.get_run(run_id).await?)
}

pub(super) fn instance_json(ti: &TaskInstanceRecord, tries: &[TryRecord]) -> Value {
    serde_json::to_value(views::TaskInstanceView::new(ti, tries)).unwrap_or_default()
}

pub(super) fn try_json(attempt: &TryRecord) -> Value {
    serde_json::to_value(views::TryView::from(attempt)).unwrap_or_default()
}

pub(super) async fn get_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    let detail = views::run_detail(state.store.as_ref(), &run).await?;
    Ok(Json(serde_json::to_value(detail).unwrap_or_default()))
}

pub(super) async fn cancel_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    let run = actions::cancel(state.store.as_ref(), &run).await?;
    tracing::info!(run_id = %run.run_id, by = %caller.name, "run cancel requested");
    Ok(Json(run_json(&run)))
}

// Task instances and tries.

pub(super) async fn list_task_instances(
    caller: Caller,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    let detail = views::run_detail(state.store.as_ref(), &run).await?;
    let items: Vec<Value> = detail
        .task_instances
        .into_iter()
        .map(|ti| serde_json::to_value(ti.instance).unwrap_or_default())
        .collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn find_instance(
    state: &AppState,
    run_id: &str,
    task_id: &str,
) -> ApiResult<(RunRecord, TaskInstanceRecord, Vec<TryRecord>)> {
    let run = find_run(state, run_id).await?;
    let ti = state
        .store
        .task_instances(&run.run_id)
        .await?
        .into_iter()
        .find(|ti| ti.task_id == task_id)
        .ok_or_else(|| {
            ApiError::not_found(format!("run {} has no task `{task_id}`", run.run_id))
        })?;
    let tries = state.store.tries(&run.run_id, task_id).await?;
    Ok((run, ti, tries))
}

pub(super) async fn get_task_instance(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let (_, ti, tries) = find_instance(&state, &run_id, &task_id).await?;
    let mut value = instance_json(&ti, &tries);
    value["tries"] = tries.iter().map(try_json).collect();
    Ok(Json(value))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClearBody {
    #[serde(default)]
    downstream: bool,
}

pub(super) async fn clear_task(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
    Body(body): Body<ClearBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    let cleared = actions::clear(state.store.as_ref(), &run, &task_id, body.downstream).await?;
    tracing::info!(run_id = %run.run_id, cleared = ?cleared, by = %caller.name, "task instances cleared");
    Ok(Json(json!({"run_id": run.run_id, "cleared": cleared})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkBody {
    state: String,
}

pub(super) async fn mark_task(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
    Body(body): Body<MarkBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    actions::mark(state.store.as_ref(), &run, &task_id, &body.state).await?;
    tracing::info!(run_id = %run.run_id, task_id = %task_id, state = %body.state, by = %caller.name, "task instance marked");
    let (_, ti, tries) = find_instance(&state, &run.run_id, &task_id).await?;
    Ok(Json(instance_json(&ti, &tries)))
}
