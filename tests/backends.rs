//! The Backend contract: every backend runs the same `synth` integration (as the image for
//! `docker`, as the very same static binary for `process`) and must behave the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stevedore_backend::*;
use stevedore_domain::job::{PullPolicy, Resources};
use stevedore_domain::state::FailureReason;
use stevedore_e2e::*;
use tokio::sync::mpsc;

/// A try of `task`; tries given the same `run` share a run (and its workspace).
fn spec(backend: &str, run: &str, task: &str, args: &[&str], state: Option<&str>) -> LaunchSpec {
    let contract: Vec<String> = [
        "run", "--job", "contract", "--task", task, "--run", "r1", "--try", "1", "--",
    ]
    .iter()
    .chain(args)
    .map(|s| s.to_string())
    .collect();
    let mut env = BTreeMap::from([
        ("STEVEDORE_JOB_ID".to_owned(), "contract".to_owned()),
        ("EXTRA".to_owned(), "yes".to_owned()),
    ]);
    if state.is_some() {
        env.insert("STEVEDORE_STATE_FILE".to_owned(), STATE_FILE.to_owned());
    }
    LaunchSpec {
        job_id: "contract".into(),
        run_id: format!("{run}-{backend}"),
        task_id: task.into(),
        try_number: 1,
        image: SYNTH.into(),
        pull_policy: PullPolicy::IfNotPresent,
        command: (backend == "process").then(|| {
            vec![repo_root()
                .join("images/synth/.build/synth")
                .display()
                .to_string()]
        }),
        args: contract,
        env,
        resources: Resources::default(),
        state: state.map(str::to_owned),
        registry_auth: None,
        placement: Default::default(),
        labels: Default::default(),
        keep_exited: false,
    }
}

/// Runs a try to its end; returns the exit and the `(stream, line)`s it printed.
async fn execute(
    backend: &dyn Backend,
    spec: LaunchSpec,
    kill_after: Option<Duration>,
) -> (TryExit, Vec<(Stream, String)>, Vec<TryEvent>) {
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let (kill_tx, kill_rx) = kill_switch();
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = events_rx.recv().await {
            all.push(event);
        }
        all
    });
    // Held until the try ends: dropping the sender would mean "nobody will kill it".
    let kill_tx = Arc::new(kill_tx);
    if let Some(after) = kill_after {
        let kill_tx = kill_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = kill_tx.send(Some(KillReason::Timeout));
        });
    }
    let exit = backend
        .execute(spec, events_tx, kill_rx)
        .await
        .expect("backend reachable");
    drop(kill_tx);
    let events = collector.await.unwrap();
    let lines = events
        .iter()
        .filter_map(|e| match e {
            TryEvent::Line { stream, text, .. } => Some((*stream, text.clone())),
            _ => None,
        })
        .collect();
    (exit, lines, events)
}

pub async fn a_successful_try_reports_exit_zero_and_its_lines(backend: &dyn Backend) {
    let (exit, lines, events) = execute(
        backend,
        spec(
            backend.name(),
            "ok",
            "ok",
            &["extract", "--records", "4"],
            None,
        ),
        None,
    )
    .await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(0),
            failure: None
        }
    );
    assert!(
        matches!(events.first(), Some(TryEvent::Launched { .. })),
        "{events:?}"
    );
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(stdout[0].contains("extracting 4 records"), "{stdout:?}");
    assert!(
        stdout.iter().any(|l| l.contains("\"key\":\"records\"")),
        "{stdout:?}"
    );
    assert!(
        lines.contains(&(
            Stream::Stderr,
            "extract finished without warnings".to_owned()
        )),
        "{lines:?}"
    );
    backend
        .remove_workspace(&format!("ok-{}", backend.name()))
        .await
        .unwrap();
}

pub async fn a_non_zero_exit_is_a_result(backend: &dyn Backend) {
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "fails",
            "fails",
            &["exit", "--code", "3"],
            None,
        ),
        None,
    )
    .await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(3),
            failure: None
        }
    );
    assert_eq!(lines, vec![(Stream::Stdout, "exiting with 3".to_owned())]);
    backend
        .remove_workspace(&format!("fails-{}", backend.name()))
        .await
        .unwrap();
}

