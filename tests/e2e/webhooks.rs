//! End-to-end: a job with `events:` on the local Docker engine. Events stored by the
//! webhook (here written through the store, as `POST /api/v1/jobs/{job}/events` does once it
//! has checked the request; the endpoint itself is `crates/server/tests/api.rs`) are given
//! to runs in batches of `max_batch`, the last one after `max_wait`; each run's containers
//! find their batch in `events.jsonl`, and every event lands in exactly one run, in order.

use std::time::Duration;

use stevedore_domain::state::{RunState, RunTrigger};
use stevedore_store::RunFilter;
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

const JOB: &str = "id: clicks
events: {max_batch: 3, max_wait: 2s}
tasks:
  - id: load
    image: stevedore/synth:0.1.0
    args: [read, --file, events.jsonl, --count, \"{{ event_count }}\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_run_in_batches_each_in_exactly_one_run_in_order() {
    let harness = Harness::start(&[("clicks.yaml", JOB)]).await;
    let events: Vec<String> = (1..=7)
        .map(|i| serde_json::json!({"click": i}).to_string())
        .collect();
    harness
        .store
        .accept_events("clicks", &events, chrono::Utc::now())
        .await
        .unwrap();
    // Two full batches at once, the seventh event after max_wait.
    let deadline = tokio::time::Instant::now() + MINUTE;
    let runs = loop {
        let runs = harness
            .store
            .list_runs(&RunFilter {
                job_id: Some("clicks".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if runs.len() >= 3 {
            break runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} runs after a minute",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut runs = runs;
    runs.reverse();
    let mut seen: Vec<String> = Vec::new();
    for (run, expected) in runs.iter().zip([3u64, 3, 1]) {
        let run = harness.wait_run(&run.run_id, MINUTE).await;
        assert_eq!(run.state, RunState::Success);
        assert_eq!(run.trigger, RunTrigger::Event);
        assert_eq!(run.params["event_count"], expected);
        let attempt = &harness.tries(&run.run_id, "load").await[0];
        // What the container read from its workspace's events.jsonl.
        let lines: Vec<String> = harness
            .log_lines(attempt)
            .await
            .into_iter()
            .filter(|(stream, _)| stream == "stdout")
            .map(|(_, text)| text.trim_start_matches("read events.jsonl: ").to_owned())
            .filter(|text| !text.is_empty())
            .collect();
        assert_eq!(lines.len() as u64, expected, "{lines:?}");
        assert_eq!(
            harness.store.run_events(&run.run_id).await.unwrap(),
            lines,
            "the file holds the run's events"
        );
        seen.extend(lines);
    }
    assert_eq!(seen, events, "every event once, in arrival order");
    assert_eq!(harness.store.waiting_events("clicks").await.unwrap(), 0);
    harness.stop().await;
}
