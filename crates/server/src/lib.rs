//! Stevedore's server: the REST API under `/api/v1` and Prometheus `/metrics`, on the same
//! store the scheduler uses (`stevedore server`, or inside `stevedore standalone`).
//!
//! - [`api`]: the endpoints: jobs, runs, task instances, tries, logs (a range, or followed
//!   live as Server-Sent Events), pools and connections.
//! - [`auth`]: bearer tokens and roles.
//! - [`error`]: errors as JSON with a stable code.
//! - [`metrics`]: the Prometheus text exposition.
//! - [`openapi`]: the API's OpenAPI 3.1 document, served at `/api/v1/openapi.json`.
//! - [`ui`]: the web UI (server-rendered HTML): jobs, grid and graph views, runs with their
//!   Gantt chart, live logs, trigger form and operator buttons.

pub mod api;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod paging;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use stevedore_ops::jobs_dir::{load_jobs_dir, JobsDir};
use stevedore_store::secrets::SecretKey;
use stevedore_store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub jobs_dir: PathBuf,
    /// Seals connection values written through the API; `None` refuses such writes.
    pub secret_key: Option<SecretKey>,
    pub metrics: Arc<metrics::Metrics>,
    /// Where the runs' files are, for downloads; `None` answers 503 for them.
    pub artifacts: Option<stevedore_artifacts::ArtifactStore>,
    /// Where tries' log lines are read: rows, or archived logs in `artifacts`.
    pub logs: Arc<stevedore_artifacts::logs::Logs>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, jobs_dir: PathBuf, secret_key: Option<SecretKey>) -> Self {
        AppState {
            logs: Arc::new(stevedore_artifacts::logs::Logs::new(store.clone(), None)),
            store,
            jobs_dir,
            secret_key,
            metrics: Arc::default(),
            artifacts: None,
        }
    }

    /// The artifact store runs' files are downloaded from, and archived logs read from.
    pub fn with_artifacts(mut self, artifacts: stevedore_artifacts::ArtifactStore) -> Self {
        self.logs = Arc::new(stevedore_artifacts::logs::Logs::new(
            self.store.clone(),
            Some(artifacts.clone()),
        ));
        self.artifacts = Some(artifacts);
        self
    }

    /// The jobs folder as it is now (valid jobs and the errors of the others).
    pub fn jobs(&self) -> JobsDir {
        load_jobs_dir(&self.jobs_dir)
    }

    /// The ids of the paused jobs.
    pub async fn paused_jobs(&self) -> stevedore_store::Result<Vec<String>> {
        Ok(self
            .store
            .list_jobs()
            .await?
            .into_iter()
            .filter(|r| r.paused)
            .map(|r| r.job_id)
            .collect())
    }

    /// A job's last `count` runs, oldest first.
    pub async fn last_runs(
        &self,
        job_id: &str,
        count: u32,
    ) -> stevedore_store::Result<Vec<stevedore_store::RunRecord>> {
        let mut runs = self
            .store
            .list_runs(&stevedore_store::RunFilter {
                job_id: Some(job_id.to_owned()),
                limit: Some(count),
                ..Default::default()
            })
            .await?;
        runs.reverse();
        Ok(runs)
    }
}

/// Every route, with request counting.
pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(ui::routes())
        .route("/metrics", axum::routing::get(metrics::exposition))
        .fallback(|uri: axum::http::Uri| async move {
            error::ApiError::not_found(format!("no route {}", uri.path()))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .with_state(state)
}

/// Serves until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
