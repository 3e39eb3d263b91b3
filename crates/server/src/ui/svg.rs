//! The charts, drawn as SVG with maud (so every label is escaped like the rest of a page):
//! the grid (runs × tasks), the DAG, and a run's Gantt chart.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use stevedore_domain::job::Job;
use stevedore_domain::mapping;
use stevedore_domain::state::TaskState;
use stevedore_store::{RunRecord, TaskInstanceRecord, TryRecord};

use super::{encode, state_class};

const CELL: i64 = 18;
const LABEL: i64 = 170;

/// Runs (columns, oldest first) × tasks (rows, in the file's order), each square coloured by
/// the task instance's state and linking to its latest try (or the run).
pub fn grid(
    job: &Job,
    runs: &[RunRecord],
    cells: &HashMap<String, Vec<TaskInstanceRecord>>,
) -> Markup {
    let width = LABEL + CELL * runs.len() as i64 + 10;
    let height = CELL * (job.tasks.len() as i64 + 1) + 10;
    html! {
        svg.grid xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) role="img" aria-label="grid of runs and tasks" {
            // One bar per run on top: the run's own state.
            @for (column, run) in runs.iter().enumerate() {
                @let x = LABEL + CELL * column as i64;
                a href={ "/runs/" (encode(&run.run_id)) } {
                    rect class=(state_class(run.state.as_str())) x=(x + 2) y="2" width=(CELL - 4) height=(CELL - 4) rx="3" {
                        title { "run " (run.run_id) ": " (run.state) }
                    }
                }
            }
            @for (row, task) in job.tasks.iter().enumerate() {
                @let y = CELL * (row as i64 + 1);
                text.label x="4" y=(y + CELL - 5) { (task.id) }
                @for (column, run) in runs.iter().enumerate() {
                    @let x = LABEL + CELL * column as i64;
                    @let of_task = instances_of(cells.get(&run.run_id).map(Vec::as_slice).unwrap_or(&[]), &task.id);
                    @if let [ti] = of_task.as_slice() {
                        @let href = if ti.try_number > 0 {
                            format!("/runs/{}/tasks/{}/tries/{}", encode(&run.run_id), encode(&ti.task_id), ti.try_number)
                        } else {
                            format!("/runs/{}", encode(&run.run_id))
                        };
                        a href=(href) data-task=(task.id) data-run=(run.run_id) data-state=(ti.state.as_str()) {
                            rect class=(state_class(ti.state.as_str())) x=(x + 2) y=(y + 2) width=(CELL - 4) height=(CELL - 4) rx="2" {
                                title { (task.id) " in " (run.run_id) ": " (ti.state) }
                            }
                        }
                    } @else if !of_task.is_empty() {
                        // A mapped task: the most urgent state of its instances, and their
                        // counts; the run page lists them.
                        @let state = mapping::summary_state(of_task.iter().map(|ti| ti.state)).map_or("none", |s| s.as_str());
                        a href={ "/runs/" (encode(&run.run_id)) "#task-" (task.id) } data-task=(task.id) data-run=(run.run_id) data-state=(state) data-mapped=(of_task.len()) {
                            rect class=(state_class(state)) x=(x + 2) y=(y + 2) width=(CELL - 4) height=(CELL - 4) rx="2" {
                                title { (task.id) " in " (run.run_id) ": " (counts_text(&of_task)) }
                            }
                            rect.mapped-mark x=(x + CELL - 7) y=(y + 2) width="5" height="5" {}
                        }
                    }
                }
            }
        }
    }
}

/// The instances of `task_id` among a run's task instances: the one of an unmapped task, or
/// those of a mapped task (its unexpanded instance until it is expanded), in map-index order,
/// without the `removed` ones an earlier expansion left.
pub fn instances_of<'a>(
    instances: &'a [TaskInstanceRecord],
    task_id: &str,
) -> Vec<&'a TaskInstanceRecord> {
    let mut found: Vec<&TaskInstanceRecord> = instances
        .iter()
        .filter(|ti| mapping::task_of_key(&ti.task_id) == task_id)
        .collect();
    if found.len() > 1 {
        found.retain(|ti| ti.state != TaskState::Removed);
    }
    found.sort_by(|a, b| mapping::key_order(&a.task_id, &b.task_id));
    found
}

