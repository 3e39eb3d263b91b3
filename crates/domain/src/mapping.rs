//! Task mapping: a task with `for_each` becomes one task instance per item of a list known
//! only at run time (Airflow's dynamic task mapping, Argo's `withParam`).
//!
//! A task instance is named by its key: the task id for an ordinary task (and for a
//! mapped task before it is expanded), `task[N]` for the N-th instance of a mapped one.
//! Task ids hold only `a-z`, `0-9` and `_`, so a key is never ambiguous. When its upstreams
//! allow the mapped task to run, the scheduler renders its `for_each` into a list and
//! replaces the unexpanded instance by one instance per item (or skips it for an empty
//! list, as Airflow does). Each instance then retries, clears and marks on its own; the
//! trigger rules of its downstream tasks count every instance.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::job::{Job, Task};
use crate::state::TaskState;
use crate::template::Variable;

/// The most instances one mapped task may expand to (Airflow's `max_map_length`): a longer
/// list fails the mapped task with a reason saying so.
pub const MAX_MAP_LENGTH: usize = 1024;

/// What a mapped task maps over, as the job file says it.
#[derive(Clone, Debug, PartialEq)]
pub enum ForEach {
    /// A list written in the file.
    Literal(Vec<Value>),
    /// `"{{ outputs.TASK.KEY }}"` or `"{{ params.NAME }}"`: a JSON list (or text holding
    /// one) chosen at run time.
    Variable(Variable),
}

/// The key of instance `index` of mapped task `task_id`: `task_id[index]`.
pub fn instance_key(task_id: &str, index: u32) -> String {
    format!("{task_id}[{index}]")
}

/// A task instance key split into its task id and map index (`None` for an unmapped
/// instance, or a mapped task not yet expanded).
pub fn split_key(key: &str) -> (&str, Option<u32>) {
    if let Some(open) = key.find('[') {
        if let Some(index) = key[open + 1..]
            .strip_suffix(']')
            .and_then(|n| n.parse::<u32>().ok())
        {
            return (&key[..open], Some(index));
        }
    }
    (key, None)
}

/// The task id of a task instance key.
pub fn task_of_key(key: &str) -> &str {
    split_key(key).0
}

/// A task instance key in a form container and Nomad job names accept (`task.N`; task
/// ids hold no `.`, so it stays unique).
pub fn name_part(key: &str) -> String {
    match split_key(key) {
        (task, Some(index)) => format!("{task}.{index}"),
        (task, None) => task.to_owned(),
    }
}

/// Orders keys by task id, then numerically by map index (`t[2]` before `t[10]`).
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (task_a, index_a) = split_key(a);
    let (task_b, index_b) = split_key(b);
    task_a.cmp(task_b).then(index_a.cmp(&index_b))
}

/// The items a mapped task maps over. `value_of` gives a variable's value (a param, or an
/// upstream output, already gathered into a list for a mapped upstream).
pub fn items(
    for_each: &ForEach,
    value_of: &dyn Fn(&Variable) -> Option<Value>,
) -> Result<Vec<Value>, String> {
    let value = match for_each {
        ForEach::Variable(variable) => value_of(variable),
        ForEach::Literal(_) => None,
    };
    Ok(list(for_each, value.as_ref())?.into_owned())
}

/// The list `for_each` names; `value` is its variable's value.
fn list<'a>(
    for_each: &'a ForEach,
    value: Option<&'a Value>,
) -> Result<std::borrow::Cow<'a, [Value]>, String> {
    use std::borrow::Cow;
    let (list, what): (Cow<'a, [Value]>, String) = match for_each {
        ForEach::Literal(items) => (Cow::Borrowed(items.as_slice()), "the list".to_owned()),
        ForEach::Variable(variable) => {
            let what = format!("`{variable}`");
            let value = value.ok_or_else(|| match variable {
                Variable::Output { task, key } => format!(
                    "for_each: `outputs.{task}.{key}` has no value: task `{task}` did not \
                     publish an output `{key}`"
                ),
                other => format!("for_each: `{other}` has no value"),
            })?;
            match value {
                Value::Array(list) => (Cow::Borrowed(list.as_slice()), what),
                // An integration may publish the list as text holding JSON.
                Value::String(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Array(list)) => (Cow::Owned(list), what),
                    _ => {
                        return Err(format!(
                            "for_each: {what} is not a JSON list (it is the text `{}`)",
                            shorten(text)
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "for_each: {what} is not a JSON list (it is {})",
                        kind_of(other)
                    ))
                }
            }
        }
    };
    if list.len() > MAX_MAP_LENGTH {
        return Err(format!(
            "for_each: {what} has {} items, more than the {MAX_MAP_LENGTH} one mapped task may \
             expand to",
            list.len()
        ));
    }
    Ok(list)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The value `{{ item }}` or `{{ item.a.b }}` names in `item`, `None` when a field is
