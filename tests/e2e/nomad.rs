//! The nomad backend beyond the shared contract (tests/e2e/backends.rs): what it asks Nomad for,
//! what it does when Nomad cannot place a try, that Nomad never retries on its own, and a
//! job whose tasks are split between the docker and nomad backends, run by a real scheduler.
//! Nomad is the simulator in crates/testkit/src/nomad_sim/ (no Nomad binary can be had here); its tasks
//! run as real containers on the local engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stevedore_backend::*;
use stevedore_domain::job::{PullPolicy, Resources};
use stevedore_domain::state::{FailureReason, RunState, TryState};
use stevedore_testkit::nomad_sim::NomadSim;
use stevedore_testkit::*;
use tokio::sync::mpsc;

const MINUTE: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cr3t-nomad-token";

fn config(sim: &NomadSim) -> NomadConfig {
    NomadConfig {
        address: sim.address.clone(),
        token: Some(TOKEN.into()),
        wait: Duration::from_secs(5),
        ..Default::default()
    }
}

fn spec(run: &str, task: &str, args: &[&str]) -> LaunchSpec {
    LaunchSpec {
        job_id: "nomadic".into(),
        run_id: run.into(),
        task_id: task.into(),
        try_number: 1,
        image: SYNTH.into(),
        pull_policy: PullPolicy::IfNotPresent,
        command: None,
        args: [
            "run", "--job", "nomadic", "--task", task, "--run", run, "--try", "1", "--",
        ]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect(),
        env: BTreeMap::from([("STEVEDORE_JOB_ID".to_owned(), "nomadic".to_owned())]),
        resources: Resources::default(),
        state: None,
        registry_auth: None,
        placement: Default::default(),
        labels: Default::default(),
        keep_exited: false,
        max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        isolation: Default::default(),
        workspace: None,
    }
}

async fn execute(backend: &NomadBackend, spec: LaunchSpec) -> (TryExit, Vec<TryEvent>) {
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = events_rx.recv().await {
            all.push(event);
        }
        all
    });
    let (_kill_tx, kill_rx) = kill_switch();
    let exit = backend
        .execute(spec, events_tx, kill_rx)
        .await
        .expect("Nomad reachable");
    (exit, collector.await.unwrap())
}

/// Waits until the first try of `task` has stored `count` log lines.
async fn wait_for_lines(harness: &Harness, run_id: &str, task: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        if let Some(attempt) = harness.tries(run_id, task).await.first() {
            if harness.log_lines(attempt).await.len() >= count {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the try never logged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stdout lines a try's store holds, in order.
async fn stdout_of(harness: &Harness, attempt: &stevedore_store::TryRecord) -> Vec<String> {
    harness
        .log_lines(attempt)
        .await
        .into_iter()
        .filter(|(stream, _)| stream == "stdout")
        .map(|(_, text)| text)
        .collect()
}

fn lines(events: &[TryEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            TryEvent::Line { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// A failing try runs once: Nomad's restarts and reschedules are off (the simulator applies
/// Nomad's batch defaults, three restarts and one reschedule, to a job that leaves them on).
/// The job Nomad got is one docker task with the try's image, args, resources and `Meta`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_runs_once_and_the_job_is_what_nomad_expects() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let mut task = spec("once", "fails", &["exit", "--code", "5"]);
    task.resources = Resources {
        cpu: Some(0.25),
        memory_bytes: Some(64 * 1024 * 1024),
    };
    task.keep_exited = true;
    let (exit, events) = execute(&backend, task).await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(5),
            failure: None
        }
    );
    assert_eq!(lines(&events), vec!["exiting with 5"]);
    let job_id = nomad::job_id("nomadic", "fails", "once", 1);
    // Kept (keep_exited) until the scheduler has recorded the end.
    let job = sim.job(&job_id).expect("the job is kept until discarded");
    assert_eq!(job["Type"], "batch");
    assert_eq!(job["Meta"][LABEL_TASK], "fails");
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Driver"], "docker");
    assert_eq!(task["Config"]["image"], SYNTH);
    assert_eq!(task["Resources"]["CPU"], 250);
    assert_eq!(task["Resources"]["MemoryMB"], 64);
    // Give Nomad the time it would take to restart or reschedule, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.runs(&job_id), 1, "Nomad ran the try again");
    assert_eq!(sim.allocations(&job_id).len(), 1, "Nomad rescheduled it");
    let allocation = events
        .iter()
        .find_map(|e| match e {
            TryEvent::Launched { container_id, .. } => Some(container_id.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(allocation, sim.allocations(&job_id)[0]);
    backend.discard(&allocation).await.unwrap();
    assert!(sim.job(&job_id).is_none(), "discard purges the job");
}

/// A confined try (security review, finding 7) asks Nomad's docker driver for a pids
/// limit, a read-only root filesystem with a tmpfs at /tmp, and a user; it still gets its
/// state file (in `local/`, which Nomad bind-mounts writable) and its workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_try_asks_nomad_for_its_limits_and_still_gets_its_state() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let mut task = spec("confined", "confined", &["extract", "--records", "1"]);
    task.state = Some("{\"cursor\":\"c-7\"}".to_owned());
    task.isolation = Isolation {
        pids_limit: Some(64),
        read_only_rootfs: true,
        user: Some("0".to_owned()),
    };
    task.keep_exited = true;
    let (exit, events) = execute(&backend, task).await;
    assert_eq!(exit.exit_code, Some(0), "{exit:?} {events:?}");
    assert!(
        lines(&events)
            .iter()
            .any(|l| l.contains("last cursor: c-7")),
        "{:?}",
        lines(&events)
    );
    let job = sim
        .job(&nomad::job_id("nomadic", "confined", "confined", 1))
        .expect("kept until discarded");
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Config"]["pids_limit"], 64);
    assert_eq!(task["Config"]["readonly_rootfs"], true);
    assert_eq!(task["User"], "0");
    let mounts = task["Config"]["mount"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["type"] == "tmpfs" && m["target"] == "/tmp"),
        "{mounts:?}"
    );
}

/// A try that no node can take fails with Nomad's own reason once the placement timeout
/// has passed, and its job is deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_nomad_cannot_place_fails_with_nomads_reason() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let mut config = config(&sim);
    config.placement_timeout = Duration::from_secs(3);
    let backend = NomadBackend::new(config).unwrap();
    let mut task = spec("huge", "huge", &["noop"]);
    task.resources.memory_bytes = Some(1 << 40);
    let started = std::time::Instant::now();
    let (exit, events) = execute(&backend, task).await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(exit.exit_code, None);
    let Some(FailureReason::Backend(reason)) = &exit.failure else {
        panic!("{exit:?}");
    };
    assert!(
        reason.contains("Dimension \"memory\" exhausted on 1 nodes"),
        "{reason}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, TryEvent::Note(n) if n.contains("waiting for Nomad to place the try"))
        ),
        "{events:?}"
    );
    assert!(sim.jobs().is_empty(), "{:?}", sim.jobs());
}

/// The token is sent with every call; a wrong one shows up in the health check, and the
/// namespace is the one configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_namespace_reach_nomad() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let mut wrong = config(&sim);
    wrong.token = Some("not-the-token".into());
    let error = NomadBackend::new(wrong)
        .unwrap()
        .health()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("403") && error.contains("Permission denied"),
        "{error}"
    );
    assert!(
        !error.contains("not-the-token"),
        "the token is never shown: {error}"
    );
    let mut config = config(&sim);
    config.namespace = Some("data".into());
    let backend = NomadBackend::new(config).unwrap();
    // Issue 15, item 8: Nomad's namespaces must exist; the health check says which is missing.
    let missing = backend.health().await.unwrap_err().to_string();
    assert!(
        missing.contains("Nomad has no namespace `data`")
            && missing.contains("nomad namespace apply data"),
        "{missing}"
    );
    sim.create_namespace("data");
    backend.health().await.unwrap();
    let mut task = spec("ns", "listed", &["sleep", "--seconds", "2"]);
    task.keep_exited = true;
    let (exit, _) = execute(&backend, task).await;
    assert_eq!(exit.exit_code, Some(0));
    let job = sim
        .job(&nomad::job_id("nomadic", "listed", "ns", 1))
        .unwrap();
    assert_eq!(job["Namespace"], "data");
    let listed = backend.list_running().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].task_id, "listed");
    backend.remove(&listed[0].container_id).await.unwrap();
    assert!(backend.list_running().await.unwrap().is_empty());
    // Nomad answers 200 for deregistering a job it does not have: removing twice is no error.
    backend.remove(&listed[0].container_id).await.unwrap();
}

