//! End-to-end: a mapped task (`for_each`) on the local Docker engine, with the repo's
//! `jobs/per_account.yaml`: a list made by one container fans out into one container per
//! item, `max_active` caps them, one fails once and is retried alone, and the downstream
//! container receives every output in item order. The scheduling rules of mapping are
//! tested without Docker in `crates/scheduler/tests/mapping.rs`.

use std::time::Duration;

use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_accounts_run_as_five_containers_two_at_a_time_and_load_gets_them_in_order() {
    let harness = Harness::start(&[("per_account.yaml", &read_repo_job("per_account.yaml"))]).await;
    let run = harness.trigger("per_account").await;
    let run = harness.wait_run(&run.run_id, 3 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);

    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("extract[{i}]")).collect();
    for key in &keys {
        let ti = instances.iter().find(|ti| &ti.task_id == key).unwrap();
        assert_eq!(ti.state, TaskState::Success, "{ti:?}");
    }
    assert!(!instances.iter().any(|ti| ti.task_id == "extract"));

    // Five containers, one per account, each with its own item; the third failed once and
    // was the only one retried.
    let mut spans = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let tries = harness.tries(&run.run_id, key).await;
        let expected = if index == 2 {
            vec![TryState::Failed, TryState::Success]
        } else {
            vec![TryState::Success]
        };
        assert_eq!(
            tries.iter().map(|t| t.state).collect::<Vec<_>>(),
            expected,
            "{key}"
        );
        for attempt in &tries {
            assert!(attempt.container_id.is_some(), "{key} ran in a container");
            spans.push((attempt.started_at, attempt.ended_at.unwrap()));
        }
        let last = tries.last().unwrap();
        let lines = harness.log_lines(last).await;
        let want = format!("extracting {} records", 10 * (index + 1));
        assert!(
            lines.iter().any(|(_, text)| text.contains(&want)),
            "{key}: {lines:?}"
        );
    }
    // max_active: 2 — never three containers of extract at once, and two did overlap.
    let mut most = 0;
    for (start, _) in &spans {
        let at_once = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        most = most.max(at_once);
    }
    assert_eq!(most, 2, "{spans:?}");

    let load = &harness.tries(&run.run_id, "load").await[0];
    let lines = harness.log_lines(load).await;
    assert_eq!(lines[0].1, "inputs [10,20,30,40,50]", "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|(_, t)| t == "loading 150 rows into the warehouse"),
        "{lines:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_over_an_empty_list_skips_the_task_and_its_downstream() {
    let harness = Harness::start(&[("per_account.yaml", &read_repo_job("per_account.yaml"))]).await;
    let params = serde_json::json!({"accounts": 0});
    let run = harness
        .trigger_with("per_account", params.as_object().unwrap().clone())
        .await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let states: Vec<(String, TaskState)> = harness
        .store
        .task_instances(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| (ti.task_id, ti.state))
        .collect();
    assert!(
        states.contains(&("extract".to_owned(), TaskState::Skipped)),
        "{states:?}"
    );
    assert!(
        states.contains(&("load".to_owned(), TaskState::Skipped)),
        "{states:?}"
    );
    assert!(harness.tries(&run.run_id, "extract").await.is_empty());
    harness.stop().await;
}
