//! A task instance's tries and their logs: paged, or followed live (server-sent events).

#[allow(unused_imports)]
use super::*;

pub(super) async fn list_tries(
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

pub(super) async fn get_try(
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

pub(super) fn line_json(line: &LogLine) -> Value {
    json!({
        "seq": line.seq,
        "stream": line.stream.as_str(),
        "timestamp": time(line.timestamp),
        "text": line.text,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// Lines after this sequence number (exclusive); from the first line without it.
    after: Option<i64>,
    limit: Option<u32>,
}

/// At most this many log lines per page.
pub(super) const MAX_LOG_PAGE: u32 = 10_000;

pub(super) async fn get_logs(
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
pub(super) async fn follow_logs(
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
