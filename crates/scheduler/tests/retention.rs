//! The retention, applied by a real scheduler (process backend, SQLite, a folder artifact
//! store): by count (a job's own `retention: N runs`) and by age (the configuration's),
//! never a run that has not ended; a removed run's files and archived logs leave the
//! artifact store with it.

use std::sync::Arc;
use std::time::Duration;

use stevedore_domain::retention::Retention;
use stevedore_domain::state::RunState;
use stevedore_store::RunFilter;
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

async fn runs_of(harness: &Harness, job: &str) -> Vec<(String, RunState)> {
    let mut runs: Vec<_> = harness
        .store
        .list_runs(&RunFilter {
            job_id: Some(job.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|run| (run.run_id, run.state))
        .collect();
    runs.sort();
    runs
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_its_newest_runs_by_count_and_never_loses_a_running_one() {
    let job = "id: counted\nretention: 2 runs\nparams: {seconds: 0}\ntasks:\n  - id: work\n    backend: process\n    command: [/bin/sh, -c, 'echo working; sleep \"$NAP\"']\n    env: {NAP: \"{{ params.seconds }}\"}\n";
    let harness = Harness::start_configured(
        &[("counted.yaml", job)],
        Arc::new(|config| config.retention_every = Duration::from_millis(300)),
    )
    .await;
    let mut made = Vec::new();
    for _ in 0..4 {
        let run = harness.trigger("counted").await;
        let run = harness.wait_run(&run.run_id, MINUTE).await;
        let tries = harness.tries(&run.run_id, "work").await;
        assert_eq!(run.state, RunState::Success, "{tries:?}");
        made.push(run.run_id);
    }
    let newest_two: Vec<(String, RunState)> = made[2..]
        .iter()
        .map(|id| (id.clone(), RunState::Success))
        .collect();
    eventually("the two oldest runs removed", async || {
        runs_of(&harness, "counted").await == newest_two
    })
    .await;
    // A run that has not ended is never counted or removed.
    let long = harness
        .trigger_with(
            "counted",
            serde_json::json!({"seconds": 3})
                .as_object()
                .unwrap()
                .clone(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let now: Vec<String> = runs_of(&harness, "counted")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(now.contains(&long.run_id) && now.len() == 3, "{now:?}");
    harness.wait_run(&long.run_id, MINUTE).await;
    let mut expected = vec![
        (made[3].clone(), RunState::Success),
        (long.run_id.clone(), RunState::Success),
    ];
    expected.sort();
    eventually("the newest two kept once the long run ended", async || {
        runs_of(&harness, "counted").await == expected
    })
    .await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_configured_age_leave_with_their_files_and_archived_logs() {
    let job = "id: aged\ntasks:\n  - id: write\n    backend: process\n    command: [/bin/sh, -c, 'echo writing; echo data > \"$STEVEDORE_WORKSPACE/out.txt\"']\n";
    let harness = Harness::start_configured(
        &[("aged.yaml", job)],
        Arc::new(|config| {
            config.retention = Retention::Age(Duration::from_secs(3));
            config.retention_every = Duration::from_millis(300);
            config.log_archive_after = Some(Duration::ZERO);
            config.artifact_retention = Duration::from_secs(3600);
        }),
    )
    .await;
    let run = harness.trigger("aged").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let attempt = harness.tries(&run.run_id, "write").await.remove(0);
    let artifacts = harness.jobs_dir().parent().unwrap().join("artifacts");
    let run_files = artifacts.join("runs").join(&run.run_id);
    let run_logs = artifacts.join("logs").join(&run.run_id);
    eventually("the log archived", async || {
        harness
            .store
            .log_archive(attempt.try_id)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(run_files.join("blobs").read_dir().unwrap().count() > 0);
    assert_eq!(run_logs.read_dir().unwrap().count(), 1);
    eventually("the run removed", async || {
        harness.store.get_run(&run.run_id).await.is_err()
    })
    .await;
    let left = |path: &std::path::Path| path.read_dir().map_or(0, |entries| entries.count());
    assert_eq!(left(&run_files.join("blobs")), 0, "its files gone");
    assert_eq!(left(&run_logs), 0, "its archived log gone");
    assert!(harness.tries(&run.run_id, "write").await.is_empty());
    harness.stop().await;
}
