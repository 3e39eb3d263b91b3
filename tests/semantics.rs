//! Scheduling semantics end to end through the scheduler: sensors, retries across a
//! restart, limits. Most use the `process` backend (the synth binary as a local program):
//! the rules are the scheduler's, whatever runs the try.

use std::time::Duration;

use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_e2e::*;

const MINUTE: Duration = Duration::from_secs(60);

fn process_task(id: &str, args: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    backend: process\n    command: [{}]\n    args: {args}\n{extra}",
        synth_command()
    )
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
    let harness = Harness::start(&[("sensing.yaml", &job)]).await;
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
    let harness = Harness::start(&[("impatient.yaml", &job)]).await;
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
    let harness = Harness::start(&[("retry.yaml", &job)]).await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
