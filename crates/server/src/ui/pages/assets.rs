//! The assets page: every asset the job files name or that was updated, with the tasks that
//! produce it, the jobs its updates trigger and its last update; an asset's own page lists
//! its updates (docs/assets.md).

#[allow(unused_imports)]
use super::*;

use stevedore_ops::assets::{self, AssetEventView};

/// Updates shown on an asset's page.
const PAGE_UPDATES: u32 = 100;

fn producer_link(producer: &str) -> Markup {
    let job = producer.split('.').next().unwrap_or(producer);
    html! { a href={ "/jobs/" (encode(job)) } { (producer) } }
}

fn update_cells(event: Option<&AssetEventView>) -> Markup {
    html! {
        @match event {
            Some(event) => {
                td { (event.at) }
                td { a.mono href={ "/runs/" (encode(&event.run_id)) } { (event.run_id.chars().take(13).collect::<String>()) } " (" (event.job_id) ")" }
            }
            None => { td.muted { "never" } td { "–" } }
        }
    }
}

pub async fn assets_page(viewer: Viewer, State(state): State<AppState>) -> UiResult<Html<String>> {
    let listed = assets::list(state.store.as_ref(), &state.jobs_dir).await?;
    let body = html! {
        h1 { "Assets" }
        @if listed.is_empty() {
            p.muted { "No job produces or waits for an asset (" code { "produces:" } " on a task, " code { "schedule: {assets: [...]}" } " or " code { "{after: [...]}" } " on a job)." }
        } @else {
            div.table-wrap {
                table.assets {
                    thead { tr { th { "Asset" } th { "Produced by" } th { "Triggers" } th { "Last update" } th { "By run" } } }
                    tbody {
                        @for asset in &listed {
                            tr data-asset=(asset.name) {
                                td.mono { a href={ "/assets/" (encode(&asset.name)) } { (asset.name) } }
                                td { @for (i, p) in asset.producers.iter().enumerate() { @if i > 0 { ", " } (producer_link(p)) } }
                                td { @for (i, c) in asset.consumers.iter().enumerate() { @if i > 0 { ", " } a href={ "/jobs/" (encode(c)) } { (c) } } }
                                (update_cells(asset.last_update.as_ref()))
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Assets", &viewer, body))
}

pub async fn asset_page(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> UiResult<Html<String>> {
    let detail = assets::show(state.store.as_ref(), &state.jobs_dir, &name, PAGE_UPDATES).await?;
    let asset = &detail.asset;
    let body = html! {
        h1 { "Asset " span.mono { (asset.name) } }
        p.meta {
            "Produced by "
            @if asset.producers.is_empty() { "no task" }
            @for (i, p) in asset.producers.iter().enumerate() { @if i > 0 { ", " } (producer_link(p)) }
            " · triggers "
            @if asset.consumers.is_empty() { "no job" }
            @for (i, c) in asset.consumers.iter().enumerate() { @if i > 0 { ", " } a href={ "/jobs/" (encode(c)) } { (c) } }
        }
        h2 { "Updates" }
        @if detail.updates.is_empty() {
            p.muted { "Never updated." }
        } @else {
            div.table-wrap {
                table.asset-updates {
                    thead { tr { th { "When" } th { "Run" } th { "Task" } } }
                    tbody {
                        @for event in &detail.updates {
                            tr {
                                (update_cells(Some(event)))
                                td { (event.task_id.clone().unwrap_or_else(|| "(the run)".into())) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Asset {}", asset.name), &viewer, body))
}