/// No volume is shared between a run's tries on Nomad, whatever the artifact store: with a
/// folder store that cannot give the clients links (no `public_url`), a try's files are
/// still read back through the client's file system API, and a downstream try that needs
/// them fails before it starts, naming the file, its writer and what to set, instead of
/// starting on an empty workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_links_a_nomad_try_with_inputs_fails_naming_what_to_set() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let folder = tempfile::tempdir().unwrap();
    let store = stevedore_artifacts::ArtifactStore::open(&stevedore_artifacts::StoreSettings {
        url: format!("file://{}", folder.path().join("artifacts").display()),
        ..Default::default()
    })
    .unwrap();
    assert!(!store.signs_urls());
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let job = format!(
        "id: unlinked\ntasks:\n  - id: writer\n    backend: nomad\n    image: {SYNTH}\n    args: [write, --file, out/rows.jsonl, --text, '{{\"id\":7}}']\n  - id: reader\n    backend: nomad\n    image: {SYNTH}\n    args: [read, --file, out/rows.jsonl]\n    depends_on: [writer]\n"
    );
    let harness =
        Harness::start_with_artifact_store(&[("unlinked.yaml", &job)], vec![nomad], store).await;
    let run = harness.trigger("unlinked").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let writer = &harness.tries(&run.run_id, "writer").await[0];
    assert_eq!(
        writer.state,
        TryState::Success,
        "{:?}",
        writer.failure_reason
    );
    let artifacts = harness.store.run_artifacts(&run.run_id).await.unwrap();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!(artifacts[0].path, "out/rows.jsonl");
    let reader = &harness.tries(&run.run_id, "reader").await[0];
    let reason = reader.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("input file `out/rows.jsonl` (written by task `writer`)")
            && reason.contains("public_url"),
        "{reason}"
    );
    assert!(
        harness.log_lines(reader).await.is_empty(),
        "it never started"
    );
    // The writer's job was the only one registered: the reader failed before.
    let job = sim
        .registered_job(&nomad::job_id("unlinked", "writer", &run.run_id, 1))
        .expect("the writer's job was registered");
    let config = &job["TaskGroups"][0]["Tasks"][0]["Config"];
    assert_eq!(config["mount"], serde_json::Value::Null, "{config}");
    assert_eq!(
        config["volumes"],
        serde_json::json!(["local/workspace:/workspace"])
    );
    assert!(sim
        .registered_job(&nomad::job_id("unlinked", "reader", &run.run_id, 1))
        .is_none());
    harness.stop().await;
}

