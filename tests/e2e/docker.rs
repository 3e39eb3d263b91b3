//! End-to-end: jobs run as real containers on the local Docker engine.

use std::sync::Arc;
use std::time::Duration;

use stevedore_backend::docker::TlsFiles;
use stevedore_backend::{Backend, DockerBackend};
use stevedore_domain::state::{RunState, TaskState, TryState};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_job_succeeds_with_exit_codes_digests_and_ordered_logs() {
    let harness = Harness::start(&[("example_etl.yaml", &read_repo_job("example_etl.yaml"))]).await;
    let run = harness.trigger("example_etl").await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);

    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    let ids: Vec<&str> = instances.iter().map(|ti| ti.task_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "extract",
            "transform_0",
            "transform_1",
            "transform_2",
            "load"
        ]
    );
    for ti in &instances {
        assert_eq!(ti.state, TaskState::Success, "{ti:?}");
        let tries = harness.tries(&run.run_id, &ti.task_id).await;
        assert_eq!(tries.len(), 1, "{tries:?}");
        assert_eq!(tries[0].exit_code, Some(0));
        assert_eq!(tries[0].backend, "docker");
        let digest = tries[0].image_digest.as_deref().unwrap_or_default();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "digest {digest:?}"
        );
        assert!(tries[0].container_id.is_some());
    }

    // Lines of one stream keep their order (the engine keeps no order *between* stdout
    // and stderr); the streams are told apart; protocol `log` messages become `log` lines.
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    let lines = harness.log_lines(extract).await;
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s != "stderr")
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(stdout.len(), 9, "{lines:?}");
    assert!(
        stdout[0].starts_with("info: extracting 1200 records for ["),
        "{lines:?}"
    );
    for (index, done) in [300, 600, 900, 1200].iter().enumerate() {
        assert_eq!(
            stdout[1 + index],
            format!("{{\"done\":{done},\"total\":1200,\"type\":\"progress\"}}")
        );
    }
    assert_eq!(
        stdout[5],
        "{\"key\":\"records\",\"type\":\"output\",\"value\":1200}"
    );
    assert!(stdout[8].starts_with("{\"type\":\"state\""), "{lines:?}");
    let stderr: Vec<&(String, String)> = lines.iter().filter(|(s, _)| s == "stderr").collect();
    assert_eq!(
        stderr,
        [&(
            "stderr".to_owned(),
            "extract finished without warnings".to_owned()
        )]
    );
    assert_eq!(
        lines
            .iter()
            .find(|(_, t)| t.starts_with("info: extracting"))
            .unwrap()
            .0,
        "log"
    );

    let transform = &harness.tries(&run.run_id, "transform_2").await[0];
    let lines = harness.log_lines(transform).await;
    assert!(
        lines.contains(&("stderr".to_owned(), "partition 2: 400 rows".to_owned())),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(s, t)| s == "stdout" && t.starts_with("interval: ")),
        "{lines:?}"
    );

    // Outputs flowed through templates from extract to the transforms to load.
    let outputs = harness.outputs(&run.run_id).await;
    assert_eq!(outputs[&("extract".into(), "records".into())], 1200);
    assert_eq!(outputs[&("transform_0".into(), "rows".into())], 400);
    assert_eq!(outputs[&("load".into(), "loaded".into())], 1200);
    let load = &harness.tries(&run.run_id, "load").await[0];
    assert!(harness.log_lines(load).await.contains(&(
        "stdout".into(),
        "loading 1200 rows into the warehouse".into()
    )));

    // State committed by the successful extract is handed to the next run's extract.
    let state = harness
        .store
        .committed_state("example_etl", "extract")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state["cursor"],
        stevedore_domain::protocol::rfc3339(run.data_interval.end)
    );
    let second = harness.trigger("example_etl").await;
    let second = harness.wait_run(&second.run_id, 2 * MINUTE).await;
    assert_eq!(second.state, RunState::Success);
    let extract = &harness.tries(&second.run_id, "extract").await[0];
    let lines = harness.log_lines(extract).await;
    let first_line = &lines.iter().find(|(stream, _)| stream == "log").unwrap().1;
    assert!(
        first_line.ends_with(&format!(
            "last cursor: {}",
            state["cursor"].as_str().unwrap()
        )),
        "{first_line}"
    );

    assert!(
        containers_of_run(&run.run_id).await.is_empty(),
        "containers left behind"
    );
    assert!(
        containers_of_run(&second.run_id).await.is_empty(),
        "containers left behind"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_then_retried_task_keeps_both_tries_and_their_logs() {
    let harness = Harness::start(&[("retry_demo.yaml", &read_repo_job("retry_demo.yaml"))]).await;
    let run = harness.trigger("retry_demo").await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);

    let tries = harness.tries(&run.run_id, "flaky").await;
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(
        (tries[0].state, tries[0].exit_code),
        (TryState::Failed, Some(1))
    );
    // synth says why it fails (an `error` message): that is the try's reason.
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("error: simulated failure on try 1 (exit_code: 1)")
    );
    assert_eq!(
        (tries[1].state, tries[1].exit_code),
        (TryState::Success, Some(0))
    );
    // The retry waited for retry_delay (1s) after the first try ended.
    let gap = tries[1].started_at - tries[0].ended_at.unwrap();
    assert!(
        gap >= chrono::TimeDelta::milliseconds(990),
        "retry started after {gap}"
    );

    let first = harness.log_lines(&tries[0]).await;
    assert!(
        first.contains(&(
            "stderr".into(),
            "try 1 fails on purpose (succeeds from try 2)".into()
        )),
        "{first:?}"
    );
    assert!(
        first.contains(&("log".into(), "error: simulated failure on try 1".into())),
        "{first:?}"
    );
    let second = harness.log_lines(&tries[1]).await;
    assert_eq!(
        second,
        vec![("stdout".to_owned(), "try 2 succeeds".to_owned())]
    );
    assert_eq!(harness.tries(&run.run_id, "report").await.len(), 1);
    assert!(containers_of_run(&run.run_id).await.is_empty());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_exceeds_its_timeout_is_killed_and_recorded_as_timeout() {
    let job = format!(
        "id: slow\ntasks:\n  - id: sleeper\n    image: {SYNTH}\n    args: [sleep, --seconds, 120]\n    timeout: 2s\n  - id: after\n    image: {SYNTH}\n    depends_on: [sleeper]\n"
    );
    let harness = Harness::start(&[("slow.yaml", &job)]).await;
    let started = std::time::Instant::now();
    let run = harness.trigger("slow").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.state, RunState::Failed);
    let tries = harness.tries(&run.run_id, "sleeper").await;
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].state, TryState::Failed);
    assert_eq!(tries[0].failure_reason.as_deref(), Some("timeout"));
    assert_eq!(tries[0].exit_code, Some(137), "killed by SIGKILL");
    // The log written before the kill is kept.
    assert_eq!(
        harness.log_lines(&tries[0]).await,
        vec![("stdout".to_owned(), "sleeping 120s".to_owned())]
    );
    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    assert_eq!(instances[0].state, TaskState::Failed);
    assert_eq!(instances[1].state, TaskState::UpstreamFailed);
    assert!(containers_of_run(&run.run_id).await.is_empty());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_tag_fails_the_try_naming_the_image_and_other_jobs_keep_running() {
    let bad = "id: bad_image\ntasks:\n  - id: pull\n    image: stevedore/synth:9.9.9\n    retries: 1\n    retry_delay: 1s\n";
    let good = format!(
        "id: good\ntasks:\n  - id: ok\n    image: {SYNTH}\n    args: [extract, --records, 5]\n"
    );
    let harness = Harness::start(&[("bad.yaml", bad), ("good.yaml", &good)]).await;
    let bad_run = harness.trigger("bad_image").await;
    let good_run = harness.trigger("good").await;
    let good_run = harness.wait_run(&good_run.run_id, MINUTE).await;
    assert_eq!(good_run.state, RunState::Success);
    let bad_run = harness.wait_run(&bad_run.run_id, MINUTE).await;
    assert_eq!(bad_run.state, RunState::Failed);
    let tries = harness.tries(&bad_run.run_id, "pull").await;
    assert_eq!(tries.len(), 2, "retried once per policy: {tries:?}");
    for attempt in &tries {
        let reason = attempt.failure_reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("image: ") && reason.contains("stevedore/synth:9.9.9"),
            "{reason}"
        );
        assert_eq!(attempt.container_id, None);
    }
    // And the scheduler still serves: a new run of the good job succeeds afterwards.
    let again = harness.trigger("good").await;
    assert_eq!(
        harness.wait_run(&again.run_id, MINUTE).await.state,
        RunState::Success
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_job_file_is_rejected_and_the_valid_jobs_still_run() {
    let invalid =
        "id: broken\ntasks:\n  - id: a\n    image: stevedore/synth:0.1.0\n    depends_on: [nope]\n";
    let good = format!("id: good\ntasks:\n  - id: ok\n    image: {SYNTH}\n");
    let harness = Harness::start(&[("broken.yaml", invalid), ("good.yaml", &good)]).await;
    let found = stevedore_ops::jobs_dir::load_jobs_dir(&harness.jobs_dir());
    assert_eq!(found.errors.len(), 1);
    let message = found.errors[0].to_string();
    assert!(
        message.ends_with(
            "broken.yaml:5: task `a` depends on `nope`, which is not a task of this job"
        ),
        "{message}"
    );
    let run = harness.trigger("good").await;
    assert_eq!(
        harness.wait_run(&run.run_id, MINUTE).await.state,
        RunState::Success
    );
    let jobs = harness.store.list_jobs().await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    harness.stop().await;
}

/// Forwards a Unix socket to the real engine's, to bring "the engine" up mid-test.
async fn proxy_docker_socket(path: std::path::PathBuf) {
    let listener = tokio::net::UnixListener::bind(&path).expect("bind proxy socket");
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_holds_tries_and_the_scheduler_reconnects_with_backoff() {
    require_images().await;
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("docker.sock");
    let backend = DockerBackend::connect(&format!("unix://{}", socket.display())).unwrap();
    let error = backend.health().await.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "cannot reach the Docker engine at unix://{}",
            socket.display()
        )),
        "{error}"
    );

    let job = format!(
        "id: patient\ntasks:\n  - id: ok\n    image: {SYNTH}\n    args: [extract, --records, 3]\n"
    );
    let harness = Harness::start_with(&[("patient.yaml", &job)], Arc::new(backend)).await;
    let run = harness.trigger("patient").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing ran and no try was spent while the engine was away.
    assert!(harness.tries(&run.run_id, "ok").await.is_empty());
    assert!(!harness
        .store
        .get_run(&run.run_id)
        .await
        .unwrap()
        .state
        .is_finished());

    let proxy = tokio::spawn(proxy_docker_socket(socket.clone()));
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    assert_eq!(harness.tries(&run.run_id, "ok").await.len(), 1);
    harness.stop().await;
    proxy.abort();
}

