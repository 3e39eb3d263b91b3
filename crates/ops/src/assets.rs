//! Assets as users see them (`stevedore assets list|show`, `/api/v1/assets`, the UI's
//! Assets page): each asset the job files name, with the tasks that produce it, the jobs its
//! updates trigger, and its updates ([`stevedore_domain::assets`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use stevedore_store::{AssetEventRecord, Store, StoreError};
use utoipa::ToSchema;

use crate::jobs_dir::load_jobs_dir;
use crate::views::time;

/// The most updates `assets show` and `GET /api/v1/assets/{name}` list.
pub const MAX_EVENTS: u32 = 1000;

/// One update of an asset.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = AssetEvent)]
pub struct AssetEventView {
    pub seq: i64,
    pub asset: String,
    /// The job and run that made it.
    pub job_id: String,
    pub run_id: String,
    /// The task instance whose try succeeded (`null` for `job:ID`, a successful run).
    pub task_id: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&AssetEventRecord> for AssetEventView {
    fn from(event: &AssetEventRecord) -> Self {
        AssetEventView {
            seq: event.seq,
            asset: event.asset.clone(),
            job_id: event.job_id.clone(),
            run_id: event.run_id.clone(),
            task_id: event.task_id.clone(),
            at: time(event.created_at),
        }
    }
}

/// An asset: who makes it, whom it triggers, its last update.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Asset)]
pub struct AssetView {
    pub name: String,
    /// `job.task` of every task that `produces` it (`job` for `job:ID`).
    pub producers: Vec<String>,
    /// The jobs whose `schedule` waits for it.
    pub consumers: Vec<String>,
    pub last_update: Option<AssetEventView>,
}

/// An asset and its updates, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AssetDetail {
    #[serde(flatten)]
    pub asset: AssetView,
    pub updates: Vec<AssetEventView>,
}

/// Every asset the job files name or that was updated, by name.
pub async fn list(store: &dyn Store, jobs_dir: &Path) -> Result<Vec<AssetView>, StoreError> {
    let mut assets = named_in_files(jobs_dir);
    for event in store.asset_events(None, 100_000).await? {
        assets
            .entry(event.asset.clone())
            .or_insert_with(|| blank(&event.asset))
            .last_update = Some(AssetEventView::from(&event));
    }
    Ok(assets.into_values().collect())
}

/// One asset with its latest `limit` updates; `NotFound` when no job file names it and it
/// was never updated.
pub async fn show(
    store: &dyn Store,
    jobs_dir: &Path,
    name: &str,
    limit: u32,
) -> Result<AssetDetail, StoreError> {
    let events = store
        .asset_events(Some(name), limit.clamp(1, MAX_EVENTS))
        .await?;
    let mut asset = match named_in_files(jobs_dir).remove(name) {
        Some(asset) => asset,
        None if !events.is_empty() => blank(name),
        None => {
            return Err(StoreError::NotFound(format!(
                "asset `{name}`: no job file names it and it was never updated"
            )))
        }
    };
    asset.last_update = events.first().map(AssetEventView::from);
    Ok(AssetDetail {
        asset,
        updates: events.iter().map(AssetEventView::from).collect(),
    })
}

fn blank(name: &str) -> AssetView {
    AssetView {
        name: name.to_owned(),
        producers: Vec::new(),
        consumers: Vec::new(),
        last_update: None,
    }
}

/// The assets the job files name, with their producers and consumers.
fn named_in_files(jobs_dir: &Path) -> BTreeMap<String, AssetView> {
    let mut assets: BTreeMap<String, AssetView> = BTreeMap::new();
    for loaded in load_jobs_dir(jobs_dir).jobs {
        let job = &loaded.job;
        for task in &job.tasks {
            for name in &task.produces {
                assets
                    .entry(name.clone())
                    .or_insert_with(|| blank(name))
                    .producers
                    .push(format!("{}.{}", job.id, task.id));
            }
        }
        if let Some(trigger) = &job.asset_trigger {
            for name in &trigger.assets {
                let asset = assets.entry(name.clone()).or_insert_with(|| blank(name));
                asset.consumers.push(job.id.clone());
                if let Some(producer) =
                    name.strip_prefix(stevedore_domain::assets::JOB_ASSET_PREFIX)
                {
                    if !asset.producers.iter().any(|p| p == producer) {
                        asset.producers.push(producer.to_owned());
                    }
                }
            }
        }
    }
    assets
}
