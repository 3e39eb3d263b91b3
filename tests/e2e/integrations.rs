//! The reference integrations against the demo SaaS API, run as real containers by the
//! scheduler.

use std::time::Duration;

use stevedore_domain::state::{RunState, TryState};
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);
const HTTP_EXTRACT: &str = "stevedore/http-extract:0.3.0";

fn extract_job(api: &DemoApi, connection: &str) -> String {
    format!(
        "id: pull_charges\ntasks:\n  - id: extract\n    image: {HTTP_EXTRACT}\n    connections: [{connection}]\n    retries: 0\n    args: [--url, \"{}/v1/charges\", --incremental-field, updated_at, --page-size, 100, --max-backoff-secs, 2]\n",
        api.container_url()
    )
}

async fn outputs_of(harness: &Harness, run_id: &str) -> (u64, String) {
    let outputs = harness.outputs(run_id).await;
    let records = outputs[&("extract".to_owned(), "records".to_owned())]
        .as_u64()
        .unwrap();
    let file = outputs[&("extract".to_owned(), "records_file".to_owned())]
        .as_str()
        .unwrap()
        .to_owned();
    (records, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_extract_pages_everything_then_only_what_changed() {
    let api = DemoApi::start(250);
    let harness = Harness::start(&[("pull.yaml", &extract_job(&api, "demo_api"))]).await;
    harness
        .add_connection("demo_api", &[("API_TOKEN", "demo-token")])
        .await;

    let first = harness.trigger("pull_charges").await;
    let first = harness.wait_run(&first.run_id, MINUTE).await;
    assert_eq!(first.state, RunState::Success);
    let (records, file) = outputs_of(&harness, &first.run_id).await;
    assert_eq!((records, file.as_str()), (250, "/workspace/extract.jsonl"));
    let state = harness
        .store
        .committed_state("pull_charges", "extract")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state["cursor"], "2024-01-01T00:04:10.000000Z",
        "the 250th record's updated_at"
    );
    assert_eq!(
        api.requests("GET", "/v1/charges", 200),
        3,
        "three pages of 100"
    );

    // Records added afterwards are the only ones the next run extracts.
    http("POST", &api.address, "/admin/records?count=3", &[]);
    let second = harness.trigger("pull_charges").await;
    let second = harness.wait_run(&second.run_id, MINUTE).await;
    assert_eq!(second.state, RunState::Success);
    assert_eq!(outputs_of(&harness, &second.run_id).await.0, 3);
    let attempt = &harness.tries(&second.run_id, "extract").await[0];
    let lines = harness.log_lines(attempt).await;
    assert!(
        lines.iter().any(|(_, t)| t
            == "info: extracting records since the cursor: updated_since=2024-01-01T00:04:10.000000Z"),
        "{lines:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried_inside_the_try() {
    let api = DemoApi::start(120);
    http(
        "POST",
        &api.address,
        "/admin/faults?status=429&count=2&retry_after=1",
        &[],
    );
    http(
        "POST",
        &api.address,
        "/admin/faults?status=500&count=2",
        &[],
    );
    let harness = Harness::start(&[("pull.yaml", &extract_job(&api, "demo_api"))]).await;
    harness
        .add_connection("demo_api", &[("API_TOKEN", "demo-token")])
        .await;
    let run = harness.trigger("pull_charges").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "extract").await;
    assert_eq!(
        tries.len(),
        1,
        "retried inside the try, not by the scheduler"
    );
    assert_eq!(outputs_of(&harness, &run.run_id).await.0, 120);
    let lines = harness.log_lines(&tries[0]).await;
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|(s, _)| s == "log")
        .map(|(_, t)| t)
        .filter(|t| t.starts_with("warn: "))
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].contains("429 from") && warnings[0].contains("retrying in 1000 ms"),
        "{warnings:?}"
    );
    assert!(warnings[2].contains("500 from"), "{warnings:?}");
    assert_eq!(
        (
            api.requests("GET", "/v1/charges", 429),
            api.requests("GET", "/v1/charges", 500)
        ),
        (2, 2)
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_the_try_at_once_with_a_clear_reason() {
    let api = DemoApi::start(10);
    // With retries left: a refused token is not retryable (exit 78), so it fails once.
    let job = extract_job(&api, "wrong_token").replace("retries: 0", "retries: 3");
    let harness = Harness::start(&[("pull.yaml", &job)]).await;
    harness
        .add_connection("wrong_token", &[("API_TOKEN", "not-the-token")])
        .await;
    let run = harness.trigger("pull_charges").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let tries = harness.tries(&run.run_id, "extract").await;
    assert_eq!(
        (tries.len(), tries[0].state, tries[0].exit_code),
        (1, TryState::Failed, Some(78))
    );
    let reason = tries[0].failure_reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("not retryable: 401 from ") && reason.ends_with("(exit_code: 78)"),
        "{reason}"
    );
    let lines = harness.log_lines(&tries[0]).await;
    assert!(
        lines.iter().any(|(_, t)| t.starts_with("error: 401 from ")
            && t.ends_with("check the connection's token")),
        "{lines:?}"
    );
    assert_eq!(api.requests("GET", "/v1/charges", 401), 1, "no retry storm");
    // The token itself is masked wherever it shows.
    assert!(!lines.iter().any(|(_, t)| t.contains("not-the-token")));
    harness.stop().await;
}