/// A job whose tasks are split between the docker and nomad backends runs end to end in a
/// real scheduler: the extract runs on Nomad, the load on Docker with the extract's output,
/// and the last task on Nomad again; each try records its backend and container (an
/// allocation ID on Nomad), and every log line is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_split_between_docker_and_nomad_runs_end_to_end() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let docker: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().unwrap());
    let job = format!(
        "id: split\ntasks:\n  - id: extract\n    backend: nomad\n    image: {SYNTH}\n    args: [extract, --records, 7]\n    resources: {{cpu: 0.5, memory: 128Mi}}\n  - id: load\n    backend: docker\n    image: {SYNTH}\n    args: [load, --inputs, \"{{{{ outputs.extract.records }}}},3\"]\n    depends_on: [extract]\n  - id: report\n    backend: nomad\n    image: {SYNTH}\n    args: [count, --lines, 4, --every-ms, 10]\n    depends_on: [load]\n"
    );
    let harness = Harness::start_with_backends(&[("split.yaml", &job)], vec![docker, nomad]).await;
    let run = harness.trigger("split").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    for (task, backend) in [
        ("extract", "nomad"),
        ("load", "docker"),
        ("report", "nomad"),
    ] {
        let tries = harness.tries(&run.run_id, task).await;
        assert_eq!(tries.len(), 1, "{task}: {tries:?}");
        assert_eq!(tries[0].state, TryState::Success, "{task}");
        assert_eq!(tries[0].backend, backend, "{task}");
        let container = tries[0].container_id.clone().unwrap_or_default();
        if backend == "nomad" {
            let job_id = nomad::job_id("split", task, &run.run_id, 1);
            assert_eq!(sim.allocations(&job_id), vec![container], "{task}");
        }
    }
    let load = &harness.tries(&run.run_id, "load").await[0];
    let logged = harness.log_lines(load).await;
    assert!(
        logged
            .iter()
            .any(|(_, text)| text == "loading 10 rows into the warehouse"),
        "{logged:?}"
    );
    let report = &harness.tries(&run.run_id, "report").await[0];
    let logged = stdout_of(&harness, report).await;
    assert_eq!(logged, vec!["out 1", "out 2", "out 3", "out 4"]);
    // Each try's job is purged once its end is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !sim.jobs().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left: {:?}",
            sim.jobs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.stop().await;
}

/// A scheduler that stops while a Nomad try runs leaves it running; the next one adopts it
/// and records its end and every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_adopts_its_nomad_tries() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let job = format!(
        "id: long\ntasks:\n  - id: count\n    backend: nomad\n    image: {SYNTH}\n    args: [count, --lines, 20, --every-ms, 200]\n"
    );
    let harness = Harness::start_with_backends(&[("long.yaml", &job)], vec![nomad]).await;
    let run = harness.trigger("long").await;
    // Wait for a few lines, then restart the scheduler under the running try.
    wait_for_lines(&harness, &run.run_id, "count", 3).await;
    let harness = harness.restart().await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "count").await;
    assert_eq!(tries.len(), 1, "{tries:?}");
    let logged = stdout_of(&harness, &tries[0]).await;
    assert_eq!(logged, counted(20).0);
    assert_eq!(sim.runs(&nomad::job_id("long", "count", &run.run_id, 1)), 1);
    harness.stop().await;
}

/// Log streams that break in the middle of a frame are resumed from the last byte received:
/// every line arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_log_streams_resume_without_loss_or_duplicates() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    sim.break_log_streams_after(2);
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let (exit, events) = execute(
        &backend,
        spec(
            "cuts",
            "counts",
            &["count", "--lines", "60", "--every-ms", "15"],
        ),
    )
    .await;
    assert_eq!(exit.exit_code, Some(0));
    let lines: Vec<(Stream, String)> = events
        .iter()
        .filter_map(|e| match e {
            TryEvent::Line { stream, text, .. } => Some((*stream, text.clone())),
            _ => None,
        })
        .collect();
    let (stdout, stderr) = counted(60);
    assert_eq!(stream_lines(&lines, Stream::Stdout), stdout);
    assert_eq!(stream_lines(&lines, Stream::Stderr), stderr);
    assert!(
        sim.cut_log_streams() >= 4,
        "only {} cuts",
        sim.cut_log_streams()
    );
}

/// An image in a registry that asks for a login is pulled by Nomad's docker driver with the
/// try's registry credentials (the task's `auth`); without them the pull fails, and the try
/// fails with Nomad's message naming the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_is_pulled_with_the_tries_registry_credentials() {
    use bollard::query_parameters::RemoveImageOptionsBuilder;
    require_images().await;
    let registry = Registry::start_with_login("puller", "pull-pass-1");
    let docker = DockerBackend::from_env().unwrap().client().unwrap();
    let repository = format!("{}/stevedore/private-synth", registry.address);
    let reference = format!("{repository}:0.1.0");
    let credentials = bollard::auth::DockerCredentials {
        username: Some("puller".into()),
        password: Some("pull-pass-1".into()),
        serveraddress: Some(registry.address.clone()),
        ..Default::default()
    };
    push_image_as(&docker, SYNTH, &repository, "0.1.0", credentials).await;
    docker
        .remove_image(
            &reference,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await
        .unwrap();

    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let mut task = spec("private", "anonymous", &["noop"]);
    task.image = reference.clone();
    let (exit, _) = execute(&backend, task).await;
    match &exit.failure {
        Some(FailureReason::Image(message)) => {
            assert!(
                message.contains(&format!("Failed to pull `{reference}`")),
                "{message}"
            )
        }
        other => panic!("pulled without credentials: {other:?}"),
    }
    let mut task = spec("private", "authenticated", &["extract", "--records", "2"]);
    task.image = reference.clone();
    task.registry_auth = Some(RegistryAuth {
        username: "puller".into(),
        password: "pull-pass-1".into(),
        server: None,
    });
    let (exit, events) = execute(&backend, task).await;
    assert_eq!(exit.exit_code, Some(0), "{events:?}");
    let _ = docker
        .remove_image(
            &reference,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await;
}

/// Nomad's API fails for a while (no cluster leader) while a try runs: the try keeps
/// running on its client, the backend is not ready meanwhile, and the scheduler re-attaches
/// once Nomad answers again: one try, its exit, every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_outage_under_a_running_try_loses_nothing() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let job = format!(
        "id: outage\ntasks:\n  - id: count\n    backend: nomad\n    image: {SYNTH}\n    args: [count, --lines, 30, --every-ms, 200]\n"
    );
    let harness = Harness::start_with_backends(&[("outage.yaml", &job)], vec![nomad]).await;
    let run = harness.trigger("outage").await;
    wait_for_lines(&harness, &run.run_id, "count", 3).await;
    sim.set_outage(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.set_outage(false);
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "count").await;
    assert_eq!(tries.len(), 1, "{tries:?}");
    assert_eq!(tries[0].exit_code, Some(0));
    let logged = stdout_of(&harness, &tries[0]).await;
    assert_eq!(logged, counted(30).0);
    assert_eq!(
        sim.runs(&nomad::job_id("outage", "count", &run.run_id, 1)),
        1
    );
    harness.stop().await;
}

