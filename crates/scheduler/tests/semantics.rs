//! Scheduling semantics through a real scheduler on a real SQLite store: sensors, retries
//! across a restart, pools, limits, pausing, `depends_on_past`, edited jobs, skips and
//! templates. The tries are played by scripted backends on a manual clock
//! ([`Harness::scripted`]): the job files are written for the synth integration, whose
//! modes the scripted backend plays, and no test waits for real time to pass. The rules are
//! the scheduler's, whatever runs the try; that real backends run tries as these scripts
//! do is the backend contract suite's part (`tests/e2e/backends.rs`).

use std::time::Duration;

use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

fn process_task(id: &str, args: &str, extra: &str) -> String {
    format!("  - id: {id}\n    backend: process\n    command: [synth]\n    args: {args}\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_is_rescheduled_until_ready_without_spending_retries() {
    let job = format!(
        "id: sensing\ntasks:\n{}",
        process_task(
            "wait_for_file",
            "[sensor, --ready-on-try, 3]",
            "    reschedule_interval: 1s\n    retries: 0\n"
        )
    );
    let harness = Harness::scripted(&[("sensing.yaml", &job)]).await;
    let run = harness.trigger("sensing").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "wait_for_file").await;
    let states: Vec<TryState> = tries.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TryState::Reschedule,
            TryState::Reschedule,
            TryState::Success
        ]
    );
    assert_eq!(tries[0].exit_code, Some(75));
    // Each reschedule waited reschedule_interval.
    for pair in tries.windows(2) {
        let gap = pair[1].started_at - pair[0].ended_at.unwrap();
        assert!(
            gap >= chrono::TimeDelta::milliseconds(990),
            "rescheduled after {gap}"
        );
    }
    assert_eq!(
        harness.log_lines(&tries[2]).await,
        vec![("stdout".to_owned(), "ready on try 3".to_owned())]
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_fails_without_retry_once_its_sensor_timeout_has_passed() {
    let job = format!(
        "id: impatient\ntasks:\n{}",
        process_task(
            "never_ready",
            "[sensor, --ready-on-try, 1000]",
            "    reschedule_interval: 1s\n    sensor_timeout: 2s\n    retries: 3\n"
        )
    );
    let harness = Harness::scripted(&[("impatient.yaml", &job)]).await;
    let run = harness.trigger("impatient").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    assert_eq!(instances[0].state, TaskState::Failed);
    let tries = harness.tries(&run.run_id, "never_ready").await;
    // Tried at 0 s, 1 s, 2 s (give or take): the one ending past 2 s fails the sensor.
    assert!((2..=5).contains(&tries.len()), "{} tries", tries.len());
    assert!(tries
        .iter()
        .all(|t| t.state == TryState::Reschedule && t.exit_code == Some(75)));
    let span = tries.last().unwrap().ended_at.unwrap() - tries[0].started_at;
    assert!(span >= chrono::TimeDelta::seconds(2), "failed after {span}");
    harness.stop().await;
}

/// The next try time is stored: a scheduler restarted during the wait neither runs the retry
/// early nor forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_wait_survives_a_scheduler_restart() {
    let job = format!(
        "id: patient_retry\ntasks:\n{}",
        process_task(
            "flaky",
            "[flaky, --fail-until-try, 2]",
            "    retries: 2\n    retry_delay: 4s\n    retry_exponential_backoff: true\n"
        )
    );
    let harness = Harness::scripted(&[("retry.yaml", &job)]).await;
    let run = harness.trigger("patient_retry").await;
    let deadline = tokio::time::Instant::now() + MINUTE;
    let waiting = loop {
        let ti = harness
            .store
            .task_instances(&run.run_id)
            .await
            .unwrap()
            .remove(0);
        if ti.state == TaskState::UpForRetry {
            break ti;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ti:?}");
        harness.pass_time(Duration::from_millis(50)).await;
    };
    let first = harness.tries(&run.run_id, "flaky").await.remove(0);
    let next_try_at = waiting.next_try_at.expect("stored next try time");
    // Airflow's formula for the first retry: between retry_delay and twice it.
    let wait = next_try_at - first.ended_at.unwrap();
    assert!(
        wait >= chrono::TimeDelta::seconds(4) && wait < chrono::TimeDelta::seconds(8),
        "waits {wait}"
    );

    let harness = harness.restart().await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "flaky").await;
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].started_at >= next_try_at,
        "retried at {} before {next_try_at}",
        tries[1].started_at
    );
    assert!(
        tries[1].started_at - next_try_at < chrono::TimeDelta::seconds(3),
        "retry came late"
    );
    harness.stop().await;
}

