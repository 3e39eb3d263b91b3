//! `/api/v1/runs`: list, show, cancel; a run's task instances, cleared and marked.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    job_id: Option<String>,
    /// States, comma-separated.
    #[param(pattern = "^(queued|running|success|failed)(,(queued|running|success|failed))*$")]
    state: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (the last run id it listed).
    cursor: Option<String>,
}

/// A page of runs.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunsPage {
    items: Vec<views::RunView>,
    /// Where the next page starts; none on the last page.
    next_cursor: Option<String>,
}

/// Runs, newest first, a page at a time
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs", operation_id = "listRuns", params(RunsQuery), responses(
    (status = 200, description = "a page of runs", body = RunsPage),
    (status = 400, description = "a bad filter, limit or cursor", body = ErrorBody),
))]
pub(super) async fn list_runs(
    caller: Caller,
    State(state): State<AppState>,
    Params(query): Params<RunsQuery>,
) -> ApiResult<Json<RunsPage>> {
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
    Ok(Json(RunsPage {
        items: runs.iter().map(views::RunView::from).collect(),
        next_cursor,
    }))
}

/// A run by its full id (the CLI takes prefixes; the API, whose ids come from its own
/// answers, does not).
pub(super) async fn find_run(state: &AppState, run_id: &str) -> ApiResult<RunRecord> {
    Ok(state.store.get_run(run_id).await?)
}

/// A run and its task instances
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", operation_id = "getRun", params(RunPath), responses(
    (status = 200, description = "the run", body = views::RunDetail),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run", body = ErrorBody),
))]
pub(super) async fn get_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(RunPath { run_id }): Path<RunPath>,
) -> ApiResult<Json<views::RunDetail>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    Ok(Json(views::run_detail(state.store.as_ref(), &run).await?))
}

/// Cancels a queued or running run: running tries are killed, the rest skipped
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/cancel", operation_id = "cancelRun", params(RunPath), responses(
    (status = 200, description = "cancel requested", body = views::RunView),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run", body = ErrorBody),
    (status = 409, description = "the run has already ended", body = ErrorBody),
))]
pub(super) async fn cancel_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(RunPath { run_id }): Path<RunPath>,
) -> ApiResult<Json<views::RunView>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    let run = actions::cancel(state.store.as_ref(), &run).await?;
    tracing::info!(run_id = %run.run_id, by = %caller.name, "run cancel requested");
    Ok(Json(views::RunView::from(&run)))
}

// Task instances and tries.

/// A run's task instances.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskInstances {
    items: Vec<views::TaskInstanceView>,
}

/// The run's task instances
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks", operation_id = "listTaskInstances", params(RunPath), responses(
    (status = 200, description = "task instances", body = TaskInstances),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run", body = ErrorBody),
))]
pub(super) async fn list_task_instances(
    caller: Caller,
    State(state): State<AppState>,
    Path(RunPath { run_id }): Path<RunPath>,
) -> ApiResult<Json<TaskInstances>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    let detail = views::run_detail(state.store.as_ref(), &run).await?;
    Ok(Json(TaskInstances {
        items: detail
            .task_instances
            .into_iter()
            .map(|ti| ti.instance)
            .collect(),
    }))
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

/// A task instance and its tries
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}", operation_id = "getTaskInstance", params(TaskPath), responses(
    (status = 200, description = "the task instance", body = views::TaskInstanceDetail),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run or task", body = ErrorBody),
))]
pub(super) async fn get_task_instance(
    caller: Caller,
    State(state): State<AppState>,
    Path(TaskPath { run_id, task_id }): Path<TaskPath>,
) -> ApiResult<Json<views::TaskInstanceDetail>> {
    caller.require(Role::Viewer)?;
    let (_, ti, tries) = find_instance(&state, &run_id, &task_id).await?;
    Ok(Json(views::TaskInstanceDetail {
        instance: views::TaskInstanceView::new(&ti, &tries),
        tries: tries.iter().map(views::TryView::from).collect(),
    }))
}

/// Whether clearing a task instance clears its downstream too.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Clear)]
pub(super) struct ClearBody {
    #[serde(default)]
    #[schema(default = false)]
    downstream: bool,
}

/// The task instances a clear ran again.
#[derive(Serialize, ToSchema)]
pub(crate) struct Cleared {
    run_id: String,
    cleared: Vec<String>,
}

/// Runs the task instance again (a new try, a fresh retry budget), with its downstream if asked
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/tasks/{task_id}/clear", operation_id = "clearTask", params(TaskPath), request_body = ClearBody, responses(
    (status = 200, description = "cleared", body = Cleared),
    (status = 404, description = "no such run or task", body = ErrorBody),
    (status = 422, description = "the run's job version no longer parses", body = ErrorBody),
))]
pub(super) async fn clear_task(
    caller: Caller,
    State(state): State<AppState>,
    Path(TaskPath { run_id, task_id }): Path<TaskPath>,
    Body(body): Body<ClearBody>,
) -> ApiResult<Json<Cleared>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    let cleared = actions::clear(state.store.as_ref(), &run, &task_id, body.downstream).await?;
    tracing::info!(run_id = %run.run_id, cleared = ?cleared, by = %caller.name, "task instances cleared");
    Ok(Json(Cleared {
        run_id: run.run_id,
        cleared,
    }))
}

fn markable() -> utoipa::openapi::Object {
    views::one_of(["success", "failed"])
}

/// The state a task instance is marked with.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Mark)]
pub(super) struct MarkBody {
    #[schema(schema_with = markable)]
    state: String,
}

/// Sets the task instance's state by hand
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/tasks/{task_id}/mark", operation_id = "markTask", params(TaskPath), request_body = MarkBody, responses(
    (status = 200, description = "the task instance", body = views::TaskInstanceView),
    (status = 404, description = "no such run or task", body = ErrorBody),
    (status = 422, description = "not a state that can be set by hand", body = ErrorBody),
))]
pub(super) async fn mark_task(
    caller: Caller,
    State(state): State<AppState>,
    Path(TaskPath { run_id, task_id }): Path<TaskPath>,
    Body(body): Body<MarkBody>,
) -> ApiResult<Json<views::TaskInstanceView>> {
    caller.require(Role::Operator)?;
    let run = find_run(&state, &run_id).await?;
    actions::mark(state.store.as_ref(), &run, &task_id, &body.state).await?;
    tracing::info!(run_id = %run.run_id, task_id = %task_id, state = %body.state, by = %caller.name, "task instance marked");
    let (_, ti, tries) = find_instance(&state, &run.run_id, &task_id).await?;
    Ok(Json(views::TaskInstanceView::new(&ti, &tries)))
}
