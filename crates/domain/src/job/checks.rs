//! The checks across tasks: upstreams exist, no cycle, and templates name only variables
//! the task can have (params, the run's context, outputs of its upstreams).

#[allow(unused_imports)]
use super::*;

pub(super) fn check_dependencies(
    raw_tasks: &[Spanned<RawTask>],
    tasks: &[Task],
    problems: &mut Problems<'_>,
) {
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for raw in raw_tasks {
        let Some(task_id) = raw.value.id.as_ref().map(|id| id.value.as_str()) else {
            continue;
        };
        for upstream in raw.value.depends_on.iter().flatten() {
            if upstream.value == task_id {
                problems.at(
                    line_of(upstream),
                    format!("task `{task_id}` depends on itself"),
                );
            } else if !ids.contains(upstream.value.as_str()) {
                problems.at(
                    line_of(upstream),
                    format!(
                        "task `{task_id}` depends on `{}`, which is not a task of this job",
                        upstream.value
                    ),
                );
            }
        }
    }
}

/// A dependency cycle as a path of task ids that returns to its first one.
pub(super) fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        index: &HashMap<&'a str, &'a Task>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Visiting);
        path.push(id);
        if let Some(task) = index.get(id) {
            for upstream in &task.depends_on {
                if upstream != id && index.contains_key(upstream.as_str()) {
                    if let Some(cycle) = visit(upstream.as_str(), index, marks, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for task in tasks {
        let mut path = Vec::new();
        if let Some(mut cycle) = visit(task.id.as_str(), &index, &mut marks, &mut path) {
            // Upstream edges were followed; show the cycle in the direction work flows.
            cycle.reverse();
            return Some(cycle);
        }
    }
    None
}

/// All tasks `task` depends on, directly or not.
pub(super) fn ancestors<'a>(
    task: &'a Task,
    index: &HashMap<&'a str, &'a Task>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = task.depends_on.iter().map(String::as_str).collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            if let Some(upstream) = index.get(id) {
                stack.extend(upstream.depends_on.iter().map(String::as_str));
            }
        }
    }
    seen
}

pub(super) fn check_templates(
    raw_tasks: &[Spanned<RawTask>],
    tasks: &[Task],
    params: &Map<String, Value>,
    images_allowed: bool,
    problems: &mut Problems<'_>,
) {
    let index: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for (raw, task) in raw_tasks.iter().zip(tasks) {
        let upstream = ancestors(task, &index);
        let task_line = line_of(raw);
        let line_for = |field: Option<u64>| field.unwrap_or(task_line);
        let fields: Vec<(&str, u64, &str)> = std::iter::once((
            "image",
            line_for(raw.value.image.as_ref().map(line_of)),
            task.image.as_str(),
        ))
        .chain(task.args.iter().map(|arg| {
            (
                "args",
                line_for(raw.value.args.as_ref().map(line_of)),
                arg.as_str(),
            )
        }))
        .chain(task.env.values().map(|value| {
            (
                "env",
                line_for(raw.value.env.as_ref().map(line_of)),
                value.as_str(),
            )
        }))
        .collect();
        let for_each_text = match &task.for_each {
            Some(ForEach::Variable(variable)) => Some(format!("{{{{ {variable} }}}}")),
            _ => None,
        };
        let fields: Vec<(&str, u64, &str)> = fields
            .into_iter()
            .chain(for_each_text.as_deref().map(|text| {
                (
                    "for_each",
                    line_for(raw.value.for_each.as_ref().map(line_of)),
                    text,
                )
            }))
            .collect();
        for (field, line, text) in fields {
            let variables = match template::variables(text) {
                Ok(variables) => variables,
                Err(message) => {
                    problems.at(line, format!("task `{}`: {field}: {message}", task.id));
                    continue;
                }
            };
            for variable in variables {
                // Whoever chooses the image chooses where the task's connections and
                // registry credentials go: a param (any operator's trigger) or an output
                // (any upstream image) may only do that within the job's allow-list.
                if field == "image"
                    && !images_allowed
                    && matches!(
                        variable,
                        Variable::Param(_) | Variable::Output { .. } | Variable::Item(_)
                    )
                {
                    problems.at(
                        line,
                        format!(
                            "task `{}`: image uses `{variable}`: a param, an output or a mapped item may choose the image only among the job's `allowed_images` (list the image names it may render to)",
                            task.id
                        ),
                    );
                    continue;
                }
                match variable {
                    Variable::Item(_) | Variable::MapIndex if task.for_each.is_none() => problems
                        .at(
                            line,
                            format!(
                                "task `{}`: {field} uses `{variable}`, which only a mapped task \
                                 (one with `for_each`) has",
                                task.id
                            ),
                        ),
                    Variable::Param(name) if !params.contains_key(&name) => problems.at(
                        line,
                        format!(
                            "task `{}`: {field} uses `params.{name}`, which the job's `params` \
                             does not declare",
                            task.id
                        ),
                    ),
                    Variable::Output { task: source, .. }
                        if !upstream.contains(source.as_str()) =>
                    {
                        problems.at(
                            line,
                            format!(
                                "task `{}`: {field} uses outputs of `{source}`, which is not \
                                 upstream of it",
                                task.id
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A map of scalars (`env`, `placement`) with each value as its text.
pub(super) fn scalar_texts(
    spanned: &Spanned<BTreeMap<String, Scalar>>,
) -> BTreeMap<String, String> {
    spanned
        .value
        .iter()
        .map(|(key, value)| (key.clone(), value.0.clone()))
        .collect()
}