/// Issue 15, item 1: Nomad's client evaluates a docker task's config strings as HCL2
/// templates, so `${...}` in an arg was replaced (or failed the try, unknown) and `%{` broke
/// the config. Every string Stevedore puts there is escaped: the try gets its args as
/// written. (The simulator evaluates the config as the client does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_with_template_marks_reach_the_container_as_written() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let written = "1,${NOMAD_ALLOC_ID}${HOME}%{ if true }";
    let mut task = spec("templated", "marks", &["load", "--inputs", written]);
    task.labels.insert(
        "io.stevedore.note".to_owned(),
        "${NOMAD_ALLOC_ID}".to_owned(),
    );
    let (exit, events) = execute(&backend, task).await;
    assert_eq!(exit.exit_code, Some(1), "{exit:?}");
    let printed = lines(&events).join("\n");
    assert!(
        printed.contains("input `${NOMAD_ALLOC_ID}${HOME}%{ if true }` is not a count"),
        "{printed}"
    );
}

/// Issue 15, item 5: a prestart hook's failure reaches the backend as a `Task hook failed`
/// event, then `Not Restarting`, which says only that it is final. The try's reason is the
/// hook's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prestart_hook_gives_the_try_its_reason() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    sim.fail_prestart_hook(
        "template",
        "Template failed: read local/state.json: permission denied",
    );
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let (exit, _) = execute(&backend, spec("hooked", "t", &["noop"])).await;
    assert_eq!(exit.exit_code, None);
    let reason = format!("{:?}", exit.failure.expect("a reason"));
    assert!(
        reason.contains("template: Template failed: read local/state.json: permission denied"),
        "{reason}"
    );
}

/// Issue 15, item 7: on a fresh cluster the allocations table has index 0, and Nomad
/// answers a query for index 0 at once; a backend that asked again with the index it got
/// would spin for the whole wait for placement. It keeps its queries blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_placement_on_a_fresh_cluster_does_not_spin() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let mut config = config(&sim);
    config.placement_timeout = Duration::from_secs(2);
    let backend = NomadBackend::new(config).unwrap();
    let mut task = spec("fresh", "waits", &["noop"]);
    task.resources.memory_bytes = Some(1 << 40);
    let (exit, _) = execute(&backend, task).await;
    assert_eq!(exit.exit_code, None);
    let queries = sim.blocking_queries();
    assert!(queries < 20, "{queries} blocking queries in a 2 s wait");
}

/// Issue 15, item 8: Nomad answers 500 both for a job it refuses (validation) and when it has
/// no leader. A refused job fails the try with Nomad's words; an outage at registration
/// holds the try (the backend is unavailable, nothing was registered), as it holds any try
/// while Nomad cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_job_fails_the_try_and_an_outage_at_registration_holds_it() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let mut tiny = spec("refused", "tiny", &["noop"]);
    tiny.resources.memory_bytes = Some(1024 * 1024);
    let (exit, _) = execute(&backend, tiny).await;
    let Some(FailureReason::Backend(reason)) = &exit.failure else {
        panic!("{exit:?}");
    };
    assert!(
        reason.contains("minimum MemoryMB value is 10; got 1"),
        "{reason}"
    );
    sim.set_outage(true);
    let (events_tx, _events) = mpsc::channel(16);
    let (_kill_tx, kill_rx) = kill_switch();
    let held = backend
        .execute(spec("held", "t", &["noop"]), events_tx, kill_rx)
        .await;
    assert!(
        matches!(&held, Err(BackendError::Unavailable(message)) if message.contains("No cluster leader")),
        "{held:?}"
    );
    sim.set_outage(false);
    assert!(sim.jobs().is_empty(), "{:?}", sim.jobs());
}

/// The capabilities of the policy Stevedore documents for its token
/// (`deploy/nomad/stevedore-policy.hcl`).
fn documented_capabilities() -> Vec<String> {
    let policy = std::fs::read_to_string(repo_root().join("deploy/nomad/stevedore-policy.hcl"))
        .expect("the documented policy");
    let line = policy
        .lines()
        .find(|line| line.trim_start().starts_with("capabilities"))
        .expect("a capabilities line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Issue 15, item 2: the documented token lacked `list-jobs`, which the health check needs,
/// and a token without `read-logs` lost every line in silence. The simulator checks each
/// endpoint's capability as Nomad does: a try runs whole with exactly the documented
/// policy, a token without `read-logs` fails its try saying so, and one without `list-jobs`
/// is told what it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_token_policy_is_enough_and_a_missing_capability_is_named() {
    require_images().await;
    let granted = documented_capabilities();
    assert_eq!(
        granted,
        [
            "list-jobs",
            "read-job",
            "submit-job",
            "read-logs",
            "read-fs"
        ]
    );
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    let sim = NomadSim::start_with_policy(TOKEN, &granted).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    backend.health().await.unwrap();
    let (exit, events) = execute(&backend, spec("policy", "t", &["exit", "--code", "0"])).await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(0),
            failure: None
        }
    );
    assert_eq!(lines(&events), ["exiting with 0"]);

    let sim = NomadSim::start_with_policy(TOKEN, &["list-jobs", "read-job", "submit-job"]).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let (exit, _) = execute(&backend, spec("nologs", "t", &["exit", "--code", "0"])).await;
    let Some(FailureReason::Backend(reason)) = &exit.failure else {
        panic!("{exit:?}");
    };
    assert!(
        reason.contains("the token needs the read-logs capability"),
        "{reason}"
    );

    let sim = NomadSim::start_with_policy(TOKEN, &["read-job", "submit-job", "read-logs"]).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let error = backend.health().await.unwrap_err().to_string();
    assert!(
        error.contains("403") && error.contains("the token needs list-jobs"),
        "{error}"
    );
}

