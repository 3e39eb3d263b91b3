//! Issue 16's benchmark (not a test: `#[ignore]`d, run by `scripts/bench.sh artifacts`, which
//! builds it in release mode). It prints its figures (docs/benchmarks.md):
//!
//! 1. The 100,000-record pipeline (demo API → http-extract → postgres-load into PostgreSQL)
//!    with the artifact store on a folder of this machine and on an S3-compatible server
//!    (moto's), in one run: wall time of each and the ratio (target ≤ 1.15).
//! 2. A 1 GiB file handed from a task on this machine's engine to a task on a second engine,
//!    through the S3 store: MB/s over the whole run and the scheduler's peak RSS (target
//!    ≤ 100 MB), against `docker cp` out of a container of the one engine and into one of
//!    the other (the baseline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use stevedore_backend::docker_hosts::{parse_hosts, DockerHosts};
use stevedore_backend::{Backend, DockerBackend};
use stevedore_domain::state::RunState;
use stevedore_testkit::*;

const GIB: u64 = 1 << 30;

fn s3_settings(server: &S3Server, prefix: &str) -> stevedore_artifacts::StoreSettings {
    stevedore_artifacts::StoreSettings {
        url: format!("s3://{}/{prefix}", server.bucket),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    }
}

/// This process's peak resident memory (`VmHWM`), in MB: the scheduler runs in it.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Resets `VmHWM` to the current RSS (Linux: writing 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn docker(host: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("docker")
        .args(["-H", host])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench.sh artifacts"]