pub async fn a_kill_stops_the_try_with_its_reason(backend: &dyn Backend) {
    let started = std::time::Instant::now();
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "slow",
            "slow",
            &["sleep", "--seconds", "60"],
            None,
        ),
        Some(Duration::from_millis(1500)),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(137),
            failure: Some(FailureReason::Timeout)
        }
    );
    assert_eq!(lines, vec![(Stream::Stdout, "sleeping 60s".to_owned())]);
    backend
        .remove_workspace(&format!("slow-{}", backend.name()))
        .await
        .unwrap();
}

pub async fn the_state_file_reaches_the_try(backend: &dyn Backend) {
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "stateful",
            "stateful",
            &["extract", "--records", "1"],
            Some("{\"cursor\":\"c-42\"}"),
        ),
        None,
    )
    .await;
    assert_eq!(exit.exit_code, Some(0));
    assert!(
        lines.iter().any(|(_, l)| l.contains("last cursor: c-42")),
        "{lines:?}"
    );
    backend
        .remove_workspace(&format!("stateful-{}", backend.name()))
        .await
        .unwrap();
}

pub async fn running_tries_are_listed_by_their_labels(backend: &dyn Backend) {
    let task = spec(
        backend.name(),
        "listed",
        "listed",
        &["sleep", "--seconds", "3"],
        None,
    );
    let run_id = task.run_id.clone();
    let (events_tx, mut events_rx) = mpsc::channel(64);
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let (_kill_tx, kill_rx) = kill_switch();
    let running = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let listed = backend.list_running().await.unwrap();
            if let Some(found) = listed
                .iter()
                .find(|r| r.run_id == run_id && r.task_id == "listed")
            {
                return found.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never listed: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (exit, found) = tokio::join!(backend.execute(task, events_tx, kill_rx), running);
    assert_eq!(exit.unwrap().exit_code, Some(0));
    assert_eq!((found.job_id.as_str(), found.try_number), ("contract", 1));
    let after = backend.list_running().await.unwrap();
    assert!(
        !after.iter().any(|r| r.run_id == run_id),
        "still listed after the end: {after:?}"
    );
    backend
        .remove_workspace(&format!("listed-{}", backend.name()))
        .await
        .unwrap();
}

pub async fn tries_of_a_run_share_its_workspace(backend: &dyn Backend) {
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "shared",
            "writer",
            &["write", "--file", "rows.jsonl", "--text", "{\"id\":1}"],
            None,
        ),
        None,
    )
    .await;
    assert_eq!(exit.exit_code, Some(0), "{lines:?}");
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "shared",
            "reader",
            &["read", "--file", "rows.jsonl"],
            None,
        ),
        None,
    )
    .await;
    assert_eq!(exit.exit_code, Some(0), "{lines:?}");
    assert_eq!(
        lines,
        vec![(Stream::Stdout, "read rows.jsonl: {\"id\":1}".to_owned())]
    );
    let run_id = format!("shared-{}", backend.name());
    assert!(backend.workspaces().await.unwrap().contains(&run_id));
    backend.remove_workspace(&run_id).await.unwrap();
    assert!(!backend.workspaces().await.unwrap().contains(&run_id));
}

macro_rules! backend_contract_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            macro_rules! case {
                ($test:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        require_images().await;
                        let backend: Arc<dyn Backend> = $make;
                        super::$test(backend.as_ref()).await;
                    }
                };
            }
            case!(a_successful_try_reports_exit_zero_and_its_lines);
            case!(a_non_zero_exit_is_a_result);
            case!(a_kill_stops_the_try_with_its_reason);
            case!(the_state_file_reaches_the_try);
            case!(running_tries_are_listed_by_their_labels);
            case!(tries_of_a_run_share_its_workspace);
        }
    };
}

backend_contract_suite!(docker, Arc::new(DockerBackend::from_env().unwrap()));
backend_contract_suite!(
    process,
    Arc::new(ProcessBackend::new(
        std::env::temp_dir().join(format!("stevedore-contract-{}", std::process::id()))
    ))
);
