//! The Backend contract: every backend runs the same `synth` integration (as the image for
//! `docker` and `nomad`, as the very same static binary for `process`) and must behave the
//! same. `nomad` runs against the Nomad API simulator (`crates/testkit/src/nomad_sim/`), which runs its
//! tasks as real containers on the local engine; deploy/nomad/README.md runs this very suite
//! against a real `nomad agent -dev` (set `STEVEDORE_TEST_NOMAD_ADDR`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stevedore_backend::*;
use stevedore_domain::job::{PullPolicy, Resources};
use stevedore_domain::state::FailureReason;
use stevedore_testkit::nomad_sim::NomadSim;
use stevedore_testkit::*;
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
        max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        isolation: Default::default(),
        workspace: None,
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
            let _ = kill_tx.send(Some(StopReason::Timeout));
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
    // `Launched` comes before any output (notes and pull progress may come before it).
    let launched = events
        .iter()
        .position(|e| matches!(e, TryEvent::Launched { .. }));
    let first_line = events
        .iter()
        .position(|e| matches!(e, TryEvent::Line { .. }));
    assert!(launched.is_some() && launched < first_line, "{events:?}");
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
}

/// The container id a try's events announced.
fn launched(events: &[TryEvent]) -> String {
    events
        .iter()
        .find_map(|event| match event {
            TryEvent::Launched { container_id, .. } => Some(container_id.clone()),
            _ => None,
        })
        .expect("the try was launched")
}

/// A try's files are captured from where it ran into the artifact store (an over-size one
/// refused naming it), staged into the next try at the same paths, not captured again when
/// unchanged; a corrupt one fails the next try naming it.
pub async fn a_try_s_files_travel_to_the_next_try(backend: &dyn Backend) {
    let folder = tempfile::tempdir().unwrap();
    let store = served_folder_store(folder.path()).await;
    let name = backend.name();
    let run_id = format!("files-{name}");
    let with_store = |mut spec: LaunchSpec, inputs: Vec<StagedFile>| {
        spec.keep_exited = true;
        spec.workspace = Some(WorkspaceExchange {
            store: store.clone(),
            inputs,
        });
        spec
    };
    let writer = spec(
        name,
        "files",
        "writer",
        &["write", "--file", "out/rows.jsonl", "--text", "{\"id\":1}"],
        None,
    );
    let (exit, lines, events) = execute(backend, with_store(writer, Vec::new()), None).await;
    assert_eq!(exit.exit_code, Some(0), "{lines:?}");
    let writer = launched(&events);
    let small = CaptureLimits {
        max_file_size: 4,
        max_files: 100,
    };
    assert_eq!(
        backend
            .capture(&writer, &run_id, &store, &[], &small)
            .await
            .unwrap_err(),
        CaptureFailure::Capture(CaptureError::TooLarge {
            path: "out/rows.jsonl".into(),
            size: 8,
            limit: 4
        })
    );
    let limits = CaptureLimits {
        max_file_size: 1 << 20,
        max_files: 100,
    };
    let files = backend
        .capture(&writer, &run_id, &store, &[], &limits)
        .await
        .unwrap();
    backend.discard(&writer).await.unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        (files[0].path.as_str(), files[0].size),
        ("out/rows.jsonl", 8)
    );
    assert!(files[0].modified > 1_600_000_000, "{files:?}");

    let inputs: Vec<StagedFile> = files
        .iter()
        .map(|file| StagedFile {
            file: file.clone(),
            task_id: "writer".into(),
        })
        .collect();
    let reader = spec(
        name,
        "files",
        "reader",
        &["read", "--file", "out/rows.jsonl"],
        None,
    );
    let (exit, lines, events) = execute(backend, with_store(reader, inputs.clone()), None).await;
    assert_eq!(exit.exit_code, Some(0), "{lines:?}");
    assert_eq!(
        lines,
        vec![(Stream::Stdout, "read out/rows.jsonl: {\"id\":1}".to_owned())]
    );
    let reader = launched(&events);
    // What it was staged with, unchanged, is not its own.
    assert_eq!(
        backend
            .capture(&reader, &run_id, &store, &files, &limits)
            .await
            .unwrap(),
        []
    );
    backend.discard(&reader).await.unwrap();

    // The stored blob is damaged: the next try fails naming the file and who wrote it.
    let blob = folder
        .path()
        .join("artifacts")
        .join("runs")
        .join(&run_id)
        .join("blobs")
        .join(&files[0].sha256);
    std::fs::write(&blob, "{\"id\":2}").unwrap();
    let again = spec(
        name,
        "files",
        "again",
        &["read", "--file", "out/rows.jsonl"],
        None,
    );
    let (exit, lines, _) = execute(backend, with_store(again, inputs), None).await;
    // Staged by the scheduler's side (docker, process) the store says the file is corrupt;
    // fetched by a Nomad client, the server cuts the link's body short and the client says
    // the download failed.
    match &exit.failure {
        Some(FailureReason::Artifact(why)) => assert!(
            why.contains("`out/rows.jsonl` (written by task `writer`) is corrupt")
                || why.contains(
                    "`out/rows.jsonl` (written by task `writer`) could not be fetched by the Nomad client"
                ),
            "{why}"
        ),
        other => panic!("not an artifact failure: {other:?} {lines:?}"),
    }
    assert!(lines.is_empty(), "the try must not start: {lines:?}");
}