/// The block `kind "label"` of `body`.
fn hcl_block<'a>(body: &'a hcl::Body, kind: &str, label: &str) -> &'a hcl::Body {
    body.blocks()
        .find(|b| b.identifier() == kind && b.labels().first().map(|l| l.as_str()) == Some(label))
        .map(|b| b.body())
        .unwrap_or_else(|| panic!("no {kind} \"{label}\" block"))
}

/// The unlabelled block `kind` of `body`.
fn hcl_section<'a>(body: &'a hcl::Body, kind: &str) -> &'a hcl::Body {
    body.blocks()
        .find(|b| b.identifier() == kind && b.labels().is_empty())
        .map(|b| b.body())
        .unwrap_or_else(|| panic!("no {kind} block"))
}

/// The attribute `key` of `body`, as HCL writes it.
fn hcl_attribute(body: &hcl::Body, key: &str) -> String {
    body.attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr().to_string())
        .unwrap_or_else(|| panic!("no attribute {key}"))
}

/// Issue 15, item 3: `deploy/nomad/stevedore.nomad.hcl` is HCL2 that parses (as Nomad's
/// jobspec parser reads it), and sets what Stevedore relies on: the socket's group by number
/// (Docker looks a name up in the image's /etc/group, which has no `docker` group), the
/// tries' namespace set explicitly (Nomad sets NOMAD_NAMESPACE in every task to its own
/// job's namespace), the secrets from a Nomad Variable, two schedulers, the server's health
/// check.
#[test]
fn the_nomad_deploy_spec_parses_and_sets_what_stevedore_relies_on() {
    let text = std::fs::read_to_string(repo_root().join("deploy/nomad/stevedore.nomad.hcl"))
        .expect("the spec");
    let spec = hcl::parse(&text).expect("deploy/nomad/stevedore.nomad.hcl is valid HCL2");
    let job = hcl_block(&spec, "job", "stevedore");
    let scheduler_group = hcl_block(job, "group", "scheduler");
    assert_eq!(hcl_attribute(scheduler_group, "count"), "2");
    let scheduler = hcl_block(scheduler_group, "task", "scheduler");
    let config = hcl_section(scheduler, "config");
    let group_add: String = hcl_attribute(config, "group_add")
        .split_whitespace()
        .collect();
    assert_eq!(group_add, "[var.docker_gid]");
    let gid = hcl_attribute(hcl_block(&spec, "variable", "docker_gid"), "default");
    assert!(
        gid.trim_matches('"').chars().all(|c| c.is_ascii_digit()),
        "the socket's group is a number: {gid}"
    );
    let env = hcl_section(scheduler, "env");
    assert_eq!(hcl_attribute(env, "NOMAD_NAMESPACE"), "var.tries_namespace");
    let namespace = hcl_attribute(hcl_block(&spec, "variable", "tries_namespace"), "default");
    let policy =
        std::fs::read_to_string(repo_root().join("deploy/nomad/stevedore-policy.hcl")).unwrap();
    let policy = hcl::parse(&policy).expect("the policy is valid HCL2");
    assert!(
        policy.blocks().any(|b| b.identifier() == "namespace"
            && b.labels().first().map(|l| format!("\"{}\"", l.as_str()))
                == Some(namespace.clone())),
        "the policy names the tries' namespace {namespace}"
    );
    let secrets = hcl_section(scheduler, "template");
    let data = hcl_attribute(secrets, "data");
    for needed in [
        "nomadVar \"nomad/jobs/stevedore\"",
        "STEVEDORE_DB=",
        "NOMAD_TOKEN=",
    ] {
        assert!(
            data.contains(needed),
            "the scheduler's secrets template lacks {needed}"
        );
    }
    assert_eq!(hcl_attribute(secrets, "env"), "true");
    let server = hcl_block(job, "group", "server");
    let check = hcl_section(hcl_section(server, "service"), "check");
    assert_eq!(hcl_attribute(check, "path"), "\"/api/v1/health\"");
}

/// Waits until Nomad has run the job's task `count` times (containers started).
async fn wait_for_runs(sim: &NomadSim, job_id: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + MINUTE;
    while sim.runs(job_id) < count {
        assert!(tokio::time::Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15, item 4: Nomad replaces a lost node's allocation, and a preempted one, whatever
/// the reschedule policy says. The try ends as a backend failure naming what Nomad did
/// (never the task's exit 137), and the job is stopped at once, so no replacement runs
/// beside Stevedore's own retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_preempted_allocation_fails_the_try_and_is_never_replaced() {
    require_images().await;
    let sim = Arc::new(NomadSim::start(Some(TOKEN)).await);
    let backend = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    for (run, fault) in [("lost", "lose the node"), ("preempted", "preempt")] {
        let nomad_job = nomad::job_id("nomadic", "t", run, 1);
        let running = tokio::spawn({
            let backend = backend.clone();
            async move { execute(&backend, spec(run, "t", &["sleep", "--seconds", "60"])).await }
        });
        wait_for_runs(&sim, &nomad_job, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match fault {
            "lose the node" => sim.lose_node(),
            _ => sim.preempt(&nomad_job),
        }
        let (exit, _) = running.await.unwrap();
        assert_eq!(exit.exit_code, None, "{fault}: {exit:?}");
        let Some(FailureReason::Backend(reason)) = &exit.failure else {
            panic!("{fault}: {exit:?}");
        };
        let expected = match fault {
            "lose the node" => "Nomad lost the allocation",
            _ => "Nomad evicted the allocation",
        };
        assert!(reason.contains(expected), "{reason}");
        // Past the moment Nomad would have placed the replacement.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(sim.runs(&nomad_job), 1, "{fault}: Nomad ran a replacement");
    }
}

/// The stdout lines and the notes of a try's events, in order.
fn stdout_and_notes(events: &[TryEvent]) -> (Vec<String>, Vec<String>) {
    let mut stdout = Vec::new();
    let mut notes = Vec::new();
    for event in events {
        match event {
            TryEvent::Line {
                stream: Stream::Stdout,
                text,
                ..
            } => stdout.push(text.clone()),
            TryEvent::Note(text) if !text.starts_with("Nomad placed the try") => {
                notes.push(text.clone())
            }
            _ => {}
        }
    }
    (stdout, notes)
}

/// Issue 15, item 6: Nomad's logmon rotates a task's log into numbered files and deletes the
/// oldest, and `origin=start&offset=N` counts from the oldest file still there, so a byte
/// count kept since the task began points past what was not read yet once a file is gone.
/// With small files and every stream cut after two frames, the log still arrives whole,
/// in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_resumes_without_loss_across_nomads_rotation() {
    init_logging();
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    sim.rotate_logs(512, 4);
    sim.break_log_streams_after(2);
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let (exit, events) = execute(
        &backend,
        spec(
            "rotated",
            "counts",
            &["count", "--lines", "600", "--every-ms", "4"],
        ),
    )
    .await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(0),
            failure: None
        }
    );
    let (stdout, notes) = stdout_and_notes(&events);
    assert_eq!(notes, Vec::<String>::new());
    assert_eq!(stdout, counted(600).0);
    assert!(
        sim.cut_log_streams() >= 10,
        "only {} cuts",
        sim.cut_log_streams()
    );
}

