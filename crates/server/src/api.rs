//! The REST API under `/api/v1`: JSON in and out, errors as `{"error": {"code", "message"}}`,
//! large lists paged with an opaque `next_cursor`. Reading needs the viewer role; operator
//! actions (trigger, cancel, clear, mark, pause) the operator role; pools and connections
//! the admin role.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::stream::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use stevedore_domain::job::Job;
use stevedore_domain::role::Role;
use stevedore_domain::state::{RunState, TryState};
use stevedore_ops::{actions, views};
use stevedore_store::{
    ConnectionRecord, LogLine, PoolRecord, RunFilter, RunRecord, TaskInstanceRecord, TryRecord,
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The most items one page of a list holds, and the default.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{job_id}", get(get_job))
        .route("/api/v1/jobs/{job_id}/pause", post(pause_job))
        .route("/api/v1/jobs/{job_id}/unpause", post(unpause_job))
        .route("/api/v1/jobs/{job_id}/runs", post(trigger_run))
        .route("/api/v1/jobs/{job_id}/backfill", post(backfill_job))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{run_id}/tasks", get(list_task_instances))
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}",
            get(get_task_instance),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/clear",
            post(clear_task),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/mark",
            post(mark_task),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries",
            get(list_tries),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}",
            get(get_try),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs",
            get(get_logs),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs/follow",
            get(follow_logs),
        )
        .route("/api/v1/pools", get(list_pools))
        .route("/api/v1/pools/{name}", put(put_pool).delete(delete_pool))
        .route("/api/v1/connections", get(list_connections))
        .route(
            "/api/v1/connections/{name}",
            put(put_connection).delete(delete_connection),
        )
}

fn time(at: DateTime<Utc>) -> String {
    views::time(at)
}

/// A JSON body, with a 400 naming what is wrong when it does not parse.
pub struct Body<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let value = match Json::<Value>::from_request(request, state).await {
            Ok(Json(value)) => value,
            Err(rejection) => return Err(ApiError::bad_request(rejection.body_text())),
        };
        // Every body this API takes is an object (serde would also read a struct from an
        // array).
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("the body: {e}")))
    }
}

/// Path parameters, with a JSON 400 naming what is wrong (a try number that is no number).
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// Query parameters, with a 400 naming what is wrong.
pub struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

// Health and the API's own description.

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.runs_marker().await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok", "store": "ok"}))),
        Err(error) => {
            tracing::warn!(error = %error, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "store": "unavailable"})),
            )
        }
    }
}

async fn openapi(caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Viewer)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    ))
}

// Jobs.

fn job_summary(job: &Job, paused: bool, last_runs: &[RunRecord]) -> Value {
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

async fn list_jobs(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Value>> {
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

async fn get_job(
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

async fn pause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(caller, state, job_id, true).await
}

async fn unpause_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(caller, state, job_id, false).await
}

async fn set_paused(
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
struct TriggerBody {
    #[serde(default)]
    params: Map<String, Value>,
}

async fn trigger_run(
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
struct BackfillBody {
    from: String,
    to: String,
    #[serde(default)]
    rerun_failed: bool,
}

/// `POST /api/v1/jobs/{job_id}/backfill`: [`stevedore_ops::backfill`], as `jobs backfill`.
async fn backfill_job(
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

pub fn run_json(run: &RunRecord) -> Value {
    serde_json::to_value(views::RunView::from(run)).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    job_id: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn page_size(limit: Option<u32>) -> ApiResult<u32> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_PAGE => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_PAGE}"
        ))),
        n => Ok(n),
    }
}