/// A folder artifact store under `folder` whose signed links (the ones a Nomad client fetches
/// a try's inputs from) a `stevedore server` on 127.0.0.1 serves, as with `public_url`. The
/// server lives as long as the test's runtime.
pub(crate) async fn served_folder_store(folder: &std::path::Path) -> ArtifactStore {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let store = ArtifactStore::open(&stevedore_artifacts::StoreSettings {
        url: format!("file://{}", folder.join("artifacts").display()),
        ..Default::default()
    })
    .unwrap()
    .with_links(&base, [5; 32]);
    // Only its link route is used: the store it reads runs from is its own.
    let server_store: Arc<dyn stevedore_store::Store> = Arc::new(
        stevedore_store::SqliteStore::open(folder.join("server.db"))
            .await
            .unwrap(),
    );
    let state = stevedore_server::AppState::new(server_store, folder.join("jobs"), None)
        .with_artifacts(store.clone());
    tokio::spawn(stevedore_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    store
}

pub async fn both_streams_arrive_whole_and_in_order(backend: &dyn Backend) {
    let (exit, lines, _) = execute(
        backend,
        spec(
            backend.name(),
            "ordered",
            "ordered",
            &["count", "--lines", "12", "--every-ms", "20"],
            None,
        ),
        None,
    )
    .await;
    assert_eq!(exit.exit_code, Some(0), "{lines:?}");
    let of = |stream: Stream| stream_lines(&lines, stream);
    let (stdout, stderr) = counted(12);
    assert_eq!(of(Stream::Stdout), stdout);
    assert_eq!(of(Stream::Stderr), stderr);
}

pub async fn a_cancel_stops_the_try_as_killed(backend: &dyn Backend) {
    let task = spec(
        backend.name(),
        "cancelled",
        "cancelled",
        &["sleep", "--seconds", "60"],
        None,
    );
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(event) = events_rx.recv().await {
            if let TryEvent::Line { text, .. } = event {
                lines.push(text);
            }
        }
        lines
    });
    let (kill_tx, kill_rx) = kill_switch();
    let started = std::time::Instant::now();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        kill_tx.send(Some(StopReason::Cancelled)).unwrap();
    };
    let (exit, ()) = tokio::join!(backend.execute(task, events_tx, kill_rx), cancel);
    let exit = exit.expect("backend reachable");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        exit.failure,
        Some(FailureReason::Stopped(StopReason::Cancelled))
    );
    assert_eq!(exit.exit_code, Some(137));
    assert_eq!(collector.await.unwrap(), vec!["sleeping 60s".to_owned()]);
}