/// The engine here rotates json-file logs at 10 MB: following the log driver lost most of
/// a chatty container's lines. Attaching to the container keeps every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_container_loses_no_lines_even_when_the_engine_rotates_its_logs() {
    // About 45 MB of json-file log: more than the 3 × 10 MB files the engine keeps.
    const LINES: usize = 600_000;
    let job = format!("id: chatty\ntasks:\n  - id: spew\n    image: {SYNTH}\n    args: [spew, --lines, {LINES}]\n");
    let harness = Harness::start(&[("chatty.yaml", &job)]).await;
    let run = harness.trigger("chatty").await;
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let attempt = &harness.tries(&run.run_id, "spew").await[0];
    let lines = harness.log_lines(attempt).await;
    assert_eq!(lines.len(), LINES, "lines lost");
    for (index, (stream, text)) in lines.iter().enumerate() {
        assert_eq!(
            (stream.as_str(), text.as_str()),
            ("stdout", format!("line {index}").as_str())
        );
    }
    harness.stop().await;
}

/// The jobs under jobs/ are demos: every one must end in success when triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_under_jobs_succeeds_when_triggered() {
    // The services the jobs name through their connections and registry.
    let services = PipelineServices::start(500);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = services.job(&std::fs::read_to_string(&path).unwrap()).await;
            files.push((name, text));
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let harness = services.harness(&borrowed).await;
    let found = stevedore_ops::jobs_dir::load_jobs_dir(&harness.jobs_dir());
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let mut runs = Vec::new();
    for loaded in &found.jobs {
        runs.push((loaded.job.id.clone(), harness.trigger(&loaded.job.id).await));
    }
    for (job_id, run) in runs {
        let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
        assert_eq!(run.state, RunState::Success, "job {job_id}");
    }
    harness.stop().await;
}

