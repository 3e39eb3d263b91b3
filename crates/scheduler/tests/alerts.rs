//! Alerts through a real scheduler on a real SQLite store, with scripted tries on a manual
//! clock (issue 17): which events enter the outbox, once each, for a try's end, a run's end,
//! a missed deadline, a run timeout and a task instance stuck waiting for its backend. Their
//! delivery to real receivers is tested end to end in `tests/e2e/alerts.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use stevedore_backend::scripted::Play;
use stevedore_domain::notify::NotifyEvent;
use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_store::{NotificationFilter, NotificationRecord};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

/// A connection `ops` whose webhook nobody answers (delivery is not what these tests see).
async fn ops_connection(harness: &Harness) {
    let values = BTreeMap::from([(
        "WEBHOOK_URL".to_owned(),
        "http://127.0.0.1:9/hook".to_owned(),
    )]);
    stevedore_ops::connections::put(
        harness.store.as_ref(),
        &harness.secret_key,
        "ops",
        &values,
        "",
    )
    .await
    .unwrap();
}

async fn outbox(harness: &Harness, job_id: &str) -> Vec<NotificationRecord> {
    let mut listed = harness
        .store
        .list_notifications(&NotificationFilter {
            job_id: Some(job_id.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    listed.reverse();
    listed
}

fn events(listed: &[NotificationRecord]) -> Vec<(NotifyEvent, Option<&str>)> {
    listed
        .iter()
        .map(|n| (n.event, n.task_id.as_deref()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_a_failure_and_a_recovery_enter_the_outbox_once_each() {
    let job = "id: nightly\nnotify:\n  - {on: [retry, failure, recovery, success], connection: ops}\ntasks:\n  - id: load\n    backend: process\n    command: [synth]\n    retries: 1\n    retry_delay: 1s\n";
    let harness = Harness::scripted(&[("nightly.yaml", job)]).await;
    ops_connection(&harness).await;
    harness.script("load", |_| Play::exit(3).stderr("no rows"));
    let run = harness.trigger("nightly").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let listed = outbox(&harness, "nightly").await;
    assert_eq!(
        events(&listed),
        [
            (NotifyEvent::Retry, Some("load")),
            (NotifyEvent::Failure, None)
        ]
    );
    assert_eq!(listed[0].try_number, Some(1));
    assert_eq!(listed[0].reason.as_deref(), Some("exit_code: 3"));
    assert_eq!(listed[0].state, "up_for_retry");
    assert_eq!(listed[1].reason.as_deref(), Some("task `load` failed"));
    assert!(listed
        .iter()
        .all(|n| n.connection == "ops" && n.run_id == run.run_id));

    harness.script("load", |_| Play::exit(0));
    let second = harness.trigger("nightly").await;
    let second = harness.wait_run(&second.run_id, MINUTE).await;
    assert_eq!(second.state, RunState::Success);
    let listed = outbox(&harness, "nightly").await;
    assert_eq!(
        events(&listed[2..]),
        [(NotifyEvent::Success, None), (NotifyEvent::Recovery, None)]
    );
    // A third good run is no recovery.
    let third = harness.trigger("nightly").await;
    harness.wait_run(&third.run_id, MINUTE).await;
    assert_eq!(
        events(&outbox(&harness, "nightly").await[4..]),
        [(NotifyEvent::Success, None)]
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streak_of_failed_runs_is_told_of_once_it_reaches_its_length() {
    let job = "id: streak\nrepeated_failure_after: 2\nnotify:\n  - {on: [repeated_failure], connection: ops}\ntasks:\n  - id: load\n    backend: process\n    command: [synth]\n";
    let harness = Harness::scripted(&[("streak.yaml", job)]).await;
    ops_connection(&harness).await;
    harness.script("load", |_| Play::exit(1));
    for _ in 0..3 {
        let run = harness.trigger("streak").await;
        harness.wait_run(&run.run_id, MINUTE).await;
    }
    let listed = outbox(&harness, "streak").await;
    assert_eq!(events(&listed), [(NotifyEvent::RepeatedFailure, None)]);
    assert_eq!(
        listed[0].reason.as_deref(),
        Some("the job's last 2 runs failed")
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_is_told_of_once_and_goes_on() {
    let job = "id: late\ndeadline: 30s\nnotify:\n  - {on: [deadline_missed, success], connection: ops}\ntasks:\n  - id: slow\n    backend: process\n    command: [synth]\n";
    let harness = Harness::scripted(&[("late.yaml", job)]).await;
    ops_connection(&harness).await;
    harness.script("slow", |_| Play::exit(0).lasting(Duration::from_secs(45)));
    let run = harness.trigger("late").await;
    harness.pass_time(Duration::from_secs(20)).await;
    assert!(outbox(&harness, "late").await.is_empty(), "not yet");
    harness.pass_time(Duration::from_secs(12)).await;
    let listed = outbox(&harness, "late").await;
    assert_eq!(events(&listed), [(NotifyEvent::DeadlineMissed, None)]);
    assert_eq!(listed[0].state, "running");
    assert!(
        listed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("30s after it was queued"),
        "{:?}",
        listed[0].reason
    );
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(
        run.state,
        RunState::Success,
        "a missed deadline does not stop the run"
    );
    assert!(run.deadline_missed_at.is_some());
    assert_eq!(
        events(&outbox(&harness, "late").await),
        [
            (NotifyEvent::DeadlineMissed, None),
            (NotifyEvent::Success, None)
        ]
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_run_timeout_is_failed_and_its_try_killed() {
    let job = "id: bounded\nrun_timeout: 20s\nnotify:\n  - {on: [failure], connection: ops}\ntasks:\n  - id: slow\n    backend: process\n    command: [synth]\n    retries: 3\n  - id: after\n    backend: process\n    command: [synth]\n    depends_on: [slow]\n";
    let harness = Harness::scripted(&[("bounded.yaml", job)]).await;
    ops_connection(&harness).await;
    harness.script("slow", |_| Play::exit(0).lasting(Duration::from_secs(120)));
    let run = harness.trigger("bounded").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let took = run.ended_at.unwrap() - run.started_at.unwrap();
    assert!(
        took >= chrono::TimeDelta::seconds(20) && took < chrono::TimeDelta::seconds(30),
        "failed after {took}"
    );
    let tries = harness.tries(&run.run_id, "slow").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tries = if tries.iter().any(|t| t.state == TryState::Running) {
        loop {
            let tries = harness.tries(&run.run_id, "slow").await;
            if tries.iter().all(|t| t.state != TryState::Running)
                || tokio::time::Instant::now() > deadline
            {
                break tries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        tries
    };
    assert_eq!(tries.len(), 1, "killed without a retry: {tries:?}");
    assert_eq!(tries[0].state, TryState::Failed);
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("killed: run timeout")
    );
    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    assert_eq!(instances[0].state, TaskState::Failed);
    assert_eq!(instances[1].state, TaskState::Skipped);
    let listed = outbox(&harness, "bounded").await;
    assert_eq!(events(&listed), [(NotifyEvent::Failure, None)]);
    assert_eq!(
        listed[0].reason.as_deref(),
        Some("run timeout: not ended 20s after it started")
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_waiting_past_backend_unavailable_timeout_fails_with_the_backend_s_answer() {
    let job = "id: stuck\ndefaults:\n  notify:\n    - {on: [stuck, failure], connection: ops}\ntasks:\n  - id: extract\n    backend: process\n    command: [synth]\n";
    let harness = Harness::scripted(&[("stuck.yaml", job)]).await;
    ops_connection(&harness).await;
    harness.set_backend_down(
        "process",
        Some("Nomad at http://10.0.0.9:4646 is unreachable"),
    );
    let run = harness.trigger("stuck").await;
    // While it waits, the wait and its reason are on the task instance.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        harness.pass_time(Duration::from_millis(200)).await;
        let ti = harness
            .store
            .task_instances(&run.run_id)
            .await
            .unwrap()
            .remove(0);
        if let Some(waiting) = ti.waiting {
            break waiting;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never waiting: {ti:?}"
        );
    };
    assert_eq!(
        waiting.reason,
        "Nomad at http://10.0.0.9:4646 is unreachable"
    );
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let ti = harness
        .store
        .task_instances(&run.run_id)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((ti.state, ti.waiting), (TaskState::Failed, None));
    // The launch that found the backend gone was not counted (interrupted); the wait
    // ended in a failed try with the backend's own answer.
    let tries = harness.tries(&run.run_id, "extract").await;
    assert!(tries.len() <= 2, "{tries:?}");
    assert!(tries[..tries.len() - 1]
        .iter()
        .all(|t| t.state == TryState::Interrupted));
    let last = tries.last().unwrap();
    assert_eq!(last.state, TryState::Failed);
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("backend: Nomad at http://10.0.0.9:4646 is unreachable (waited 5s for the process backend)")
    );
    assert_eq!(
        events(&outbox(&harness, "stuck").await),
        [
            (NotifyEvent::Stuck, Some("extract")),
            (NotifyEvent::Failure, Some("extract"))
        ]
    );
    harness.stop().await;
}
