//! The REST API under `/api/v1`: JSON in and out, errors as `{"error": {"code", "message"}}`,
//! large lists paged with an opaque `next_cursor`. Reading needs the viewer role; operator
//! actions (trigger, cancel, clear, mark, pause) the operator role; pools and connections
//! the admin role.
//!
//! The routes, the extractors (bodies, paths and queries with JSON errors) and paging are
//! here; the handlers are beside it by resource: `jobs.rs`, `runs.rs` (runs and their task
//! instances), `tries.rs` (tries and logs), `notifications.rs` (alerts), `assets.rs` (assets), `state.rs` (committed state), `admin.rs` (pools,
//! connections).

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
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use stevedore_domain::job::Job;
use stevedore_domain::role::Role;
use stevedore_domain::state::{RunState, TryState};
use stevedore_ops::{actions, views};
use stevedore_store::{LogReader, RunFilter, RunRecord, TaskInstanceRecord, TryRecord};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

mod admin;
pub(crate) mod artifacts;
mod assets;
mod events;
mod jobs;
mod notifications;
mod runs;
mod state;
pub(crate) mod tries;

use crate::paging::page_size;
use admin::*;
use artifacts::*;
use assets::*;
use events::*;
use jobs::*;
use notifications::*;
use runs::*;
use state::*;
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
        .route(
            "/api/v1/jobs/{job_id}/tasks/{task_id}/state",
            get(get_task_state)
                .put(set_task_state)
                .delete(clear_task_state),
        )
        .route(
            "/api/v1/jobs/{job_id}/tasks/{task_id}/state/history",
            get(list_task_state_history),
        )
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{run_id}/tasks", get(list_task_instances))
        .route("/api/v1/runs/{run_id}/artifacts", get(list_artifacts))
        .route(
            "/api/v1/runs/{run_id}/artifacts/{task_id}/{*path}",
            get(download_artifact),
        )
        .route(
            "/api/v1/artifact-links/{run_id}/{sha256}",
            get(fetch_artifact_link),
        )
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
        .route("/api/v1/jobs/{job_id}/events", post(post_events))
        .route("/api/v1/assets", get(list_assets))
        .route("/api/v1/assets/{name}", get(get_asset))
        .route("/api/v1/notifications", get(list_notifications))
        .route("/api/v1/notifications/{id}", get(get_notification))
        .route("/api/v1/notifications/{id}/retry", post(retry_notification))
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

/// Every operation, for the OpenAPI document ([`crate::openapi`]): each handler's
/// `#[utoipa::path]` says its route, parameters, body and answers by their types, the same
/// types it answers with, so the document cannot drift from what is served.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    health,
    openapi,
    list_jobs,
    get_job,
    pause_job,
    unpause_job,
    trigger_run,
    backfill_job,
    get_task_state,
    list_task_state_history,
    set_task_state,
    clear_task_state,
    list_runs,
    get_run,
    cancel_run,
    list_artifacts,
    download_artifact,
    fetch_artifact_link,
    list_task_instances,
    get_task_instance,
    clear_task,
    mark_task,
    list_tries,
    get_try,
    get_logs,
    follow_logs,
    post_events,
    list_assets,
    get_asset,
    list_notifications,
    get_notification,
    retry_notification,
    list_pools,
    put_pool,
    delete_pool,
    list_connections,
    put_connection,
    delete_connection,
    crate::metrics::exposition,
))]
pub(crate) struct Operations;

// Path parameters: the handlers' own extractors, so the document describes what they take.

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct JobPath {
    /// A job id.
    #[param(min_length = 1)]
    job_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RunPath {
    /// A run id (in full).
    #[param(min_length = 1)]
    run_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TaskPath {
    /// A run id (in full).
    #[param(min_length = 1)]
    run_id: String,
    /// A task id of the run's job, or `task_id[N]` for instance N of a mapped task
    /// (`extract[2]`, sent as `extract%5B2%5D`).
    #[param(min_length = 1)]
    task_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TryPath {
    /// A run id (in full).
    #[param(min_length = 1)]
    run_id: String,
    /// A task id of the run's job, or `task_id[N]` for instance N of a mapped task.
    #[param(min_length = 1)]
    task_id: String,
    #[param(minimum = 1)]
    try_number: u32,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PoolPath {
    /// The pool's name: a-z, 0-9 and _.
    #[param(pattern = "^[a-z0-9_]{1,64}$")]
    name: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ConnectionPath {
    /// The connection's name: a-z, 0-9 and _.
    #[param(pattern = "^[a-z0-9_]{1,64}$")]
    name: String,
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

fn health_status() -> utoipa::openapi::Object {
    views::one_of(["ok", "unavailable"])
}

/// Whether the server and its store answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(schema_with = health_status)]
    status: &'static str,
    store: &'static str,
}

/// Whether the server and its store answer
#[utoipa::path(get, path = "/api/v1/health", operation_id = "health", security(()), responses(
    (status = 200, description = "healthy", body = Health),
    (status = 503, description = "the store does not answer", body = Health),
))]
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.runs_marker().await {
        Ok(_) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                store: "ok",
            }),
        ),
        Err(error) => {
            tracing::warn!(error = %error, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    store: "unavailable",
                }),
            )
        }
    }
}

/// This document
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", responses(
    (status = 200, description = "the OpenAPI document", body = Object),
))]
async fn openapi(caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Viewer)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    ))
}
