//! The SDK's complete example (`examples/daily_export.rs`, walked through in docs/sdk.md),
//! run as the scheduler runs an integration: its commands, exit codes and protocol lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Builds the example and returns its executable.
fn example() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "build",
            "-p",
            "stevedore-sdk",
            "--example",
            "daily_export",
            "--message-format",
            "json",
        ])
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == "daily_export")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo named the example's executable")
}

struct Ran {
    code: i32,
    messages: Vec<Value>,
    stderr: String,
}

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let output = Command::new(bin)
        .args(args)
        .env_remove("EXPORT_TOKEN")
        .env_remove("STEVEDORE_STATE_FILE")
        .env_remove("STEVEDORE_WORKSPACE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Ran {
        code: output.status.code().unwrap(),
        messages: String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("every stdout line is a message"))
            .collect(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn contract<'a>(day: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--job",
        "orders",
        "--task",
        "export",
        "--run",
        "r1",
        "--try",
        "1",
        "--logical-date",
        day,
        "--interval-start",
        day,
        "--interval-end",
        day,
        "--params",
        "{}",
        "--",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn the_complete_example_speaks_the_whole_contract() {
    let bin = example();
    let workspace = tempfile::tempdir().unwrap();
    let ws = workspace.path().to_str().unwrap();
    let token = ("EXPORT_TOKEN", "exp_4f2a");

    let spec = run(&bin, &["spec"], &[]);
    assert_eq!(spec.code, 0);
    assert_eq!(spec.messages[0]["type"], "spec");
    assert_eq!(spec.messages[0]["name"], "daily-export");
    assert_eq!(
        spec.messages[0]["params"]["properties"]["orders"]["type"],
        "integer"
    );

    let missing = run(&bin, &["check"], &[]);
    assert_eq!(missing.code, 1);
    assert_eq!(missing.messages[0]["ok"], false);
    assert!(missing.messages[0]["message"]
        .as_str()
        .unwrap()
        .contains("EXPORT_TOKEN is not set"));
    let wrong = run(&bin, &["check"], &[("EXPORT_TOKEN", "sk_nope")]);
    assert_eq!(wrong.code, 1);
    let ok = run(&bin, &["check", "--", "--source", "eu_orders"], &[token]);
    assert_eq!(ok.code, 0);
    assert_eq!(
        ok.messages[0],
        json!({"type": "check", "ok": true, "message": "EXPORT_TOKEN accepted for source `eu_orders`"})
    );

    // A run writes the day's orders into the workspace and reports them.
    let day = "2024-03-01T00:00:00Z";
    let first = run(
        &bin,
        &contract(day, &["--orders", "1200"]),
        &[token, ("STEVEDORE_WORKSPACE", ws)],
    );
    assert_eq!(first.code, 0, "{:?} {}", first.messages, first.stderr);
    let file = workspace.path().join("export-2024-03-01.jsonl");
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 1200);
    let of_type = |ran: &Ran, kind: &str| -> Vec<Value> {
        ran.messages
            .iter()
            .filter(|m| m["type"] == kind)
            .cloned()
            .collect()
    };
    assert_eq!(
        of_type(&first, "progress")
            .iter()
            .map(|m| m["done"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![500, 1000]
    );
    assert_eq!(
        of_type(&first, "output"),
        vec![
            json!({"type": "output", "key": "file", "value": file.display().to_string()}),
            json!({"type": "output", "key": "orders", "value": 1200}),
        ]
    );
    assert_eq!(
        of_type(&first, "state"),
        vec![json!({"type": "state", "value": {"last_day": "2024-03-01"}})]
    );
    assert_eq!(of_type(&first, "metric")[0]["value"], 1200.0);

    // With that state committed, the same day is skipped (exit 99); the next one is not,
    // and a run param wins over the task's args.
    let state = workspace.path().join("state.json");
    std::fs::write(&state, r#"{"last_day":"2024-03-01"}"#).unwrap();
    let with_state = [
        token,
        ("STEVEDORE_WORKSPACE", ws),
        ("STEVEDORE_STATE_FILE", state.to_str().unwrap()),
    ];
    let again = run(&bin, &contract(day, &["--orders", "1200"]), &with_state);
    assert_eq!(again.code, 99);
    let mut next_day = contract("2024-03-02T00:00:00Z", &["--orders", "1200"]);
    let params = next_day.iter().position(|a| *a == "--params").unwrap() + 1;
    next_day[params] = r#"{"orders": 3}"#;
    let next = run(&bin, &next_day, &with_state);
    assert_eq!(next.code, 0);
    assert_eq!(of_type(&next, "output")[1]["value"], 3);

    // As a sensor: not ready (exit 75) until the file it waits for is there.
    let sensor = contract("2024-03-03T00:00:00Z", &["--wait-for", "upstream.done"]);
    let waiting = run(&bin, &sensor, &with_state);
    assert_eq!(waiting.code, 75);
    std::fs::write(workspace.path().join("upstream.done"), "").unwrap();
    assert_eq!(run(&bin, &sensor, &with_state).code, 0);

    // A failure is an `error` message: a missing token is not retryable (exit 78), a
    // failure to write the file is (exit 1). Bad contract arguments exit 2.
    let no_token = run(&bin, &contract(day, &[]), &[("STEVEDORE_WORKSPACE", ws)]);
    assert_eq!(no_token.code, 78);
    let said = no_token.messages.last().unwrap();
    assert_eq!(
        (&said["type"], &said["retryable"]),
        (&json!("error"), &json!(false))
    );
    assert!(
        said["message"].as_str().unwrap().contains("EXPORT_TOKEN"),
        "{said}"
    );
    let unwritable = run(
        &bin,
        &contract(day, &[]),
        &[token, ("STEVEDORE_WORKSPACE", "/nonexistent/workspace")],
    );
    assert_eq!(unwritable.code, 1);
    let said = unwritable.messages.last().unwrap();
    assert_eq!(
        (&said["type"], &said["retryable"]),
        (&json!("error"), &json!(true))
    );
    let bad = run(&bin, &["run", "--job", "orders"], &[token]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("`--task` is required"),
        "{}",
        bad.stderr
    );
}

/// docs/sdk.md shows the example whole: the page and the tested file cannot drift apart.
#[test]
fn the_docs_show_the_example_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("examples/daily_export.rs")).unwrap();
    let docs = std::fs::read_to_string(root.join("../../docs/sdk.md")).unwrap();
    assert!(
        docs.contains(&source),
        "docs/sdk.md must contain crates/sdk/examples/daily_export.rs verbatim"
    );
}