/// missing.
pub fn item_field<'a>(item: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(item, |value, field| match value {
        Value::Object(map) => map.get(field),
        Value::Array(list) => field.parse::<usize>().ok().and_then(|i| list.get(i)),
        _ => None,
    })
}

/// The run's outputs as templates see them: `(task, key)` to value, where the outputs of a
/// mapped task's instances are gathered into one JSON list in map-index order (`null` for
/// an instance that did not publish the key). `instances` are the run's task instance keys,
/// so an instance that published nothing still has its place.
pub fn gather_outputs(
    outputs: Vec<(String, String, Value)>,
    instances: &[String],
) -> HashMap<(String, String), Value> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for key in instances {
        if let (task, Some(index)) = split_key(key) {
            let n = count.entry(task).or_default();
            *n = (*n).max(index as usize + 1);
        }
    }
    let mut gathered: HashMap<(String, String), Value> = HashMap::new();
    let mut mapped: BTreeMap<(String, String), BTreeMap<u32, Value>> = BTreeMap::new();
    for (key, name, value) in outputs {
        match split_key(&key) {
            (task, Some(index)) => {
                mapped
                    .entry((task.to_owned(), name))
                    .or_default()
                    .insert(index, value);
            }
            (task, None) => {
                gathered.insert((task.to_owned(), name), value);
            }
        }
    }
    for ((task, name), mut values) in mapped {
        let length = count
            .get(task.as_str())
            .copied()
            .unwrap_or(0)
            .max(values.keys().last().map_or(0, |i| *i as usize + 1));
        let list = (0..length as u32)
            .map(|i| values.remove(&i).unwrap_or(Value::Null))
            .collect();
        gathered.insert((task, name), Value::Array(list));
    }
    gathered
}

/// The instance keys of each task present in `states`: the unexpanded key (a task not
/// mapped, or a mapped task not expanded yet or skipped) and every `task[N]`, in map-index
/// order.
pub fn instances_by_task(states: &HashMap<String, TaskState>) -> HashMap<&str, Vec<&str>> {
    let mut by_task: HashMap<&str, Vec<&str>> = HashMap::new();
    for key in states.keys() {
        by_task.entry(task_of_key(key)).or_default().push(key);
    }
    for keys in by_task.values_mut() {
        keys.sort_by(|a, b| key_order(a, b));
    }
    by_task
}

/// The states of every instance of `task_id` in `states`.
pub fn states_of<'a>(
    by_task: &'a HashMap<&str, Vec<&str>>,
    states: &'a HashMap<String, TaskState>,
    task_id: &str,
) -> impl Iterator<Item = TaskState> + 'a {
    by_task
        .get(task_id)
        .into_iter()
        .flatten()
        .filter_map(|key| states.get(*key).copied())
}