/// Issue 15, item 6: what Nomad deleted before it was read (here: the log rotates while
/// the servers have no path to the client) is said in the try's log, and the log goes on
/// after it, never repeating a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_nomad_rotated_away_unread_is_said_and_the_log_goes_on() {
    require_images().await;
    let sim = Arc::new(NomadSim::start(Some(TOKEN)).await);
    sim.rotate_logs(256, 2);
    let backend = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let nomad_job = nomad::job_id("nomadic", "counts", "gap", 1);
    let running = tokio::spawn({
        let backend = backend.clone();
        async move {
            execute(
                &backend,
                spec(
                    "gap",
                    "counts",
                    &["count", "--lines", "400", "--every-ms", "10"],
                ),
            )
            .await
        }
    });
    wait_for_runs(&sim, &nomad_job, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.disconnect_client(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.disconnect_client(false);
    let (exit, events) = running.await.unwrap();
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let (stdout, notes) = stdout_and_notes(&events);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Nomad no longer has part of the try's stdout")),
        "{notes:?}"
    );
    assert_eq!(stdout.last().map(String::as_str), Some("out 400"));
    assert!(
        stdout.len() < 300,
        "{} lines: nothing was rotated away",
        stdout.len()
    );
    let numbers: Vec<u32> = stdout
        .iter()
        .map(|line| line.trim_start_matches("out ").parse().expect(line))
        .collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "a line repeated or came out of order: {numbers:?}"
    );
    assert_eq!(numbers[0], 1, "the log's start was read before the outage");
}

/// Issue 15, item 6: an ended allocation the client garbage-collected before its log was
/// read answers 404 `Unknown allocation`; the try keeps its exit code and its log says Nomad
/// no longer has the rest, rather than ending short in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_collected_with_its_allocation_is_said_lost() {
    require_images().await;
    let sim = Arc::new(NomadSim::start(Some(TOKEN)).await);
    let backend = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let nomad_job = nomad::job_id("nomadic", "counts", "collected", 1);
    let running = tokio::spawn({
        let backend = backend.clone();
        async move {
            execute(
                &backend,
                spec(
                    "collected",
                    "counts",
                    &["count", "--lines", "20", "--every-ms", "100"],
                ),
            )
            .await
        }
    });
    wait_for_runs(&sim, &nomad_job, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.disconnect_client(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.collect_on_client(&nomad_job);
    sim.disconnect_client(false);
    let (exit, events) = running.await.unwrap();
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(0),
            failure: None
        }
    );
    let (stdout, notes) = stdout_and_notes(&events);
    assert!(
        notes.iter().any(
            |n| n.contains("Nomad no longer has the try's stdout past byte")
                && n.contains("its client garbage-collected allocation")
        ),
        "{notes:?}"
    );
    assert!(stdout.len() < 20, "{stdout:?}");
    assert_eq!(stdout, counted(20).0[..stdout.len()].to_vec());
}

/// Issue 15, item 8: Nomad's framer beats every second on a log stream with nothing to send
/// (`{}`); a task silent for seconds keeps its stream, and no beat becomes a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_task_keeps_its_log_stream_through_heartbeats() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let (exit, events) = execute(
        &backend,
        spec(
            "quiet",
            "counts",
            &["count", "--lines", "3", "--every-ms", "2500"],
        ),
    )
    .await;
    assert_eq!(exit.exit_code, Some(0));
    let (stdout, notes) = stdout_and_notes(&events);
    assert_eq!(stdout, counted(3).0);
    assert_eq!(notes, Vec::<String>::new());
    assert!(
        sim.log_heartbeats() >= 4,
        "{} heartbeats",
        sim.log_heartbeats()
    );
}

