//! Property tests of the scheduling rules as the scheduler composes them, on random jobs:
//! random DAGs with random trigger rules, retries, pools and priorities, several runs at
//! once, random try outcomes, mapped tasks (`for_each`, some over empty lists, some with
//! `max_active`). Every run terminates; no task instance starts unless its trigger rule
//! holds over its upstreams (every instance of a mapped one); pool slots,
//! `max_active_tasks` and `max_active` are never exceeded.

use std::collections::HashMap;

use chrono::TimeZone;
use proptest::prelude::*;
use stevedore_domain::job::{parse_job, Job};
use stevedore_domain::limits::{select, Candidate, Capacity};
use stevedore_domain::mapping::{self, ForEach};
use stevedore_domain::run::{priority_weights, resolve_waiting, run_outcome};
use stevedore_domain::state::{state_after_try, FailureReason, RunState, TaskState, TryOutcome};
use stevedore_domain::trigger::TriggerRule;

/// xorshift64*: the whole scenario follows from one seed, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const POOLS: [(&str, i64); 3] = [("default", 3), ("api", 2), ("warehouse", 4)];

fn random_job(rng: &mut Rng) -> Job {
    let tasks = 1 + rng.below(8) as usize;
    let max_active_tasks = 1 + rng.below(4);
    let mut text = format!("id: random\nmax_active_tasks: {max_active_tasks}\ntasks:\n");
    for index in 0..tasks {
        let upstreams: Vec<String> = (0..index)
            .filter(|_| rng.below(10) < 4)
            .map(|u| format!("t{u}"))
            .collect();
        let rule = TriggerRule::ALL[rng.below(TriggerRule::ALL.len() as u64) as usize];
        let (pool, _) = POOLS[rng.below(POOLS.len() as u64) as usize];
        text += &format!(
            "  - id: t{index}\n    image: i:1\n    depends_on: [{}]\n    trigger_rule: {rule}\n    retries: {}\n    pool: {pool}\n    pool_slots: {}\n    priority: {}\n",
            upstreams.join(", "),
            rng.below(3),
            1 + rng.below(2),
            1 + rng.below(5),
        );
        if rng.below(3) == 0 {
            let items: Vec<String> = (0..rng.below(6)).map(|i| i.to_string()).collect();
            text += &format!("    for_each: [{}]\n", items.join(", "));
            if rng.below(2) == 0 {
                text += &format!("    max_active: {}\n", 1 + rng.below(3));
            }
        }
    }
    parse_job("random.yaml", &text).expect("generated job is valid")
}

/// When each rule lets a task start, written from Airflow's documentation of the rules
/// (independently of `trigger::evaluate`, which the scheduler uses).
fn may_start(rule: TriggerRule, upstream: &[TaskState]) -> bool {
    use TaskState::*;
    let count = |wanted: &[TaskState]| upstream.iter().filter(|s| wanted.contains(s)).count();
    let all = |wanted: &[TaskState]| count(wanted) == upstream.len();
    let finished = all(&[Success, Failed, UpstreamFailed, Skipped, Removed]);
    match rule {
        TriggerRule::AllSuccess => all(&[Success]),
        TriggerRule::AllFailed => all(&[Failed, UpstreamFailed]),
        TriggerRule::AllDone => finished,
        TriggerRule::AllDoneMinOneSuccess => {
            finished && count(&[Skipped]) == 0 && count(&[Success]) > 0
        }
        TriggerRule::AllSkipped => all(&[Skipped]),
        TriggerRule::OneSuccess => count(&[Success]) > 0,
        TriggerRule::OneFailed => count(&[Failed, UpstreamFailed]) > 0,
        TriggerRule::OneDone => count(&[Success, Failed]) > 0,
        TriggerRule::NoneFailed => finished && count(&[Failed, UpstreamFailed]) == 0,
        TriggerRule::NoneFailedMinOneSuccess => {
            finished && count(&[Failed, UpstreamFailed]) == 0 && count(&[Success]) > 0
        }
        TriggerRule::NoneSkipped => finished && count(&[Skipped]) == 0,
        TriggerRule::Always => true,
    }
}

struct Run {
    states: HashMap<String, TaskState>,
    failures: HashMap<String, u32>,
    outcome: Option<RunState>,
}