/// Cron schedules create runs by themselves: without catchup the latest complete interval
/// only, with catchup every missed interval in order, in the job's timezone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedules_create_runs_for_their_data_intervals() {
    use chrono::{Datelike, TimeZone};
    let berlin = chrono_tz::Europe::Berlin;
    let today = chrono::Utc::now().with_timezone(&berlin).date_naive();
    let start = today - chrono::Days::new(3);
    let latest = format!(
        "id: latest_only\nschedule: \"@daily\"\ntimezone: Europe/Berlin\nstart_date: {start}\ncatchup: false\ntasks:\n  - id: t\n    image: {SYNTH}\n"
    );
    let catchup = format!(
        "id: catching_up\nschedule: \"0 0 * * *\"\ntimezone: Europe/Berlin\nstart_date: {start}\ncatchup: true\nmax_active_runs: 1\ntasks:\n  - id: t\n    image: {SYNTH}\n"
    );
    let harness = Harness::start(&[("latest.yaml", &latest), ("catchup.yaml", &catchup)]).await;
    let midnight = |days_ago: u64| {
        let day = today - chrono::Days::new(days_ago);
        berlin
            .with_ymd_and_hms(day.year(), day.month(), day.day(), 0, 0, 0)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let deadline = tokio::time::Instant::now() + 2 * MINUTE;
    loop {
        let runs = harness.store.list_runs(&Default::default()).await.unwrap();
        let finished = runs.iter().filter(|r| r.state.is_finished()).count();
        if runs.len() == 4 && finished == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "runs: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let runs = harness.store.list_runs(&Default::default()).await.unwrap();
    let of = |job: &str| {
        let mut runs: Vec<_> = runs.iter().filter(|r| r.job_id == job).cloned().collect();
        runs.sort_by_key(|r| r.logical_date);
        runs
    };
    let latest_runs = of("latest_only");
    assert_eq!(latest_runs.len(), 1);
    assert_eq!(
        latest_runs[0].trigger,
        stevedore_domain::state::RunTrigger::Scheduled
    );
    assert_eq!(
        (
            latest_runs[0].data_interval.start,
            latest_runs[0].data_interval.end
        ),
        (midnight(1), midnight(0))
    );
    let caught_up = of("catching_up");
    let starts: Vec<_> = caught_up.iter().map(|r| r.logical_date).collect();
    assert_eq!(starts, vec![midnight(3), midnight(2), midnight(1)]);
    assert!(caught_up.iter().all(|r| r.state == RunState::Success));
    // max_active_runs: 1 — each run started after the previous one ended.
    for pair in caught_up.windows(2) {
        assert!(
            pair[1].started_at.unwrap() >= pair[0].ended_at.unwrap(),
            "{pair:#?}"
        );
    }
    harness.stop().await;
}

/// A run's files travel from extract to load through the artifact store, each run its own
/// (content-addressed per run): recorded on extract's try with their size and sha256, and
/// deleted once the run is past `artifact_retention` (5 s in these tests). Each try's
/// workspace is its own volume, gone with its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_files_travel_from_extract_to_load_and_expire() {
    let job = format!(
        "id: handoff\ntasks:\n  - id: extract\n    image: {SYNTH}\n    args: [write, --file, records.jsonl, --text, \"{{{{ run_id }}}}\"]\n  - id: load\n    image: {SYNTH}\n    depends_on: [extract]\n    args: [read, --file, records.jsonl]\n"
    );
    let harness = Harness::start(&[("handoff.yaml", &job)]).await;
    let first = harness.trigger("handoff").await;
    let second = harness.trigger("handoff").await;
    for run in [&first, &second] {
        let run = harness.wait_run(&run.run_id, MINUTE).await;
        assert_eq!(run.state, RunState::Success);
        let load = &harness.tries(&run.run_id, "load").await[0];
        // Each run reads its own file.
        assert_eq!(
            harness.log_lines(load).await,
            vec![(
                "stdout".to_owned(),
                format!("read records.jsonl: {}", run.run_id)
            )]
        );
        let artifacts = harness.store.run_artifacts(&run.run_id).await.unwrap();
        let extract = &harness.tries(&run.run_id, "extract").await[0];
        let listed: Vec<_> = artifacts
            .iter()
            .map(|a| (a.try_id, a.path.as_str(), a.size))
            .collect();
        // load read the file and wrote none: only extract's is recorded.
        assert_eq!(
            listed,
            [(extract.try_id, "records.jsonl", run.run_id.len() as u64)]
        );
        assert_eq!(artifacts[0].sha256.len(), 64);
    }
    let folder = harness.dir.path().join("artifacts/runs");
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let mut left = Vec::new();
        for run in [&first, &second] {
            left.extend(harness.store.run_artifacts(&run.run_id).await.unwrap());
            if folder
                .join(&run.run_id)
                .join("blobs")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
            {
                left.push(stevedore_store::ArtifactRecord {
                    try_id: 0,
                    run_id: run.run_id.clone(),
                    task_id: "(blob)".into(),
                    try_number: 0,
                    path: String::new(),
                    size: 0,
                    sha256: String::new(),
                    modified: 0,
                });
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "artifacts not removed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness.stop().await;
}

/// An engine reached over TCP with TLS, as `dockerd --tlsverify` serves it: with a client
/// certificate of its CA, tries run there with their logs and exit codes; without one, or
/// with a certificate of another CA, the engine cannot be reached, and the error says where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_behind_tls_runs_tries_only_for_clients_of_its_ca() {
    require_images().await;
    let engine = SecondEngine::start_tls(&[SYNTH]);
    let (endpoint, client) = engine.tls.clone().expect("a TLS endpoint");
    let unreachable = |error: String| {
        assert!(
            error.starts_with(&format!("cannot reach the Docker engine at {endpoint}")),
            "{error}"
        );
    };
    let plain = DockerBackend::connect(&endpoint).unwrap();
    unreachable(plain.health().await.unwrap_err().to_string());
    let strangers = tempfile::tempdir().unwrap();
    let (_, stranger) = make_certificates(strangers.path());
    let other_ca =
        DockerBackend::connect_with(&endpoint, Some(TlsFiles::in_dir(&stranger))).unwrap();
    unreachable(other_ca.health().await.unwrap_err().to_string());

    let backend = DockerBackend::connect_with(&endpoint, Some(TlsFiles::in_dir(&client))).unwrap();
    backend
        .health()
        .await
        .expect("the engine answers its CA's client");
    let job = format!(
        "id: secure\ntasks:\n  - id: talk\n    image: {SYNTH}\n    args: [count, --lines, \"6\", --every-ms, \"10\"]\n  - id: fail\n    image: {SYNTH}\n    args: [count, --lines, \"1\", --every-ms, \"10\", --exit, \"3\"]\n    retries: 0\n"
    );
    let harness = Harness::start_with(&[("secure.yaml", &job)], Arc::new(backend)).await;
    let started = chrono::Utc::now().timestamp() - 1;
    let run = harness.trigger("secure").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let talk = &harness.tries(&run.run_id, "talk").await[0];
    assert_eq!((talk.state, talk.exit_code), (TryState::Success, Some(0)));
    let lines: Vec<(String, String)> = harness
        .log_lines(talk)
        .await
        .into_iter()
        .filter(|(stream, _)| stream != "log")
        .collect();
    let mut expected = Vec::new();
    for n in 1..=6 {
        expected.push(("stdout".to_owned(), format!("out {n}")));
        if n % 3 == 0 {
            expected.push(("stderr".to_owned(), format!("err {n}")));
        }
    }
    let sorted = |mut lines: Vec<(String, String)>| {
        lines.sort_by_key(|(stream, _)| stream.clone());
        lines
    };
    assert_eq!(sorted(lines), sorted(expected));
    let fail = &harness.tries(&run.run_id, "fail").await[0];
    assert_eq!((fail.state, fail.exit_code), (TryState::Failed, Some(3)));
    // Both containers ran on the TLS engine (by its own events), and are gone from it.
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let events = engine.docker(&[
        "events",
        "--since",
        &started.to_string(),
        "--until",
        &until,
        "--filter",
        &format!("label=io.stevedore.run={}", run.run_id),
        "--filter",
        "event=start",
        "--format",
        "{{index .Actor.Attributes \"io.stevedore.task\"}}",
    ]);
    let mut started_tasks: Vec<String> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    started_tasks.sort();
    assert_eq!(started_tasks, ["fail", "talk"]);
    let left = engine.docker(&["ps", "-aq"]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
    harness.stop().await;
}

/// Cancelling a run on real Docker: the running container is killed and removed, the try
/// fails with the reason, what had not started is skipped, the run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_kills_its_containers() {
    let job = format!(
        "id: cancellable\ntasks:\n  - id: slow\n    image: {SYNTH}\n    args: [sleep, --seconds, 120]\n    retries: 3\n  - id: after\n    image: {SYNTH}\n    depends_on: [slow]\n"
    );
    let harness = Harness::start(&[("cancellable.yaml", &job)]).await;
    let run = harness.trigger("cancellable").await;
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let tries = harness.tries(&run.run_id, "slow").await;
        if tries.first().is_some_and(|t| t.container_id.is_some())
            && !containers_of_run(&run.run_id).await.is_empty()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    harness.store.request_cancel(&run.run_id).await.unwrap();
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    // The try records its end once the container is gone.
    let deadline = tokio::time::Instant::now() + MINUTE;
    let tries = loop {
        let tries = harness.tries(&run.run_id, "slow").await;
        if tries[0].state != TryState::Running {
            break tries;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(tries.len(), 1, "a cancelled try is not retried");
    assert_eq!(
        (tries[0].state, tries[0].exit_code),
        (TryState::Failed, Some(137))
    );
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("killed: run cancelled")
    );
    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    assert_eq!(
        (instances[0].state, instances[1].state),
        (TaskState::Failed, TaskState::Skipped)
    );
    // Cancelling fails the run at once; the killed container goes once its end is recorded.
    wait_containers_gone(&run.run_id, Duration::from_secs(30)).await;
    harness.stop().await;
}

/// Issue 16, must show 4: a file over the task's `max_artifact_size` fails its try naming the
/// file and its size (and nothing of it is kept); a file missing from the store when its
/// downstream try starts fails that try naming the file and its writer, retried per policy,
/// never an empty input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_size_output_or_a_missing_input_fails_the_try_naming_the_file() {
    let big = format!(
        "id: big\ntasks:\n  - id: extract\n    image: {SYNTH}\n    max_artifact_size: 1Ki\n    args: [write, --file, out/big.bin, --bytes, 2048]\n  - id: load\n    image: {SYNTH}\n    depends_on: [extract]\n    args: [read, --file, out/big.bin]\n"
    );
    let gap = format!(
        "id: gap\ntasks:\n  - id: extract\n    image: {SYNTH}\n    args: [write, --file, records.jsonl, --text, hello]\n  - id: wait\n    image: {SYNTH}\n    depends_on: [extract]\n    args: [sleep, --seconds, 3]\n  - id: load\n    image: {SYNTH}\n    depends_on: [wait]\n    retries: 1\n    retry_delay: 1s\n    args: [read, --file, records.jsonl]\n"
    );
    let harness = Harness::start(&[("big.yaml", &big), ("gap.yaml", &gap)]).await;

    let run = harness.trigger("big").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    assert_eq!(extract.state, TryState::Failed);
    assert_eq!(extract.exit_code, Some(0), "the try itself succeeded");
    assert_eq!(
        extract.failure_reason.as_deref(),
        Some("artifacts: output file `out/big.bin` is 2048 bytes, over max_artifact_size (1024 bytes)")
    );
    assert!(harness
        .store
        .run_artifacts(&run.run_id)
        .await
        .unwrap()
        .is_empty());
    let blobs = harness
        .dir
        .path()
        .join("artifacts/runs")
        .join(&run.run_id)
        .join("blobs");
    assert!(!blobs.exists() || blobs.read_dir().unwrap().next().is_none());
    let instances = harness.store.task_instances(&run.run_id).await.unwrap();
    let load = instances.iter().find(|ti| ti.task_id == "load").unwrap();
    assert_eq!(load.state, TaskState::UpstreamFailed);

    let run = harness.trigger("gap").await;
    // While `wait` sleeps (it was staged with the file), extract's file disappears from
    // the store.
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let waiting = harness.tries(&run.run_id, "wait").await;
        if let Some(attempt) = waiting.first() {
            let log = harness.log_lines(attempt).await;
            if log.iter().any(|(_, text)| text.starts_with("sleeping")) {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "wait did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = harness.store.run_artifacts(&run.run_id).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    std::fs::remove_file(
        harness
            .dir
            .path()
            .join("artifacts/runs")
            .join(&run.run_id)
            .join("blobs")
            .join(&kept[0].sha256),
    )
    .unwrap();
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let tries = harness.tries(&run.run_id, "load").await;
    assert_eq!(tries.len(), 2, "retried per its policy: {tries:?}");
    for attempt in &tries {
        assert_eq!(attempt.state, TryState::Failed);
        assert_eq!(
            attempt.failure_reason.as_deref(),
            Some("artifacts: input file `records.jsonl` (written by task `extract`) is missing from the artifact store"),
        );
        assert!(
            harness.log_lines(attempt).await.is_empty(),
            "it never started"
        );
    }
    harness.stop().await;
}

/// Issue 16, must show 4: the S3 store stops answering as a try ends. The try's files are
/// waited for (the try stays running, its container kept), the scheduler goes on serving
/// another job meanwhile, and once the store is back the files are kept, the downstream try
/// gets them and the run succeeds: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_store_holds_the_files_until_it_is_back() {
    let mut s3 = S3Server::start();
    let job = format!(
        "id: handoff\ntasks:\n  - id: extract\n    image: {SYNTH}\n    args: [write, --file, records.jsonl, --text, kept]\n  - id: load\n    image: {SYNTH}\n    depends_on: [extract]\n    args: [read, --file, records.jsonl]\n"
    );
    let other = format!("id: other\ntasks:\n  - id: t\n    image: {SYNTH}\n    args: [noop]\n");
    let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().unwrap());
    let settings = stevedore_artifacts::StoreSettings {
        url: format!("s3://{}/outage", s3.bucket),
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    };
    let harness = Harness::start_with_store(
        &[("handoff.yaml", &job), ("other.yaml", &other)],
        vec![backend],
        Some(settings),
    )
    .await;
    s3.stop();
    let run = harness.trigger("handoff").await;
    // extract ran and exited; its files cannot be kept yet, so it is still running.
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let tries = harness.tries(&run.run_id, "extract").await;
        if !containers_of_run(&run.run_id).await.is_empty()
            && tries.first().is_some_and(|t| t.container_id.is_some())
        {
            let log = harness.log_lines(&tries[0]).await;
            if log.iter().any(|(_, text)| text == "wrote records.jsonl") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "extract did not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    assert_eq!(extract.state, TryState::Running, "{extract:?}");
    assert_eq!(
        containers_of_run(&run.run_id).await.len(),
        1,
        "its container is kept"
    );
    // Other work goes on meanwhile.
    let unrelated = harness.trigger("other").await;
    let unrelated = harness.wait_run(&unrelated.run_id, MINUTE).await;
    assert_eq!(unrelated.state, RunState::Success);
    assert_eq!(
        harness.store.get_run(&run.run_id).await.unwrap().state,
        RunState::Running
    );
    s3.restart();
    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    assert_eq!(extract.state, TryState::Success);
    let load = &harness.tries(&run.run_id, "load").await[0];
    assert_eq!(
        harness.log_lines(load).await,
        vec![("stdout".to_owned(), "read records.jsonl: kept".to_owned())]
    );
    harness.stop().await;
}