async fn list_runs(
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
async fn find_run(state: &AppState, run_id: &str) -> ApiResult<RunRecord> {
    Ok(state.store.get_run(run_id).await?)
}

fn instance_json(ti: &TaskInstanceRecord, tries: &[TryRecord]) -> Value {
    serde_json::to_value(views::TaskInstanceView::new(ti, tries)).unwrap_or_default()
}

fn try_json(attempt: &TryRecord) -> Value {
    serde_json::to_value(views::TryView::from(attempt)).unwrap_or_default()
}

async fn get_run(
    caller: Caller,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    let detail = views::run_detail(state.store.as_ref(), &run).await?;
    Ok(Json(serde_json::to_value(detail).unwrap_or_default()))
}

async fn cancel_run(
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

async fn list_task_instances(
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

async fn find_instance(
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

async fn get_task_instance(
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
struct ClearBody {
    #[serde(default)]
    downstream: bool,
}

async fn clear_task(
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
struct MarkBody {
    state: String,
}

async fn mark_task(
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

async fn list_tries(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let (_, _, tries) = find_instance(&state, &run_id, &task_id).await?;
    Ok(Json(
        json!({"items": tries.iter().map(try_json).collect::<Vec<_>>()}),
    ))
}

async fn find_try(
    state: &AppState,
    run_id: &str,
    task_id: &str,
    try_number: u32,
) -> ApiResult<TryRecord> {
    let (run, _, tries) = find_instance(state, run_id, task_id).await?;
    tries
        .into_iter()
        .find(|t| t.try_number == try_number)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task `{task_id}` of run {} has no try {try_number}",
                run.run_id
            ))
        })
}

async fn get_try(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id, try_number)): Path<(String, String, u32)>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let attempt = find_try(&state, &run_id, &task_id, try_number).await?;
    let mut value = try_json(&attempt);
    let outputs =
        stevedore_ops::runs::task_outputs(state.store.as_ref(), &attempt.run_id, &task_id).await?;
    value["outputs"] = json!(outputs);
    Ok(Json(value))
}

fn line_json(line: &LogLine) -> Value {
    json!({
        "seq": line.seq,
        "stream": line.stream.as_str(),
        "timestamp": time(line.timestamp),
        "text": line.text,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Lines after this sequence number (exclusive); from the first line without it.
    after: Option<i64>,
    limit: Option<u32>,
}

/// At most this many log lines per page.
const MAX_LOG_PAGE: u32 = 10_000;

async fn get_logs(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id, try_number)): Path<(String, String, u32)>,
    Params(query): Params<LogsQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let limit = match query.limit.unwrap_or(1000) {
        0 => return Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_LOG_PAGE => {
            return Err(ApiError::bad_request(format!(
                "limit must be at most {MAX_LOG_PAGE}"
            )))
        }
        n => n,
    };
    let attempt = find_try(&state, &run_id, &task_id, try_number).await?;
    // A page holds at most `limit` lines and about 4 MiB of text (the store's budget): ask
    // again from `next_after` until `finished`.
    let page = state
        .store
        .log_page(attempt.try_id, query.after, limit)
        .await?;
    let lines = page.lines;
    let next_after = lines.last().map(|l| l.seq).or(query.after);
    Ok(Json(json!({
        "lines": lines.iter().map(line_json).collect::<Vec<_>>(),
        "next_after": next_after,
        "try_state": attempt.state.as_str(),
        "finished": attempt.state != TryState::Running && !page.cut && lines.len() < limit as usize,
    })))
}

/// Server-Sent Events: each stored line as a `line` event (its `seq` as the event id),
/// then one `end` event with the try's final state once it has ended and every line is out.
async fn follow_logs(
    caller: Caller,
    State(state): State<AppState>,
    Path((run_id, task_id, try_number)): Path<(String, String, u32)>,
    Params(query): Params<LogsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Role::Viewer)?;
    let attempt = find_try(&state, &run_id, &task_id, try_number).await?;
    let options = stevedore_ops::logs::FollowOptions {
        after: query.after,
        live: true,
        poll: Duration::from_millis(200),
    };
    let events = stevedore_ops::logs::follow(state.store.clone(), attempt, options).filter_map(
        |event| async move {
            match event {
                Ok(stevedore_ops::logs::LogEvent::Line(line)) => Some(Ok(Event::default()
                    .event("line")
                    .id(line.seq.to_string())
                    .data(line_json(&line).to_string()))),
                Ok(stevedore_ops::logs::LogEvent::End(current)) => Some(Ok(Event::default()
                    .event("end")
                    .data(try_json(&current).to_string()))),
                Err(error) => {
                    tracing::warn!(error = %error, "log follow: store unavailable");
                    None
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// Pools.

fn pool_json(pool: &PoolRecord) -> Value {
    json!({"name": pool.name, "slots": pool.slots, "description": pool.description})
}

async fn list_pools(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let pools = state.store.list_pools().await?;
    Ok(Json(
        json!({"items": pools.iter().map(pool_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBody {
    /// A whole number; JSON allows writing it `4.0`.
    slots: serde_json::Number,
    #[serde(default)]
    description: String,
}

async fn put_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<PoolBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let slots = body
        .slots
        .as_i64()
        .or_else(|| {
            body.slots
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("slots `{}` is not a whole number", body.slots))
        })?;
    let pool =
        stevedore_ops::pools::set(state.store.as_ref(), &name, slots, &body.description).await?;
    Ok(Json(pool_json(&pool)))
}

async fn delete_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Connections: names and variable names only; values go in and never come out.

fn connection_json(connection: &ConnectionRecord) -> Value {
    json!({"name": connection.name, "keys": connection.keys, "description": connection.description})
}

async fn list_connections(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let connections = state.store.list_connections().await?;
    Ok(Json(
        json!({"items": connections.iter().map(connection_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionBody {
    values: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
}

async fn put_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<ConnectionBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    // A bad name is the caller's mistake whatever the server lacks.
    stevedore_domain::names::check_name("connection", &name).map_err(ApiError::bad_request)?;
    let key = state.secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret_key",
            "the server has no secret key (STEVEDORE_SECRET_KEY or its key file) to seal connections with",
        )
    })?;
    let record = stevedore_ops::connections::put(
        state.store.as_ref(),
        key,
        &name,
        &body.values,
        &body.description,
    )
    .await?;
    tracing::info!(connection = %record.name, by = %caller.name, "connection set");
    Ok(Json(connection_json(&record)))
}

async fn delete_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_connection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