fn simulate(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let job = random_job(&mut rng);
    let weights = priority_weights(&job);
    let run_count = 1 + rng.below(3) as usize;
    let mut runs: Vec<Run> = (0..run_count)
        .map(|_| Run {
            states: job
                .tasks
                .iter()
                .map(|t| (t.id.clone(), TaskState::None))
                .collect(),
            failures: HashMap::new(),
            outcome: None,
        })
        .collect();
    let logical = chrono::Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();

    for _step in 0..10_000 {
        // The scheduler's pass over each run.
        for run in runs.iter_mut().filter(|r| r.outcome.is_none()) {
            for state in run.states.values_mut() {
                if *state == TaskState::UpForRetry {
                    *state = TaskState::Scheduled;
                }
            }
            loop {
                resolve_waiting(&job, &mut run.states);
                let expand: Vec<(String, u32)> = mapping::to_expand(&job, &run.states)
                    .into_iter()
                    .map(|task| match &task.for_each {
                        Some(ForEach::Literal(items)) => (task.id.clone(), items.len() as u32),
                        _ => unreachable!("the generated jobs map over lists"),
                    })
                    .collect();
                if expand.is_empty() {
                    break;
                }
                for (task_id, count) in expand {
                    mapping::expand(&mut run.states, &task_id, count);
                }
            }
            run.outcome = run_outcome(&job, &run.states);
        }
        if runs.iter().all(|r| r.outcome.is_some()) {
            return Ok(());
        }

        // Free capacity, from what runs now.
        let mut capacity = Capacity::default();
        for (pool, slots) in POOLS {
            capacity.pools.insert(pool.to_owned(), slots);
        }
        capacity
            .jobs
            .insert(job.id.clone(), i64::from(job.max_active_tasks));
        let mut candidates = Vec::new();
        for (index, run) in runs.iter().enumerate() {
            for (key, state) in &run.states {
                if *state == TaskState::Running {
                    let task = job.task_of(key).unwrap();
                    *capacity.pools.get_mut(&task.pool).unwrap() -= i64::from(task.pool_slots);
                    *capacity.jobs.get_mut(&job.id).unwrap() -= 1;
                }
            }
            if run.outcome.is_some() {
                continue;
            }
            for key in mapping::startable(&job, &run.states) {
                let task = job.task_of(&key).unwrap();
                candidates.push(Candidate {
                    run_id: index.to_string(),
                    task_id: key.clone(),
                    job_id: job.id.clone(),
                    pool: task.pool.clone(),
                    pool_slots: i64::from(task.pool_slots),
                    weight: weights[&task.id],
                    logical_date: logical + chrono::TimeDelta::days(index as i64),
                });
            }
        }
        let (picked, _) = select(candidates, &mut capacity);
        for candidate in &picked {
            let run = &mut runs[candidate.run_id.parse::<usize>().unwrap()];
            let task = job.task_of(&candidate.task_id).unwrap();
            prop_assert!(
                task.for_each.is_none() || candidate.task_id != task.id,
                "{} started unexpanded",
                task.id
            );
            // Its trigger rule holds over its upstreams (every instance) right now.
            let by_task = mapping::instances_by_task(&run.states);
            let upstream: Vec<TaskState> = task
                .depends_on
                .iter()
                .flat_map(|u| mapping::states_of(&by_task, &run.states, u).collect::<Vec<_>>())
                .collect();
            prop_assert!(
                upstream.is_empty() || may_start(task.trigger_rule, &upstream),
                "{} ({}) started with upstreams {:?}",
                candidate.task_id,
                task.trigger_rule,
                upstream
            );
            run.states
                .insert(candidate.task_id.clone(), TaskState::Running);
        }

        // Caps hold with everything that runs now.
        let mut used: HashMap<&str, i64> = HashMap::new();
        let mut active = 0;
        for run in &runs {
            let mut per_task: HashMap<&str, u32> = HashMap::new();
            for (key, state) in &run.states {
                if *state == TaskState::Running {
                    let task = job.task_of(key).unwrap();
                    *used.entry(task.pool.as_str()).or_default() += i64::from(task.pool_slots);
                    *per_task.entry(task.id.as_str()).or_default() += 1;
                    active += 1;
                }
            }
            for (task_id, running) in per_task {
                if let Some(limit) = job.task(task_id).unwrap().max_active {
                    prop_assert!(
                        running <= limit,
                        "{} instances of {} run at once, over max_active {}",
                        running,
                        task_id,
                        limit
                    );
                }
            }
        }
        for (pool, slots) in POOLS {
            prop_assert!(
                used.get(pool).copied().unwrap_or(0) <= slots,
                "pool {} over its {} slots",
                pool,
                slots
            );
        }
        prop_assert!(
            active <= job.max_active_tasks,
            "{} active over max_active_tasks {}",
            active,
            job.max_active_tasks
        );

        // Some running tries end, each with a random outcome.
        for run in runs.iter_mut() {
            let mut running: Vec<String> = run
                .states
                .iter()
                .filter(|(_, state)| **state == TaskState::Running)
                .map(|(key, _)| key.clone())
                .collect();
            running.sort();
            for key in running {
                if rng.below(2) == 0 {
                    continue;
                }
                let task = job.task_of(&key).unwrap();
                let outcome = match rng.below(10) {
                    0..=5 => TryOutcome::Success,
                    6 => TryOutcome::Skipped,
                    _ => TryOutcome::Failed(FailureReason::ExitCode(1)),
                };
                let failures = run.failures.entry(key.clone()).or_default();
                *failures += u32::from(matches!(outcome, TryOutcome::Failed(_)));
                let next = state_after_try(&outcome, *failures, task.retry.retries);
                run.states.insert(key, next);
            }
        }
    }
    Err(TestCaseError::fail(format!(
        "runs did not terminate: {:?}",
        runs.iter().map(|r| &r.states).collect::<Vec<_>>()
    )))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn every_run_terminates_in_order_and_within_its_caps(seed in any::<u64>()) {
        simulate(seed)?;
    }
}