/// The `scheduled` task instances that may start now, lowest map index first: all of them,
/// except that a mapped task with `max_active: N` has at most N instances active at once
/// in a run (Airflow's `max_active_tis_per_dagrun`). Unexpanded mapped instances are not
/// among them: the scheduler expands those instead.
pub fn startable(job: &Job, states: &HashMap<String, TaskState>) -> Vec<String> {
    let by_task = instances_by_task(states);
    let mut out = Vec::new();
    for task in &job.tasks {
        let Some(keys) = by_task.get(task.id.as_str()) else {
            continue;
        };
        let mut free = match (&task.for_each, task.max_active) {
            (Some(_), Some(limit)) => {
                let active = keys
                    .iter()
                    .filter(|k| states.get(**k).is_some_and(|s| s.is_active()))
                    .count();
                (limit as usize).saturating_sub(active)
            }
            _ => usize::MAX,
        };
        for key in keys {
            if states.get(*key) != Some(&TaskState::Scheduled) {
                continue;
            }
            if task.for_each.is_some() && split_key(key).1.is_none() {
                continue;
            }
            if free == 0 {
                break;
            }
            free -= 1;
            out.push((*key).to_owned());
        }
    }
    out
}

/// The mapped tasks whose unexpanded instance is `scheduled`: ready to be expanded.
pub fn to_expand<'a>(job: &'a Job, states: &HashMap<String, TaskState>) -> Vec<&'a Task> {
    job.tasks
        .iter()
        .filter(|task| task.for_each.is_some())
        .filter(|task| states.get(&task.id) == Some(&TaskState::Scheduled))
        .collect()
}

/// Applies an expansion to `states` as the store records it: the unexpanded instance
/// leaves, instances `0..count` are `scheduled` (an existing one, from an earlier expansion
/// an operator cleared, is reused) and any beyond `count` are `removed`. With `count` 0 the
/// task is `skipped` instead.
pub fn expand(states: &mut HashMap<String, TaskState>, task_id: &str, count: u32) {
    if count == 0 {
        states.insert(task_id.to_owned(), TaskState::Skipped);
        return;
    }
    states.remove(task_id);
    let beyond: Vec<String> = states
        .keys()
        .filter(|key| matches!(split_key(key), (t, Some(i)) if t == task_id && i >= count))
        .cloned()
        .collect();
    for key in beyond {
        states.insert(key, TaskState::Removed);
    }
    for index in 0..count {
        states.insert(instance_key(task_id, index), TaskState::Scheduled);
    }
}

/// The params a mapped task's `for_each: "{{ params.X }}"` reads.
pub fn param_value(params: &Map<String, Value>, variable: &Variable) -> Option<Value> {
    match variable {
        Variable::Param(name) => params.get(name).cloned(),
        _ => None,
    }
}

/// Task states, the most urgent first, as Airflow's grid picks the one that stands for a
/// mapped task's instances: any failure, then what waits or runs, then success and skips.
const URGENCY: [TaskState; 11] = [
    TaskState::Failed,
    TaskState::UpstreamFailed,
    TaskState::UpForRetry,
    TaskState::UpForReschedule,
    TaskState::Queued,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::None,
    TaskState::Skipped,
    TaskState::Success,
    TaskState::Removed,
];

fn urgency(state: TaskState) -> usize {
    URGENCY
        .iter()
        .position(|s| *s == state)
        .unwrap_or(URGENCY.len())
}

/// The state that stands for a mapped task's instances in a summary (the grid, the graph):
/// the most urgent of theirs; `removed` only when all are.
pub fn summary_state(states: impl IntoIterator<Item = TaskState>) -> Option<TaskState> {
    states.into_iter().min_by_key(|state| urgency(*state))
}

