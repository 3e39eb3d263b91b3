//! The scheduler moves ended tries' logs to the artifact store `log_archive_after` they
//! ended (a real scheduler, the process backend, a folder artifact store): the log then
//! reads exactly as before, and its rows are gone from the store.

use std::time::Duration;

use stevedore_domain::state::RunState;
use stevedore_store::{LogReader, LogStream};
use stevedore_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_s_log_moves_to_the_artifact_store_after_log_archive_after() {
    let job = "id: chatty\ntasks:\n  - id: talk\n    backend: process\n    command: [/bin/sh, -c, 'i=0; while [ $i -lt 2500 ]; do echo \"line $i\"; i=$((i+1)); done; echo done >&2']\n";
    let harness =
        Harness::start_archiving_logs(&[("chatty.yaml", job)], Duration::from_secs(2)).await;
    let run = harness.trigger("chatty").await;
    let run = harness.wait_run(&run.run_id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Success);
    let attempt = harness.tries(&run.run_id, "talk").await.remove(0);
    let before = harness.log_lines(&attempt).await;
    let mut expected: Vec<(String, String)> = (0..2500)
        .map(|i| ("stdout".to_owned(), format!("line {i}")))
        .collect();
    expected.push(("stderr".to_owned(), "done".to_owned()));
    assert_eq!(before, expected);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let archive = loop {
        let archive = harness.store.log_archive(attempt.try_id).await.unwrap();
        let rows = harness.store.logs(attempt.try_id, None, 10).await.unwrap();
        if let (Some(archive), true) = (archive, rows.is_empty()) {
            break archive;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log was not archived within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(archive.lines, 2501);
    assert!(archive.archived_at >= attempt.ended_at.unwrap() + chrono::TimeDelta::seconds(2));
    assert_eq!(harness.log_lines(&attempt).await, expected);
    let last = harness
        .logs
        .log_page(attempt.try_id, Some(2499), 10)
        .await
        .unwrap();
    assert_eq!(last.lines.len(), 1);
    assert_eq!(last.lines[0].stream, LogStream::Stderr);
    harness.stop().await;
}
