//! Connectors published on PyPI, wrapped unmodified (`images/tap-rest-api-msdk`,
//! `images/target-postgres`, `images/source-declarative-manifest`, built by `stevedore
//! images build` with stevedore-shim as their entrypoint), end to end through a real
//! scheduler as containers on the real Docker engine, against the demo API and a real
//! PostgreSQL warehouse: each a second time extracting only new records (their state),
//! the warehouse holding every record once; a connector failing mid-stream commits no state
//! and keeps the earlier one.

use std::time::Duration;

use stevedore_domain::state::RunState;
use stevedore_store::RunRecord;
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

const TAP: &str = "stevedore/tap-rest-api-msdk:1.4.2";
const TARGET: &str = "stevedore/target-postgres:0.8.1";
const SOURCE: &str = "stevedore/source-declarative-manifest:6.5.2";
const HTTP_EXTRACT: &str = "stevedore/http-extract:0.3.0";
const LOAD: &str = "stevedore/postgres-load:0.2.0";

/// Fails (never skips) when a wrapped connector's image is missing.
async fn require_connectors() {
    require_images().await;
    for image in [TAP, TARGET, SOURCE] {
        let found = std::process::Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .expect("docker image inspect");
        assert!(
            found.status.success(),
            "image {image} is missing: run `stevedore images build` first (scripts/test.sh does)"
        );
    }
}

async fn run_to_end(harness: &Harness, job: &str) -> RunRecord {
    let run = harness.trigger(job).await;
    let run = harness.wait_run(&run.run_id, 3 * MINUTE).await;
    if run.state != RunState::Success {
        let mut said = String::new();
        for ti in harness.store.task_instances(&run.run_id).await.unwrap() {
            for attempt in harness.tries(&run.run_id, &ti.task_id).await {
                said.push_str(&format!(
                    "\n{} try {}: {:?}\n{:#?}",
                    ti.task_id,
                    attempt.try_number,
                    attempt.failure_reason,
                    harness.log_lines(&attempt).await
                ));
            }
        }
        panic!("run {} of {job} ended {}: {said}", run.run_id, run.state);
    }
    run
}

async fn output_u64(harness: &Harness, run_id: &str, task: &str, key: &str) -> u64 {
    let outputs = harness.outputs(run_id).await;
    outputs
        .get(&(task.to_owned(), key.to_owned()))
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no output {task}.{key}: {outputs:?}"))
}

