//! A run's page (its grid, graph and task instances) and a try's page (its log, outputs),
//! with the operator's forms: cancel, clear, mark.

#[allow(unused_imports)]
use super::*;

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
    // In the job file's order, a mapped task's instances by map index.
    if let Some(job) = &job {
        let position = |key: &str| {
            let (task_id, index) = mapping::split_key(key);
            (job.tasks.iter().position(|t| t.id == task_id), index)
        };
        tries.sort_by_key(|(ti, _)| position(&ti.task_id));
    }
    let operator = viewer.may(Role::Operator);
    let artifacts = state.store.run_artifacts(&run.run_id).await?;
    // What each try reported (`metric` messages): records moved, rows loaded.
    let try_numbers: std::collections::HashMap<i64, u32> = tries
        .iter()
        .flat_map(|(_, attempts)| attempts.iter().map(|a| (a.try_id, a.try_number)))
        .collect();
    let metrics = state.store.run_metrics(&run.run_id).await?;
    let mut alerts = state
        .store
        .list_notifications(&stevedore_store::NotificationFilter {
            run_id: Some(run.run_id.clone()),
            limit: 200,
            ..Default::default()
        })
        .await?;
    alerts.reverse();
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
        @if let Some(at) = run.deadline_missed_at {
            p.warning { "Deadline missed at " (when(Some(at))) "." }
        }
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
                    @for (task_id, members) in by_task(job.as_ref(), &tries) {
                        @if let [(ti, attempts)] = members.as_slice() {
                            @if mapping::split_key(&ti.task_id).1.is_none() {
                                (instance_row(&viewer, &run, ti, attempts, operator))
                            } @else {
                                (mapped_rows(&viewer, &run, &task_id, &members, operator))
                            }
                        } @else {
                            (mapped_rows(&viewer, &run, &task_id, &members, operator))
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
        h2 { "Metrics" }
        @if metrics.is_empty() {
            p.meta { "No try of this run reported a metric (" code { "{\"type\":\"metric\"}" } " messages)." }
        } @else {
            div.table-wrap {
                table.metrics {
                    thead { tr { th { "Task" } th { "Try" } th { "Metric" } th.num { "Value" } } }
                    tbody {
                        @for metric in &metrics {
                            tr {
                                td { (metric.task_id) }
                                td { (try_numbers.get(&metric.try_id).map_or("–".to_owned(), |n| n.to_string())) }
                                td.mono { (metric.name) }
                                td.num { (metric.value) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Artifacts" }
        @if artifacts.is_empty() {
            p.meta { "No try of this run left files in its workspace." }
        } @else {
            div.table-wrap {
                table.artifacts {
                    thead { tr { th { "Task" } th { "Try" } th { "File" } th { "Size" } th { "SHA-256" } } }
                    tbody {
                        @for artifact in &artifacts {
                            tr {
                                td { (artifact.task_id) }
                                td { (artifact.try_number) }
                                td.mono {
                                    @if operator {
                                        a href=(artifact_link(&run.run_id, artifact)) download { (artifact.path) }
                                    } @else { (artifact.path) }
                                }
                                td title={ (artifact.size) " bytes" } { (size_text(artifact.size)) }
                                td.mono.digest title=(artifact.sha256) { (artifact.sha256[..12.min(artifact.sha256.len())]) }
                            }
                        }
                    }
                }
            }
            @if !operator { p.meta { "Downloading a file needs the operator role." } }
        }
        h2 { "Alerts" }
        @if alerts.is_empty() {
            p.meta { "This run made no alerts (the job's " code { "notify:" } " rules)." }
        } @else {
            (notifications_table(&alerts, operator, &viewer, false))
        }
    };
    Ok(page(&format!("Run {}", run.run_id), &viewer, body))
}

/// A task instance and its tries.
type Attempts = (TaskInstanceRecord, Vec<TryRecord>);

/// The run's task instances by task, in the job file's order (each mapped task's instances
/// in map-index order, without those an earlier expansion left `removed`).
fn by_task<'a>(job: Option<&Job>, tries: &'a [Attempts]) -> Vec<(String, Vec<&'a Attempts>)> {
    let mut groups: Vec<(String, Vec<&Attempts>)> = Vec::new();
    for entry in tries {
        let task = mapping::task_of_key(&entry.0.task_id);
        match groups.iter_mut().find(|(id, _)| id == task) {
            Some((_, members)) => members.push(entry),
            None => groups.push((task.to_owned(), vec![entry])),
        }
    }
    for (_, members) in &mut groups {
        if members.len() > 1 {
            members.retain(|(ti, _)| ti.state != TaskState::Removed);
        }
        members.sort_by(|a, b| mapping::key_order(&a.0.task_id, &b.0.task_id));
    }
    let position = |task: &str| job.and_then(|job| job.tasks.iter().position(|t| t.id == task));
    groups.sort_by_key(|(task, _)| position(task).unwrap_or(usize::MAX));
    groups
}

/// One task instance's row: its state, latest try, and the operator's clear and mark.
fn instance_row(
    viewer: &Viewer,
    run: &RunRecord,
    ti: &TaskInstanceRecord,
    attempts: &[TryRecord],
    operator: bool,
) -> Markup {
    let last = attempts.last();
    html! {
        tr data-instance=(ti.task_id) {
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
            td {
                @if let Some(waiting) = &ti.waiting {
                    span.waiting { "waiting for its backend since " (when(Some(waiting.since))) ": " (waiting.reason) }
                } @else {
                    (last.and_then(|t| t.failure_reason.clone()).unwrap_or_default())
                }
            }
            @if operator {
                td.actions {
                    (clear_form(viewer, run, &ti.task_id))
                    form.inline method="post" action={ (run_link(run)) "/tasks/" (encode(&ti.task_id)) "/mark" } {
                        (csrf_field(viewer))
                        button type="submit" name="state" value="success" { "Mark success" }
                        button type="submit" name="state" value="failed" { "Mark failed" }
                    }
                }
            }
        }
    }
}

fn clear_form(viewer: &Viewer, run: &RunRecord, key: &str) -> Markup {
    html! {
        form.inline method="post" action={ (run_link(run)) "/tasks/" (encode(key)) "/clear" } {
            (csrf_field(viewer))
            label.check { input type="checkbox" name="downstream" value="true"; " downstream" }
            button type="submit" { "Clear" }
        }
    }
}

/// A mapped task: one row with its instances counted by state (and a clear of the whole
/// task, which expands it again), then its instances, expandable.
fn mapped_rows(
    viewer: &Viewer,
    run: &RunRecord,
    task_id: &str,
    members: &[&Attempts],
    operator: bool,
) -> Markup {
    let states = members.iter().map(|(ti, _)| ti.state);
    let counts = mapping::state_counts(states.clone());
    let summary = mapping::summary_state(states).map_or("none", |s| s.as_str());
    html! {
        tr.mapped id={ "task-" (task_id) } data-task=(task_id) data-mapped=(members.len()) {
            td { (task_id) " " span.muted { "mapped × " (members.len()) } }
            td { (state_badge(summary)) }
            td colspan="5" {
                @for (state, n) in &counts {
                    span.count { (n) " " (state_badge(state.as_str())) } " "
                }
            }
            @if operator {
                td.actions { (clear_form(viewer, run, task_id)) }
            }
        }
        tr.mapped-instances {
            td colspan=(if operator { 8 } else { 7 }) {
                details data-task=(task_id) {
                    summary { "Show the " (members.len()) " instances of " (task_id) }
                    table.instances {
                        tbody {
                            @for (ti, attempts) in members {
                                (instance_row(viewer, run, ti, attempts, operator))
                            }
                        }
                    }
                }
            }
        }
    }
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

// State.

#[derive(Deserialize)]
pub struct StateForm {
    #[serde(default)]
    csrf: String,
    /// The state as JSON (set only).
    #[serde(default)]
    value: Option<String>,
    /// The page to return to: one of this server's try pages.
    #[serde(default)]
    back: Option<String>,
}

/// Where a state form returns: the try page it was posted from, never another site.
fn state_back(back: Option<&str>, job_id: &str) -> String {
    match back {
        Some(back) if back.starts_with("/runs/") && !back.contains("//") => back.to_owned(),
        _ => format!("/jobs/{}", encode(job_id)),
    }
}

/// An operator sets a task's committed state from the try page.
pub async fn set_state(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((job_id, task_id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let text = form.value.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        UiError::Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the state is not JSON: {e}"),
        )
    })?;
    stevedore_ops::state::set(
        state.store.as_ref(),
        &state.jobs_dir,
        &job_id,
        &task_id,
        Some(value),
        &viewer.0.caller.name,
    )
    .await?;
    tracing::info!(job_id = %job_id, task_id = %task_id, by = %viewer.0.caller.name, "task state set from the ui");
    Ok(Redirect::to(&state_back(form.back.as_deref(), &job_id)))
}

/// An operator clears a task's committed state from the try page.
pub async fn clear_state(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((job_id, task_id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    stevedore_ops::state::set(
        state.store.as_ref(),
        &state.jobs_dir,
        &job_id,
        &task_id,
        None,
        &viewer.0.caller.name,
    )
    .await?;
    tracing::info!(job_id = %job_id, task_id = %task_id, by = %viewer.0.caller.name, "task state cleared from the ui");
    Ok(Redirect::to(&state_back(form.back.as_deref(), &job_id)))
}

// Tries.

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
    let last = state.logs.last_log_seq(attempt.try_id).await?.unwrap_or(-1);
    let from = query
        .from
        .unwrap_or(last + 1 - i64::from(PAGE_LINES))
        .clamp(0, last.max(0));
    let lines = state
        .logs
        .log_page(attempt.try_id, Some(from - 1), PAGE_LINES)
        .await?
        .lines;
    let page_link = |from: i64| {
        format!(
            "{}?from={from}",
            try_link(&run.run_id, &task_id, try_number)
        )
    };
    let outputs =
        stevedore_ops::runs::task_outputs(state.store.as_ref(), &run.run_id, &task_id).await?;
    let waiting = state
        .store
        .task_instances(&run.run_id)
        .await?
        .into_iter()
        .find(|ti| ti.task_id == task_id)
        .and_then(|ti| ti.waiting);
    let running = attempt.state == TryState::Running;
    let committed = stevedore_ops::state::show(state.store.as_ref(), &run.job_id, &task_id).await?;
    let state_history =
        stevedore_ops::state::history(state.store.as_ref(), &run.job_id, &task_id, 10).await?;
    let state_action = format!(
        "/jobs/{}/tasks/{}/state",
        encode(&run.job_id),
        encode(&task_id)
    );
    let back = try_link(&run.run_id, &task_id, try_number);
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
        @if let Some(waiting) = waiting.as_ref().filter(|_| attempt.try_number == attempts.last().map_or(0, |t| t.try_number)) {
            p.warning { "The task instance waits for its backend since " (when(Some(waiting.since))) ": " (waiting.reason) }
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
        section #state {
            h2 { "State" }
            @match &committed {
                Some(entry) => {
                    p.meta {
                        "The task's committed state (its next run's tries get it), "
                        @match (entry.action.as_str(), &entry.run_id, &entry.actor) {
                            ("run", Some(run_id), _) => { "committed by run " a href={ "/runs/" (encode(run_id)) } { (run_id) } }
                            (action, _, Some(actor)) => { (action) " by " (actor) }
                            (action, _, None) => { (action) }
                        }
                        " at " (entry.committed_at) "."
                    }
                    pre.mono #state-value { (entry.value.as_ref().map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default()) }
                }
                None => { p.muted #state-value { "No committed state: the next run starts from nothing." } }
            }
            @if !run.full_refresh.is_empty() && run.full_refresh.contains(&task_id) {
                p.meta { "This run is a full refresh: its tries started without the committed state." }
            }
            @if state_history.len() > 1 {
                details {
                    summary { "History (latest " (state_history.len()) ")" }
                    table.history {
                        thead { tr { th { "Committed at" } th { "By" } th { "State" } } }
                        tbody {
                            @for entry in &state_history {
                                tr {
                                    td { (entry.committed_at) }
                                    td { (entry.action) @if let Some(actor) = &entry.actor { " (" (actor) ")" } @if let Some(run_id) = &entry.run_id { " " a href={ "/runs/" (encode(run_id)) } { (run_id) } } }
                                    td.mono { (entry.value.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(cleared)".into())) }
                                }
                            }
                        }
                    }
                }
            }
            @if viewer.may(Role::Operator) {
                details.state-edit {
                    summary { "Set or clear" }
                    form method="post" action=(state_action) {
                        (csrf_field(&viewer))
                        input type="hidden" name="back" value=(back);
                        label for="state-json" { "State (JSON)" }
                        textarea #state-json name="value" rows="4" class="mono" required {
                            (committed.as_ref().and_then(|e| e.value.as_ref()).map(|v| v.to_string()).unwrap_or_default())
                        }
                        button type="submit" { "Set state" }
                    }
                    form method="post" action={ (state_action) "/clear" } {
                        (csrf_field(&viewer))
                        input type="hidden" name="back" value=(back);
                        button.danger type="submit" { "Clear state" }
                    }
                }
            }
        }
        @let progress = lines.iter().rev().filter(|l| l.stream == stevedore_store::LogStream::Stdout).find_map(|l| match stevedore_domain::protocol::parse_line(&l.text) {
            Some(stevedore_domain::protocol::Message::Progress { done, total }) => Some((done, total)),
            _ => None,
        });
        // The latest `progress` message: kept up to date by the live log (app.js).
        div.progress #progress hidden[progress.is_none()] {
            progress #progress-bar value=[progress.map(|(done, _)| done)] max=[progress.and_then(|(_, total)| total)] {}
            " " span #progress-text { (progress.map(|(done, total)| match total { Some(total) if total > 0.0 => format!("{done} of {total} ({:.0}%)", (done / total * 100.0).clamp(0.0, 100.0)), _ => done.to_string() }).unwrap_or_default()) }
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

/// Where the UI downloads one artifact (the session's, operator role).
fn artifact_link(run_id: &str, artifact: &stevedore_store::ArtifactRecord) -> String {
    let path: Vec<String> = artifact.path.split('/').map(encode).collect();
    format!(
        "/runs/{}/artifacts/{}/{}?try={}",
        encode(run_id),
        encode(&artifact.task_id),
        path.join("/"),
        artifact.try_number
    )
}

/// A size for people: bytes, KiB, MiB or GiB with one decimal.
fn size_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

#[derive(Deserialize)]
pub struct ArtifactQuery {
    #[serde(rename = "try")]
    try_number: Option<u32>,
}

/// One artifact, downloaded by an operator's browser.
pub async fn artifact(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((run_id, task_id, path)): Path<(String, String, String)>,
    Query(query): Query<ArtifactQuery>,
) -> UiResult<axum::response::Response> {
    viewer.0.caller.require(Role::Operator)?;
    Ok(
        crate::api::artifacts::artifact_response(
            &state,
            &run_id,
            &task_id,
            &path,
            query.try_number,
        )
        .await?,
    )
}
