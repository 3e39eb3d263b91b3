//! `/api/v1/runs/{run_id}/artifacts`: the files a run's tries left in their workspaces,
//! listed (viewer) and downloaded from the artifact store (operator: a file may hold the
//! data the run moved).

#[allow(unused_imports)]
use super::*;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ArtifactsQuery {
    /// Only this task's files.
    task_id: Option<String>,
}

/// A run's artifacts.
#[derive(Serialize, ToSchema)]
pub(crate) struct Artifacts {
    items: Vec<views::ArtifactView>,
}

/// The files a run's tries left in their workspaces, by task, try and path
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/artifacts", operation_id = "listArtifacts", params(RunPath, ArtifactsQuery), responses(
    (status = 200, description = "the run's artifacts", body = Artifacts),
    (status = 400, description = "a path or query parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run", body = ErrorBody),
))]
pub(super) async fn list_artifacts(
    caller: Caller,
    State(state): State<AppState>,
    Path(RunPath { run_id }): Path<RunPath>,
    Params(query): Params<ArtifactsQuery>,
) -> ApiResult<Json<Artifacts>> {
    caller.require(Role::Viewer)?;
    let run = find_run(&state, &run_id).await?;
    let items = state
        .store
        .run_artifacts(&run.run_id)
        .await?
        .iter()
        .filter(|a| query.task_id.as_ref().is_none_or(|t| &a.task_id == t))
        .map(views::ArtifactView::from)
        .collect();
    Ok(Json(Artifacts { items }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ArtifactPath {
    /// A run id (in full).
    #[param(min_length = 1)]
    run_id: String,
    /// The task whose try left the file.
    #[param(min_length = 1)]
    task_id: String,
    /// The file's path under the workspace (`records.jsonl`, `out/part-1.csv`).
    #[param(min_length = 1)]
    path: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DownloadQuery {
    /// The try whose file it is; the latest that left one by default.
    #[serde(rename = "try")]
    #[param(rename = "try", minimum = 1)]
    try_number: Option<u32>,
}

/// One file a task's try left, as it was stored
///
/// The body is the file's bytes, streamed from the artifact store; `X-Stevedore-Sha256`
/// is its sha256. Should the stored bytes not be the file's (a damaged store), the body is
/// cut short, never completed with other bytes. Needs a token with the operator role.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/artifacts/{task_id}/{path}", operation_id = "downloadArtifact", params(ArtifactPath, DownloadQuery), responses(
    (status = 200, description = "the file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
    (status = 400, description = "a path or query parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such run, or the task left no such file", body = ErrorBody),
    (status = 503, description = "no artifact store is configured, or it does not answer", body = ErrorBody),
))]
pub(super) async fn download_artifact(
    caller: Caller,
    State(state): State<AppState>,
    Path(ArtifactPath {
        run_id,
        task_id,
        path,
    }): Path<ArtifactPath>,
    Params(query): Params<DownloadQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    artifact_response(&state, &run_id, &task_id, &path, query.try_number).await
}

/// The file `path` task `task_id` of run `run_id` left (its try `try_number`, or the latest
/// that left one), streamed from the artifact store: for the API and the UI's download
/// links alike.
pub(crate) async fn artifact_response(
    state: &AppState,
    run_id: &str,
    task_id: &str,
    path: &str,
    try_number: Option<u32>,
) -> ApiResult<Response> {
    let run = find_run(state, run_id).await?;
    let found = state
        .store
        .run_artifacts(&run.run_id)
        .await?
        .into_iter()
        .filter(|a| a.task_id == task_id && a.path == path)
        .filter(|a| try_number.is_none_or(|n| a.try_number == n))
        .max_by_key(|a| a.try_number)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task `{task_id}` of run {} left no file `{path}`",
                run.run_id
            ))
        })?;
    let unavailable =
        |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    let Some(store) = &state.artifacts else {
        return Err(unavailable(
            "this server has no artifact store (artifact_store)".to_owned(),
        ));
    };
    let blob = stevedore_artifacts::Blob {
        sha256: found.sha256.clone(),
        size: found.size,
    };
    let chunks = store
        .get(&run.run_id, &blob)
        .await
        .map_err(|error| match error {
            stevedore_artifacts::ArtifactError::Missing { .. } => ApiError::not_found(format!(
                "the file `{path}` of task `{task_id}` is missing from the artifact store"
            )),
            other => {
                tracing::warn!(error = %other, "artifact store");
                unavailable(other.to_string())
            }
        })?;
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .replace('"', "");
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, found.size)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .header("X-Stevedore-Sha256", &found.sha256)
        .body(Body::from_stream(chunks))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct LinkPath {
    /// A run id (in full).
    #[param(min_length = 1)]
    run_id: String,
    /// The blob's sha256 (hex).
    #[param(min_length = 64, max_length = 64)]
    sha256: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LinkQuery {
    /// The blob's size in bytes.
    size: u64,
    /// When the link stops working (Unix seconds).
    expires: i64,
    /// HMAC-SHA256 (hex) of the run, digest, size and expiry, under a key derived from the
    /// installation's secret key.
    signature: String,
}

/// A blob of a run, through a short-lived signed link
///
/// The links a folder artifact store gives (with `public_url` and the secret key) to
/// fetchers without a token, such as a Nomad client fetching a try's inputs through the
/// task's `artifact` blocks. Needs no token: the signature is the authority. The body is
/// the blob's bytes; should the stored bytes not be the blob's, it is cut short.
#[utoipa::path(get, path = "/api/v1/artifact-links/{run_id}/{sha256}", operation_id = "fetchArtifactLink", params(LinkPath, LinkQuery), responses(
    (status = 200, description = "the blob's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
    (status = 400, description = "a path or query parameter is malformed", body = ErrorBody),
    (status = 403, description = "the signature is not valid, the link has expired, or this server signs no links", body = ErrorBody),
    (status = 404, description = "the blob is not in the artifact store", body = ErrorBody),
    (status = 503, description = "the artifact store does not answer", body = ErrorBody),
), security(()))]
pub(super) async fn fetch_artifact_link(
    State(state): State<AppState>,
    Path(LinkPath { run_id, sha256 }): Path<LinkPath>,
    Params(query): Params<LinkQuery>,
) -> ApiResult<Response> {
    let unavailable =
        |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    // A server that signs no links has none that can be valid: 403, as for a bad signature.
    let Some(store) = &state.artifacts else {
        return Err(ApiError::forbidden(
            "this server has no artifact store (artifact_store), so no artifact link is valid here",
        ));
    };
    let blob = stevedore_artifacts::Blob {
        sha256,
        size: query.size,
    };
    if let Err(error) = store.check_link(&run_id, &blob, query.expires, &query.signature) {
        return Err(ApiError::forbidden(error.to_string()));
    }
    let chunks = store
        .get(&run_id, &blob)
        .await
        .map_err(|error| match error {
            stevedore_artifacts::ArtifactError::Missing { .. } => ApiError::not_found(format!(
                "the artifact store has no blob sha256:{} of run {run_id}",
                blob.sha256
            )),
            other => {
                tracing::warn!(error = %other, "artifact store");
                unavailable(other.to_string())
            }
        })?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, blob.size)
        .header("X-Stevedore-Sha256", &blob.sha256)
        .body(Body::from_stream(chunks))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}
