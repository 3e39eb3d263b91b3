//! Task mapping through a real scheduler on a real SQLite store, tries played by scripted
//! backends on a manual clock ([`Harness::scripted`]): a list made at run time fans out
//! into one task instance per item, `max_active` caps them, each retries and clears on its
//! own, and the downstream task reads their outputs as one list in item order. That real
//! containers do the same is `tests/e2e/mapping.rs`.

use std::time::Duration;

use stevedore_backend::scripted::Play;
use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

const JOB: &str = "id: per_account
tasks:
  - id: list_accounts
    backend: process
    command: [synth]
  - id: extract
    backend: process
    command: [synth]
    depends_on: [list_accounts]
    for_each: \"{{ outputs.list_accounts.accounts }}\"
    max_active: 2
    retries: 1
    retry_delay: 1s
    args: [\"--account\", \"{{ item.id }}\", \"--index\", \"{{ map_index }}\"]
  - id: load
    backend: process
    command: [synth]
    depends_on: [extract]
    args: [\"{{ outputs.extract.rows }}\"]
";

/// `list_accounts` publishes `accounts`, each `extract` instance runs 5 s and publishes
/// `rows` (10 per account number; instance 2 fails its first try), `load` prints its args.
fn script(harness: &Harness, accounts: serde_json::Value) {
    harness.script("list_accounts", move |_| {
        Play::exit(0).stdout(
            serde_json::json!({"type": "output", "key": "accounts", "value": accounts}).to_string(),
        )
    });
    for index in 0..5 {
        harness.script(&format!("extract[{index}]"), move |spec| {
            let args = &spec.args[spec.args.iter().position(|a| a == "--").unwrap() + 1..];
            let account = args[1].trim_start_matches("acct_").parse::<u64>().unwrap();
            if index == 2 && spec.try_number == 1 {
                return Play::exit(1).stderr("the API timed out");
            }
            Play::exit(0)
                .stdout(format!(
                    "account {} at index {} (STEVEDORE_MAP_INDEX={})",
                    args[1], args[3], spec.env["STEVEDORE_MAP_INDEX"]
                ))
                .stdout(
                    serde_json::json!({"type": "output", "key": "rows", "value": account * 10})
                        .to_string(),
                )
                .lasting(Duration::from_secs(5))
        });
    }
    harness.script("load", |spec| {
        Play::exit(0).stdout(spec.args.last().unwrap().clone())
    });
}

fn accounts(n: u64) -> serde_json::Value {
    (1..=n)
        .map(|i| serde_json::json!({"id": format!("acct_{i}")}))
        .collect()
}

async fn states(harness: &Harness, run_id: &str) -> Vec<(String, TaskState)> {
    let mut states: Vec<(String, TaskState)> = harness
        .store
        .task_instances(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| (ti.task_id, ti.state))
        .collect();
    states.sort_by(|a, b| stevedore_domain::mapping::key_order(&a.0, &b.0));
    states
}

/// The most tries of `keys` that ran at once, from their start and end times.
async fn most_at_once(harness: &Harness, run_id: &str, keys: &[String]) -> usize {
    let mut edges = Vec::new();
    for key in keys {
        for attempt in harness.tries(run_id, key).await {
            edges.push((attempt.started_at, 1i32));
            edges.push((attempt.ended_at.unwrap(), -1));
        }
    }
    // An end at the same instant as a start frees its slot first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_fans_out_into_capped_instances_that_retry_alone_and_gather_in_order() {
    let harness = Harness::scripted(&[("per_account.yaml", JOB)]).await;
    script(&harness, accounts(5));
    let run = harness.trigger("per_account").await;
    let run = harness.wait_run(&run.run_id, 10 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let keys: Vec<String> = (0..5).map(|i| format!("extract[{i}]")).collect();
    let mut expected = vec![("list_accounts".to_owned(), TaskState::Success)];
    expected.extend(keys.iter().map(|k| (k.clone(), TaskState::Success)));
    expected.push(("load".to_owned(), TaskState::Success));
    expected.sort_by(|a, b| stevedore_domain::mapping::key_order(&a.0, &b.0));
    assert_eq!(states(&harness, &run.run_id).await, expected);

    // Each instance got its own item and index; only instance 2 was tried twice.
    for (index, key) in keys.iter().enumerate() {
        let tries = harness.tries(&run.run_id, key).await;
        let want = if index == 2 { 2 } else { 1 };
        assert_eq!(tries.len(), want, "{key}");
        let last = tries.last().unwrap();
        assert_eq!(last.state, TryState::Success);
        assert_eq!(
            harness.log_lines(last).await[0].1,
            format!(
                "account acct_{} at index {index} (STEVEDORE_MAP_INDEX={index})",
                index + 1
            )
        );
    }
    assert_eq!(
        harness.tries(&run.run_id, "extract[2]").await[0].state,
        TryState::Failed
    );
    // max_active: 2 was reached and never exceeded.
    assert_eq!(most_at_once(&harness, &run.run_id, &keys).await, 2);
    // The downstream task got every instance's output, in item order.
    let load = &harness.tries(&run.run_id, "load").await[0];
    assert_eq!(harness.log_lines(load).await[0].1, "[10,20,30,40,50]");

    // One instance cleared alone runs again (its tries go on counting), with its
    // downstream; the others keep their tries.
    let cleared = stevedore_ops::actions::clear(harness.store.as_ref(), &run, "extract[3]", true)
        .await
        .unwrap();
    assert_eq!(cleared, ["extract[3]", "load"]);
    let again = harness.wait_run(&run.run_id, 10 * MINUTE).await;
    assert_eq!(again.state, RunState::Success);
    assert_eq!(harness.tries(&run.run_id, "extract[3]").await.len(), 2);
    assert_eq!(harness.tries(&run.run_id, "extract[0]").await.len(), 1);
    assert_eq!(harness.tries(&run.run_id, "load").await.len(), 2);

    // The mapped task cleared whole is expanded again from its list.
    stevedore_ops::actions::clear(harness.store.as_ref(), &again, "extract", true)
        .await
        .unwrap();
    let third = harness.wait_run(&run.run_id, 10 * MINUTE).await;
    assert_eq!(third.state, RunState::Success);
    assert_eq!(harness.tries(&run.run_id, "extract[0]").await.len(), 2);
    assert_eq!(harness.tries(&run.run_id, "extract[3]").await.len(), 3);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_skips_the_mapped_task_and_a_broken_one_fails_it_with_its_reason() {
    let harness = Harness::scripted(&[("per_account.yaml", JOB)]).await;
    script(&harness, serde_json::json!([]));
    let run = harness.trigger("per_account").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    assert_eq!(
        states(&harness, &run.run_id).await,
        [
            ("extract".to_owned(), TaskState::Skipped),
            ("list_accounts".to_owned(), TaskState::Success),
            ("load".to_owned(), TaskState::Skipped),
        ]
    );
    assert!(harness.tries(&run.run_id, "extract").await.is_empty());

    script(&harness, serde_json::json!({"not": "a list"}));
    let run = harness.trigger("per_account").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(
        states(&harness, &run.run_id).await,
        [
            ("extract".to_owned(), TaskState::Failed),
            ("list_accounts".to_owned(), TaskState::Success),
            ("load".to_owned(), TaskState::UpstreamFailed),
        ]
    );
    // Failed once, with the reason, although it has a retry: the list would be the same.
    let tries = harness.tries(&run.run_id, "extract").await;
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("for_each: `outputs.list_accounts.accounts` is not a JSON list (it is an object)")
    );
    harness.stop().await;
}
