//! Prometheus `/metrics` (text exposition format 0.0.4): runs and task instances per state,
//! read from the store at scrape time, and the server's requests per method and status.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stevedore_domain::role::Role;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::AppState;

/// Counters kept in the server's memory.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if let Ok(mut requests) = state.metrics.requests.lock() {
        *requests.entry((method, status)).or_default() += 1;
    }
    response
}

pub async fn exposition(caller: Caller, State(state): State<AppState>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let counts = state.store.state_counts().await?;
    let mut text = String::new();
    let _ = writeln!(text, "# HELP stevedore_runs Runs in the store, by state.");
    let _ = writeln!(text, "# TYPE stevedore_runs gauge");
    for &state in stevedore_domain::state::RunState::ALL {
        let n = counts
            .runs
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(text, "stevedore_runs{{state=\"{}\"}} {n}", state.as_str());
    }
    let _ = writeln!(
        text,
        "# HELP stevedore_task_instances Task instances in the store, by state."
    );
    let _ = writeln!(text, "# TYPE stevedore_task_instances gauge");
    for &state in stevedore_domain::state::TaskState::ALL {
        let n = counts
            .task_instances
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            text,
            "stevedore_task_instances{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    let _ = writeln!(
        text,
        "# HELP stevedore_http_requests_total Requests this server answered, by method and status."
    );
    let _ = writeln!(text, "# TYPE stevedore_http_requests_total counter");
    if let Ok(requests) = state.metrics.requests.lock() {
        for ((method, status), n) in requests.iter() {
            let _ = writeln!(
                text,
                "stevedore_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
