//! Regression tests of the security review (issue 13), each named after its finding and
//! run on the built binary, as the review was: a job author's tries, a viewer's reads; and,
//! with the same helpers, that every door shows a run alike (issue 14).

use std::collections::BTreeMap;

use super::*;

/// Adds a connection with `stevedore connections add`, the values from the environment.
fn add_connection(workspace: &Workspace, name: &str, values: &[(&str, &str)]) {
    let mut args = vec!["connections", "add", name];
    for (key, _) in values {
        args.extend(["--env", key]);
    }
    let mut command = workspace.command(&args);
    for (key, value) in values {
        command.env(key, value);
    }
    let added = command.output().unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
}

/// `standalone` with more environment variables.
fn standalone_env(workspace: &Workspace, variables: &[(&str, &str)]) -> Standalone {
    serve_env(workspace, "standalone", variables)
}

fn serve_env(workspace: &Workspace, what: &str, variables: &[(&str, &str)]) -> Standalone {
    let mut command = if what == "scheduler" {
        workspace.command(&["scheduler"])
    } else {
        workspace.command(&[what, "--port", "0"])
    };
    command.envs(variables.iter().copied());
    let log = std::fs::File::create(workspace.dir.path().join(format!("{what}.log"))).unwrap();
    let child = command
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start stevedore");
    Standalone {
        child,
        log: workspace.dir.path().join(format!("{what}.log")),
    }
}

fn trigger(workspace: &Workspace, job: &str) -> String {
    let run = workspace.run(&["jobs", "trigger", job]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).trim().to_owned()
}

fn wait_ended(workspace: &Workspace, run_id: &str, within: Duration) -> Value {
    wait_for_run(workspace, run_id, "the run did not end", within, |shown| {
        shown["state"] == "success" || shown["state"] == "failed"
    })
}

fn task<'a>(shown: &'a Value, id: &str) -> &'a Value {
    shown["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ti| ti["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id}: {shown}"))
}

