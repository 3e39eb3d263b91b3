//! The shim as the scheduler runs it (the entrypoint contract's arguments, environment and
//! state file), in front of fake Singer and Airbyte connectors (`tests/fakes/`, Python
//! scripts playing the protocols): records per stream, stream selection, state handed in
//! and committed, a crash mid-stream committing nothing, a connector's stdout never passing
//! for Stevedore's own messages, a config error failing once. The real connectors from PyPI
//! run end to end in `tests/e2e/connectors.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn fake(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fakes")
        .join(name)
        .display()
        .to_string()
}

struct Ran {
    code: i32,
    messages: Vec<Value>,
    stdout: String,
    stderr: String,
    workspace: tempfile::TempDir,
}

impl Ran {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.messages.iter().filter(|m| m["type"] == kind).collect()
    }

    fn output(&self, key: &str) -> Option<Value> {
        self.of("output")
            .into_iter()
            .find(|m| m["key"] == key)
            .map(|m| m["value"].clone())
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.workspace.path().join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn shim(
    kind: &str,
    command: &str,
    args: &[&str],
    env: &[(&str, &str)],
    state: Option<&Value>,
) -> Ran {
    let workspace = tempfile::tempdir().unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_stevedore-shim"));
    run.args([
        "run",
        "--job",
        "j",
        "--task",
        "extract",
        "--run",
        "r",
        "--try",
        "1",
        "--logical-date",
        "2024-01-01T00:00:00Z",
        "--interval-start",
        "2024-01-01T00:00:00Z",
        "--interval-end",
        "2024-01-02T00:00:00Z",
        "--params",
        "{}",
        "--",
    ])
    .args(args)
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("STEVEDORE_WORKSPACE", workspace.path())
    .env("STEVEDORE_CONNECTOR_KIND", kind)
    .env("STEVEDORE_CONNECTOR_COMMAND", command)
    .env("STEVEDORE_CONNECTOR_PACKAGE", "fake")
    .env("STEVEDORE_CONNECTOR_VERSION", "1.0.0")
    .envs(env.iter().copied());
    let state_file: Option<PathBuf> = state.map(|value| {
        let path = workspace.path().join("state.json");
        std::fs::write(&path, value.to_string()).unwrap();
        path
    });
    if let Some(path) = &state_file {
        run.env("STEVEDORE_STATE_FILE", path);
    }
    let output = run.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Ran {
        code: output.status.code().unwrap_or(-1),
        messages: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        workspace,
    }
}

#[test]
fn a_singer_tap_s_records_land_per_stream_and_its_last_state_is_committed() {
    let tap = fake("singer_tap.py");
    let env = [
        ("CONFIG_JSON", r#"{"api_key": "k"}"#),
        ("FAKE_TAP_RECORDS", "2500"),
    ];
    let first = shim("singer-tap", &tap, &["--config", "region=eu"], &env, None);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let charges = first.lines("extract.charges.jsonl");
    assert_eq!(charges.len(), 2500);
    assert_eq!(
        charges[0],
        json!({"id": 1, "config_seen": "eu"}),
        "--config reached the tap"
    );
    assert_eq!(first.lines("extract.refunds.jsonl").len(), 2500);
    assert_eq!(first.output("records"), Some(json!(5000)));
    assert_eq!(first.output("records_charges"), Some(json!(2500)));
    assert!(first
        .output("records_file_charges")
        .unwrap()
        .as_str()
        .unwrap()
        .ends_with("extract.charges.jsonl"));
    assert_eq!(
        first.output("records_file"),
        None,
        "two streams: no single records_file"
    );
    // One state message, the tap's last, after the outputs.
    let states = first.of("state");
    assert_eq!(states.len(), 1);
    assert_eq!(
        states[0]["value"],
        json!({"bookmarks": {"charges": 2500, "refunds": 2500}})
    );
    // The tap's own stdout never passes for a Stevedore message.
    assert!(first.output("smuggled").is_none());
    let logs: Vec<&str> = first
        .of("log")
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert!(
        logs.contains(&"not json: starting the fake tap"),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("\"smuggled\"")), "{logs:?}");
    let schemas: Value = serde_json::from_str(
        &std::fs::read_to_string(first.workspace.path().join("extract.schemas.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schemas["charges"]["key_properties"], json!(["id"]));

    // The next run starts from the committed state, one stream chosen.
    let second = shim(
        "singer-tap",
        &tap,
        &["--streams", "refunds"],
        &[("CONFIG_API_KEY", "k"), ("FAKE_TAP_RECORDS", "3")],
        Some(&states[0]["value"]),
    );
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    let refunds = second.lines("extract.refunds.jsonl");
    let ids: Vec<i64> = refunds.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [2501, 2502, 2503]);
    assert!(!second
        .workspace
        .path()
        .join("extract.charges.jsonl")
        .exists());
    assert!(second
        .output("records_file")
        .unwrap()
        .as_str()
        .unwrap()
        .ends_with("extract.refunds.jsonl"));

    let unknown = shim(
        "singer-tap",
        &tap,
        &["--streams", "payouts"],
        &[("CONFIG_API_KEY", "k")],
        None,
    );
    assert_eq!(unknown.code, 78);
    assert!(unknown
        .stdout
        .contains("no stream `payouts` (its streams: charges, refunds)"));
}

#[test]
fn a_meltano_sdk_tap_runs_without_a_separate_discovery_unless_streams_are_chosen() {
    // A virtualenv like the wrapped image's: the tap in bin/, singer_sdk installed.
    let venv = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(venv.path().join("bin")).unwrap();
    std::fs::create_dir_all(venv.path().join("lib/python3.11/site-packages/singer_sdk")).unwrap();
    let tap = venv.path().join("bin/tap-fake");
    std::os::unix::fs::symlink(fake("singer_tap.py"), &tap).unwrap();
    let tap = tap.display().to_string();
    let env = [("CONFIG_API_KEY", "k"), ("FAKE_TAP_RECORDS", "4")];
    let all = shim("singer-tap", &tap, &[], &env, None);
    assert_eq!(all.code, 0, "{}{}", all.stdout, all.stderr);
    assert!(
        all.stderr.contains("no catalog: syncing every stream"),
        "{}",
        all.stderr
    );
    assert_eq!(all.lines("extract.charges.jsonl").len(), 4);
    assert_eq!(all.lines("extract.refunds.jsonl").len(), 4);
    assert_eq!(all.output("catalog_file"), None, "no discovery, no catalog");
    // Choosing streams needs the catalog: discovered then.
    let one = shim("singer-tap", &tap, &["--streams", "charges"], &env, None);
    assert_eq!(one.code, 0, "{}{}", one.stdout, one.stderr);
    assert!(!one.stderr.contains("no catalog"));
    assert!(!one.workspace.path().join("extract.refunds.jsonl").exists());
    let forced = shim("singer-tap", &tap, &["--discover", "always"], &env, None);
    assert!(forced.output("catalog_file").is_some());
    let wrong = shim("singer-tap", &tap, &["--discover", "sometimes"], &env, None);
    assert_eq!(wrong.code, 78);
}

#[test]
fn a_tap_that_crashes_mid_stream_commits_no_state_and_a_bad_config_fails_with_the_tap_s_words() {
    let tap = fake("singer_tap.py");
    let crashed = shim(
        "singer-tap",
        &tap,
        &[],
        &[
            ("CONFIG_API_KEY", "k"),
            ("FAKE_TAP_RECORDS", "2500"),
            ("FAKE_TAP_CRASH_AFTER", "1500"),
        ],
        Some(&json!({"bookmarks": {}})),
    );
    assert_eq!(crashed.code, 1, "{}", crashed.stdout);
    assert!(crashed.of("state").is_empty(), "no state after a crash");
    let error = crashed.of("error")[0];
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("the tap exited with 1 after 1500 records"));
    assert!(crashed.stderr.contains("crashing after 1500 records"));

    let refused = shim(
        "singer-tap",
        &tap,
        &[],
        &[("CONFIG_API_KEY", "wrong")],
        None,
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("api_key missing or wrong"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.contains("discovery exited with 2"));
}

#[test]
fn a_singer_target_is_fed_a_schema_and_every_record_of_a_records_file() {
    let records = tempfile::tempdir().unwrap();
    let input = records.path().join("extract.jsonl");
    let lines: Vec<String> = (1..=1200)
        .map(|n| {
            json!({"id": n, "amount": n as f64 * 1.5, "note": null, "tags": ["a"]}).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = records.path().join("received.jsonl");
    let ran = shim(
        "singer-target",
        &fake("singer_target.py"),
        &[
            "--input",
            input.to_str().unwrap(),
            "--stream",
            "charges",
            "--key-properties",
            "id",
        ],
        &[
            ("CONFIG_DSN", "postgres://x"),
            ("FAKE_TARGET_OUT", out.to_str().unwrap()),
        ],
        None,
    );
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.output("records"), Some(json!(1200)));
    let received: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(received.len(), 1202, "SCHEMA, 1200 RECORDs, STATE");
    assert_eq!(received[0]["type"], "SCHEMA");
    assert_eq!(received[0]["key_properties"], json!(["id"]));
    assert_eq!(
        received[0]["schema"]["properties"],
        json!({"id": {"type": ["null", "integer"]}, "amount": {"type": ["null", "number"]},
               "note": {"type": ["null", "string"]}, "tags": {"type": ["null", "array"]}})
    );
    assert_eq!(received[1200]["record"]["id"], 1200);
    assert_eq!(received[1201]["type"], "STATE");

    let missing = shim(
        "singer-target",
        &fake("singer_target.py"),
        &["--input", "/nonexistent.jsonl"],
        &[("CONFIG_DSN", "x")],
        None,
    );
    assert_eq!(missing.code, 78);
    assert!(missing
        .stdout
        .contains("--input /nonexistent.jsonl: no such file"));
}

#[test]
fn an_airbyte_source_keeps_state_per_stream_and_a_config_error_is_not_retried() {
    let source = fake("airbyte_source.py");
    let first = shim(
        "airbyte-source",
        &source,
        &[],
        &[("CONFIG_API_KEY", "k")],
        None,
    );
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(first.lines("extract.users.jsonl").len(), 3);
    assert_eq!(first.lines("extract.rates.jsonl").len(), 3);
    let state = first.of("state")[0]["value"].clone();
    assert_eq!(
        state["streams"]["users"]["stream"]["stream_state"],
        json!({"updated": 3})
    );
    assert!(
        state["streams"].get("rates").is_none(),
        "a full-refresh stream keeps no state"
    );
    let logs: Vec<&str> = first
        .of("log")
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert!(logs.contains(&"reading users from 0"), "{logs:?}");

    let second = shim(
        "airbyte-source",
        &source,
        &["--streams", "users"],
        &[("CONFIG_JSON", r#"{"api_key": "k"}"#)],
        Some(&state),
    );
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    let ids: Vec<i64> = second
        .lines("extract.users.jsonl")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [4, 5, 6]);
    assert_eq!(
        second.of("state")[0]["value"]["streams"]["users"]["stream"]["stream_state"],
        json!({"updated": 6})
    );

    let refused = shim(
        "airbyte-source",
        &source,
        &[],
        &[("CONFIG_API_KEY", "nope")],
        None,
    );
    assert_eq!(
        refused.code, 78,
        "a config_error is not retryable: {}",
        refused.stdout
    );
    let error = (*refused.of("error").last().unwrap()).clone();
    assert_eq!(error["message"], "Invalid API key (config_error)");
    assert_eq!(error["retryable"], false);
    assert!(refused.of("state").is_empty());
}

#[test]
fn spec_and_check_speak_for_the_connector() {
    let source = fake("airbyte_source.py");
    let run = |args: &[&str], key: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_stevedore-shim"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STEVEDORE_CONNECTOR_KIND", "airbyte-source")
            .env("STEVEDORE_CONNECTOR_COMMAND", &source)
            .env("STEVEDORE_CONNECTOR_PACKAGE", "fake-source")
            .env("STEVEDORE_CONNECTOR_VERSION", "1.0.0")
            .env("CONFIG_API_KEY", key)
            .output()
            .unwrap();
        let line: Value = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap();
        (output.status.code(), line)
    };
    let (code, spec) = run(&["spec"], "k");
    assert_eq!(code, Some(0));
    assert_eq!(
        (spec["type"].as_str(), spec["name"].as_str()),
        (Some("spec"), Some("fake-source"))
    );
    assert_eq!(
        spec["connector"]["config_schema"]["required"],
        json!(["api_key"])
    );
    let (code, ok) = run(&["check"], "k");
    assert_eq!((code, ok["ok"].as_bool()), (Some(0), Some(true)));
    let (code, failed) = run(&["check"], "wrong");
    assert_eq!((code, failed["ok"].as_bool()), (Some(1), Some(false)));
    assert_eq!(
        failed["message"], "'api_key' is a required property",
        "the connector's own words"
    );
}