/// The quickstart's job (`jobs/charges_to_warehouse.yaml`, images pulled from a registry):
/// demo API → http-extract → postgres-load into a real PostgreSQL. The hourly job's first
/// run loads everything; the next one only what changed; every record is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_loads_every_record_once_and_then_only_changes() {
    let services = PipelineServices::start(300);
    let job = services
        .job(&read_repo_job("charges_to_warehouse.yaml"))
        .await;
    let harness = services.harness(&[("charges.yaml", &job)]).await;
    let (api, warehouse) = (&services.api, &services.warehouse);

    // The hourly schedule makes the first run by itself (the latest complete hour).
    let deadline = tokio::time::Instant::now() + MINUTE;
    let scheduled = loop {
        let runs = harness.store.list_runs(&Default::default()).await.unwrap();
        if let Some(run) = runs
            .into_iter()
            .find(|r| r.trigger == stevedore_domain::state::RunTrigger::Scheduled)
        {
            break run;
        }
        assert!(tokio::time::Instant::now() < deadline, "no scheduled run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = harness.wait_run(&scheduled.run_id, MINUTE).await;
    if first.state != RunState::Success {
        let load = &harness.tries(&first.run_id, "load").await[0];
        panic!(
            "first run failed: {:?}\n{:?}",
            load.failure_reason,
            harness.log_lines(load).await
        );
    }
    // `/metrics`, as Prometheus scrapes it from a server on the same store: the records
    // the integrations reported, and the job's histograms.
    let scrape = metrics_scraper(&harness).await;
    let after_first = scrape().await;
    assert_eq!(
        sample(&after_first, "stevedore_task_metric_total{job=\"charges_to_warehouse\",task=\"extract\",name=\"records\"}"),
        Some(300.0),
        "{after_first}"
    );
    assert_eq!(
        sample(
            &after_first,
            "stevedore_task_metric_total{job=\"charges_to_warehouse\",task=\"load\",name=\"rows\"}"
        ),
        Some(300.0),
        "{after_first}"
    );
    let durations_first = sample(
        &after_first,
        "stevedore_try_duration_seconds_count{job=\"charges_to_warehouse\"}",
    )
    .expect("a try duration histogram");
    let lags_first = sample(
        &after_first,
        "stevedore_run_lag_seconds_count{job=\"charges_to_warehouse\"}",
    )
    .expect("a run lag histogram (the first run was scheduled)");
    let waits_first = sample(
        &after_first,
        "stevedore_queue_wait_seconds_count{job=\"charges_to_warehouse\"}",
    )
    .unwrap_or_else(|| panic!("a queue wait histogram: {after_first}"));
    assert!(
        durations_first >= 2.0 && lags_first >= 1.0 && waits_first >= 2.0,
        "{after_first}"
    );
    // Both images came from the registry, and each try records the digest it ran.
    for task in ["extract", "load"] {
        let attempt = &harness.tries(&first.run_id, task).await[0];
        assert!(
            attempt
                .image_ref
                .starts_with(&format!("{}/stevedore/", services.registry.address)),
            "{}",
            attempt.image_ref
        );
        let digest = attempt.image_digest.as_deref().unwrap_or_default();
        assert!(digest.starts_with("sha256:"), "{task}: {digest}");
    }
    let outputs = harness.outputs(&first.run_id).await;
    let load = &harness.tries(&first.run_id, "load").await[0];
    let load_log = harness.log_lines(load).await;
    assert_eq!(
        outputs[&("load".to_owned(), "rows_inserted".to_owned())],
        300,
        "{load_log:?}"
    );
    assert_eq!(
        warehouse.query("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM charges"),
        "300|300|1|300"
    );

    http("POST", &api.address, "/admin/records?count=5", &[]);
    let second = harness.trigger("charges_to_warehouse").await;
    let second = harness.wait_run(&second.run_id, MINUTE).await;
    assert_eq!(second.state, RunState::Success);
    // Only the 5 new records are extracted and loaded. When an hour ends during the test,
    // its scheduled run may take them before the manual one: count every run since the first.
    let (mut extracted, mut loaded) = (0, 0);
    for run in harness.store.list_runs(&Default::default()).await.unwrap() {
        if run.run_id == first.run_id {
            continue;
        }
        let run = harness.wait_run(&run.run_id, MINUTE).await;
        assert_eq!(run.state, RunState::Success, "{run:?}");
        let outputs = harness.outputs(&run.run_id).await;
        extracted += outputs[&("extract".to_owned(), "records".to_owned())]
            .as_u64()
            .unwrap();
        loaded += outputs[&("load".to_owned(), "rows_inserted".to_owned())]
            .as_u64()
            .unwrap();
    }
    assert_eq!((extracted, loaded), (5, 5));
    // The totals count every record once, the gauge holds the last run's, and each ended
    // try moved the duration histogram.
    let after_second = scrape().await;
    assert_eq!(
        sample(
            &after_second,
            "stevedore_task_metric_total{job=\"charges_to_warehouse\",task=\"load\",name=\"rows\"}"
        ),
        Some(305.0),
        "{after_second}"
    );
    // The gauge: the last extract's count (5, or 0 when an hour's scheduled run came last).
    let last = sample(
        &after_second,
        "stevedore_task_metric{job=\"charges_to_warehouse\",task=\"extract\",name=\"records\"}",
    );
    assert!(
        matches!(last, Some(v) if v == 5.0 || v == 0.0),
        "{after_second}"
    );
    let durations_second = sample(
        &after_second,
        "stevedore_try_duration_seconds_count{job=\"charges_to_warehouse\"}",
    )
    .unwrap_or_default();
    assert!(durations_second >= durations_first + 2.0, "{after_second}");
    assert!(
        after_second.contains(
            "stevedore_try_duration_seconds_bucket{job=\"charges_to_warehouse\",le=\"+Inf\"}"
        ),
        "{after_second}"
    );
    assert_eq!(
        warehouse.query("SELECT count(*), count(DISTINCT id), max(id) FROM charges"),
        "305|305|305"
    );
    // The columns came from the records, with their types.
    assert_eq!(
        warehouse.query("SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'charges'"),
        "amount:bigint,currency:text,customer:text,id:bigint,updated_at:text"
    );
    harness.stop().await;
}

/// A server on the harness's store, and a closure that scrapes its `/metrics` with a
/// viewer's token.
async fn metrics_scraper(
    harness: &Harness,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> {
    let (token, hash) = stevedore_server::auth::new_token().unwrap();
    harness
        .store
        .create_token("prometheus", stevedore_domain::role::Role::Viewer, &hash)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let state = stevedore_server::AppState::new(harness.store.clone(), harness.jobs_dir(), None);
    tokio::spawn(stevedore_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    move || {
        let (address, token) = (address.clone(), token.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let (status, _, body) = http(
                    "GET",
                    &address,
                    "/metrics",
                    &[("Authorization", &format!("Bearer {token}"))],
                );
                assert_eq!(status, 200, "{body}");
                body
            })
            .await
            .unwrap()
        })
    }
}

