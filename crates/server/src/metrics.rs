//! Prometheus `/metrics` (text exposition format 0.0.4): runs and task instances per state
//! and notification deliveries per channel and outcome, read from the store at scrape time,
//! and the server's requests per route, method and status.
//!
//! Request labels come only from bounded sets, so no caller can grow the exposition (or
//! the server's memory) by sending made-up methods or paths: the route is the matched
//! route's template (`/api/v1/runs/{run_id}`), never the requested path, and a method
//! outside HTTP's usual nine is counted as `other`, as is every request no route matched.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stevedore_domain::role::Role;
use stevedore_store::LogTotals;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::AppState;

/// Counters kept in the server's memory.
#[derive(Default)]
pub struct Metrics {
    /// (route, method, status) → requests. Routes are the router's templates and methods
    /// one of [`METHODS`], so the map has a bounded number of keys.
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    /// The store's log totals and when they were counted: counted at most once every
    /// [`LOG_TOTALS_EVERY`], however often /metrics is scraped.
    log_totals: tokio::sync::Mutex<Option<(std::time::Instant, LogTotals)>>,
}

/// How long counted log totals are served before they are counted again: a count is an
/// index seek or two per try that still has rows and a sum over the archived logs.
pub const LOG_TOTALS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Metrics {
    async fn log_totals(&self, store: &dyn stevedore_store::Store) -> ApiResult<LogTotals> {
        let mut cached = self.log_totals.lock().await;
        if let Some((at, totals)) = *cached {
            if at.elapsed() < LOG_TOTALS_EVERY {
                return Ok(totals);
            }
        }
        let totals = store.log_totals().await?;
        *cached = Some((std::time::Instant::now(), totals));
        Ok(totals)
    }
}

/// The methods counted by name; any other is `other`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The label of a request's method: one of [`METHODS`], else `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS
        .iter()
        .find(|known| **known == method.as_str())
        .copied()
        .unwrap_or("other")
}

pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    // Only a matched route has a template; a request no route matched says nothing about
    // the server's routes, whatever its path.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let (route, method) = match route {
        Some(route) => (route, method),
        None => ("other".to_owned(), "other"),
    };
    if let Ok(mut requests) = state.metrics.requests.lock() {
        *requests.entry((route, method, status)).or_default() += 1;
    }
    response
}

/// A label value as the text exposition format writes it: `\`, `"` and line feeds escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics (text exposition)
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", responses(
    (status = 200, description = "metrics", body = String, content_type = "text/plain"),
))]
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
    // Deliveries are counted by the store (every attempt of every scheduler is recorded),
    // so the counters hold across schedulers and restarts.
    let deliveries = state.store.delivery_counts().await?;
    let _ = writeln!(
        text,
        "# HELP stevedore_notification_deliveries_total Notification delivery attempts, by channel and outcome (sent or failed)."
    );
    let _ = writeln!(
        text,
        "# TYPE stevedore_notification_deliveries_total counter"
    );
    for channel in ["webhook", "slack", "email", "none"] {
        for (ok, outcome) in [(true, "sent"), (false, "failed")] {
            let n = deliveries
                .iter()
                .find(|(c, o, _)| c == channel && *o == ok)
                .map_or(0, |(_, _, n)| *n);
            if n > 0 || channel != "none" {
                let _ = writeln!(
                    text,
                    "stevedore_notification_deliveries_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }
    // What integrations report: the `metric` messages of their tries.
    let metrics = state.store.task_metrics().await?;
    let _ = writeln!(
        text,
        "# HELP stevedore_task_metric The last value a task's tries reported for a metric (`metric` messages), by job, task and name."
    );
    let _ = writeln!(text, "# TYPE stevedore_task_metric gauge");
    for metric in &metrics {
        let _ = writeln!(
            text,
            "stevedore_task_metric{{job=\"{}\",task=\"{}\",name=\"{}\"}} {}",
            label(&metric.job_id),
            label(&metric.task_id),
            label(&metric.name),
            metric.last_value
        );
    }
    let _ = writeln!(
        text,
        "# HELP stevedore_task_metric_total The sum of the values successful tries reported for a metric (records moved, rows loaded), by job, task and name."
    );
    let _ = writeln!(text, "# TYPE stevedore_task_metric_total counter");
    for metric in &metrics {
        let _ = writeln!(
            text,
            "stevedore_task_metric_total{{job=\"{}\",task=\"{}\",name=\"{}\"}} {}",
            label(&metric.job_id),
            label(&metric.task_id),
            label(&metric.name),
            metric.total
        );
    }
    let histograms = state.store.job_histograms().await?;
    for (name, help) in [
        (
            "try_duration_seconds",
            "How long tries ran, from start to end, by job.",
        ),
        (
            "queue_wait_seconds",
            "How long task instances waited from ready (their trigger rule held, a retry fell due) to their try's start, by job.",
        ),
        (
            "run_lag_seconds",
            "How long after its data interval ended a scheduled run ended, by job.",
        ),
    ] {
        let metric = format!("stevedore_{name}");
        let _ = writeln!(text, "# HELP {metric} {help}");
        let _ = writeln!(text, "# TYPE {metric} histogram");
        for histogram in histograms.iter().filter(|h| h.name == name) {
            let job = label(&histogram.job_id);
            let mut cumulative = 0u64;
            for (index, count) in histogram.buckets.iter().enumerate() {
                cumulative += count;
                let le = stevedore_store::HISTOGRAM_BUCKETS
                    .get(index)
                    .map_or("+Inf".to_owned(), |bound| bound.to_string());
                let _ = writeln!(
                    text,
                    "{metric}_bucket{{job=\"{job}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(text, "{metric}_sum{{job=\"{job}\"}} {}", histogram.sum);
            let _ = writeln!(text, "{metric}_count{{job=\"{job}\"}} {}", histogram.count);
        }
    }
    let _ = writeln!(
        text,
        "# HELP stevedore_store_bytes The metadata store's size on disk."
    );
    let _ = writeln!(text, "# TYPE stevedore_store_bytes gauge");
    let _ = writeln!(
        text,
        "stevedore_store_bytes {}",
        state.store.size_bytes().await?
    );
    let logs = state.metrics.log_totals(state.store.as_ref()).await?;
    for (name, help, value) in [
        (
            "stevedore_log_rows",
            "Log lines held as rows in the metadata store (counted at most once a minute).",
            logs.rows,
        ),
        (
            "stevedore_archived_log_lines",
            "Log lines in logs archived to the artifact store (counted at most once a minute).",
            logs.archived_lines,
        ),
        (
            "stevedore_archived_log_bytes",
            "Compressed bytes of the logs archived to the artifact store (counted at most once a minute).",
            logs.archived_bytes,
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        let _ = writeln!(text, "{name} {value}");
    }
    let _ = writeln!(
        text,
        "# HELP stevedore_http_requests_total Requests this server answered, by route, method and status."
    );
    let _ = writeln!(text, "# TYPE stevedore_http_requests_total counter");
    if let Ok(requests) = state.metrics.requests.lock() {
        for ((route, method, status), n) in requests.iter() {
            let _ = writeln!(
                text,
                "stevedore_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
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
