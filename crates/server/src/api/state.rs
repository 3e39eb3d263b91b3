//! `/api/v1/jobs/{job_id}/tasks/{task_id}/state`: a task's committed incremental state, its
//! history, and an operator setting or clearing it ([`stevedore_ops::state`], as the CLI's
//! `stevedore state`).

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct JobTaskPath {
    /// A job id.
    #[param(min_length = 1)]
    job_id: String,
    /// A task id of the job.
    #[param(min_length = 1)]
    task_id: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
}

/// A state to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StateValue)]
pub(super) struct StateBody {
    /// The state, any JSON but `null` (clear it with DELETE), at most 1 MiB.
    #[schema(value_type = Object)]
    value: Value,
}

/// A task's committed state now: what its next run's tries get
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/tasks/{task_id}/state", operation_id = "getTaskState", params(JobTaskPath), responses(
    (status = 200, description = "the committed state and who committed it", body = views::StateView),
    (status = 404, description = "the task has no committed state", body = ErrorBody),
))]
pub(super) async fn get_task_state(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobTaskPath { job_id, task_id }): Path<JobTaskPath>,
) -> ApiResult<Json<views::StateView>> {
    caller.require(Role::Viewer)?;
    match stevedore_ops::state::show(state.store.as_ref(), &job_id, &task_id).await? {
        Some(entry) => Ok(Json(entry)),
        None => Err(ApiError::not_found(format!(
            "task `{task_id}` of job `{job_id}` has no committed state"
        ))),
    }
}

/// Every state the task committed, newest first: each successful run's, each set and clear
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/tasks/{task_id}/state/history", operation_id = "listTaskStateHistory", params(JobTaskPath, HistoryQuery), responses(
    (status = 200, description = "the task's committed states, newest first", body = Vec<views::StateView>),
    (status = 400, description = "a bad limit", body = ErrorBody),
))]
pub(super) async fn list_task_state_history(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobTaskPath { job_id, task_id }): Path<JobTaskPath>,
    Params(query): Params<HistoryQuery>,
) -> ApiResult<Json<Vec<views::StateView>>> {
    caller.require(Role::Viewer)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=stevedore_ops::state::MAX_HISTORY).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is not between 1 and {}",
            stevedore_ops::state::MAX_HISTORY
        )));
    }
    Ok(Json(
        stevedore_ops::state::history(state.store.as_ref(), &job_id, &task_id, limit).await?,
    ))
}

/// Sets a task's committed state: its next run's tries get it (a running run keeps what it got)
///
/// Needs a token with the operator role.
#[utoipa::path(put, path = "/api/v1/jobs/{job_id}/tasks/{task_id}/state", operation_id = "setTaskState", params(JobTaskPath), request_body = StateBody, responses(
    (status = 200, description = "the state as set", body = views::StateView),
    (status = 400, description = "a body that is not {\"value\": ...}", body = ErrorBody),
    (status = 404, description = "no such job", body = ErrorBody),
    (status = 422, description = "no such task, a null value, or a value over 1 MiB", body = ErrorBody),
))]
pub(super) async fn set_task_state(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobTaskPath { job_id, task_id }): Path<JobTaskPath>,
    Body(body): Body<StateBody>,
) -> ApiResult<Json<views::StateView>> {
    caller.require(Role::Operator)?;
    let entry = stevedore_ops::state::set(
        state.store.as_ref(),
        &state.jobs_dir,
        &job_id,
        &task_id,
        Some(body.value),
        &caller.name,
    )
    .await?;
    tracing::info!(job_id = %job_id, task_id = %task_id, by = %caller.name, "task state set");
    Ok(Json(entry))
}

/// Clears a task's committed state: its next run starts from nothing
///
/// Needs a token with the operator role.
#[utoipa::path(delete, path = "/api/v1/jobs/{job_id}/tasks/{task_id}/state", operation_id = "clearTaskState", params(JobTaskPath), responses(
    (status = 200, description = "the clear, as recorded in the history", body = views::StateView),
    (status = 404, description = "no such job", body = ErrorBody),
    (status = 422, description = "no such task", body = ErrorBody),
))]
pub(super) async fn clear_task_state(
    caller: Caller,
    State(state): State<AppState>,
    Path(JobTaskPath { job_id, task_id }): Path<JobTaskPath>,
) -> ApiResult<Json<views::StateView>> {
    caller.require(Role::Operator)?;
    let entry = stevedore_ops::state::set(
        state.store.as_ref(),
        &state.jobs_dir,
        &job_id,
        &task_id,
        None,
        &caller.name,
    )
    .await?;
    tracing::info!(job_id = %job_id, task_id = %task_id, by = %caller.name, "task state cleared");
    Ok(Json(entry))
}