/// The most tries that ran at the same moment.
fn max_overlap(tries: &[stevedore_store::TryRecord]) -> usize {
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for attempt in tries {
        edges.push((attempt.started_at, 1));
        edges.push((attempt.ended_at.expect("ended"), -1));
    }
    // Ends before starts at the same instant: touching is not overlapping.
    edges.sort_by_key(|(time, delta)| (*time, *delta));
    let (mut current, mut most) = (0, 0);
    for (_, delta) in edges {
        current += delta;
        most = most.max(current);
    }
    most as usize
}

async fn all_tries(harness: &Harness, run_id: &str) -> Vec<stevedore_store::TryRecord> {
    let mut tries = Vec::new();
    for ti in harness.store.task_instances(run_id).await.unwrap() {
        tries.extend(harness.tries(run_id, &ti.task_id).await);
    }
    tries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_two_slots_never_runs_three_and_priority_orders_the_queue() {
    // t3 sleeps 3 s, the others 1 s, so no two tries end in the same instant: each freed
    // slot goes to one waiting task, and the order of starts is the priority order (two
    // tasks queued in one pass would start in whichever order their processes spawn).
    let mut tasks = String::new();
    for (index, (priority, seconds)) in [(1, 1), (9, 1), (5, 1), (7, 3), (3, 1)].iter().enumerate()
    {
        tasks += &process_task(
            &format!("t{index}"),
            &format!("[sleep, --seconds, {seconds}]"),
            &format!("    pool: narrow\n    priority: {priority}\n"),
        );
    }
    let job = format!("id: pooled\ntasks:\n{tasks}");
    let harness = Harness::scripted(&[("pooled.yaml", &job)]).await;
    harness
        .store
        .set_pool(&stevedore_store::PoolRecord {
            name: "narrow".into(),
            slots: 2,
            description: String::new(),
        })
        .await
        .unwrap();
    let run = harness.trigger("pooled").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let mut tries = all_tries(&harness, &run.run_id).await;
    assert_eq!(tries.len(), 5);
    assert_eq!(max_overlap(&tries), 2);
    tries.sort_by_key(|t| t.started_at);
    let order: Vec<&str> = tries.iter().map(|t| t.task_id.as_str()).collect();
    // Two start at once (t1 weight 9, t3 weight 7); t1's slot goes to t2 (weight 5) at 1 s,
    // t2's to t4 (weight 3) at 2 s, t3's to t0 (weight 1) at 3 s.
    assert_eq!(&order[2..], ["t2", "t4", "t0"], "{order:?}");
    assert_eq!(
        order[..2]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        ["t1", "t3"].into()
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_tasks_caps_a_jobs_running_task_instances() {
    let mut tasks = String::new();
    for index in 0..4 {
        tasks += &process_task(&format!("t{index}"), "[sleep, --seconds, 1]", "");
    }
    let job = format!("id: capped\nmax_active_tasks: 2\ntasks:\n{tasks}");
    let harness = Harness::scripted(&[("capped.yaml", &job)]).await;
    let run = harness.trigger("capped").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    assert_eq!(max_overlap(&all_tries(&harness, &run.run_id).await), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_runs_keeps_extra_runs_queued_in_order() {
    let job = format!(
        "id: one_at_a_time\nmax_active_runs: 1\ntasks:\n{}",
        process_task("t", "[sleep, --seconds, 1]", "")
    );
    let harness = Harness::scripted(&[("one.yaml", &job)]).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(harness.trigger("one_at_a_time").await);
    }
    // While the first runs, the others wait queued.
    harness.pass_time(Duration::from_millis(500)).await;
    let states: Vec<RunState> =
        futures_util::future::join_all(runs.iter().map(|r| harness.store.get_run(&r.run_id)))
            .await
            .into_iter()
            .map(|r| r.unwrap().state)
            .collect();
    assert_eq!(
        states,
        [RunState::Running, RunState::Queued, RunState::Queued]
    );
    let mut finished = Vec::new();
    for run in &runs {
        finished.push(harness.wait_run(&run.run_id, MINUTE).await);
    }
    for pair in finished.windows(2) {
        assert!(
            pair[1].started_at.unwrap() >= pair[0].ended_at.unwrap(),
            "runs overlapped: {pair:#?}"
        );
    }
    assert!(finished.iter().all(|r| r.state == RunState::Success));
    harness.stop().await;
}

/// A paused job makes no scheduled runs; unpaused, it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_makes_no_scheduled_runs_until_unpaused() {
    let start = chrono::Utc::now().date_naive() - chrono::Days::new(2);
    let job = format!(
        "id: pausable\nschedule: \"@daily\"\nstart_date: {start}\ncatchup: true\ntasks:\n{}",
        process_task("t", "[noop]", "")
    );
    // The job is recorded paused before any scheduler runs (as `jobs pause` leaves it).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs").join("pausable.yaml");
    {
        use stevedore_store::Store;
        let store = stevedore_store::SqliteStore::open(dir.path().join("stevedore.db"))
            .await
            .unwrap();
        let parsed = stevedore_domain::job::parse_job("pausable.yaml", &job).unwrap();
        store
            .upsert_job(
                "pausable",
                &parsed.version,
                &path.display().to_string(),
                &job,
            )
            .await
            .unwrap();
        store.set_paused("pausable", true).await.unwrap();
    }
    let harness = Harness::scripted_in(dir).await;
    std::fs::write(&path, &job).unwrap();
    // Several job-folder syncs later: still nothing.
    harness.pass_time(Duration::from_secs(3)).await;
    assert!(harness
        .store
        .list_runs(&Default::default())
        .await
        .unwrap()
        .is_empty());
    harness.store.set_paused("pausable", false).await.unwrap();
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let runs = harness.store.list_runs(&Default::default()).await.unwrap();
        if runs.len() == 2 && runs.iter().all(|r| r.state == RunState::Success) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{runs:#?}");
        harness.pass_time(Duration::from_millis(200)).await;
    }
    harness.stop().await;
}

/// `depends_on_past`: a task never runs while the same task failed in the job's previous
/// run (the run fails as deadlocked, as in Airflow); cleared, both run in order. (The scheduler also makes the job's
/// latest scheduled run, which waits on these in turn: hence three active runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_past_waits_for_the_previous_runs_task() {
    let flag = tempfile::tempdir().unwrap();
    let ok = flag.path().join("ok");
    let job = format!(
        "id: past\nschedule: \"@daily\"\nstart_date: 2024-01-01\nmax_active_runs: 3\ntasks:\n  - id: check\n    backend: process\n    command: [/bin/sh, -c, \"test -e {}\"]\n    depends_on_past: true\n",
        ok.display()
    );
    let harness = Harness::scripted(&[("past.yaml", &job)]).await;
    // What the task's command does: `test -e` the flag.
    let flag_path = ok.clone();
    harness.script("check", move |_| {
        Play::exit(if flag_path.exists() { 0 } else { 1 })
    });
    let loaded = stevedore_ops::jobs_dir::load_jobs_dir(&harness.jobs_dir());
    let job = loaded.get("past").unwrap().job.clone();
    harness
        .store
        .upsert_job(
            "past",
            &job.version,
            "past.yaml",
            &loaded.get("past").unwrap().source,
        )
        .await
        .unwrap();
    let mut runs = Vec::new();
    for interval in job
        .timetable
        .intervals_from(job.timetable.start_date.unwrap(), 2)
    {
        let new = stevedore_ops::runs::new_run(
            &job,
            stevedore_domain::state::RunTrigger::Backfill,
            interval.start,
            interval,
            job.params.clone(),
        );
        runs.push(harness.store.create_run(new).await.unwrap());
    }
    let first = harness.wait_run(&runs[0].run_id, MINUTE).await;
    assert_eq!(first.state, RunState::Failed);
    // The second run can never go on: a deadlock, which fails it without a try.
    let second = harness.wait_run(&runs[1].run_id, MINUTE).await;
    assert_eq!(second.state, RunState::Failed);
    assert!(
        harness.tries(&runs[1].run_id, "check").await.is_empty(),
        "ran although the previous run's task failed"
    );
    assert_eq!(
        harness.store.task_instances(&runs[1].run_id).await.unwrap()[0].state,
        TaskState::Scheduled
    );

    std::fs::write(&ok, "").unwrap();
    harness
        .store
        .clear_task_instances(&runs[0].run_id, &["check".to_owned()])
        .await
        .unwrap();
    harness
        .store
        .clear_task_instances(&runs[1].run_id, &["check".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        harness.wait_run(&runs[0].run_id, MINUTE).await.state,
        RunState::Success
    );
    assert_eq!(
        harness.wait_run(&runs[1].run_id, MINUTE).await.state,
        RunState::Success
    );
    let second = harness.tries(&runs[1].run_id, "check").await;
    let first_retry = harness.tries(&runs[0].run_id, "check").await.pop().unwrap();
    assert!(second[0].started_at >= first_retry.ended_at.unwrap());
    harness.stop().await;
}

/// Editing a job file while runs exist: a running run keeps its version; a run that had
/// not started follows the new file, where a removed task is `removed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_job_keeps_running_runs_on_their_version() {
    let v1 = format!(
        "id: evolving\nmax_active_runs: 1\ntasks:\n{}{}",
        process_task("slow", "[sleep, --seconds, 3]", ""),
        process_task("old_step", "[noop]", "    depends_on: [slow]\n")
    );
    let v2 = format!(
        "id: evolving\nmax_active_runs: 1\ntasks:\n{}{}",
        process_task("slow", "[sleep, --seconds, 1]", ""),
        process_task("new_step", "[noop]", "    depends_on: [slow]\n")
    );
    let harness = Harness::scripted(&[("evolving.yaml", &v1)]).await;
    let running = harness.trigger("evolving").await;
    let waiting = harness.trigger("evolving").await;
    harness.pass_time(Duration::from_millis(500)).await;
    std::fs::write(harness.jobs_dir().join("evolving.yaml"), &v2).unwrap();
    let running = harness.wait_run(&running.run_id, MINUTE).await;
    let waiting = harness.wait_run(&waiting.run_id, MINUTE).await;
    assert_eq!(
        (running.state, waiting.state),
        (RunState::Success, RunState::Success)
    );
    assert_ne!(running.job_version, waiting.job_version);
    let states = |instances: Vec<stevedore_store::TaskInstanceRecord>| -> Vec<(String, TaskState)> {
        instances
            .into_iter()
            .map(|ti| (ti.task_id, ti.state))
            .collect()
    };
    assert_eq!(
        states(harness.store.task_instances(&running.run_id).await.unwrap()),
        [
            ("slow".to_owned(), TaskState::Success),
            ("old_step".to_owned(), TaskState::Success)
        ]
    );
    assert_eq!(
        states(harness.store.task_instances(&waiting.run_id).await.unwrap()),
        [
            ("slow".to_owned(), TaskState::Success),
            ("old_step".to_owned(), TaskState::Removed),
            ("new_step".to_owned(), TaskState::Success)
        ]
    );
    harness.stop().await;
}

/// Security review, finding 9: an upstream output chose the image that received the task's
/// connections. With `allowed_images`, an image outside the list fails the try, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_cannot_choose_an_image_outside_allowed_images() {
    let job = r#"id: chooser
allowed_images: [stevedore/synth]
tasks:
  - id: pick
    backend: process
    command: [/bin/sh, -c, "echo '{\"type\":\"output\",\"key\":\"image\",\"value\":\"evil.example/thief:1\"}'"]
  - id: use
    depends_on: [pick]
    image: "{{ outputs.pick.image }}"
    args: [noop]
    retries: 0
"#;
    let harness = Harness::scripted(&[("chooser.yaml", job)]).await;
    // What `pick`'s command prints.
    harness.script("pick", |_| {
        Play::exit(0).stdout(r#"{"type":"output","key":"image","value":"evil.example/thief:1"}"#)
    });
    let run = harness.trigger("chooser").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let tries = harness.tries(&run.run_id, "use").await;
    assert_eq!(tries.len(), 1);
    let reason = tries[0].failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains(
            "`evil.example/thief:1` is not among the job's allowed_images (stevedore/synth)"
        ),
        "{reason}"
    );
    assert!(tries[0].container_id.is_none(), "no container was started");
    harness.stop().await;
}

/// Exit 99 marks the try `skipped`; the skip flows on through `all_success` children and
/// the run still succeeds (its leaves are all skipped or successful). Templates reach
/// `env` and `image` too (the image a try is launched with is the rendered one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_99_skips_and_templates_reach_env_and_image() {
    let job = format!(
        "id: skipping\nparams: {{tag: \"0.1.0\", greeting: hello}}\nallowed_images: [stevedore/synth]\ntasks:\n{}{}{}  - id: templated\n    image: \"stevedore/synth:{{{{ params.tag }}}}\"\n    args: [noop]\n  - id: env_check\n    backend: process\n    command: [/bin/sh, -c, 'echo \"$GREETING for $DAY\"']\n    env: {{GREETING: \"{{{{ params.greeting }}}}\", DAY: \"{{{{ data_interval_start }}}}\"}}\n",
        process_task("gate", "[exit, --code, 99]", ""),
        process_task("after_gate", "[noop]", "    depends_on: [gate]\n"),
        process_task("cleanup", "[noop]", "    depends_on: [after_gate]\n    trigger_rule: all_done\n"),
    );
    let harness = Harness::scripted(&[("skipping.yaml", &job)]).await;
    // What `env_check`'s command prints: its environment as the try was given it.
    harness.script("env_check", |spec| {
        Play::exit(0).stdout(format!("{} for {}", spec.env["GREETING"], spec.env["DAY"]))
    });
    let run = harness.trigger("skipping").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let states: Vec<(String, TaskState)> = harness
        .store
        .task_instances(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| (ti.task_id, ti.state))
        .collect();
    assert_eq!(
        states,
        [
            ("gate".to_owned(), TaskState::Skipped),
            ("after_gate".to_owned(), TaskState::Skipped),
            ("cleanup".to_owned(), TaskState::Success),
            ("templated".to_owned(), TaskState::Success),
            ("env_check".to_owned(), TaskState::Success),
        ]
    );
    let gate = harness.tries(&run.run_id, "gate").await;
    assert_eq!(
        (gate[0].state, gate[0].exit_code),
        (TryState::Skipped, Some(99))
    );
    assert!(harness.tries(&run.run_id, "after_gate").await.is_empty());
    assert_eq!(
        harness.tries(&run.run_id, "templated").await[0].image_ref,
        "stevedore/synth:0.1.0"
    );
    let env_check = &harness.tries(&run.run_id, "env_check").await[0];
    let expected = format!(
        "hello for {}",
        stevedore_domain::protocol::rfc3339(run.data_interval.start)
    );
    assert_eq!(
        harness.log_lines(env_check).await,
        vec![("stdout".to_owned(), expected)]
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_integration_calls_final_is_tried_once_whatever_its_retries() {
    let retried = "    retries: 2\n    retry_delay: 1s\n";
    let job = format!(
        "id: classified\ntasks:\n{}{}{}",
        process_task(
            "refused",
            "[fail, --message, '401 from /v1/charges: the token was refused', --not-retryable]",
            retried
        ),
        process_task("misconfigured", "[exit, --code, 78]", retried),
        process_task(
            "flaky_api",
            "[fail, --message, '503 from /v1/charges']",
            retried
        ),
    );
    let harness = Harness::scripted(&[("classified.yaml", &job)]).await;
    let run = harness.trigger("classified").await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let refused = harness.tries(&run.run_id, "refused").await;
    assert_eq!(refused.len(), 1, "not retried: {refused:?}");
    assert_eq!(refused[0].exit_code, Some(78));
    assert_eq!(
        refused[0].failure_reason.as_deref(),
        Some("not retryable: 401 from /v1/charges: the token was refused (exit_code: 78)")
    );
    let misconfigured = harness.tries(&run.run_id, "misconfigured").await;
    assert_eq!(misconfigured.len(), 1, "not retried: {misconfigured:?}");
    assert_eq!(
        misconfigured[0].failure_reason.as_deref(),
        Some("not retryable: configuration error (EX_CONFIG) (exit_code: 78)")
    );
    // A failure the integration explains but does not call final is retried by policy,
    // and its words are every try's reason.
    let flaky = harness.tries(&run.run_id, "flaky_api").await;
    assert_eq!(flaky.len(), 3, "{flaky:?}");
    for attempt in &flaky {
        assert_eq!(
            attempt.failure_reason.as_deref(),
            Some("error: 503 from /v1/charges (exit_code: 1)")
        );
    }
    let states: Vec<(String, TaskState)> = harness
        .store
        .task_instances(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| (ti.task_id, ti.state))
        .collect();
    assert!(
        states.iter().all(|(_, s)| *s == TaskState::Failed),
        "{states:?}"
    );
    harness.stop().await;
}

/// Which outcome wins when a task's upstreams finish at different times, as Airflow's
/// `trigger_rule_dep.py` decides it: `all_success` is decided the moment one upstream is
/// skipped or failed, so the first of the two to happen wins (docs/semantics.md's example).
/// An early skip and a late `upstream_failed`: `report` is `skipped` (and `publish` too); an
/// early failure and a late skip: `upstream_failed` (and `publish` too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_upstream_to_end_decides_an_all_success_task() {
    for (gate_seconds, extract_seconds, report, publish, outcome) in [
        (
            0,
            3,
            TaskState::Skipped,
            TaskState::Skipped,
            RunState::Success,
        ),
        (
            3,
            0,
            TaskState::UpstreamFailed,
            TaskState::UpstreamFailed,
            RunState::Failed,
        ),
    ] {
        let job = format!(
            "id: timing\ntasks:\n{}{}{}{}{}",
            process_task("gate", "[exit, --code, 99]", ""),
            process_task("extract", "[exit, --code, 1]", ""),
            process_task("load", "[noop]", "    depends_on: [extract]\n"),
            process_task("report", "[noop]", "    depends_on: [gate, load]\n"),
            process_task("publish", "[noop]", "    depends_on: [report]\n"),
        );
        let harness = Harness::scripted(&[("timing.yaml", &job)]).await;
        harness.script("gate", move |_| {
            Play::exit(99).lasting(Duration::from_secs(gate_seconds))
        });
        harness.script("extract", move |_| {
            Play::exit(1).lasting(Duration::from_secs(extract_seconds))
        });
        let run = harness.trigger("timing").await;
        let run = harness.wait_run(&run.run_id, MINUTE).await;
        let states: std::collections::HashMap<String, TaskState> = harness
            .store
            .task_instances(&run.run_id)
            .await
            .unwrap()
            .into_iter()
            .map(|ti| (ti.task_id, ti.state))
            .collect();
        let label = format!("gate ends at {gate_seconds} s, extract at {extract_seconds} s");
        assert_eq!(states["gate"], TaskState::Skipped, "{label}");
        assert_eq!(states["load"], TaskState::UpstreamFailed, "{label}");
        assert_eq!(
            (states["report"], states["publish"]),
            (report, publish),
            "{label}"
        );
        assert_eq!(run.state, outcome, "{label}");
        harness.stop().await;
    }
}
