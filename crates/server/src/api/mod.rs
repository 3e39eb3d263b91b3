//! The REST API under `/api/v1`: JSON in and out, errors as `{"error": {"code", "message"}}`,
//! large lists paged with an opaque `next_cursor`. Reading needs the viewer role; operator
//! actions (trigger, cancel, clear, mark, pause) the operator role; pools and connections
//! the admin role.
//!
//! The routes, the extractors (bodies, paths and queries with JSON errors) and paging are
//! here; the handlers are beside it by resource: `jobs.rs`, `runs.rs` (runs and their task
//! instances), `tries.rs` (tries and logs), `admin.rs` (pools, connections).

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

mod admin;
mod jobs;
mod runs;
mod tries;

use crate::paging::page_size;
use admin::*;
use jobs::*;
use runs::*;
use tries::*;

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