/// Issue 15, item 7: Nomad's agents serve TLS with certificates for `server.<region>.nomad`,
/// not for the address a scheduler dials. `NOMAD_TLS_SERVER_NAME` checks the certificate
/// against that name (a try runs through it, logs and all), `NOMAD_CAPATH` trusts a folder
/// of CAs, `NOMAD_SKIP_VERIFY` checks nothing; without them the certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_over_tls_checks_the_server_name_it_is_given() {
    require_images().await;
    let sim = NomadSim::start(Some(TOKEN)).await;
    let dir = tempfile::tempdir().unwrap();
    make_certificates_for(dir.path(), "DNS:server.global.nomad");
    let tls = dir.path().join("tls");
    let front = TlsFront::start(
        sim.address.trim_start_matches("http://"),
        &tls.join("server-cert.pem"),
        &tls.join("server-key.pem"),
    )
    .await;
    let over_tls = |change: &dyn Fn(&mut NomadConfig)| {
        let mut config = config(&sim);
        config.address = front.address.clone();
        change(&mut config);
        NomadBackend::new(config).unwrap()
    };
    let trusted = over_tls(&|c| c.ca_cert = Some(tls.join("ca.pem")));
    let refused = trusted.health().await.unwrap_err().to_string();
    assert!(refused.contains("cannot reach Nomad"), "{refused}");

    let named = over_tls(&|c| {
        c.ca_cert = Some(tls.join("ca.pem"));
        c.tls_server_name = Some("server.global.nomad".into());
    });
    named.health().await.unwrap();
    let (exit, events) = execute(&named, spec("tls", "counts", &["count", "--lines", "5"])).await;
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    assert_eq!(stdout_and_notes(&events).0, counted(5).0);

    let authorities = dir.path().join("authorities");
    std::fs::create_dir(&authorities).unwrap();
    std::fs::copy(tls.join("ca.pem"), authorities.join("nomad-ca.pem")).unwrap();
    let folder = over_tls(&|c| {
        c.ca_path = Some(authorities.clone());
        c.tls_server_name = Some("server.global.nomad".into());
    });
    folder.health().await.unwrap();

    let unknown_ca = over_tls(&|c| c.tls_server_name = Some("server.global.nomad".into()));
    assert!(
        unknown_ca.health().await.is_err(),
        "a CA nobody named is trusted"
    );
    let unchecked = over_tls(&|c| c.skip_verify = true);
    unchecked.health().await.unwrap();
}

/// Issue 15, item 7: Nomad's docker driver pulls an image tagged `latest` every time, the
/// node's copy notwithstanding, so `pull_policy: if_not_present` means `always` for it on
/// Nomad (docs/backends.md); any other tag is taken from the node. Here the image's registry
/// does not answer: the `latest` try fails to pull, the versioned one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_pulls_a_latest_image_whatever_the_pull_policy() {
    use bollard::query_parameters::{RemoveImageOptionsBuilder, TagImageOptionsBuilder};
    require_images().await;
    let docker = DockerBackend::from_env().unwrap().client().unwrap();
    let repository = "127.0.0.1:9/stevedore/synth-on-the-node";
    for tag in ["latest", "0.1.0"] {
        let options = TagImageOptionsBuilder::default()
            .repo(repository)
            .tag(tag)
            .build();
        docker.tag_image(SYNTH, Some(options)).await.unwrap();
    }
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let mut versioned = spec("tags", "versioned", &["noop"]);
    versioned.image = format!("{repository}:0.1.0");
    let (exit, _) = execute(&backend, versioned).await;
    assert_eq!(
        exit,
        TryExit {
            exit_code: Some(0),
            failure: None
        }
    );
    let mut latest = spec("tags", "latest", &["noop"]);
    latest.image = format!("{repository}:latest");
    let (exit, _) = execute(&backend, latest).await;
    for tag in ["latest", "0.1.0"] {
        let _ = docker
            .remove_image(
                &format!("{repository}:{tag}"),
                Some(RemoveImageOptionsBuilder::default().build()),
                None,
            )
            .await;
    }
    match &exit.failure {
        Some(FailureReason::Image(message)) => assert!(
            message.contains(&format!("Failed to pull `{repository}:latest`")),
            "{message}"
        ),
        other => panic!("the node's `latest` image was used: {other:?}"),
    }
}

/// Issue 16, must show 2: the quickstart's job on Nomad with `extract` placed on one client
/// node and `load` on another, whose tasks share nothing (each allocation has directories of
/// its own, and no docker volume is used): load's client fetches extract's records file
/// through an `artifact` block from a URL the S3 store pre-signed, checked by its sha256,
/// and the file went into the store through the first client's file system API. The
/// warehouse holds every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_split_across_two_nomad_clients_loads_every_record_once() {
    require_images().await;
    let s3 = S3Server::start();
    let sim =
        NomadSim::start_with_nodes(Some(TOKEN), &[&[("node", "one")], &[("node", "two")]]).await;
    let services = PipelineServices::start(300);
    let job = services
        .job(&read_repo_job("charges_to_warehouse.yaml"))
        .await
        .replace(
            "    args: [--url,",
            "    backend: nomad\n    placement: {node: one}\n    args: [--url,",
        )
        .replace(
            "    depends_on: [extract]\n",
            "    depends_on: [extract]\n    backend: nomad\n    placement: {node: two}\n",
        );
    assert_eq!(job.matches("backend: nomad").count(), 2, "{job}");
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let artifacts = stevedore_artifacts::StoreSettings {
        url: format!("s3://{}/nomad", s3.bucket),
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    };
    let harness = services
        .harness_on(&[("charges.yaml", &job)], vec![nomad], Some(artifacts))
        .await;
    let run = harness.trigger("charges_to_warehouse").await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    let load = &harness.tries(&run.run_id, "load").await[0];
    let (extract_log, load_log) = (
        harness.log_lines(extract).await,
        harness.log_lines(load).await,
    );
    assert_eq!(
        run.state,
        RunState::Success,
        "{:?} {:?} {load_log:?}",
        extract.failure_reason,
        load.failure_reason
    );
    let on_node = |log: &[(String, String)], node: &str| {
        log.iter()
            .any(|(_, text)| text.contains(&format!("on node {node}")))
    };
    assert!(on_node(&extract_log, "sim-node-1"), "{extract_log:?}");
    assert!(on_node(&load_log, "sim-node-2"), "{load_log:?}");
    // No try used a docker volume: the file went through the store.
    for task in ["extract", "load"] {
        let job = sim
            .registered_job(&nomad::job_id("charges_to_warehouse", task, &run.run_id, 1))
            .expect("registered");
        let config = &job["TaskGroups"][0]["Tasks"][0]["Config"];
        assert_eq!(config["mount"], serde_json::Value::Null, "{task}: {config}");
    }
    let artifacts = harness.store.run_artifacts(&run.run_id).await.unwrap();
    let kept: Vec<_> = artifacts
        .iter()
        .map(|a| (a.task_id.as_str(), a.path.as_str()))
        .collect();
    assert!(
        kept.iter()
            .any(|(task, path)| *task == "extract" && path.ends_with(".jsonl")),
        "{kept:?}"
    );
    assert_eq!(
        services
            .warehouse
            .query("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM charges"),
        "300|300|1|300"
    );
    harness.stop().await;
}

