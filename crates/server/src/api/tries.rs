//! A task instance's tries and their logs: paged, or followed live (server-sent events).

#[allow(unused_imports)]
use super::*;

/// A task instance's tries.
#[derive(Serialize, ToSchema)]
pub(crate) struct Tries {
    items: Vec<views::TryView>,
}

/// The task instance's tries
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/tries", operation_id = "listTries", params(TaskPath), responses(
    (status = 200, description = "tries", body = Tries),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run or task", body = ErrorBody),
))]
pub(super) async fn list_tries(
    caller: Caller,
    State(state): State<AppState>,
    Path(TaskPath { run_id, task_id }): Path<TaskPath>,
) -> ApiResult<Json<Tries>> {
    caller.require(Role::Viewer)?;
    let (_, _, tries) = find_instance(&state, &run_id, &task_id).await?;
    Ok(Json(Tries {
        items: tries.iter().map(views::TryView::from).collect(),
    }))
}

pub(super) async fn find_try(
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

/// A try, with its outputs
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}", operation_id = "getTry", params(TryPath), responses(
    (status = 200, description = "the try", body = views::TryDetail),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run, task or try", body = ErrorBody),
))]
pub(super) async fn get_try(
    caller: Caller,
    State(state): State<AppState>,
    Path(TryPath {
        run_id,
        task_id,
        try_number,
    }): Path<TryPath>,
) -> ApiResult<Json<views::TryDetail>> {
    caller.require(Role::Viewer)?;
    let attempt = find_try(&state, &run_id, &task_id, try_number).await?;
    let outputs =
        stevedore_ops::runs::task_outputs(state.store.as_ref(), &attempt.run_id, &task_id).await?;
    Ok(Json(views::TryDetail {
        attempt: views::TryView::from(&attempt),
        outputs: json!(outputs),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Lines after this seq (from the first line without it).
    #[param(minimum = -1)]
    after: Option<i64>,
    #[param(minimum = 1, maximum = 10000, default = 1000)]
    limit: Option<u32>,
}

/// At most this many log lines per page.
pub(crate) const MAX_LOG_PAGE: u32 = 10_000;

/// A page of a try's log.
#[derive(Serialize, ToSchema)]
pub(crate) struct LogPage {
    lines: Vec<views::LogLineView>,
    /// The `after` of the next page.
    next_after: Option<i64>,
    #[schema(schema_with = views::try_state)]
    try_state: String,
    /// The try has ended and this page holds its last line.
    finished: bool,
}

/// Log lines of a try, by line number
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs", operation_id = "getLogs", params(TryPath, LogsQuery), responses(
    (status = 200, description = "lines", body = LogPage),
    (status = 400, description = "a bad range or path parameter", body = ErrorBody),
    (status = 404, description = "no such run, task or try", body = ErrorBody),
))]
pub(super) async fn get_logs(
    caller: Caller,
    State(state): State<AppState>,
    Path(TryPath {
        run_id,
        task_id,
        try_number,
    }): Path<TryPath>,
    Params(query): Params<LogsQuery>,
) -> ApiResult<Json<LogPage>> {
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
        .logs
        .log_page(attempt.try_id, query.after, limit)
        .await?;
    let lines = page.lines;
    let next_after = lines.last().map(|l| l.seq).or(query.after);
    Ok(Json(LogPage {
        finished: attempt.state != TryState::Running && !page.cut && lines.len() < limit as usize,
        lines: lines.iter().map(views::LogLineView::from).collect(),
        next_after,
        try_state: attempt.state.as_str().to_owned(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FollowQuery {
    /// Lines after this seq (from the first line without it).
    #[param(minimum = -1)]
    after: Option<i64>,
    /// Taken, as by the page of lines, and not used: a follow has no page size.
    #[param(ignore)]
    #[allow(dead_code)]
    limit: Option<u32>,
}

/// Log lines as Server-Sent Events: `line` events (data: a LogLine, id: its seq) while the try runs, then one `end` event (data: the Try)
///
/// Needs a token with the viewer role. Each stored line as a `line` event (its `seq` as
/// the event id), then one `end` event with the try's final state once it has ended and
/// every line is out.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs/follow", operation_id = "followLogs", params(TryPath, FollowQuery), responses(
    (status = 200, description = "the event stream", body = String, content_type = "text/event-stream"),
    (status = 400, description = "a bad range or path parameter", body = ErrorBody),
    (status = 404, description = "no such run, task or try", body = ErrorBody),
))]
pub(super) async fn follow_logs(
    caller: Caller,
    State(state): State<AppState>,
    Path(TryPath {
        run_id,
        task_id,
        try_number,
    }): Path<TryPath>,
    Params(query): Params<FollowQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Role::Viewer)?;
    let attempt = find_try(&state, &run_id, &task_id, try_number).await?;
    let options = stevedore_ops::logs::FollowOptions {
        after: query.after,
        live: true,
        poll: Duration::from_millis(200),
    };
    let events =
        stevedore_ops::logs::follow(state.store.clone(), state.logs.clone(), attempt, options)
            .filter_map(|event| async move {
                match event {
                    Ok(stevedore_ops::logs::LogEvent::Line(line)) => Some(Ok(Event::default()
                        .event("line")
                        .id(line.seq.to_string())
                        .data(json!(views::LogLineView::from(&line)).to_string()))),
                    Ok(stevedore_ops::logs::LogEvent::End(current)) => Some(Ok(Event::default()
                        .event("end")
                        .data(json!(views::TryView::from(&current)).to_string()))),
                    Err(error) => {
                        tracing::warn!(error = %error, "log follow: store unavailable");
                        None
                    }
                }
            });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// Pools.