/// The value of one sample of a text exposition (`name{labels}` as written).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A load killed half-way commits nothing: no rows, and the extract's cursor does not move
/// on without them. Its retry completes and every record is in the warehouse once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_killed_mid_way_commits_nothing_and_its_retry_loads_everything_once() {
    let services = PipelineServices::start(20_000);
    let warehouse = &services.warehouse;
    // The API's address comes from the `demo_api` connection (API_BASE_URL).
    let job = format!(
        "id: killable\ntasks:\n  - id: extract\n    image: {HTTP_EXTRACT}\n    connections: [demo_api]\n    args: [--url, /v1/charges, --incremental-field, updated_at, --page-size, 1000]\n  - id: load\n    image: stevedore/postgres-load:0.2.0\n    depends_on: [extract]\n    connections: [warehouse]\n    retries: 1\n    retry_delay: 1s\n    args: [--input, \"{{{{ outputs.extract.records_file }}}}\", --table, charges, --batch, \"5\"]\n"
    );
    let harness = services.harness(&[("killable.yaml", &job)]).await;
    let run = harness.trigger("killable").await;

    // Kill the load's container while it is writing.
    let deadline = tokio::time::Instant::now() + MINUTE;
    loop {
        let tries = harness.tries(&run.run_id, "load").await;
        if let Some(container) = tries.first().and_then(|t| t.container_id.clone()) {
            let lines = harness.log_lines(&tries[0]).await;
            if lines
                .iter()
                .any(|(_, t)| t.contains("\"type\":\"progress\""))
            {
                let killed = std::process::Command::new("docker")
                    .args(["kill", &container])
                    .output()
                    .unwrap();
                assert!(
                    killed.status.success(),
                    "{}",
                    String::from_utf8_lossy(&killed.stderr)
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait for the failed try to be recorded, then look at the warehouse before the retry.
    loop {
        let tries = harness.tries(&run.run_id, "load").await;
        if tries[0].state != TryState::Running {
            assert_eq!(
                (tries[0].state, tries[0].exit_code),
                (TryState::Failed, Some(137))
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        warehouse.query("SELECT count(*) FROM pg_tables WHERE tablename = 'charges'"),
        "0",
        "a killed load left a table"
    );
    // Nor has the extract's cursor moved on: state is committed when the run succeeds.
    assert_eq!(
        harness
            .store
            .committed_state("killable", "extract")
            .await
            .unwrap(),
        None
    );

    let run = harness.wait_run(&run.run_id, 2 * MINUTE).await;
    assert_eq!(run.state, RunState::Success);
    let tries = harness.tries(&run.run_id, "load").await;
    assert_eq!(tries.len(), 2);
    assert_eq!(
        warehouse.query("SELECT count(*), count(DISTINCT id) FROM charges"),
        "20000|20000"
    );
    harness.stop().await;
}

/// Offset pagination with the token in an API-key header, loaded into a table whose columns
/// the job declares (rather than inferred from the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_pages_with_an_api_key_header_load_into_a_declared_schema() {
    let services = PipelineServices::start(230);
    let job = format!(
        "id: by_offset\ntasks:\n  - id: extract\n    image: {HTTP_EXTRACT}\n    connections: [demo_api]\n    args: [--url, /v1/charges, --pagination, offset, --page-size, 100, --auth, \"header:X-API-Key\"]\n  - id: load\n    image: stevedore/postgres-load:0.2.0\n    depends_on: [extract]\n    connections: [warehouse]\n    args: [--input, \"{{{{ outputs.extract.records_file }}}}\", --table, typed_charges, --key, id, --schema, \"id:bigint,updated_at:timestamptz,amount:numeric(12,2),currency:text\"]\n"
    );
    let harness = services.harness(&[("by_offset.yaml", &job)]).await;
    let run = harness.trigger("by_offset").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    for task in ["extract", "load"] {
        let attempt = &harness.tries(&run.run_id, task).await[0];
        assert_eq!(
            attempt.state,
            TryState::Success,
            "{task}: {:?} {:?}",
            attempt.failure_reason,
            harness.log_lines(attempt).await
        );
    }
    assert_eq!(run.state, RunState::Success);
    assert_eq!(outputs_of(&harness, &run.run_id).await.0, 230);
    // Pages at offsets 0, 100 and 200; the short third page ends it.
    assert_eq!(services.api.requests("GET", "/v1/charges", 200), 3);
    assert_eq!(services.api.requests("GET", "/v1/charges", 401), 0);
    let warehouse = &services.warehouse;
    assert_eq!(
        warehouse.query("SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'typed_charges'"),
        "id:bigint,updated_at:timestamp with time zone,amount:numeric,currency:text"
    );
    assert_eq!(
        warehouse.query("SELECT count(*), count(DISTINCT id), min(updated_at) AT TIME ZONE 'UTC' FROM typed_charges"),
        "230|230|2024-01-01 00:00:01"
    );
    harness.stop().await;
}

/// Security review, finding 5: shell-transform passed an upstream output such as
/// `of[$(id)]` to bash arithmetic, which ran the command. Every number is now checked before
/// arithmetic sees it: the try fails, naming the argument, and nothing ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_transform_runs_no_command_an_upstream_output_smuggles_in() {
    require_images().await;
    let job = format!(
        r#"id: smuggle
tasks:
  - id: count
    backend: process
    command: [/bin/sh, -c, "echo '{{\"type\":\"output\",\"key\":\"records\",\"value\":\"of[$(echo INJECTED >&2)]\"}}'"]
  - id: split
    image: {SHELL}
    depends_on: [count]
    retries: 0
    args: [--partition, 0, --of, 3, --records, "{{{{ outputs.count.records }}}}"]
"#
    );
    let harness = Harness::start(&[("smuggle.yaml", &job)]).await;
    let run = harness.trigger("smuggle").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    let attempt = &harness.tries(&run.run_id, "split").await[0];
    assert_eq!(attempt.exit_code, Some(2), "{:?}", attempt.failure_reason);
    let lines = harness.log_lines(attempt).await;
    assert!(
        lines.iter().all(|(_, text)| text != "INJECTED"),
        "the smuggled command ran: {lines:?}"
    );
    assert!(
        lines.iter().any(|(_, text)| text
            == r#"--records must be a whole number of at most 9 digits, not "of[$(echo INJECTED >&2)]""#),
        "{lines:?}"
    );
    harness.stop().await;
}

/// Issue 16, must show 1: the quickstart's job with `extract` placed on this machine's
/// engine and `load` on a second engine of the test's own, which shares no volume with the
/// first: load gets extract's records file through the artifact store (a folder, or a real
/// S3-compatible server), and the warehouse holds every record exactly once.
async fn the_main_job_split_across_two_engines(s3: Option<&S3Server>) {
    let second = SecondEngine::start(&[]);
    let services = PipelineServices::start(300);
    let job = services
        .job(&read_repo_job("charges_to_warehouse.yaml"))
        .await
        .replace(
            "    args: [--url,",
            "    placement: {engine: main}\n    args: [--url,",
        )
        .replace(
            "    depends_on: [extract]\n",
            "    depends_on: [extract]\n    placement: {engine: second}\n",
        );
    assert_eq!(job.matches("placement").count(), 2, "{job}");
    let hosts = stevedore_backend::docker_hosts::parse_hosts(&format!(
        r#"[{{"name": "main", "endpoint": "unix:///var/run/docker.sock", "labels": {{"engine": "main"}}}},
            {{"name": "second", "endpoint": "{}", "labels": {{"engine": "second"}}}}]"#,
        second.host
    ))
    .unwrap();
    let backend: std::sync::Arc<dyn stevedore_backend::Backend> = std::sync::Arc::new(
        stevedore_backend::docker_hosts::DockerHosts::new(hosts, Duration::from_secs(300)).unwrap(),
    );
    let artifacts = s3.map(|server| stevedore_artifacts::StoreSettings {
        url: format!("s3://{}/split", server.bucket),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    });
    let harness = services
        .harness_on(&[("charges.yaml", &job)], vec![backend], artifacts)
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
        "{:?} {load_log:?}",
        load.failure_reason
    );
    // Each ran where it was placed.
    let placed = |log: &[(String, String)], host: &str| {
        log.iter()
            .any(|(_, text)| text.contains(&format!("placed on Docker host {host}")))
    };
    assert!(placed(&extract_log, "main"), "{extract_log:?}");
    assert!(placed(&load_log, "second"), "{load_log:?}");
    // The records file went from the one engine to the other through the store.
    let (records, file) = outputs_of(&harness, &run.run_id).await;
    assert_eq!(records, 300);
    let artifacts = harness.store.run_artifacts(&run.run_id).await.unwrap();
    let kept: Vec<_> = artifacts
        .iter()
        .map(|a| (a.task_id.as_str(), a.path.as_str()))
        .collect();
    let name = file.rsplit('/').next().unwrap();
    assert!(kept.contains(&("extract", name)), "{kept:?} {file}");
    assert_eq!(
        services
            .warehouse
            .query("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM charges"),
        "300|300|1|300"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_split_across_two_engines_loads_every_record_once() {
    the_main_job_split_across_two_engines(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_split_across_two_engines_with_an_s3_store_loads_every_record_once() {
    let s3 = S3Server::start();
    the_main_job_split_across_two_engines(Some(&s3)).await;
}