/// (rows, distinct ids) of a warehouse table.
fn counts(warehouse: &Postgres, table: &str) -> (u64, u64) {
    let text = warehouse.query(&format!("SELECT count(*), count(DISTINCT id) FROM {table}"));
    let (rows, ids) = text.split_once('|').expect("two counts");
    (rows.parse().unwrap(), ids.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singer_tap_from_pypi_feeds_postgres_load_then_extracts_only_new_records() {
    require_connectors().await;
    let services = PipelineServices::start(300);
    let job = format!(
        r#"id: tap_to_warehouse
tasks:
  - id: extract
    image: {TAP}
    connections: [tap_demo]
    retries: 0
    args: [--config, "next_page_token_path=$.next_cursor", --config, pagination_next_page_param=cursor,
           --config, 'params={{"limit": 100}}',
           --config, 'streams=[{{"name": "charges", "path": "/v1/charges", "primary_keys": ["id"], "records_path": "$.data[*]", "replication_key": "updated_at", "source_search_field": "updated_since", "source_search_query": "$last_run_date"}}]']
  - id: load
    image: {LOAD}
    depends_on: [extract]
    connections: [warehouse]
    args: [--input, "{{{{ outputs.extract.records_file }}}}", --table, tap_charges, --key, id]
"#
    );
    let harness = services.harness(&[]).await;
    // The secrets, one variable per config key.
    let api_url = services.api.container_url();
    harness
        .add_connection(
            "tap_demo",
            &[
                ("CONFIG_API_URL", api_url.as_str()),
                ("CONFIG_AUTH_METHOD", "bearer_token"),
                ("CONFIG_BEARER_TOKEN", "demo-token"),
            ],
        )
        .await;
    std::fs::write(harness.jobs_dir().join("tap.yaml"), &job).unwrap();
    let first = run_to_end(&harness, "tap_to_warehouse").await;
    assert_eq!(
        output_u64(&harness, &first.run_id, "extract", "records").await,
        300
    );
    assert_eq!(counts(&services.warehouse, "tap_charges"), (300, 300));
    let committed = harness
        .store
        .committed_state("tap_to_warehouse", "extract")
        .await
        .unwrap()
        .expect("the tap's state, committed");
    assert_eq!(
        committed["bookmarks"]["charges"]["replication_key_value"], "2024-01-01T00:05:00.000000Z",
        "{committed}"
    );
    // The bearer token never reached the log.
    let extract = &harness.tries(&first.run_id, "extract").await[0];
    let lines = harness.log_lines(extract).await;
    assert!(
        lines.iter().all(|(_, t)| !t.contains("demo-token")),
        "{lines:?}"
    );

    http(
        "POST",
        &services.api.address,
        "/admin/records?count=25",
        &[],
    );
    let second = run_to_end(&harness, "tap_to_warehouse").await;
    assert_eq!(
        output_u64(&harness, &second.run_id, "extract", "records").await,
        25,
        "only the new records"
    );
    assert_eq!(counts(&services.warehouse, "tap_charges"), (325, 325));

    // The API fails mid-way through the next run's paging (after the discovery's request
    // and the first page): the tap exits non-zero, the run fails, and the state committed
    // before stays as it was.
    http(
        "POST",
        &services.api.address,
        "/admin/records?count=250",
        &[],
    );
    http(
        "POST",
        &services.api.address,
        "/admin/faults?status=401&count=1&after=2",
        &[],
    );
    let before = harness
        .store
        .committed_state("tap_to_warehouse", "extract")
        .await
        .unwrap();
    let third = harness.trigger("tap_to_warehouse").await;
    let third = harness.wait_run(&third.run_id, 3 * MINUTE).await;
    assert_eq!(third.state, RunState::Failed);
    let failed = &harness.tries(&third.run_id, "extract").await[0];
    assert!(
        failed
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("the tap exited with")),
        "{:?}",
        failed.failure_reason
    );
    assert_eq!(
        harness
            .store
            .committed_state("tap_to_warehouse", "extract")
            .await
            .unwrap(),
        before
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_extract_s_records_load_through_the_singer_target_for_postgres() {
    require_connectors().await;
    let services = PipelineServices::start(300);
    let host = services.warehouse.container_host();
    let port = services.warehouse.port.to_string();
    let job = format!(
        r#"id: extract_to_target
tasks:
  - id: extract
    image: {HTTP_EXTRACT}
    connections: [demo_api]
    args: [--url, /v1/charges, --incremental-field, updated_at, --page-size, 100]
  - id: load
    image: {TARGET}
    depends_on: [extract]
    connections: [target_warehouse]
    retries: 0
    args: [--input, "{{{{ outputs.extract.records_file }}}}", --stream, charges, --key-properties, id,
           --config, default_target_schema=public]
"#
    );
    let harness = services.harness(&[]).await;
    let config = serde_json::json!({
        "host": host, "port": services.warehouse.port, "user": "postgres", "password": "",
        "database": "postgres",
    });
    let _ = port;
    harness
        .add_connection(
            "target_warehouse",
            &[("CONFIG_JSON", config.to_string().as_str())],
        )
        .await;
    std::fs::write(harness.jobs_dir().join("target.yaml"), &job).unwrap();
    let first = run_to_end(&harness, "extract_to_target").await;
    assert_eq!(
        output_u64(&harness, &first.run_id, "load", "records").await,
        300
    );
    assert_eq!(counts(&services.warehouse, "public.charges"), (300, 300));
    http(
        "POST",
        &services.api.address,
        "/admin/records?count=40",
        &[],
    );
    let second = run_to_end(&harness, "extract_to_target").await;
    assert_eq!(
        output_u64(&harness, &second.run_id, "load", "records").await,
        40
    );
    assert_eq!(counts(&services.warehouse, "public.charges"), (340, 340));
    harness.stop().await;
}

/// An Airbyte low-code source for the demo API, as a manifest in the connector's config.
fn demo_manifest() -> serde_json::Value {
    let text = r#"
version: 6.5.2
type: DeclarativeSource
check:
  type: CheckStream
  stream_names: [charges]
spec:
  type: Spec
  connection_specification:
    type: object
    required: [api_url, api_token]
    properties:
      api_url: {type: string}
      api_token: {type: string, airbyte_secret: true}
streams:
  - type: DeclarativeStream
    name: charges
    primary_key: [id]
    schema_loader:
      type: InlineSchemaLoader
      schema:
        type: object
        properties:
          id: {type: integer}
          updated_at: {type: string}
          amount: {type: integer}
          currency: {type: string}
          customer: {type: string}
    retriever:
      type: SimpleRetriever
      requester:
        type: HttpRequester
        url_base: "{{ config['api_url'] }}"
        path: /v1/charges
        http_method: GET
        authenticator:
          type: BearerAuthenticator
          api_token: "{{ config['api_token'] }}"
      record_selector:
        type: RecordSelector
        extractor:
          type: DpathExtractor
          field_path: [data]
      paginator:
        type: DefaultPaginator
        page_token_option:
          type: RequestOption
          inject_into: request_parameter
          field_name: cursor
        page_size_option:
          type: RequestOption
          inject_into: request_parameter
          field_name: limit
        pagination_strategy:
          type: CursorPagination
          page_size: 100
          cursor_value: "{{ response.next_cursor }}"
          stop_condition: "{{ not response.next_cursor }}"
    incremental_sync:
      type: DatetimeBasedCursor
      cursor_field: updated_at
      datetime_format: "%Y-%m-%dT%H:%M:%S.%fZ"
      start_datetime:
        type: MinMaxDatetime
        datetime: "2020-01-01T00:00:00.000000Z"
        datetime_format: "%Y-%m-%dT%H:%M:%S.%fZ"
      start_time_option:
        type: RequestOption
        inject_into: request_parameter
        field_name: updated_since
"#;
    serde_saphyr::from_str(text).expect("the manifest is YAML")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_airbyte_low_code_source_from_pypi_loads_and_then_reads_only_new_records() {
    require_connectors().await;
    let services = PipelineServices::start(300);
    let job = format!(
        r#"id: airbyte_to_warehouse
tasks:
  - id: extract
    image: {SOURCE}
    connections: [airbyte_demo]
    retries: 0
  - id: load
    image: {LOAD}
    depends_on: [extract]
    connections: [warehouse]
    args: [--input, "{{{{ outputs.extract.records_file }}}}", --table, airbyte_charges, --key, id]
"#
    );
    let harness = services.harness(&[]).await;
    let config = serde_json::json!({
        "__injected_declarative_manifest": demo_manifest(),
        "api_url": services.api.container_url(),
        "api_token": "demo-token",
    });
    harness
        .add_connection(
            "airbyte_demo",
            &[("CONFIG_JSON", config.to_string().as_str())],
        )
        .await;
    std::fs::write(harness.jobs_dir().join("airbyte.yaml"), &job).unwrap();
    let first = run_to_end(&harness, "airbyte_to_warehouse").await;
    assert_eq!(
        output_u64(&harness, &first.run_id, "extract", "records").await,
        300
    );
    assert_eq!(counts(&services.warehouse, "airbyte_charges"), (300, 300));
    let committed = harness
        .store
        .committed_state("airbyte_to_warehouse", "extract")
        .await
        .unwrap()
        .expect("the source's state, committed");
    assert!(
        committed["streams"]["charges"]["stream"]["stream_state"].is_object(),
        "state per stream: {committed}"
    );
    http(
        "POST",
        &services.api.address,
        "/admin/records?count=30",
        &[],
    );
    let second = run_to_end(&harness, "airbyte_to_warehouse").await;
    assert_eq!(
        output_u64(&harness, &second.run_id, "extract", "records").await,
        30,
        "only the new records"
    );
    assert_eq!(counts(&services.warehouse, "airbyte_charges"), (330, 330));
    harness.stop().await;
}

/// `check` of a wrapped connector answers in the connector's own words: the Airbyte source's
/// own validation of a config missing a required key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_missing_a_required_key_fails_check_with_the_connector_s_own_message() {
    require_connectors().await;
    let config = serde_json::json!({
        "__injected_declarative_manifest": demo_manifest(),
        "api_url": "http://127.0.0.1:9",
    });
    // As `stevedore images check` runs it: the image's `check` with the connection's values.
    let ran = std::process::Command::new("docker")
        .args(["run", "--rm", "-e"])
        .arg(format!("CONFIG_JSON={config}"))
        .args([SOURCE, "check"])
        .output()
        .expect("docker run");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let verdict: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["type"] == "check")
        .unwrap_or_else(|| panic!("no check verdict: {stdout}"));
    assert_eq!(ran.status.code(), Some(1), "{stdout}");
    assert_eq!(verdict["ok"], false);
    let message = verdict["message"].as_str().unwrap();
    assert!(
        message.contains("api_token"),
        "the connector's own words: {message}"
    );
}