/// Issue 16, must show 4 on Nomad: an input the store does not have fails the try before
/// its task starts, with a reason naming the file and the task that wrote it, and never the
/// signed URL; the try's files that were written are captured through the client's file
/// system API with their sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nomad_a_missing_input_fails_naming_it_and_outputs_are_read_back() {
    require_images().await;
    let s3 = S3Server::start();
    let sim = NomadSim::start(Some(TOKEN)).await;
    let backend = NomadBackend::new(config(&sim)).unwrap();
    let store = stevedore_artifacts::ArtifactStore::open(&stevedore_artifacts::StoreSettings {
        url: format!("s3://{}/missing", s3.bucket),
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    })
    .unwrap();
    let run = format!("fs-{}", std::process::id());
    // A writer: its file is read back through /v1/client/fs.
    let mut writer = spec(
        &run,
        "writer",
        &["write", "--file", "out/rows.jsonl", "--text", "{\"id\":7}"],
    );
    writer.keep_exited = true;
    writer.workspace = Some(WorkspaceExchange {
        store: store.clone(),
        inputs: Vec::new(),
    });
    let (exit, events) = execute(&backend, writer).await;
    assert_eq!(exit.exit_code, Some(0), "{exit:?} {events:?}");
    let allocation = events
        .iter()
        .find_map(|e| match e {
            TryEvent::Launched { container_id, .. } => Some(container_id.clone()),
            _ => None,
        })
        .unwrap();
    let limits = CaptureLimits {
        max_file_size: 1 << 20,
        max_files: 10,
    };
    let files = backend
        .capture(&allocation, &run, &store, &[], &limits)
        .await
        .unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].path, "out/rows.jsonl");
    assert_eq!(files[0].size, "{\"id\":7}".len() as u64);
    let tight = CaptureLimits {
        max_file_size: 3,
        max_files: 10,
    };
    let over = backend
        .capture(&allocation, &run, &store, &[], &tight)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        over.contains("out/rows.jsonl") && over.contains("max_artifact_size"),
        "{over}"
    );
    backend.discard(&allocation).await.unwrap();

    // A reader on another try: its input is there, then one that is not.
    let mut reader = spec(&run, "reader", &["read", "--file", "out/rows.jsonl"]);
    reader.try_number = 1;
    reader.workspace = Some(WorkspaceExchange {
        store: store.clone(),
        inputs: vec![StagedFile {
            file: files[0].clone(),
            task_id: "writer".into(),
        }],
    });
    let (exit, events) = execute(&backend, reader.clone()).await;
    assert_eq!(exit.exit_code, Some(0), "{exit:?} {events:?}");
    assert_eq!(lines(&events), vec!["read out/rows.jsonl: {\"id\":7}"]);

    let mut missing = reader;
    missing.task_id = "reader2".into();
    missing.workspace = Some(WorkspaceExchange {
        store,
        inputs: vec![StagedFile {
            file: WorkspaceFile {
                path: "gone.jsonl".into(),
                size: 5,
                sha256: "0".repeat(64),
                modified: 0,
            },
            task_id: "writer".into(),
        }],
    });
    let (exit, events) = execute(&backend, missing).await;
    let Some(FailureReason::Artifact(reason)) = &exit.failure else {
        panic!("{exit:?} {events:?}");
    };
    assert!(
        reason.contains("input file `gone.jsonl` (written by task `writer`)")
            && reason.contains("404"),
        "{reason}"
    );
    assert!(!reason.contains("X-Amz-Signature"), "{reason}");
    assert!(
        lines(&events).is_empty(),
        "the task never started: {events:?}"
    );
}

/// Issue 16, must show 2 with the embedded default store (a folder): the Nomad clients
/// fetch a try's inputs from links `stevedore server` serves (signed with a key derived
/// from the secret key, short-lived), so a reader on the second client gets the file a
/// writer on the first left, read back through the first client's file system API. No
/// docker volume is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_store_s_links_carry_files_between_two_nomad_clients() {
    require_images().await;
    let sim =
        NomadSim::start_with_nodes(Some(TOKEN), &[&[("node", "one")], &[("node", "two")]]).await;
    let folder = tempfile::tempdir().unwrap();
    let store = crate::backends::served_folder_store(folder.path()).await;
    let nomad: Arc<dyn Backend> = Arc::new(NomadBackend::new(config(&sim)).unwrap());
    let job = format!(
        "id: links\ntasks:\n  - id: writer\n    backend: nomad\n    placement: {{node: one}}\n    image: {SYNTH}\n    args: [write, --file, out/rows.jsonl, --text, '{{\"id\":7}}']\n  - id: reader\n    backend: nomad\n    placement: {{node: two}}\n    image: {SYNTH}\n    args: [read, --file, out/rows.jsonl]\n    depends_on: [writer]\n"
    );
    let harness =
        Harness::start_with_artifact_store(&[("links.yaml", &job)], vec![nomad], store).await;
    let run = harness.trigger("links").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    let reader = &harness.tries(&run.run_id, "reader").await[0];
    let logged = harness.log_lines(reader).await;
    assert_eq!(
        run.state,
        RunState::Success,
        "{:?} {logged:?}",
        reader.failure_reason
    );
    assert!(
        logged
            .iter()
            .any(|(_, text)| text == "read out/rows.jsonl: {\"id\":7}"),
        "{logged:?}"
    );
    assert!(
        logged
            .iter()
            .any(|(_, text)| text.contains("on node sim-node-2")),
        "{logged:?}"
    );
    let artifacts = harness.store.run_artifacts(&run.run_id).await.unwrap();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!(
        (artifacts[0].task_id.as_str(), artifacts[0].path.as_str()),
        ("writer", "out/rows.jsonl")
    );
    harness.stop().await;
}