async fn bench_artifacts() {
    let records: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s3 = S3Server::start();

    // 1. The pipeline, folder store against S3 store, the same services.
    let services = PipelineServices::start(records);
    let job = services
        .job(&read_repo_job("charges_to_warehouse.yaml"))
        .await
        // Triggered by hand only: no scheduled run beside the measured one.
        .replace("schedule: \"@hourly\"\n", "");
    let mut times = Vec::new();
    for (label, store) in [("folder", None), ("s3", Some(s3_settings(&s3, "pipeline")))] {
        services
            .warehouse
            .query("DROP TABLE IF EXISTS charges; SELECT 1");
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().unwrap());
        let harness = services
            .harness_on(&[("charges.yaml", &job)], vec![backend], store)
            .await;
        let run = harness.trigger("charges_to_warehouse").await;
        let run = harness
            .wait_run(&run.run_id, Duration::from_secs(900))
            .await;
        assert_eq!(run.state, RunState::Success, "{label}");
        let took = (run.ended_at.unwrap() - run.started_at.unwrap())
            .to_std()
            .unwrap();
        assert_eq!(
            services
                .warehouse
                .query("SELECT count(DISTINCT id) FROM charges"),
            records.to_string()
        );
        let size: u64 = harness
            .store
            .run_artifacts(&run.run_id)
            .await
            .unwrap()
            .iter()
            .map(|a| a.size)
            .sum();
        println!(
            "pipeline, {records} records, artifact store {label}: {:.2} s ({size} bytes of files)",
            took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
        harness.stop().await;
    }
    println!(
        "pipeline ratio s3 / folder: {:.3} (target <= 1.15)",
        times[1] / times[0]
    );

    // 2. 1 GiB from one engine to another.
    let second = SecondEngine::start(&[SYNTH]);
    let job = format!(
        "id: gib\ntasks:\n  - id: extract\n    image: {SYNTH}\n    placement: {{engine: main}}\n    args: [write, --file, big.bin, --bytes, \"{GIB}\"]\n  - id: load\n    image: {SYNTH}\n    depends_on: [extract]\n    placement: {{engine: second}}\n    args: [measure, --file, big.bin]\n"
    );
    let hosts = parse_hosts(&format!(
        r#"[{{"name": "main", "endpoint": "unix:///var/run/docker.sock", "labels": {{"engine": "main"}}}},
            {{"name": "second", "endpoint": "{}", "labels": {{"engine": "second"}}}}]"#,
        second.host
    ))
    .unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(DockerHosts::new(hosts, Duration::from_secs(300)).unwrap());
    let harness = Harness::start_with_store(
        &[("gib.yaml", &job)],
        vec![backend],
        Some(s3_settings(&s3, "gib")),
    )
    .await;
    reset_peak();
    let before = peak_rss_mb();
    let run = harness.trigger("gib").await;
    let run = harness
        .wait_run(&run.run_id, Duration::from_secs(900))
        .await;
    assert_eq!(run.state, RunState::Success);
    let load = &harness.tries(&run.run_id, "load").await[0];
    let log = harness.log_lines(load).await;
    assert!(
        log.iter()
            .any(|(_, t)| t == &format!("measured big.bin: {GIB} bytes")),
        "{log:?}"
    );
    let extract = &harness.tries(&run.run_id, "extract").await[0];
    // From extract's last line (its file written, the process about to exit) to load's
    // (the file staged and read whole): capture, stage and one read of the file. The try
    // records' own times do not bound it: a try ends once its files are kept, and the
    // next one is recorded as started before its files are staged.
    let stamp = |lines: Vec<stevedore_store::LogLine>, text: &str| {
        lines
            .into_iter()
            .find(|l| l.text.starts_with(text))
            .map(|l| l.timestamp)
            .unwrap_or_else(|| panic!("no line {text:?}"))
    };
    let written = stamp(
        harness
            .store
            .logs(extract.try_id, None, 1000)
            .await
            .unwrap(),
        "wrote big.bin",
    );
    let read = stamp(
        harness.store.logs(load.try_id, None, 1000).await.unwrap(),
        "measured big.bin",
    );
    let handoff = (read - written).to_std().unwrap();
    let whole = (run.ended_at.unwrap() - run.started_at.unwrap())
        .to_std()
        .unwrap();
    let peak = peak_rss_mb();
    println!(
        "1 GiB between engines through S3: hand-off (writer done to reader done) {:.2} s ({:.0} MB/s), whole run {:.2} s; scheduler peak RSS {peak:.0} MB (was {before:.0} MB before the run; target <= 100 MB)",
        handoff.as_secs_f64(),
        GIB as f64 / 1e6 / handoff.as_secs_f64(),
        whole.as_secs_f64()
    );
    harness.stop().await;

    // The baseline: docker cp out of a stopped container on the main engine, into a created
    // one on the second, through this machine's disk.
    let main = "unix:///var/run/docker.sock";
    let dir = tempfile::tempdir().unwrap();
    let writer = docker(
        main,
        &[
            "create",
            "-e",
            "STEVEDORE_WORKSPACE=/workspace",
            "-v",
            "/workspace",
            SYNTH,
            "run",
            "--job",
            "b",
            "--task",
            "w",
            "--run",
            "r",
            "--try",
            "1",
            "--",
            "write",
            "--file",
            "big.bin",
            "--bytes",
            &GIB.to_string(),
        ],
    );
    docker(main, &["start", "-a", &writer]);
    let reader = docker(
        &second.host,
        &[
            "create",
            "-e",
            "STEVEDORE_WORKSPACE=/workspace",
            "-v",
            "/workspace",
            SYNTH,
            "run",
            "--job",
            "b",
            "--task",
            "r",
            "--run",
            "r",
            "--try",
            "1",
            "--",
            "measure",
            "--file",
            "big.bin",
        ],
    );
    let started = Instant::now();
    let local = dir.path().join("big.bin");
    docker(
        main,
        &[
            "cp",
            &format!("{writer}:/workspace/big.bin"),
            local.to_str().unwrap(),
        ],
    );
    docker(
        &second.host,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("{reader}:/workspace/big.bin"),
        ],
    );
    let copied = started.elapsed();
    let out = docker(&second.host, &["start", "-a", &reader]);
    assert!(out.contains(&format!("{GIB} bytes")), "{out}");
    println!(
        "baseline docker cp out of one engine and into the other: {:.2} s ({:.0} MB/s); ratio Stevedore / docker cp {:.2}",
        copied.as_secs_f64(),
        GIB as f64 / 1e6 / copied.as_secs_f64(),
        handoff.as_secs_f64() / copied.as_secs_f64()
    );
    docker(main, &["rm", "-f", "-v", &writer]);
    docker(&second.host, &["rm", "-f", "-v", &reader]);
}
