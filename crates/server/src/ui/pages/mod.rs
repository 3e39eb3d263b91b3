//! The UI's pages and the forms they post: the shared helpers and the pools page here, the
//! jobs and a job (`jobs.rs`), a run and a try (`runs.rs`) beside it.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{Map, Value};
use stevedore_domain::job::Job;
use stevedore_domain::mapping;
use stevedore_domain::role::Role;
use stevedore_domain::state::{TaskState, TryState};
use stevedore_ops::actions;
use stevedore_store::{LogReader, RunRecord, TaskInstanceRecord, TryRecord};

use super::{csrf_field, encode, page, state_class, svg, UiError, UiResult, Viewer};
use crate::AppState;

mod assets;
mod jobs;
mod notifications;
mod runs;

pub use assets::*;
pub use jobs::*;
pub use notifications::*;
pub use runs::*;

/// Runs shown in a job's grid and on the jobs list.
const GRID_RUNS: u32 = 25;

const LIST_RUNS: u32 = 10;

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "–".to_owned())
}

fn took(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(start), Some(end)) => {
            let ms = (end - start).num_milliseconds().max(0);
            if ms < 60_000 {
                format!("{:.1}s", ms as f64 / 1000.0)
            } else {
                format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000)
            }
        }
        (Some(_), None) => "running".to_owned(),
        _ => "–".to_owned(),
    }
}

fn run_link(run: &RunRecord) -> String {
    format!("/runs/{}", encode(&run.run_id))
}

fn try_link(run_id: &str, task_id: &str, try_number: u32) -> String {
    format!(
        "/runs/{}/tasks/{}/tries/{try_number}",
        encode(run_id),
        encode(task_id)
    )
}

fn state_badge(state: &str) -> Markup {
    html! { span class=(state_class(state)) { (state) } }
}

// Jobs.

/// Log lines shown on a try page at first; the rest (and new ones) come from the follow.
const PAGE_LINES: u32 = 5_000;

pub async fn pools(viewer: Viewer, State(state): State<AppState>) -> UiResult<Html<String>> {
    let pools = state.store.list_pools().await?;
    let body = html! {
        h1 { "Pools" }
        div.table-wrap {
            table.pools {
                thead { tr { th { "Pool" } th { "Slots" } th { "Description" } } }
                tbody { @for pool in &pools { tr { td { (pool.name) } td { (pool.slots) } td { (pool.description) } } } }
            }
        }
        p.muted { "Set pools with " code { "stevedore pools set NAME SLOTS" } ", a pools file, or " code { "PUT /api/v1/pools/NAME" } "." }
    };
    Ok(page("Pools", &viewer, body))
}
