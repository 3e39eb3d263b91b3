//! The UI's pages and the forms they post.

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
use stevedore_domain::role::Role;
use stevedore_domain::state::TryState;
use stevedore_ops::actions;
use stevedore_store::{RunRecord, TaskInstanceRecord, TryRecord};

use super::{csrf_field, encode, page, state_class, svg, UiError, UiResult, Viewer};
use crate::AppState;

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

pub async fn jobs(viewer: Viewer, State(state): State<AppState>) -> UiResult<Html<String>> {
    let found = state.jobs();
    let paused = state.paused_jobs().await?;
    let mut rows = Vec::new();
    for loaded in &found.jobs {
        let job = &loaded.job;
        let runs = state.last_runs(&job.id, LIST_RUNS).await?;
        rows.push((job.clone(), paused.contains(&job.id), runs));
    }
    let body = html! {
        h1 { "Jobs" }
        @if !found.errors.is_empty() {
            section.errors {
                h2 { "Job files with errors" }
                ul { @for error in &found.errors { li.error { (error.to_string()) } } }
            }
        }
        div.table-wrap {
            table.jobs {
                thead { tr { th { "Job" } th { "Schedule" } th { "Next run" } th { "Last runs" } th { "Paused" } } }
                tbody {
                    @for (job, paused, runs) in &rows {
                        tr {
                            td {
                                a.job-link href={ "/jobs/" (encode(&job.id)) } { (job.id) }
                                @if let Some(description) = &job.description { div.muted { (description) } }
                            }
                            td { code { (job.timetable.schedule.expression().unwrap_or("manual")) } " " span.muted { (job.timetable.timezone.name()) } }
                            td { (when(job.timetable.next_run_at(Utc::now()))) }
                            td.squares {
                                @for run in runs {
                                    a href=(run_link(run)) title={ (run.run_id) " " (run.state) } class=(state_class(run.state.as_str())) aria-label={ "run " (run.state) } {}
                                }
                            }
                            td { (pause_form(&viewer, job, *paused)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Jobs", &viewer, body))
}

fn pause_form(viewer: &Viewer, job: &Job, paused: bool) -> Markup {
    html! {
        @if viewer.may(Role::Operator) {
            form.inline method="post" action={ "/jobs/" (encode(&job.id)) "/pause" } {
                (csrf_field(viewer))
                input type="hidden" name="paused" value=(if paused { "false" } else { "true" });
                button.toggle type="submit" aria-pressed=(paused) title=(if paused { "Unpause" } else { "Pause" }) {
                    (if paused { "paused" } else { "active" })
                }
            }
        } @else {
            (if paused { "paused" } else { "active" })
        }
    }
}

#[derive(Deserialize)]
pub struct JobQuery {
    run: Option<String>,
    tab: Option<String>,
    error: Option<String>,
    /// What the last form did (a backfill's counts).
    notice: Option<String>,
}

pub async fn job(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Query(query): Query<JobQuery>,
) -> UiResult<Html<String>> {
    let (job, path, source) = actions::load_job(&state.jobs_dir, &job_id)?;
    let paused = state.paused_jobs().await?.contains(&job.id);
    let runs = state.last_runs(&job.id, GRID_RUNS).await?;
    // Each run's task instances, for the grid and the graph.
    let mut cells: HashMap<String, Vec<TaskInstanceRecord>> = HashMap::new();
    for run in &runs {
        cells.insert(
            run.run_id.clone(),
            state.store.task_instances(&run.run_id).await?,
        );
    }
    let selected = query
        .run
        .as_deref()
        .and_then(|id| runs.iter().find(|r| r.run_id == id))
        .or(runs.last());
    let tab = query.tab.as_deref().unwrap_or("grid");
    let tab_link = |name: &str| {
        let mut link = format!("/jobs/{}?tab={name}", encode(&job.id));
        if let Some(run) = selected {
            link.push_str(&format!("&run={}", encode(&run.run_id)));
        }
        link
    };
    let body = html! {
        div.title-row {
            h1 { (job.id) }
            (pause_form(&viewer, &job, paused))
        }
        @if let Some(description) = &job.description { p.muted { (description) } }
        p.meta {
            "Schedule " code { (job.timetable.schedule.expression().unwrap_or("manual")) }
            " (" (job.timetable.timezone.name()) "), next run " (when(job.timetable.next_run_at(Utc::now())))
            ", file " code { (path) }
        }
        @if let Some(error) = &query.error { p.error role="alert" { (error) } }
        nav.tabs {
            a href=(tab_link("grid")) aria-current=[(tab == "grid").then_some("page")] { "Grid" }
            a href=(tab_link("graph")) aria-current=[(tab == "graph").then_some("page")] { "Graph" }
            a href=(tab_link("file")) aria-current=[(tab == "file").then_some("page")] { "Job file" }
            a href=(tab_link("trigger")) aria-current=[(tab == "trigger").then_some("page")] { "Trigger" }
        }
        @match tab {
            "graph" => {
                @if let Some(run) = selected {
                    p { "States of run " a href=(run_link(run)) { (run.run_id) } " (" (run.state) ")" }
                }
                div.scroll { (svg::graph(&job, selected.and_then(|r| cells.get(&r.run_id)).map(Vec::as_slice).unwrap_or(&[]))) }
            }
            "file" => { pre.source { code { (source) } } }
            "trigger" => { (trigger_form(&viewer, &job)) (backfill_form(&viewer, &job, query.notice.as_deref())) }
            _ => {
                @if runs.is_empty() {
                    p.muted { "No runs yet." }
                } @else {
                    div.scroll { (svg::grid(&job, &runs, &cells)) }
                }
            }
        }
    };
    Ok(page(&job.id, &viewer, body))
}

fn trigger_form(viewer: &Viewer, job: &Job) -> Markup {
    html! {
        @if viewer.may(Role::Operator) {
            form.trigger method="post" action={ "/jobs/" (encode(&job.id)) "/trigger" } {
                (csrf_field(viewer))
                @if job.params.is_empty() { p.muted { "This job has no params." } }
                @for (name, default) in &job.params {
                    @let id = format!("param-{name}");
                    label for=(id) { (name) }
                    @match default {
                        Value::Bool(on) => { input id=(id) type="checkbox" name={ "param." (name) } value="true" checked[*on]; }
                        Value::Number(n) => { input id=(id) type="number" step=(if n.is_f64() { "any" } else { "1" }) name={ "param." (name) } value=(n.to_string()); }
                        Value::String(text) => { input id=(id) type="text" name={ "param." (name) } value=(text); }
                        other => { input id=(id) type="text" name={ "param." (name) } value=(other.to_string()) title="JSON"; }
                    }
                }
                button type="submit" { "Trigger run" }
            }
        } @else {
            p.muted { "Your token's role (" (viewer.0.caller.role) ") cannot trigger runs." }
        }
    }
}

fn backfill_form(viewer: &Viewer, job: &Job, notice: Option<&str>) -> Markup {
    html! {
        @if viewer.may(Role::Operator) && job.timetable.schedule.expression().is_some() {
            h2 { "Backfill" }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            form.backfill method="post" action={ "/jobs/" (encode(&job.id)) "/backfill" } {
                (csrf_field(viewer))
                label for="backfill-from" { "From (logical date)" }
                input #backfill-from type="text" name="from" placeholder="2024-01-01" required;
                label for="backfill-to" { "To (included)" }
                input #backfill-to type="text" name="to" placeholder="2024-01-07" required;
                label for="backfill-rerun" { "Run failed runs of the range again" }
                input #backfill-rerun type="checkbox" name="rerun_failed" value="true";
                button type="submit" { "Backfill" }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct BackfillForm {
    #[serde(default)]
    csrf: String,
    from: String,
    to: String,
    #[serde(default)]
    rerun_failed: Option<String>,
}

/// The backfill form: [`stevedore_ops::backfill`], as `jobs backfill` and the API.
pub async fn backfill(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Form(form): Form<BackfillForm>,
) -> UiResult<Response> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let request = stevedore_ops::backfill::BackfillRequest {
        job_id: job_id.clone(),
        from: form.from,
        to: form.to,
        rerun_failed: form.rerun_failed.is_some(),
    };
    let back = |key: &str, text: String| {
        Redirect::to(&format!(
            "/jobs/{}?tab=trigger&{key}={}",
            encode(&job_id),
            encode(&text)
        ))
        .into_response()
    };
    match stevedore_ops::backfill::backfill(
        state.store.as_ref(),
        &state.jobs_dir,
        &request,
        |_, _| {},
    )
    .await
    {
        Ok(done) => {
            tracing::info!(job_id = %job_id, created = done.created.len(), by = %viewer.0.caller.name, "backfill from the ui");
            Ok(back(
                "notice",
                format!(
                    "{} interval(s): {} run(s) created, {} rerun, {} already there",
                    done.intervals,
                    done.created.len(),
                    done.rerun.len(),
                    done.kept
                ),
            ))
        }
        Err(actions::ActionError::Invalid(message)) => Ok(back("error", message)),
        Err(other) => Err(other.into()),
    }
}

/// The trigger form's fields, typed like each param's default (a checkbox that is not sent
/// is `false`).
fn form_params(job: &Job, form: &HashMap<String, String>) -> Result<Map<String, Value>, String> {
    let mut params = Map::new();
    for (name, default) in &job.params {
        let field = form.get(&format!("param.{name}"));
        let value = match (default, field) {
            (Value::Bool(_), field) => Value::Bool(field.is_some()),
            (_, None) => continue,
            (Value::String(_), Some(text)) => Value::String(text.clone()),
            (Value::Number(_), Some(text)) => serde_json::from_str::<Value>(text.trim())
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| format!("param `{name}`: `{text}` is not a number"))?,
            (_, Some(text)) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
        };
        if &value != default {
            params.insert(name.clone(), value);
        }
    }
    Ok(params)
}

pub async fn trigger(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> UiResult<Response> {
    viewer.authorize(
        form.get("csrf").map(String::as_str).unwrap_or(""),
        Role::Operator,
    )?;
    let (job, _, _) = actions::load_job(&state.jobs_dir, &job_id)?;
    let back = |error: String| {
        Redirect::to(&format!(
            "/jobs/{}?tab=trigger&error={}",
            encode(&job.id),
            encode(&error)
        ))
        .into_response()
    };
    let params = match form_params(&job, &form) {
        Ok(params) => params,
        Err(error) => return Ok(back(error)),
    };
    match actions::trigger(state.store.as_ref(), &state.jobs_dir, &job.id, &params).await {
        Ok(run) => {
            tracing::info!(run_id = %run.run_id, job_id = %job.id, by = %viewer.0.caller.name, "run triggered from the ui");
            Ok(Redirect::to(&format!(
                "/jobs/{}?run={}",
                encode(&job.id),
                encode(&run.run_id)
            ))
            .into_response())
        }
        Err(actions::ActionError::Invalid(message)) => Ok(back(message)),
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub struct PauseForm {
    #[serde(default)]
    csrf: String,
    paused: bool,
}

pub async fn pause(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Form(form): Form<PauseForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    actions::set_paused(state.store.as_ref(), &state.jobs_dir, &job_id, form.paused).await?;
    Ok(Redirect::to(&format!("/jobs/{}", encode(&job_id))))
}

// Runs.

pub async fn run(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> UiResult<Html<String>> {
    let run = state.store.get_run(&run_id).await?;
    let instances = state.store.task_instances(&run.run_id).await?;
    let mut tries: Vec<(TaskInstanceRecord, Vec<TryRecord>)> = Vec::new();
    for ti in instances {
        let attempts = state.store.tries(&run.run_id, &ti.task_id).await?;
        tries.push((ti, attempts));
    }
    let job = actions::run_job(state.store.as_ref(), &run).await.ok();
    let operator = viewer.may(Role::Operator);
    let body = html! {
        div.title-row {
            h1 { "Run " span.mono { (run.run_id) } }
            (state_badge(run.state.as_str()))
        }
        p.meta {
            "Job " a href={ "/jobs/" (encode(&run.job_id)) "?run=" (encode(&run.run_id)) } { (run.job_id) }
            " · " (run.trigger) " · logical date " (when(Some(run.logical_date)))
            " · interval " (when(Some(run.data_interval.start))) " – " (when(Some(run.data_interval.end)))
            " · " (took(run.started_at, run.ended_at))
        }
        p.meta { "Params " code { (run.params.to_string()) } }
        @if operator && !run.state.is_finished() {
            form.inline method="post" action={ (run_link(&run)) "/cancel" } {
                (csrf_field(&viewer))
                button.danger type="submit" disabled[run.cancel_requested] {
                    (if run.cancel_requested { "Cancel requested" } else { "Cancel run" })
                }
            }
        }
        h2 { "Gantt" }
        div.scroll { (svg::gantt(&run, job.as_ref(), &tries)) }
        h2 { "Task instances" }
        div.table-wrap {
            table.instances {
                thead { tr { th { "Task" } th { "State" } th { "Try" } th { "Exit" } th { "Duration" } th { "Image digest" } th { "Reason" } @if operator { th { "Actions" } } } }
                tbody {
                    @for (ti, attempts) in &tries {
                        @let last = attempts.last();
                        tr {
                            td {
                                @if let Some(last) = last {
                                    a href=(try_link(&run.run_id, &ti.task_id, last.try_number)) { (ti.task_id) }
                                } @else { (ti.task_id) }
                            }
                            td { (state_badge(ti.state.as_str())) }
                            td { (ti.try_number) }
                            td { (last.and_then(|t| t.exit_code).map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                            td { (took(ti.started_at, ti.ended_at)) }
                            td.mono.digest { (last.and_then(|t| t.image_digest.clone()).unwrap_or_else(|| "–".into())) }
                            td { (last.and_then(|t| t.failure_reason.clone()).unwrap_or_default()) }
                            @if operator {
                                td.actions {
                                    form.inline method="post" action={ (run_link(&run)) "/tasks/" (encode(&ti.task_id)) "/clear" } {
                                        (csrf_field(&viewer))
                                        label.check { input type="checkbox" name="downstream" value="true"; " downstream" }
                                        button type="submit" { "Clear" }
                                    }
                                    form.inline method="post" action={ (run_link(&run)) "/tasks/" (encode(&ti.task_id)) "/mark" } {
                                        (csrf_field(&viewer))
                                        button type="submit" name="state" value="success" { "Mark success" }
                                        button type="submit" name="state" value="failed" { "Mark failed" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Tries" }
        div.table-wrap {
            table.tries {
                thead { tr { th { "Task" } th { "Try" } th { "State" } th { "Started" } th { "Duration" } th { "Image" } th { "Digest" } } }
                tbody {
                    @for (ti, attempts) in &tries {
                        @for attempt in attempts {
                            tr {
                                td { a href=(try_link(&run.run_id, &ti.task_id, attempt.try_number)) { (ti.task_id) } }
                                td { (attempt.try_number) }
                                td { (state_badge(attempt.state.as_str())) }
                                td { (when(Some(attempt.started_at))) }
                                td { (took(Some(attempt.started_at), attempt.ended_at)) }
                                td.mono { (attempt.image_ref) }
                                td.mono.digest { (attempt.image_digest.clone().unwrap_or_else(|| "–".into())) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Run {}", run.run_id), &viewer, body))
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    downstream: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

pub async fn cancel(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let run = state.store.get_run(&run_id).await?;
    let run = stevedore_ops::actions::cancel(state.store.as_ref(), &run).await?;
    Ok(Redirect::to(&run_link(&run)))
}

pub async fn clear(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let run = state.store.get_run(&run_id).await?;
    let downstream = form.downstream.as_deref() == Some("true");
    actions::clear(state.store.as_ref(), &run, &task_id, downstream).await?;
    Ok(Redirect::to(&run_link(&run)))
}

pub async fn mark(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((run_id, task_id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let run = state.store.get_run(&run_id).await?;
    actions::mark(
        state.store.as_ref(),
        &run,
        &task_id,
        form.state.as_deref().unwrap_or(""),
    )
    .await?;
    Ok(Redirect::to(&run_link(&run)))
}

// Tries.

/// Log lines shown on a try page at first; the rest (and new ones) come from the follow.
const PAGE_LINES: u32 = 5_000;

#[derive(Deserialize)]
pub struct TryQuery {
    /// The first line shown; by default the page shows the log's last lines.
    from: Option<i64>,
}

pub async fn try_page(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((run_id, task_id, try_number)): Path<(String, String, u32)>,
    Query(query): Query<TryQuery>,
) -> UiResult<Html<String>> {
    let run = state.store.get_run(&run_id).await?;
    let attempts = state.store.tries(&run.run_id, &task_id).await?;
    let attempt = attempts
        .iter()
        .find(|t| t.try_number == try_number)
        .cloned()
        .ok_or_else(|| {
            UiError::Page(
                StatusCode::NOT_FOUND,
                format!(
                    "task `{task_id}` of run {} has no try {try_number}",
                    run.run_id
                ),
            )
        })?;
    // A long log opens at its end (where a failure says why), a page at a time.
    let last = state
        .store
        .last_log_seq(attempt.try_id)
        .await?
        .unwrap_or(-1);
    let from = query
        .from
        .unwrap_or(last + 1 - i64::from(PAGE_LINES))
        .clamp(0, last.max(0));
    let lines = state
        .store
        .logs(attempt.try_id, Some(from - 1), PAGE_LINES)
        .await?;
    let page_link = |from: i64| {
        format!(
            "{}?from={from}",
            try_link(&run.run_id, &task_id, try_number)
        )
    };
    let outputs =
        stevedore_ops::runs::task_outputs(state.store.as_ref(), &run.run_id, &task_id).await?;
    let running = attempt.state == TryState::Running;
    let follow_url = format!(
        "/api/v1/runs/{}/tasks/{}/tries/{try_number}/logs/follow",
        encode(&run.run_id),
        encode(&task_id)
    );
    let body = html! {
        div.title-row {
            h1 { (task_id) " · try " (try_number) }
            (state_badge(attempt.state.as_str()))
        }
        p.meta {
            "Run " a href=(run_link(&run)) { (run.run_id) } " of " a href={ "/jobs/" (encode(&run.job_id)) } { (run.job_id) }
            @if attempts.len() > 1 {
                " · tries "
                @for other in &attempts {
                    a href=(try_link(&run.run_id, &task_id, other.try_number)) aria-current=[(other.try_number == try_number).then_some("page")] { (other.try_number) } " "
                }
            }
        }
        dl.facts {
            dt { "Image" } dd.mono { (attempt.image_ref) }
            dt { "Digest" } dd.mono { (attempt.image_digest.clone().unwrap_or_else(|| "–".into())) }
            dt { "Started" } dd { (when(Some(attempt.started_at))) }
            dt { "Duration" } dd { (took(Some(attempt.started_at), attempt.ended_at)) }
            dt { "Exit code" } dd #exit-code { (attempt.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
            dt { "Reason" } dd #reason { (attempt.failure_reason.clone().unwrap_or_else(|| "–".into())) }
        }
        @if !outputs.is_empty() {
            h2 { "Outputs" }
            table.outputs { tbody { @for (key, value) in &outputs { tr { th { (key) } td.mono { (value.to_string()) } } } } }
        }
        h2 { "Log" @if running { " " span.live #live { "live" } } }
        @if from > 0 || lines.last().is_some_and(|l| l.seq < last) {
            p.pager {
                "Lines " (from + 1) "–" (lines.last().map_or(from, |l| l.seq + 1)) " of " (last + 1) ". "
                @if from > 0 {
                    a href=(page_link(0)) { "First" } " · "
                    a href=(page_link((from - i64::from(PAGE_LINES)).max(0))) { "Earlier" }
                }
                @if lines.last().is_some_and(|l| l.seq < last) {
                    " · " a href=(page_link(lines.last().map_or(0, |l| l.seq + 1))) { "Later" }
                    " · " a href=(try_link(&run.run_id, &task_id, try_number)) { "Last" }
                }
            }
        }
        div.log #log
            data-follow=[(running && query.from.is_none()).then_some(follow_url.as_str())]
            data-after=[lines.last().map(|l| l.seq.to_string())] {
            @for line in &lines {
                div class={ "line " (line.stream.as_str()) } data-seq=(line.seq) {
                    span.ts { (line.timestamp.format("%H:%M:%S%.3f")) }
                    span.stream { (line.stream.as_str()) }
                    span.text { (line.text) }
                }
            }
        }
        @if last + 1 > i64::from(PAGE_LINES) {
            p.muted { "The whole log: " code { "stevedore tasks logs " (run.run_id) " " (task_id) " --try " (try_number) } "." }
        }
    };
    Ok(page(&format!("{task_id} try {try_number}"), &viewer, body))
}

// Pools.

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