/// How many instances are in each state, the most urgent first, `removed` left out.
pub fn state_counts(states: impl IntoIterator<Item = TaskState>) -> Vec<(TaskState, usize)> {
    let mut counts: Vec<(TaskState, usize)> = Vec::new();
    for state in states.into_iter().filter(|s| *s != TaskState::Removed) {
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    counts.sort_by_key(|(state, _)| urgency(*state));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_shows_the_most_urgent_state_and_counts_each() {
        use TaskState::*;
        assert_eq!(summary_state([Success, Running, Failed]), Some(Failed));
        assert_eq!(summary_state([Success, Running]), Some(Running));
        assert_eq!(summary_state([Success, Skipped]), Some(Skipped));
        assert_eq!(summary_state([Removed, Success]), Some(Success));
        assert_eq!(summary_state([]), Option::None);
        assert_eq!(
            state_counts([Success, Running, Success, Removed, Failed]),
            vec![(Failed, 1), (Running, 1), (Success, 2)]
        );
    }

    #[test]
    fn keys_split_and_order_numerically() {
        assert_eq!(split_key("extract[12]"), ("extract", Some(12)));
        assert_eq!(split_key("extract"), ("extract", None));
        assert_eq!(split_key("extract[x]"), ("extract[x]", None));
        assert_eq!(name_part("extract[3]"), "extract.3");
        let mut keys = vec!["t[10]", "t[2]", "s", "t[0]"];
        keys.sort_by(|a, b| key_order(a, b));
        assert_eq!(keys, ["s", "t[0]", "t[2]", "t[10]"]);
    }

    #[test]
    fn items_come_from_lists_or_text_holding_one() {
        let output = Variable::Output {
            task: "list".into(),
            key: "ids".into(),
        };
        let value_of = |text: Value| move |_: &Variable| Some(text.clone());
        let for_each = ForEach::Variable(output.clone());
        assert_eq!(
            items(&for_each, &value_of(json!([1, {"a": 2}]))).unwrap(),
            vec![json!(1), json!({"a": 2})]
        );
        assert_eq!(
            items(&for_each, &value_of(json!("[\"x\"]"))).unwrap(),
            vec![json!("x")]
        );
        let error = items(&for_each, &value_of(json!({"a": 1}))).unwrap_err();
        assert!(error.contains("`outputs.list.ids` is not a JSON list (it is an object)"));
        let error = items(&for_each, &|_| None).unwrap_err();
        assert!(error.contains("did not publish an output `ids`"), "{error}");
        let long = Value::Array(vec![json!(0); MAX_MAP_LENGTH + 1]);
        assert!(items(&for_each, &value_of(long))
            .unwrap_err()
            .contains("more than the 1024"));
        assert_eq!(
            items(&ForEach::Literal(vec![json!("a")]), &|_| None).unwrap(),
            vec![json!("a")]
        );
    }

    #[test]
    fn outputs_of_mapped_instances_gather_in_order_with_gaps() {
        let outputs = vec![
            ("e[1]".to_owned(), "rows".to_owned(), json!(20)),
            ("e[0]".to_owned(), "rows".to_owned(), json!(10)),
            ("list".to_owned(), "ids".to_owned(), json!([1, 2, 3])),
        ];
        let instances: Vec<String> = ["list", "e[0]", "e[1]", "e[2]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let gathered = gather_outputs(outputs, &instances);
        assert_eq!(
            gathered[&("e".to_owned(), "rows".to_owned())],
            json!([10, 20, null])
        );
        assert_eq!(
            gathered[&("list".to_owned(), "ids".to_owned())],
            json!([1, 2, 3])
        );
    }

    #[test]
    fn item_fields_follow_objects_and_lists() {
        let item = json!({"account": {"id": "acct_1"}, "tags": ["a", "b"]});
        assert_eq!(
            item_field(&item, &["account".into(), "id".into()]),
            Some(&json!("acct_1"))
        );
        assert_eq!(
            item_field(&item, &["tags".into(), "1".into()]),
            Some(&json!("b"))
        );
        assert_eq!(item_field(&item, &["missing".into()]), None);
    }

    #[test]
    fn expansion_reuses_cleared_instances_and_removes_the_rest() {
        let mut states: HashMap<String, TaskState> = [
            ("e".to_owned(), TaskState::Scheduled),
            ("e[0]".to_owned(), TaskState::Removed),
            ("e[1]".to_owned(), TaskState::Removed),
            ("e[2]".to_owned(), TaskState::Removed),
        ]
        .into();
        expand(&mut states, "e", 2);
        assert!(!states.contains_key("e"));
        assert_eq!(states["e[0]"], TaskState::Scheduled);
        assert_eq!(states["e[1]"], TaskState::Scheduled);
        assert_eq!(states["e[2]"], TaskState::Removed);
        let mut empty: HashMap<String, TaskState> = [("e".to_owned(), TaskState::Scheduled)].into();
        expand(&mut empty, "e", 0);
        assert_eq!(empty["e"], TaskState::Skipped);
    }
}