pub async fn a_missing_image_fails_the_try_naming_it(backend: &dyn Backend) {
    // Nothing listens on port 9: the pull fails at once, as for an image that is not there.
    let missing = "127.0.0.1:9/stevedore/missing:1.0.0";
    let mut task = spec(backend.name(), "missing", "missing", &["noop"], None);
    task.image = missing.to_owned();
    let (exit, lines, _) = execute(backend, task, None).await;
    assert_eq!(exit.exit_code, None, "{lines:?}");
    match &exit.failure {
        Some(FailureReason::Image(message)) => {
            assert!(message.contains(missing), "{message}")
        }
        other => panic!("not an image failure: {other:?}"),
    }
    assert!(lines.is_empty(), "{lines:?}");
}

/// A scheduler stops while its try runs (its `execute` is dropped); a new backend client,
/// as a restarted scheduler has, adopts the try: the lines the store holds are not sent
/// again, the rest are, in order, and the exit is the try's own.
pub async fn a_try_is_adopted_after_its_scheduler_stops(make: &dyn Fn() -> Arc<dyn Backend>) {
    let first = make();
    let name = first.name();
    let mut task = spec(
        name,
        "adopted",
        "adopted",
        &["count", "--lines", "12", "--every-ms", "250", "--exit", "4"],
        None,
    );
    task.keep_exited = true;
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let (_kill_tx, kill_rx) = kill_switch();
    let running = tokio::spawn(async move { first.execute(task, events_tx, kill_rx).await });
    let mut stored: Vec<(Stream, String)> = Vec::new();
    while stored.iter().filter(|(s, _)| *s == Stream::Stdout).count() < 4 {
        match tokio::time::timeout(Duration::from_secs(30), events_rx.recv()).await {
            Ok(Some(TryEvent::Line { stream, text, .. })) => stored.push((stream, text)),
            Ok(Some(_)) => {}
            other => panic!("the try stopped early: {other:?} after {stored:?}"),
        }
    }
    // The scheduler is gone: nothing follows the try any more.
    running.abort();
    let _ = running.await;
    while let Ok(event) = events_rx.try_recv() {
        if let TryEvent::Line { stream, text, .. } = event {
            stored.push((stream, text));
        }
    }
    let count = |stream: Stream| stored.iter().filter(|(s, _)| *s == stream).count() as u64;
    let adoption = Adoption {
        job_id: "contract".into(),
        run_id: format!("adopted-{name}"),
        task_id: "adopted".into(),
        try_number: 1,
        stored_stdout: count(Stream::Stdout),
        stored_stderr: count(Stream::Stderr),
        max_line_bytes: DEFAULT_MAX_LINE_BYTES,
    };
    let second = make();
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = events_rx.recv().await {
            all.push(event);
        }
        all
    });
    let (_kill_tx, kill_rx) = kill_switch();
    let adopted = second
        .adopt(&adoption, events_tx, kill_rx)
        .await
        .expect("backend reachable");
    assert_eq!(
        adopted,
        Adopted::Exit(TryExit {
            exit_code: Some(4),
            failure: None
        })
    );
    let events = collector.await.unwrap();
    let container_id = events
        .iter()
        .find_map(|e| match e {
            TryEvent::Launched { container_id, .. } => Some(container_id.clone()),
            _ => None,
        })
        .expect("adopting sends the try's container");
    for event in events {
        if let TryEvent::Line { stream, text, .. } = event {
            stored.push((stream, text));
        }
    }
    let of = |stream: Stream| stream_lines(&stored, stream);
    let (stdout, stderr) = counted(12);
    assert_eq!(of(Stream::Stdout), stdout, "each line once, in order");
    assert_eq!(of(Stream::Stderr), stderr, "each line once, in order");
    second.discard(&container_id).await.unwrap();
    assert!(
        !second
            .list_running()
            .await
            .unwrap()
            .iter()
            .any(|r| r.run_id == adoption.run_id),
        "discarded"
    );
}