/// The base URL of the API the server printed at start.
fn api_base(server: &Standalone) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(rest) = log.split("API at ").nth(1) {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no API URL in: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn api_get(base: &str, path: &str, token: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .uri(format!("{base}{path}"))
        .header("Authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let mut response = agent.run(request).unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn viewer_token(workspace: &Workspace) -> String {
    let created = workspace.json(&[
        "tokens", "create", "viewer", "--role", "viewer", "-o", "json",
    ]);
    created["token"].as_str().unwrap().to_owned()
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Finding 1: the process backend inherited the scheduler's whole environment, and the
/// config file's settings were exported into it: a `backend: process` job printed the
/// secret key, the database URL and the Nomad token.
#[test]
fn a_process_try_gets_none_of_the_schedulers_environment() {
    let job = "id: envdump\ntasks:\n  - id: dump\n    backend: process\n    command: [/bin/sh, -c, 'env; echo \"cwd=$(pwd)\"']\n    env: {PAGE_SIZE: \"100\"}\n    connections: [api]\n";
    let workspace = Workspace::new(&[("envdump.yaml", job)]);
    add_connection(&workspace, "api", &[("API_TOKEN", "tok-0123456789")]);
    let key = std::fs::read_to_string(workspace.dir.path().join("stevedore.key")).unwrap();
    let config = workspace.dir.path().join("stevedore.yaml");
    std::fs::write(
        &config,
        "nomad_addr: http://127.0.0.1:9\nnomad_token: nomad-token-in-the-file\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let standalone = standalone_env(
        &workspace,
        &[
            ("STEVEDORE_CONFIG", &config),
            ("STEVEDORE_SECRET_KEY", key.trim()),
            ("AWS_SECRET_ACCESS_KEY", "platform-aws-secret"),
        ],
    );
    let run_id = trigger(&workspace, "envdump");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");
    let log = stored_log(&workspace, &run_id, "dump");
    let variables: BTreeMap<String, String> = log
        .iter()
        .filter(|(stream, _)| stream == "stdout")
        .filter_map(|(_, text)| text.split_once('='))
        .filter(|(name, _)| *name != "cwd")
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let contract = [
        "STEVEDORE_CONTRACT_VERSION",
        "STEVEDORE_JOB_ID",
        "STEVEDORE_TASK_ID",
        "STEVEDORE_RUN_ID",
        "STEVEDORE_TRY_NUMBER",
        "STEVEDORE_LOGICAL_DATE",
        "STEVEDORE_DATA_INTERVAL_START",
        "STEVEDORE_DATA_INTERVAL_END",
        "STEVEDORE_PARAMS",
        "STEVEDORE_WORKSPACE",
    ];
    // What the shell adds itself.
    let shell = ["PWD", "SHLVL", "OLDPWD", "_"];
    for name in variables.keys() {
        assert!(
            contract.contains(&name.as_str())
                || shell.contains(&name.as_str())
                || ["PATH", "HOME", "LANG", "PAGE_SIZE", "API_TOKEN"].contains(&name.as_str()),
            "the try got `{name}`: {variables:?}"
        );
    }
    for name in contract {
        assert!(variables.contains_key(name), "no {name}: {variables:?}");
    }
    assert_eq!(variables["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(variables["LANG"], "C.UTF-8");
    assert_eq!(variables["PAGE_SIZE"], "100");
    assert_eq!(variables["API_TOKEN"], "***", "a connection value, masked");
    let all = format!("{log:?}");
    for leaked in [
        key.trim(),
        "platform-aws-secret",
        "nomad-token-in-the-file",
        "stevedore.db",
    ] {
        assert!(!all.contains(leaked), "`{leaked}` reached the try: {all}");
    }
    // Finding 10: the runtime folder is private and beside the store, not in /tmp.
    let runtime = workspace.dir.path().join("stevedore.runtime");
    use std::os::unix::fs::PermissionsExt;
    // The try's own folder (its home and workspace) went with it; the folders holding tries
    // and the run's files are the owner's only.
    let artifacts = workspace.dir.path().join("stevedore.artifacts");
    for folder in [runtime.clone(), runtime.join("tries"), artifacts] {
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", folder.display());
    }
    assert!(variables["HOME"].starts_with(&runtime.display().to_string()));
    assert!(
        variables["STEVEDORE_WORKSPACE"].starts_with(&runtime.join("tries").display().to_string())
    );
    let mode = std::fs::metadata(workspace.dir.path().join("stevedore.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the store is {mode:o}");
    standalone.interrupt();
}

/// Finding 1, second half: `stevedore scheduler` runs `process` tries (local processes of
/// its own user, outside any container) only when told to; `standalone` has them for
/// development.
#[test]
fn the_scheduler_runs_process_tries_only_when_told_to() {
    let job = "id: local\ntasks:\n  - id: hello\n    backend: process\n    command: [/bin/sh, -c, 'echo hello']\n    retries: 0\n";
    let workspace = Workspace::new(&[("local.yaml", job)]);
    let scheduler = serve_env(&workspace, "scheduler", &[]);
    let run_id = trigger(&workspace, "local");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "failed", "{shown}");
    let reason = task(&shown, "hello")["tries"][0]["failure_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("backend `process` is not enabled") && reason.contains("process_backend"),
        "{reason}"
    );
    scheduler.interrupt();
    let scheduler = serve_env(
        &workspace,
        "scheduler",
        &[("STEVEDORE_PROCESS_BACKEND", "true")],
    );
    let run_id = trigger(&workspace, "local");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");
    scheduler.interrupt();
}

/// A value in the base64 a program would print it in, standard alphabet, padded.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Percent-encoding of every byte but the unreserved ones (RFC 3986), uppercase hex.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// JSON with every non-ASCII character escaped, as Python's `json.dumps` writes it.
fn ascii_json(value: &str) -> String {
    let plain = serde_json::to_string(value).unwrap();
    plain
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                let mut units = [0u16; 2];
                c.encode_utf16(&mut units)
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect()
}

/// Finding 2: masking replaced the raw text of a line before it was parsed, so a connection
/// value got through JSON-escaped in a `log` message, as an output value, split over lines
/// (a PEM key), and base64- or URL-encoded.
#[test]
fn masking_holds_in_messages_outputs_state_lines_and_encodings() {
    const TOKEN: &str = "tok\"en/p@ss wörd+1";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDu\n-----END PRIVATE KEY-----";
    let basic = base64(format!("user:{TOKEN}").as_bytes());
    let printed = [
        serde_json::json!({"type": "log", "level": "info", "message": format!("token {TOKEN}")})
            .to_string(),
        format!(
            "{{\"type\":\"log\",\"level\":\"warn\",\"message\":{}}}",
            ascii_json(&format!("again {TOKEN}"))
        ),
        serde_json::json!({"type": "output", "key": "leak", "value": format!("x {TOKEN} y")})
            .to_string(),
        serde_json::json!({"type": "output", "key": "nested", "value": {"list": [TOKEN]}})
            .to_string(),
        serde_json::json!({"type": "state", "value": {"cursor": TOKEN}}).to_string(),
        format!("Authorization: Basic {basic}"),
        format!("url: https://api.example/?t={}&x=1", percent_encoded(TOKEN)),
        format!("bare base64: {}", base64(TOKEN.as_bytes())),
    ]
    .into_iter()
    .chain(KEY.lines().map(|line| format!("key line: {line}")))
    .collect::<Vec<_>>();
    let workspace = Workspace::new(&[]);
    let forms = workspace.dir.path().join("printed.txt");
    std::fs::write(&forms, printed.join("\n") + "\n").unwrap();
    let job = format!(
        "id: leaky\ntasks:\n  - id: talk\n    backend: process\n    command: [/bin/sh, -c, \"cat {}\"]\n    connections: [api]\n",
        forms.display()
    );
    std::fs::write(workspace.dir.path().join("jobs/leaky.yaml"), job).unwrap();
    add_connection(&workspace, "api", &[("API_TOKEN", TOKEN), ("TLS_KEY", KEY)]);
    let token = viewer_token(&workspace);
    let standalone = workspace.standalone(None);
    let base = api_base(&standalone);
    let run_id = trigger(&workspace, "leaky");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");

    let log = format!("{:?}", stored_log(&workspace, &run_id, "talk"));
    let attempt = api_get(&base, &format!("/runs/{run_id}/tasks/talk/tries/1"), &token);
    let lines = api_get(
        &base,
        &format!("/runs/{run_id}/tasks/talk/tries/1/logs"),
        &token,
    );
    let api = format!("{attempt} {lines}");
    assert_eq!(attempt["outputs"]["leak"], "x *** y", "{attempt}");
    assert_eq!(attempt["outputs"]["nested"]["list"][0], "***", "{attempt}");
    assert!(lines["lines"].as_array().unwrap().len() >= printed.len());
    let json_escaped = serde_json::to_string(TOKEN).unwrap();
    let mut forbidden = vec![
        TOKEN.to_owned(),
        json_escaped.trim_matches('"').to_owned(),
        ascii_json(TOKEN).trim_matches('"').to_owned(),
        basic.clone(),
        percent_encoded(TOKEN),
        base64(TOKEN.as_bytes()).trim_end_matches('=').to_owned(),
    ];
    forbidden.extend(KEY.lines().filter(|l| l.len() >= 6).map(str::to_owned));
    for form in &forbidden {
        assert!(!log.contains(form.as_str()), "`{form}` in the log: {log}");
        assert!(!api.contains(form.as_str()), "`{form}` in the API: {api}");
    }
    standalone.interrupt();
    // Not in the store either: its outputs and the committed state are masked too.
    for form in &forbidden {
        let found = files_holding(workspace.dir.path(), form.as_bytes())
            .into_iter()
            .filter(|p| p != &forms)
            .collect::<Vec<_>>();
        assert!(found.is_empty(), "`{form}` stored in {found:?}");
    }
    assert!(
        !files_holding(workspace.dir.path(), br#"{"cursor":"***"}"#).is_empty(),
        "the committed state is masked"
    );
}

/// Finding 2, second half: a scheduler restarted without the key re-attached to a running
/// try and stored its remaining lines unmasked. It now stops such a try unread and fails it.
#[test]
fn a_scheduler_without_the_key_stops_a_left_try_unread() {
    const TOKEN: &str = "sk_live_restart_0123456789";
    let job = "id: ticker\ntasks:\n  - id: tick\n    image: stevedore/shell-transform:0.1.1\n    command: [/bin/sh, -c, 'i=0; while [ $i -lt 600 ]; do echo \"tick $i $API_TOKEN\"; i=$((i+1)); sleep 0.1; done']\n    connections: [api]\n    retries: 0\n";
    let workspace = Workspace::new(&[("ticker.yaml", job)]);
    add_connection(&workspace, "api", &[("API_TOKEN", TOKEN)]);
    let mut first = workspace.standalone(None);
    let run_id = trigger(&workspace, "ticker");
    wait_for_run(
        &workspace,
        &run_id,
        "the try never logged",
        Duration::from_secs(60),
        |shown| {
            shown["task_instances"][0]["tries"][0]["container_id"].is_string()
                && stored_log(&workspace, &run_id, "tick").len() >= 3
        },
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(containers_of(&run_id).len(), 1, "the try runs on");
    // The next scheduler has no key.
    std::fs::rename(
        workspace.dir.path().join("stevedore.key"),
        workspace.dir.path().join("elsewhere.key"),
    )
    .unwrap();
    let second = workspace.standalone(None);
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(90));
    assert_eq!(shown["state"], "failed", "{shown}");
    let tries = task(&shown, "tick")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 1, "{shown}");
    let reason = tries[0]["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("connection `api`") && reason.contains("could not be masked"),
        "{reason}"
    );
    let log = stored_log(&workspace, &run_id, "tick");
    assert!(log.iter().all(|(_, text)| !text.contains(TOKEN)), "{log:?}");
    assert!(
        log.iter().all(|(_, text)| text.ends_with("***")),
        "every stored line was masked: {log:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_of(&run_id).is_empty() {
        assert!(Instant::now() < deadline, "the left try was not stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    second.interrupt();
}

/// The scheduler's peak resident memory, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// Finding 3: one 300 MB line without a newline took the scheduler to 1.8 GB. A stored line
/// is cut to `max_line_bytes` (never buffered whole), and an output over
/// `max_output_bytes`, a protocol message cut short or more than `max_outputs` outputs fail
/// their own try with a clear reason.
#[test]
fn a_huge_line_is_cut_and_oversized_outputs_fail_their_try() {
    let job = r#"id: flood
tasks:
  - id: huge
    backend: process
    command: [/bin/sh, -c, "head -c 268435456 /dev/zero | tr '\\0' x; echo; echo after"]
  - id: big_output
    backend: process
    retries: 0
    command: [/bin/sh, -c, "printf '{\"type\":\"output\",\"key\":\"big\",\"value\":\"'; head -c 1100000 /dev/zero | tr '\\0' y; printf '\"}\\n'"]
  - id: cut_message
    backend: process
    retries: 0
    command: [/bin/sh, -c, "printf '{\"type\":\"output\",\"key\":\"cut\",\"value\":\"'; head -c 3000000 /dev/zero | tr '\\0' y; printf '\"}\\n'"]
  - id: many_outputs
    backend: process
    retries: 0
    command: [/bin/sh, -c, "i=0; while [ $i -le 1000 ]; do echo \"{\\\"type\\\":\\\"output\\\",\\\"key\\\":\\\"k$i\\\",\\\"value\\\":$i}\"; i=$((i+1)); done"]
"#;
    let workspace = Workspace::new(&[("flood.yaml", job)]);
    let standalone = workspace.standalone(None);
    let run_id = trigger(&workspace, "flood");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(180));
    let peak = peak_rss_mib(standalone.child.id());
    assert_eq!(task(&shown, "huge")["state"], "success", "{shown}");
    let log = stored_log(&workspace, &run_id, "huge");
    assert_eq!(log.len(), 2, "the cut line and the next one");
    let (_, cut) = &log[0];
    assert!(cut.starts_with("xxxx"), "{}", &cut[..80.min(cut.len())]);
    assert!(cut.len() < 64 * 1024 + 200, "stored {} bytes", cut.len());
    assert!(
        cut.contains(&format!("{} more bytes not kept", 268_435_456 - 64 * 1024)),
        "{}",
        &cut[cut.len().saturating_sub(120)..]
    );
    assert_eq!(log[1].1, "after");
    assert!(
        peak < 200,
        "a 256 MiB line took the scheduler to {peak} MiB"
    );
    let reason = |id: &str| {
        task(&shown, id)["tries"][0]["failure_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(task(&shown, "big_output")["state"], "failed");
    assert!(
        reason("big_output").starts_with(
            "protocol: output `big` is 1100002 bytes of JSON, over max_output_bytes (1048576)"
        ),
        "{}",
        reason("big_output")
    );
    assert!(
        reason("cut_message").starts_with("protocol: a protocol message on stdout is over"),
        "{}",
        reason("cut_message")
    );
    assert!(
        reason("many_outputs").starts_with("protocol: the try published more than 1000 outputs"),
        "{}",
        reason("many_outputs")
    );
    standalone.interrupt();
}

/// Finding 4: after a scheduler crash, the restarted scheduler started a second copy of a
/// running `process` try and recorded the first as interrupted although it completed. The
/// try is now re-attached to: it runs once, its end is recorded, every line once.
#[test]
fn a_killed_scheduler_never_runs_a_process_try_twice() {
    let workspace = Workspace::new(&[]);
    let starts = workspace.dir.path().join("starts");
    let job = format!(
        "id: once\ntasks:\n  - id: slow\n    backend: process\n    command: [/bin/sh, -c, 'echo started >> {}; i=1; while [ $i -le 30 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.2; done; echo ended >> {}']\n",
        starts.display(),
        starts.display()
    );
    std::fs::write(workspace.dir.path().join("jobs/once.yaml"), job).unwrap();
    let mut first = workspace.standalone(None);
    let run_id = trigger(&workspace, "once");
    wait_for_run(
        &workspace,
        &run_id,
        "the try never logged",
        Duration::from_secs(30),
        |shown| {
            shown["task_instances"][0]["tries"][0]["container_id"].is_string()
                && stored_log(&workspace, &run_id, "slow").len() >= 3
        },
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = workspace.standalone(None);
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");
    let tries = task(&shown, "slow")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 1, "re-attached, not run again: {shown}");
    assert_eq!(tries[0]["state"], "success");
    assert_eq!(tries[0]["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(&starts).unwrap(),
        "started\nended\n",
        "the program ran once"
    );
    let lines: Vec<String> = stored_log(&workspace, &run_id, "slow")
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let expected: Vec<String> = (1..=30).map(|n| format!("line {n}")).collect();
    assert_eq!(lines, expected, "every line once, in order");
    second.interrupt();
}

/// Finding 7: containers ran with no pids limit, no memory limit, a writable root filesystem
/// and the image's user. The defaults now limit processes (`pids_limit` 1024) and memory
/// (`default_memory` 1 GiB); a task may ask for a read-only root filesystem and a user, and
/// still gets its state file and a writable /tmp.
#[test]
fn tries_run_with_a_pids_limit_a_memory_limit_and_may_be_read_only() {
    let job = r#"id: confined
tasks:
  - id: probe
    image: stevedore/shell-transform:0.1.1
    read_only_rootfs: true
    user: "1000:1000"
    command:
      - /bin/sh
      - -c
      - |
        echo "uid=$(id -u) gid=$(id -g)"
        if touch /probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi
        touch /tmp/probe && echo tmp=writable
        echo "pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"
        echo "memory=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
        if [ -n "${STEVEDORE_STATE_FILE:-}" ]; then echo "state=$(cat "$STEVEDORE_STATE_FILE")"; fi
        echo '{"type":"state","value":{"seen":true}}'
"#;
    let workspace = Workspace::new(&[("confined.yaml", job)]);
    let standalone = workspace.standalone(None);
    let first = trigger(&workspace, "confined");
    let shown = wait_ended(&workspace, &first, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");
    let texts = |run_id: &str| -> Vec<String> {
        stored_log(&workspace, run_id, "probe")
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    };
    let log = texts(&first);
    for expected in [
        "uid=1000 gid=1000",
        "rootfs=read-only",
        "tmp=writable",
        "pids=1024",
        "memory=1073741824",
    ] {
        assert!(
            log.iter().any(|l| l == expected),
            "no `{expected}` in {log:?}"
        );
    }
    // The state file reaches a read-only container too.
    let second = trigger(&workspace, "confined");
    let shown = wait_ended(&workspace, &second, Duration::from_secs(60));
    assert_eq!(shown["state"], "success", "{shown}");
    let log = texts(&second);
    assert!(log.iter().any(|l| l == r#"state={"seen":true}"#), "{log:?}");
    standalone.interrupt();
}

/// Issue 14: the CLI's `-o json` and the API wrote their JSON by hand and disagreed
/// (milliseconds against microseconds, fields missing on one side). Both now serialize the
/// same view types: the same run has the same fields with the same values at both doors.
#[test]
fn runs_show_and_the_api_show_a_run_alike() {
    let job = "id: alike\ntasks:\n  - id: first\n    backend: process\n    command: [/bin/sh, -c, 'echo one']\n  - id: second\n    backend: process\n    depends_on: [first]\n    command: [/bin/sh, -c, 'exit 3']\n    retries: 1\n    retry_delay: 1s\n";
    let workspace = Workspace::new(&[("alike.yaml", job)]);
    let token = viewer_token(&workspace);
    let standalone = workspace.standalone(None);
    let base = api_base(&standalone);
    let run_id = trigger(&workspace, "alike");
    let shown = wait_ended(&workspace, &run_id, Duration::from_secs(60));
    assert_eq!(shown["state"], "failed", "{shown}");
    let api = api_get(&base, &format!("/runs/{run_id}"), &token);
    assert_eq!(
        shown, api,
        "runs show -o json and GET /api/v1/runs/{{id}} differ"
    );
    assert_eq!(task(&shown, "second")["tries"].as_array().unwrap().len(), 2);
    let listed = workspace.json(&["runs", "list", "-o", "json"]);
    let page = api_get(&base, "/runs", &token);
    assert_eq!(listed[0], page["items"][0]);
    standalone.interrupt();
}
