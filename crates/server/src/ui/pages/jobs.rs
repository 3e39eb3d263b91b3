//! The jobs list and a job's page, with the forms it posts: pause, trigger, backfill.

#[allow(unused_imports)]
use super::*;

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

pub(super) fn pause_form(viewer: &Viewer, job: &Job, paused: bool) -> Markup {
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

pub(super) fn trigger_form(viewer: &Viewer, job: &Job) -> Markup {
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
                label.check for="full-refresh" {
                    input #full-refresh type="checkbox" name="full_refresh" value="true";
                    " Full refresh: every task runs without its committed state"
                }
                button type="submit" { "Trigger run" }
            }
        } @else {
            p.muted { "Your token's role (" (viewer.0.caller.role) ") cannot trigger runs." }
        }
    }
}

pub(super) fn backfill_form(viewer: &Viewer, job: &Job, notice: Option<&str>) -> Markup {
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
pub(super) fn form_params(
    job: &Job,
    form: &HashMap<String, String>,
) -> Result<Map<String, Value>, String> {
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
    let full_refresh = (form.get("full_refresh").map(String::as_str) == Some("true"))
        .then_some(actions::FullRefresh::All);
    match actions::trigger_refreshing(
        state.store.as_ref(),
        &state.jobs_dir,
        &job.id,
        &params,
        full_refresh,
    )
    .await
    {
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