/// How a suite makes its backend: a new client each call (as a restarted scheduler makes
/// one), and what must live as long as the test (the Nomad simulator).
pub struct Fixture {
    pub make: Box<dyn Fn() -> Arc<dyn Backend> + Send + Sync>,
    _keep: Option<NomadSim>,
}

pub async fn fixture(kind: &str) -> Fixture {
    match kind {
        "docker" => Fixture {
            make: Box::new(|| Arc::new(DockerBackend::from_env().unwrap())),
            _keep: None,
        },
        "process" => {
            let dir =
                std::env::temp_dir().join(format!("stevedore-contract-{}", std::process::id()));
            Fixture {
                make: Box::new(move || Arc::new(ProcessBackend::new(dir.clone()))),
                _keep: None,
            }
        }
        "nomad" => {
            let (config, sim) = match std::env::var("STEVEDORE_TEST_NOMAD_ADDR") {
                // A real Nomad (deploy/nomad/README.md): its own NOMAD_* settings apply.
                Ok(address) if !address.is_empty() => {
                    let mut config = NomadConfig::from_env().unwrap();
                    config.address = address;
                    (config, None)
                }
                _ => {
                    let sim = NomadSim::start(Some("contract-token")).await;
                    let config = NomadConfig {
                        address: sim.address.clone(),
                        token: Some("contract-token".into()),
                        wait: Duration::from_secs(5),
                        ..Default::default()
                    };
                    (config, Some(sim))
                }
            };
            Fixture {
                make: Box::new(move || Arc::new(NomadBackend::new(config.clone()).unwrap())),
                _keep: sim,
            }
        }
        other => panic!("no backend {other}"),
    }
}

macro_rules! backend_contract_suite {
    ($name:ident, [$($test:ident),* $(,)?], adopt: [$($adopt:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    require_images().await;
                    let fixture = fixture(stringify!($name)).await;
                    let backend = (fixture.make)();
                    super::$test(backend.as_ref()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $adopt() {
                    require_images().await;
                    let fixture = fixture(stringify!($name)).await;
                    super::$adopt(&*fixture.make).await;
                }
            )*
        }
    };
}

backend_contract_suite!(
    docker,
    [
        a_successful_try_reports_exit_zero_and_its_lines,
        a_non_zero_exit_is_a_result,
        both_streams_arrive_whole_and_in_order,
        a_kill_stops_the_try_with_its_reason,
        a_cancel_stops_the_try_as_killed,
        a_missing_image_fails_the_try_naming_it,
        the_state_file_reaches_the_try,
        running_tries_are_listed_by_their_labels,
        a_try_s_files_travel_to_the_next_try,
    ],
    adopt: [a_try_is_adopted_after_its_scheduler_stops]
);
// A process has no image. Its tries outlive their scheduler and are adopted (security
// review, finding 4: a restarted scheduler started a second copy of a running try).
backend_contract_suite!(
    process,
    [
        a_successful_try_reports_exit_zero_and_its_lines,
        a_non_zero_exit_is_a_result,
        both_streams_arrive_whole_and_in_order,
        a_kill_stops_the_try_with_its_reason,
        a_cancel_stops_the_try_as_killed,
        the_state_file_reaches_the_try,
        running_tries_are_listed_by_their_labels,
        a_try_s_files_travel_to_the_next_try,
    ],
    adopt: [a_try_is_adopted_after_its_scheduler_stops]
);
backend_contract_suite!(
    nomad,
    [
        a_successful_try_reports_exit_zero_and_its_lines,
        a_non_zero_exit_is_a_result,
        both_streams_arrive_whole_and_in_order,
        a_kill_stops_the_try_with_its_reason,
        a_cancel_stops_the_try_as_killed,
        a_missing_image_fails_the_try_naming_it,
        the_state_file_reaches_the_try,
        running_tries_are_listed_by_their_labels,
        a_try_s_files_travel_to_the_next_try,
    ],
    adopt: [a_try_is_adopted_after_its_scheduler_stops]
);
