//! Deciding a run's next steps from its task instances' states: which waiting task
//! instances become `scheduled`, `skipped` or `upstream_failed` (cascading through the
//! graph in one pass), and when the run is over and with what outcome.

use std::collections::HashMap;

use crate::job::Job;
use crate::mapping;
use crate::state::{RunState, TaskState};
use chrono::{DateTime, Utc};

use crate::trigger::{evaluate, Decision, TriggerRule, UpstreamCounts};

/// Task instances in state `none` whose trigger rule can be decided now, with their new
/// state. `states` (keyed by task instance key, see [`crate::mapping`]) is updated in place,
/// so a skip cascades to its downstream tasks in the same call. Tasks are visited in
/// dependency order; an upstream that is mapped counts with every one of its instances.
/// Every upstream counts as having ended at the same moment; [`resolve_waiting_in_order`]
/// is the scheduler's, which knows when each ended.
pub fn resolve_waiting(
    job: &Job,
    states: &mut HashMap<String, TaskState>,
) -> Vec<(String, TaskState)> {
    resolve_waiting_in_order(job, states, &mut HashMap::new())
}

/// [`resolve_waiting`] as Airflow's scheduler decides it, eagerly: a task instance's rule is
/// decided at the first moment its upstreams' states decide it, with what had ended by
/// then. `ended` holds when each finished task instance ended (a finished one it lacks
/// counts as ended before all others); upstreams are taken in that order, and a task
/// instance decided `skipped` or `upstream_failed` here is put in `ended` at the moment its
/// deciding upstream ended, so its own downstream tasks are decided in the same order.
///
/// This matters only where Airflow's outcome depends on which upstream ends first:
/// `all_success` with one upstream skipped and another failed (or `upstream_failed`) is
/// `skipped` when the skip came first and `upstream_failed` when the failure did, however
/// long the scheduler took to see either. For every other rule the order changes nothing.
pub fn resolve_waiting_in_order(
    job: &Job,
    states: &mut HashMap<String, TaskState>,
    ended: &mut HashMap<String, DateTime<Utc>>,
) -> Vec<(String, TaskState)> {
    let mut changes = Vec::new();
    let keys: HashMap<String, Vec<String>> = mapping::instances_by_task(states)
        .into_iter()
        .map(|(task, keys)| {
            (
                task.to_owned(),
                keys.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    let mut upstream: Vec<(Option<DateTime<Utc>>, TaskState)> = Vec::new();
    for task in topological_order(job) {
        let Some(own) = keys.get(&task.id) else {
            continue;
        };
        for key in own {
            if states.get(key) != Some(&TaskState::None) {
                continue;
            }
            upstream.clear();
            for id in &task.depends_on {
                match keys.get(id) {
                    Some(keys) => upstream.extend(keys.iter().filter_map(|k| {
                        let state = *states.get(k)?;
                        Some((ended.get(k).copied(), state))
                    })),
                    None => upstream.push((None, TaskState::Removed)),
                }
            }
            let (decision, at) = decide_in_order(task.trigger_rule, &mut upstream);
            let next = match decision {
                Decision::Wait => continue,
                Decision::Run => TaskState::Scheduled,
                Decision::Skip => TaskState::Skipped,
                Decision::UpstreamFailed => TaskState::UpstreamFailed,
            };
            if let (TaskState::Skipped | TaskState::UpstreamFailed, Some(at)) = (next, at) {
                ended.insert(key.clone(), at);
            }
            states.insert(key.clone(), next);
            changes.push((key.clone(), next));
        }
    }
    changes
}

/// The first decision `rule` reaches as the finished upstreams are counted in the order
/// they ended (those ending at the same moment together), and when it was reached.
fn decide_in_order(
    rule: TriggerRule,
    upstream: &mut [(Option<DateTime<Utc>>, TaskState)],
) -> (Decision, Option<DateTime<Utc>>) {
    let mut counts = UpstreamCounts {
        total: upstream.len(),
        ..UpstreamCounts::default()
    };
    if upstream.is_empty() {
        return (evaluate(rule, counts), None);
    }
    upstream.sort_by_key(|(at, state)| (!state.is_finished(), *at));
    let mut index = 0;
    while index < upstream.len() && upstream[index].1.is_finished() {
        let at = upstream[index].0;
        while index < upstream.len() && upstream[index].1.is_finished() && upstream[index].0 == at {
            counts.add_finished(upstream[index].1);
            index += 1;
        }
        let decision = evaluate(rule, counts);
        if decision != Decision::Wait {
            return (decision, at);
        }
    }
    (evaluate(rule, counts), None)
}

/// The run's outcome once nothing more can happen, `None` while it can still progress.
/// A run succeeds when every leaf (each instance of a mapped one) is `success` or
/// `skipped`. A run whose remaining task instances wait on nothing that can finish (a
/// deadlock) fails.
pub fn run_outcome(job: &Job, states: &HashMap<String, TaskState>) -> Option<RunState> {
    let in_progress = states
        .values()
        .any(|state| !state.is_finished() && *state != TaskState::None);
    if in_progress {
        return None;
    }
    let by_task = mapping::instances_by_task(states);
    let leaves_ok = job.leaves().iter().all(|leaf| {
        mapping::states_of(&by_task, states, &leaf.id).all(|state| {
            matches!(
                state,
                TaskState::Success | TaskState::Skipped | TaskState::Removed
            )
        })
    });
    let all_finished = states.values().all(|state| state.is_finished());
    Some(if all_finished && leaves_ok {
        RunState::Success
    } else {
        RunState::Failed
    })
}

/// Tasks ordered so each comes after its upstreams (file order among independent ones).
pub fn topological_order(job: &Job) -> Vec<&crate::job::Task> {
    let mut placed: HashMap<&str, bool> = HashMap::new();
    let mut order = Vec::with_capacity(job.tasks.len());
    while order.len() < job.tasks.len() {
        let before = order.len();
        for task in &job.tasks {
            if placed.contains_key(task.id.as_str()) {
                continue;
            }
            if task
                .depends_on
                .iter()
                .all(|d| placed.contains_key(d.as_str()) || job.task(d).is_none())
            {
                placed.insert(task.id.as_str(), true);
                order.push(task);
            }
        }
        if order.len() == before {
            // A cycle; validated jobs have none, but never loop forever.
            break;
        }
    }
    order
}

/// Priority weight of each task: its own priority plus that of everything downstream
/// (Airflow's default `downstream` weight rule).
pub fn priority_weights(job: &Job) -> HashMap<String, i64> {
    let downstream = job.downstream();
    let mut weights = HashMap::new();
    for task in &job.tasks {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![task.id.as_str()];
        let mut weight = 0i64;
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            weight += job.task(id).map(|t| i64::from(t.priority)).unwrap_or(0);
            stack.extend(downstream.get(id).into_iter().flatten().copied());
        }
        weights.insert(task.id.clone(), weight);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;

    fn job() -> Job {
        parse_job(
            "t.yaml",
            "id: etl\ntasks:\n  - id: extract\n    image: i:1\n  - id: t1\n    image: i:1\n    depends_on: [extract]\n  - id: t2\n    image: i:1\n    depends_on: [extract]\n  - id: load\n    image: i:1\n    depends_on: [t1, t2]\n  - id: cleanup\n    image: i:1\n    depends_on: [load]\n    trigger_rule: all_done\n",
        )
        .unwrap()
    }

    fn states(pairs: &[(&str, TaskState)]) -> HashMap<String, TaskState> {
        pairs
            .iter()
            .map(|(id, state)| (id.to_string(), *state))
            .collect()
    }

    #[test]
    fn roots_are_scheduled_first() {
        let job = job();
        let mut current = states(&[
            ("extract", TaskState::None),
            ("t1", TaskState::None),
            ("t2", TaskState::None),
            ("load", TaskState::None),
            ("cleanup", TaskState::None),
        ]);
        let changes = resolve_waiting(&job, &mut current);
        assert_eq!(changes, vec![("extract".to_string(), TaskState::Scheduled)]);
        assert_eq!(run_outcome(&job, &current), None);
    }

    #[test]
    fn a_failure_cascades_in_one_pass_and_all_done_still_runs() {
        let job = job();
        let mut current = states(&[
            ("extract", TaskState::Failed),
            ("t1", TaskState::None),
            ("t2", TaskState::None),
            ("load", TaskState::None),
            ("cleanup", TaskState::None),
        ]);
        let changes = resolve_waiting(&job, &mut current);
        assert_eq!(
            changes,
            vec![
                ("t1".to_string(), TaskState::UpstreamFailed),
                ("t2".to_string(), TaskState::UpstreamFailed),
                ("load".to_string(), TaskState::UpstreamFailed),
                ("cleanup".to_string(), TaskState::Scheduled),
            ]
        );
        current.insert("cleanup".into(), TaskState::Success);
        // Airflow judges a run by its leaves: cleanup is the only one, so the run succeeds
        // although extract failed.
        assert_eq!(run_outcome(&job, &current), Some(RunState::Success));
    }

    #[test]
    fn a_failed_leaf_fails_the_run_and_retries_keep_it_going() {
        let job = job();
        let mut current = states(&[
            ("extract", TaskState::Success),
            ("t1", TaskState::Success),
            ("t2", TaskState::UpForRetry),
            ("load", TaskState::None),
            ("cleanup", TaskState::None),
        ]);
        assert!(resolve_waiting(&job, &mut current).is_empty());
        assert_eq!(run_outcome(&job, &current), None);
        current.insert("t2".into(), TaskState::Success);
        current.insert("load".into(), TaskState::Success);
        current.insert("cleanup".into(), TaskState::Failed);
        assert_eq!(run_outcome(&job, &current), Some(RunState::Failed));
    }

    #[test]
    fn a_mapped_upstream_counts_with_every_instance() {
        let job = parse_job(
            "m.yaml",
            "id: m\ntasks:\n  - id: list\n    image: i:1\n  - id: each\n    image: i:1\n    depends_on: [list]\n    for_each: \"{{ outputs.list.ids }}\"\n  - id: load\n    image: i:1\n    depends_on: [each]\n",
        )
        .unwrap();
        let mut current = states(&[
            ("list", TaskState::Success),
            ("each", TaskState::None),
            ("load", TaskState::None),
        ]);
        // The unexpanded instance is scheduled; its downstream waits for the expansion.
        resolve_waiting(&job, &mut current);
        assert_eq!(current["each"], TaskState::Scheduled);
        crate::mapping::expand(&mut current, "each", 3);
        assert!(resolve_waiting(&job, &mut current).is_empty());
        current.insert("each[0]".into(), TaskState::Success);
        current.insert("each[1]".into(), TaskState::Success);
        assert!(
            resolve_waiting(&job, &mut current).is_empty(),
            "one instance still runs"
        );
        current.insert("each[2]".into(), TaskState::Failed);
        assert_eq!(
            resolve_waiting(&job, &mut current),
            vec![("load".to_string(), TaskState::UpstreamFailed)]
        );
        // A failed mapped leaf fails the run; an empty list skips the task and the run
        // succeeds.
        assert_eq!(run_outcome(&job, &current), Some(RunState::Failed));
        let mut empty = states(&[
            ("list", TaskState::Success),
            ("each", TaskState::Scheduled),
            ("load", TaskState::None),
        ]);
        crate::mapping::expand(&mut empty, "each", 0);
        resolve_waiting(&job, &mut empty);
        assert_eq!(empty["load"], TaskState::Skipped);
        assert_eq!(run_outcome(&job, &empty), Some(RunState::Success));
    }

    #[test]
    fn priority_weight_sums_downstream_priorities() {
        let weights = priority_weights(&job());
        assert_eq!(weights["extract"], 5);
        assert_eq!(weights["t1"], 3);
        assert_eq!(weights["cleanup"], 1);
    }
}

/// Every trigger rule against a set of upstream outcome mixes: the rule's own state and
/// that of its `all_success` child, as Airflow's scheduler leaves them.
#[cfg(test)]
mod trigger_rule_table {
    use std::collections::HashMap;

    use chrono::{DateTime, Utc};

    use super::{resolve_waiting, resolve_waiting_in_order};
    use crate::job::parse_job;
    use crate::state::TaskState::{self, *};
    use crate::trigger::TriggerRule;

    const MIXES: [(&str, [TaskState; 2]); 11] = [
        ("all success", [Success, Success]),
        ("success+failed", [Success, Failed]),
        ("success+skipped", [Success, Skipped]),
        ("all skipped", [Skipped, Skipped]),
        ("all failed", [Failed, Failed]),
        ("failed+skipped", [Failed, Skipped]),
        ("upstream_failed+success", [UpstreamFailed, Success]),
        ("upstream_failed+skipped", [UpstreamFailed, Skipped]),
        ("upstream_failed+failed", [UpstreamFailed, Failed]),
        ("all upstream_failed", [UpstreamFailed, UpstreamFailed]),
        ("success+running", [Success, Running]),
    ];

    // R: the task runs (and, in this table, then succeeds), K: skipped, U: upstream_failed,
    // W: still waiting. One letter per mix, in the order of MIXES.
    const TABLE: [(&str, &str); 12] = [
        ("all_success", "RUKKUUUUUUW"),
        ("all_failed", "KKKKRKKKRRK"),
        ("all_done", "RRRRRRRRRRW"),
        ("all_done_min_one_success", "RRKKUKRKUUW"),
        ("all_skipped", "KKKRKKKKKKK"),
        ("one_success", "RRRKUURUUUR"),
        ("one_failed", "KRKKRRRRRRW"),
        ("one_done", "RRRKRRRKRKR"),
        ("none_failed", "RURRUUUUUUW"),
        ("none_failed_min_one_success", "RURKUUUUUUW"),
        ("none_skipped", "RRKKRKRKRRW"),
        ("always", "RRRRRRRRRRR"),
    ];

    fn letter(state: TaskState) -> char {
        match state {
            Scheduled => 'R',
            Skipped => 'K',
            UpstreamFailed => 'U',
            None => 'W',
            other => panic!("unexpected state {other}"),
        }
    }

    #[test]
    fn every_rule_against_every_mix_with_its_all_success_child() {
        assert_eq!(TABLE.len(), TriggerRule::ALL.len());
        for (rule, expected) in TABLE {
            let job = parse_job(
                "table.yaml",
                &format!(
                    "id: table\ntasks:\n  - id: u1\n    image: i:1\n  - id: u2\n    image: i:1\n  - id: task\n    image: i:1\n    depends_on: [u1, u2]\n    trigger_rule: {rule}\n  - id: child\n    image: i:1\n    depends_on: [task]\n"
                ),
            )
            .unwrap();
            for ((mix, [first, second]), expected) in MIXES.iter().zip(expected.chars()) {
                let mut states: HashMap<String, TaskState> = [
                    ("u1".to_string(), *first),
                    ("u2".to_string(), *second),
                    ("task".to_string(), None),
                    ("child".to_string(), None),
                ]
                .into();
                resolve_waiting(&job, &mut states);
                let task = states["task"];
                assert_eq!(letter(task), expected, "{rule} with {mix}");
                // The child, once the rule's task has run and succeeded (or at once when it
                // was skipped or upstream_failed).
                if task == Scheduled {
                    assert_eq!(
                        states["child"], None,
                        "{rule} with {mix}: child waits for its upstream"
                    );
                    states.insert("task".into(), Success);
                    resolve_waiting(&job, &mut states);
                }
                let child_expected = match expected {
                    'R' => Scheduled,
                    'K' => Skipped,
                    'U' => UpstreamFailed,
                    _ => None,
                };
                assert_eq!(
                    states["child"], child_expected,
                    "child of {rule} with {mix}"
                );
            }
        }
    }

    #[test]
    fn skips_and_failures_cascade_through_chains_in_one_pass() {
        let job = parse_job(
            "chain.yaml",
            "id: chain\ntasks:\n  - id: a\n    image: i:1\n  - id: b\n    image: i:1\n    depends_on: [a]\n  - id: c\n    image: i:1\n    depends_on: [b]\n  - id: d\n    image: i:1\n    depends_on: [c]\n    trigger_rule: all_done\n  - id: e\n    image: i:1\n    depends_on: [c]\n    trigger_rule: one_failed\n",
        )
        .unwrap();
        for (outcome, chained, one_failed) in [
            (Skipped, Skipped, Skipped),
            (Failed, UpstreamFailed, Scheduled),
        ] {
            let mut states: HashMap<String, TaskState> = [
                ("a", outcome),
                ("b", None),
                ("c", None),
                ("d", None),
                ("e", None),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
            resolve_waiting(&job, &mut states);
            assert_eq!(
                (states["b"], states["c"]),
                (chained, chained),
                "a {outcome}"
            );
            assert_eq!(
                states["d"], Scheduled,
                "all_done runs after a {outcome} chain"
            );
            assert_eq!(
                states["e"], one_failed,
                "one_failed after a {outcome} chain"
            );
        }
    }

    // Upstreams that end at different times: u1 ends first, u2 later. Letters as in TABLE,
    // from Airflow's `trigger_rule_dep.py` evaluated eagerly at each end (its scheduler
    // decides a task the moment its upstreams' states decide it).
    const TIMED: [(&str, [TaskState; 2]); 8] = [
        ("early skip, late failure", [Skipped, Failed]),
        ("early failure, late skip", [Failed, Skipped]),
        (
            "early skip, late upstream_failed",
            [Skipped, UpstreamFailed],
        ),
        (
            "early upstream_failed, late skip",
            [UpstreamFailed, Skipped],
        ),
        ("early success, late failure", [Success, Failed]),
        ("early failure, late success", [Failed, Success]),
        ("early skip, late success", [Skipped, Success]),
        ("early success, late skip", [Success, Skipped]),
    ];
    const TIMED_TABLE: [(&str, &str); 12] = [
        ("all_success", "KUKUUUKK"),
        ("all_failed", "KKKKKKKK"),
        ("all_done", "RRRRRRRR"),
        ("all_done_min_one_success", "KKKKRRKK"),
        ("all_skipped", "KKKKKKKK"),
        ("one_success", "UUUURRRR"),
        ("one_failed", "RRRRRRKK"),
        ("one_done", "RRKKRRRR"),
        ("none_failed", "UUUUUURR"),
        ("none_failed_min_one_success", "UUUUUURR"),
        ("none_skipped", "KKKKRRKK"),
        ("always", "RRRRRRRR"),
    ];

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap()
    }

    /// Every rule with upstreams ending at different times decides what Airflow decides,
    /// whether the scheduler saw each end as it happened or both in one pass (a slow pass,
    /// a scheduler restarted in between): only `all_success` depends on the order, and
    /// there the first of the skip and the failure to end wins. The `all_success` child
    /// follows.
    #[test]
    fn upstreams_ending_at_different_times_decide_as_airflow_eagerly_does() {
        assert_eq!(TIMED_TABLE.len(), TriggerRule::ALL.len());
        for (rule, expected) in TIMED_TABLE {
            let job = parse_job(
                "timed.yaml",
                &format!(
                    "id: timed\ntasks:\n  - id: u1\n    image: i:1\n  - id: u2\n    image: i:1\n  - id: task\n    image: i:1\n    depends_on: [u1, u2]\n    trigger_rule: {rule}\n  - id: child\n    image: i:1\n    depends_on: [task]\n"
                ),
            )
            .unwrap();
            for ((mix, [first, second]), expected) in TIMED.iter().zip(expected.chars()) {
                let start: HashMap<String, TaskState> = [
                    ("u1".to_string(), Running),
                    ("u2".to_string(), Running),
                    ("task".to_string(), None),
                    ("child".to_string(), None),
                ]
                .into();
                // Seen as each ended.
                let mut stepwise = start.clone();
                let mut ended = HashMap::new();
                stepwise.insert("u1".into(), *first);
                ended.insert("u1".to_string(), at(1));
                resolve_waiting_in_order(&job, &mut stepwise, &mut ended);
                if stepwise["task"] == None {
                    stepwise.insert("u2".into(), *second);
                    ended.insert("u2".to_string(), at(2));
                    resolve_waiting_in_order(&job, &mut stepwise, &mut ended);
                }
                // Both seen in one pass.
                let mut batched = start.clone();
                batched.insert("u1".into(), *first);
                batched.insert("u2".into(), *second);
                let mut ended: HashMap<String, DateTime<Utc>> =
                    [("u1".to_string(), at(1)), ("u2".to_string(), at(2))].into();
                resolve_waiting_in_order(&job, &mut batched, &mut ended);
                for (how, states) in [("as they ended", stepwise), ("in one pass", batched)] {
                    assert_eq!(
                        letter(states["task"]),
                        expected,
                        "{rule}, {mix}, seen {how}"
                    );
                    let child = match expected {
                        'K' => Skipped,
                        'U' => UpstreamFailed,
                        _ => None,
                    };
                    assert_eq!(states["child"], child, "child of {rule}, {mix}, seen {how}");
                }
            }
        }
    }

    /// The order holds down a chain decided in the same pass: a skip that reached `a` at
    /// second 1 (through its skipped upstream) and a failure at second 2 make `joined`
    /// skipped; the failure at second 0 makes it upstream_failed. Ending at the same moment,
    /// the failure wins, as in Airflow when both are seen together.
    #[test]
    fn the_order_of_ends_holds_through_a_cascade_in_one_pass() {
        let job = parse_job(
            "cascade.yaml",
            "id: cascade\ntasks:\n  - id: gate\n    image: i:1\n  - id: a\n    image: i:1\n    depends_on: [gate]\n  - id: broken\n    image: i:1\n  - id: joined\n    image: i:1\n    depends_on: [a, broken]\n  - id: after\n    image: i:1\n    depends_on: [joined]\n",
        )
        .unwrap();
        for (broken_at, expected) in [(2, Skipped), (0, UpstreamFailed), (1, UpstreamFailed)] {
            let mut states: HashMap<String, TaskState> = [
                ("gate".to_string(), Skipped),
                ("a".to_string(), None),
                ("broken".to_string(), Failed),
                ("joined".to_string(), None),
                ("after".to_string(), None),
            ]
            .into();
            let mut ended: HashMap<String, DateTime<Utc>> = [
                ("gate".to_string(), at(1)),
                ("broken".to_string(), at(broken_at)),
            ]
            .into();
            resolve_waiting_in_order(&job, &mut states, &mut ended);
            assert_eq!(states["a"], Skipped);
            assert_eq!(ended["a"], at(1), "a was skipped when gate was");
            assert_eq!(
                (states["joined"], states["after"]),
                (expected, expected),
                "broken failed at second {broken_at}"
            );
        }
    }
}