/// "3 success, 1 failed (4 instances)".
pub fn counts_text(instances: &[&TaskInstanceRecord]) -> String {
    let counts: Vec<String> = mapping::state_counts(instances.iter().map(|ti| ti.state))
        .into_iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let mapped = instances
        .iter()
        .filter(|ti| mapping::split_key(&ti.task_id).1.is_some())
        .count();
    format!("{} ({mapped} instances)", counts.join(", "))
}

/// Each task's layer: the longest path to it from a task without upstream tasks.
fn layers(job: &Job) -> HashMap<&str, usize> {
    let mut layer: HashMap<&str, usize> = HashMap::new();
    // Jobs are acyclic (checked when the file is read); at most one pass per task.
    for _ in 0..=job.tasks.len() {
        let mut changed = false;
        for task in &job.tasks {
            let depth = task
                .depends_on
                .iter()
                .map(|up| layer.get(up.as_str()).map_or(0, |d| d + 1))
                .max()
                .unwrap_or(0);
            if layer.get(task.id.as_str()) != Some(&depth) {
                layer.insert(task.id.as_str(), depth);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

/// The DAG, left to right by layer, each task coloured by its state in the selected run.
pub fn graph(job: &Job, instances: &[TaskInstanceRecord]) -> Markup {
    const NODE_W: i64 = 150;
    const NODE_H: i64 = 34;
    const GAP_X: i64 = 60;
    const GAP_Y: i64 = 18;
    let layer = layers(job);
    let mut rows: HashMap<usize, i64> = HashMap::new();
    let mut at: HashMap<&str, (i64, i64)> = HashMap::new();
    for task in &job.tasks {
        let column = layer.get(task.id.as_str()).copied().unwrap_or(0);
        let row = rows.entry(column).or_insert(0);
        at.insert(
            task.id.as_str(),
            (
                10 + column as i64 * (NODE_W + GAP_X),
                10 + *row * (NODE_H + GAP_Y),
            ),
        );
        *row += 1;
    }
    let width = at
        .values()
        .map(|(x, _)| x + NODE_W + 10)
        .max()
        .unwrap_or(200);
    let height = at
        .values()
        .map(|(_, y)| y + NODE_H + 10)
        .max()
        .unwrap_or(60);
    // A mapped task shows the most urgent state of its instances and their number.
    let state_of = |task: &str| {
        mapping::summary_state(instances_of(instances, task).iter().map(|ti| ti.state))
            .map_or("none", |state| state.as_str())
    };
    let mapped_count = |task: &str| {
        instances_of(instances, task)
            .iter()
            .filter(|ti| mapping::split_key(&ti.task_id).1.is_some())
            .count()
    };
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) role="img" aria-label="the job's tasks and their dependencies" {
            @for task in &job.tasks {
                @for upstream in &task.depends_on {
                    @if let (Some((x1, y1)), Some((x2, y2))) = (at.get(upstream.as_str()), at.get(task.id.as_str())) {
                        path.edge d={
                            "M" (x1 + NODE_W) " " (y1 + NODE_H / 2)
                            " C" (x1 + NODE_W + GAP_X / 2) " " (y1 + NODE_H / 2) ", "
                            (x2 - GAP_X / 2) " " (y2 + NODE_H / 2) ", "
                            (x2) " " (y2 + NODE_H / 2)
                        } {}
                    }
                }
            }
            @for task in &job.tasks {
                @if let Some((x, y)) = at.get(task.id.as_str()) {
                    @let state = state_of(&task.id);
                    @let mapped = mapped_count(&task.id);
                    g.node data-task=(task.id) data-state=(state) data-mapped=[(task.for_each.is_some()).then_some(mapped)] {
                        @if task.for_each.is_some() {
                            // A mapped task is drawn as a stack.
                            rect class=(state_class(state)) x=(x + 4) y=(y - 4) width=(NODE_W) height=(NODE_H) rx="6" opacity="0.5" {}
                        }
                        rect class=(state_class(state)) x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {
                            title {
                                (task.id) ": "
                                @if mapped > 0 { (counts_text(&instances_of(instances, &task.id))) } @else { (state) }
                                " · " (task.image)
                            }
                        }
                        text x=(x + 8) y=(y + 21) {
                            (task.id)
                            @if task.for_each.is_some() { " [" (if mapped > 0 { mapped.to_string() } else { String::new() }) "]" }
                        }
                    }
                }
            }
        }
    }
}

/// A run's tries on a time axis: the time each waited (from its upstream tasks' end, or the
/// run's start, to its own start) and the time it ran.
pub fn gantt(
    run: &RunRecord,
    job: Option<&Job>,
    tries: &[(TaskInstanceRecord, Vec<TryRecord>)],
) -> Markup {
    const ROW: i64 = 22;
    const WIDTH: i64 = 720;
    let now = Utc::now();
    let start = run.started_at.unwrap_or(run.queued_at);
    let end = tries
        .iter()
        .flat_map(|(_, attempts)| attempts.iter().map(|t| t.ended_at.unwrap_or(now)))
        .chain(run.ended_at)
        .max()
        .unwrap_or(now)
        .max(start + chrono::TimeDelta::milliseconds(1));
    let span = (end - start).num_milliseconds().max(1) as f64;
    let x = |at: DateTime<Utc>| {
        LABEL + (((at - start).num_milliseconds().max(0) as f64 / span) * WIDTH as f64) as i64
    };
    // When each task's upstream tasks (every instance of a mapped one) had all ended: its
    // earliest possible start.
    let mut ended: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for (ti, attempts) in tries {
        if let Some(end) = attempts.last().and_then(|t| t.ended_at) {
            let task = mapping::task_of_key(&ti.task_id);
            let latest = ended.entry(task).or_insert(end);
            *latest = (*latest).max(end);
        }
    }
    let ready_at = |task_id: &str| -> DateTime<Utc> {
        job.and_then(|job| job.task_of(task_id))
            .map(|task| {
                task.depends_on
                    .iter()
                    .filter_map(|up| ended.get(up.as_str()).copied())
                    .max()
                    .unwrap_or(start)
            })
            .unwrap_or(start)
    };
    let rows: Vec<(&TaskInstanceRecord, &TryRecord)> = tries
        .iter()
        .flat_map(|(ti, attempts)| attempts.iter().map(move |t| (ti, t)))
        .collect();
    let height = ROW * (rows.len() as i64 + 1) + 10;
    html! {
        @if rows.is_empty() {
            p.muted { "No try has started yet." }
        } @else {
            svg.gantt xmlns="http://www.w3.org/2000/svg" width=(LABEL + WIDTH + 20) height=(height) role="img" aria-label="Gantt chart of the run's tries" {
                text.axis x=(LABEL) y="14" { "0s" }
                text.axis x=(LABEL + WIDTH) y="14" text-anchor="end" { (format!("{:.1}s", span / 1000.0)) }
                @for (index, (ti, attempt)) in rows.iter().enumerate() {
                    @let y = ROW * (index as i64 + 1);
                    @let queued_from = if attempt.try_number > 1 { attempt.started_at } else { ready_at(&ti.task_id).min(attempt.started_at) };
                    @let run_end = attempt.ended_at.unwrap_or(now);
                    text.label x="4" y=(y + 15) { (ti.task_id) " #" (attempt.try_number) }
                    rect.queued x=(x(queued_from)) y=(y + 4) width=((x(attempt.started_at) - x(queued_from)).max(1)) height="14" {
                        title { "waiting " (format!("{:.2}s", (attempt.started_at - queued_from).num_milliseconds() as f64 / 1000.0)) }
                    }
                    a href={ "/runs/" (encode(&run.run_id)) "/tasks/" (encode(&ti.task_id)) "/tries/" (attempt.try_number) } {
                        rect class=(state_class(attempt.state.as_str())) x=(x(attempt.started_at)) y=(y + 4) width=((x(run_end) - x(attempt.started_at)).max(2)) height="14" rx="2" {
                            title { (ti.task_id) " try " (attempt.try_number) ": " (attempt.state) ", " (format!("{:.2}s", (run_end - attempt.started_at).num_milliseconds() as f64 / 1000.0)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_the_longest_path_from_a_root() {
        let job = stevedore_domain::job::parse_job(
            "j.yaml",
            "id: j\ntasks:\n  - id: a\n    image: i:1\n  - id: b\n    image: i:1\n    depends_on: [a]\n  - id: c\n    image: i:1\n    depends_on: [a, b]\n  - id: d\n    image: i:1\n",
        )
        .unwrap();
        let layer = layers(&job);
        assert_eq!(
            (layer["a"], layer["b"], layer["c"], layer["d"]),
            (0, 1, 2, 0)
        );
    }
}
