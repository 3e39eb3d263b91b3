//! The `stevedore` binary, run for real: standalone with the embedded store and the CLI
//! commands working beside it on the same SQLite file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "cli/security.rs"]
mod security;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A folder with a copy of the manual-only example job plus `extra` job files.
    fn new(extra: &[(&str, &str)]) -> Workspace {
        Workspace::with_jobs(&["retry_demo.yaml"], extra)
    }

    /// With every example job, the daily `example_etl` included (its scheduler makes a
    /// scheduled run at once).
    fn with_examples(extra: &[(&str, &str)]) -> Workspace {
        Workspace::with_jobs(&["example_etl.yaml", "retry_demo.yaml"], extra)
    }

    fn with_jobs(examples: &[&str], extra: &[(&str, &str)]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        for name in examples {
            std::fs::copy(repo_root().join("jobs").join(name), jobs.join(name)).unwrap();
        }
        for (name, text) in extra {
            std::fs::write(jobs.join(name), text).unwrap();
        }
        Workspace { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stevedore"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("STEVEDORE_DB", self.dir.path().join("stevedore.db"))
            .env("STEVEDORE_JOBS", self.dir.path().join("jobs"))
            .env("STEVEDORE_WORKSPACE_RETENTION", "0s")
            .env_remove("STEVEDORE_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run stevedore")
    }

    fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    fn standalone(&self, docker_host: Option<&str>) -> Standalone {
        self.standalone_with(docker_host.map(|host| ("DOCKER_HOST", host)))
    }

    /// `standalone` with one more environment variable.
    fn standalone_with(&self, variable: Option<(&str, &str)>) -> Standalone {
        self.standalone_envs(variable.as_slice())
    }

    /// `standalone` with these environment variables.
    fn standalone_envs(&self, variables: &[(&str, &str)]) -> Standalone {
        let mut command = self.command(&["standalone", "--port", "0"]);
        command.envs(variables.iter().copied());
        let log = std::fs::File::create(self.dir.path().join("standalone.log")).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start standalone");
        Standalone {
            child,
            log: self.dir.path().join("standalone.log"),
        }
    }
}

struct Standalone {
    child: Child,
    log: PathBuf,
}

impl Standalone {
    /// Ctrl-C, then the exit status and everything it logged.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (
                    status,
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "standalone did not stop on Ctrl-C: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Standalone {
    /// Even when a test fails, stop the scheduler cleanly so it removes its containers.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(25);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
    }
}

#[test]
fn standalone_runs_the_example_job_while_the_cli_reads_the_same_store() {
    let workspace = Workspace::with_examples(&[]);
    let standalone = workspace.standalone(None);

    let run = workspace.json(&["jobs", "trigger", "example_etl", "--wait", "-o", "json"]);
    assert_eq!(run["state"], "success", "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let shown = workspace.json(&["runs", "show", &run_id[..20], "-o", "json"]);
    assert_eq!(shown["run_id"], run_id.as_str());
    let instances = shown["task_instances"].as_array().unwrap();
    assert_eq!(instances.len(), 5);
    for ti in instances {
        assert_eq!(ti["state"], "success", "{ti}");
        assert_eq!(ti["try_number"], 1);
        assert_eq!(ti["exit_code"], 0);
        assert!(
            ti["image_digest"].as_str().unwrap().starts_with("sha256:"),
            "{ti}"
        );
    }

    let logs = workspace.run(&["tasks", "logs", &run_id, "load"]);
    assert!(logs.status.success());
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("stdout loading 1200 rows into the warehouse"),
        "{text}"
    );

    // A manual trigger may override the job's params.
    let small = workspace.json(&[
        "jobs",
        "trigger",
        "example_etl",
        "--param",
        "records=30",
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(
        (small["state"].as_str(), &small["params"]),
        (
            Some("success"),
            &serde_json::json!({"records": 30, "extract_sleep": 0})
        )
    );
    let logs = workspace.run(&["tasks", "logs", small["run_id"].as_str().unwrap(), "load"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("loading 30 rows"));

    let listed = workspace.json(&["runs", "list", "--job", "example_etl", "-o", "json"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["run_id"] == run_id.as_str()));
    let table = workspace.run(&["jobs", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("example_etl") && l.contains("@daily")),
        "{table}"
    );

    let (status, log) = standalone.interrupt();
    assert!(status.success(), "standalone exited with {status}: {log}");
    assert!(!log.contains("panicked"), "{log}");
    // Every try ended, so no container of the run is left, even the ones whose end was
    // recorded just before the stop.
    assert_eq!(containers_of(&run_id), vec![], "containers left behind");
}

#[test]
fn trigger_wait_exits_non_zero_when_the_run_fails_and_logs_of_both_tries_stay() {
    let failing = "id: always_fails\ntasks:\n  - id: boom\n    image: stevedore/synth:0.1.0\n    args: [exit, --code, 3]\n    retries: 1\n    retry_delay: 1s\n";
    let workspace = Workspace::new(&[("always_fails.yaml", failing)]);
    let standalone = workspace.standalone(None);
    let output = workspace.run(&["jobs", "trigger", "always_fails", "--wait", "-o", "json"]);
    assert!(!output.status.success());
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(run["state"], "failed");
    let run_id = run["run_id"].as_str().unwrap();
    for try_number in ["1", "2"] {
        let logs = workspace.run(&["tasks", "logs", run_id, "boom", "--try", try_number]);
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains("stdout exiting with 3"),
            "try {try_number}"
        );
    }
    let shown = workspace.json(&["runs", "show", run_id, "-o", "json"]);
    assert_eq!(shown["task_instances"][0]["failure_reason"], "exit_code: 3");
    let tries = shown["task_instances"][0]["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2);
    // The table shows every try with the full digest it ran.
    let table = workspace.run(&["runs", "show", run_id]);
    let table = String::from_utf8_lossy(&table.stdout);
    for attempt in tries {
        let digest = attempt["image_digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"), "{attempt}");
        let row = format!("boom  {}    failed  3", attempt["try_number"]);
        let line = table
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row `{row}` in:\n{table}"));
        assert!(line.ends_with(digest), "{line}");
    }
    standalone.interrupt();
}

#[test]
fn validate_names_the_file_and_line_of_each_problem() {
    let bad = "id: bad\nschedule: \"0 0 * *\"\ntasks:\n  - id: a\n    image: stevedore/synth:0.1.0\n    timeout: soon\n";
    let workspace = Workspace::with_examples(&[("bad.yaml", bad)]);
    let output = workspace.run(&["jobs", "validate"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml:2: schedule `0 0 * *` has 4 fields"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:6: task `a`: timeout `soon` is not a duration"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 valid job(s), 2 error(s)"));
    let single = workspace.run(&["jobs", "validate", "jobs/example_etl.yaml"]);
    assert!(single.status.success());
    // A bad file does not hide the good jobs from the list.
    let list = workspace.run(&["jobs", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("retry_demo"));
    assert!(String::from_utf8_lossy(&list.stderr).contains("bad.yaml:2:"));
}

#[test]
fn standalone_reports_an_unreachable_engine_and_stops_cleanly() {
    let workspace = Workspace::new(&[]);
    let socket = workspace.dir.path().join("no-engine.sock");
    let host = format!("unix://{}", socket.display());
    let standalone = workspace.standalone(Some(&host));
    std::thread::sleep(Duration::from_secs(4));
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "exit {status}: {log}");
    assert!(
        log.contains(&format!("cannot reach the Docker engine at {host}")),
        "{log}"
    );
    // It kept retrying with backoff instead of giving up.
    assert!(log.matches("backend unavailable").count() >= 2, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn tasks_logs_follow_prints_lines_as_they_come_until_the_try_ends() {
    let slow = "id: slow_logs\ntasks:\n  - id: sleeper\n    image: stevedore/synth:0.1.0\n    args: [sleep, --seconds, 2]\n";
    let workspace = Workspace::new(&[("slow_logs.yaml", slow)]);
    let standalone = workspace.standalone(None);
    let run = workspace.run(&["jobs", "trigger", "slow_logs"]);
    assert!(run.status.success());
    let run_id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    let started = Instant::now();
    // Follows from before the try exists until after it ended.
    let output = workspace.run(&["tasks", "logs", &run_id, "sleeper", "--follow"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with("stdout sleeping 2s") && lines[1].ends_with("stdout woke up"),
        "{text}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "returned before the try ended"
    );
    standalone.interrupt();
}

/// The containers of a run, as `docker ps -a` lists them: `(name, status)`.
fn containers_of(run_id: &str) -> Vec<(String, String)> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.stevedore.run={run_id}"),
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .output()
        .expect("docker ps");
    assert!(output.status.success(), "docker ps failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, state)| (name.to_owned(), state.to_owned()))
        .collect()
}

/// Waits until `shown` (the run, as `runs show -o json` prints it) satisfies `done`.
fn wait_for_run(
    workspace: &Workspace,
    run_id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let shown = workspace.json(&["runs", "show", run_id, "-o", "json"]);
        if done(&shown) {
            return shown;
        }
        assert!(Instant::now() < deadline, "{what}: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The stored log of a task's try, as `tasks logs` prints it: `(stream, text)` per line.
fn stored_log(workspace: &Workspace, run_id: &str, task: &str) -> Vec<(String, String)> {
    let output = workspace.run(&["tasks", "logs", run_id, task, "-o", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            (
                line["stream"].as_str().unwrap().to_owned(),
                line["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What `synth count --lines N` prints, per stream, in order.
fn counted(lines: u32) -> (Vec<String>, Vec<String>) {
    let stdout = (1..=lines).map(|n| format!("out {n}")).collect();
    let stderr = (1..=lines)
        .filter(|n| n % 3 == 0)
        .map(|n| format!("err {n}"))
        .collect();
    (stdout, stderr)
}

fn split_streams(log: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let of = |stream: &str| {
        log.iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, text)| text.clone())
            .collect()
    };
    (of("stdout"), of("stderr"))
}

/// A scheduler killed mid-try (SIGKILL) loses nothing and duplicates nothing: the next one
/// re-attaches to the container that ran on, stores the rest of its log (no line twice),
/// records its exit, and leaves no container behind.
#[test]
fn a_killed_scheduler_loses_no_task_and_leaves_no_container() {
    let slow = "id: slow\ntasks:\n  - id: counter\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"40\", --every-ms, \"100\"]\n  - id: after\n    image: stevedore/synth:0.1.0\n    depends_on: [counter]\n";
    let workspace = Workspace::new(&[("slow.yaml", slow)]);
    let mut first = workspace.standalone(None);
    let run = workspace.run(&["jobs", "trigger", "slow"]);
    let run_id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    wait_for_run(
        &workspace,
        &run_id,
        "the try never logged",
        Duration::from_secs(30),
        |shown| {
            shown["task_instances"][0]["tries"][0]["container_id"].is_string()
                && stored_log(&workspace, &run_id, "counter").len() >= 5
        },
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(
        containers_of(&run_id).len(),
        1,
        "the container should run on after its scheduler was killed"
    );

    let second = workspace.standalone(None);
    let shown = wait_for_run(
        &workspace,
        &run_id,
        "the run did not finish after the restart",
        Duration::from_secs(60),
        |shown| shown["state"] == "success" || shown["state"] == "failed",
    );
    assert_eq!(shown["state"], "success", "{shown}");
    let tries = shown["task_instances"][0]["tries"].as_array().unwrap();
    assert_eq!(
        tries.len(),
        1,
        "the try was re-attached to, not run again: {shown}"
    );
    assert_eq!(tries[0]["exit_code"], 0);
    assert_eq!(
        split_streams(&stored_log(&workspace, &run_id, "counter")),
        counted(40)
    );
    assert_eq!(
        shown["task_instances"][1]["tries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(containers_of(&run_id).is_empty(), "containers left behind");
    second.interrupt();
}

/// A scheduler stopped (SIGTERM) while tries run leaves their containers running; started
/// again only after they exited, it records their exit codes and full logs.
#[test]
fn tries_that_end_while_no_scheduler_runs_are_recorded_when_one_starts() {
    let job = "id: pair\ntasks:\n  - id: good\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"30\", --every-ms, \"100\"]\n  - id: bad\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"20\", --every-ms, \"100\", --exit, \"3\"]\n";
    let workspace = Workspace::new(&[("pair.yaml", job)]);
    let first = workspace.standalone(None);
    let run = workspace.run(&["jobs", "trigger", "pair"]);
    let run_id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    wait_for_run(
        &workspace,
        &run_id,
        "the tries never started",
        Duration::from_secs(30),
        |shown| {
            shown["task_instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|ti| ti["tries"][0]["container_id"].is_string())
                && stored_log(&workspace, &run_id, "good").len() >= 3
        },
    );
    let stopping = Instant::now();
    let (status, log) = first.interrupt();
    assert!(status.success(), "{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        stopping.elapsed()
    );
    let running = containers_of(&run_id);
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(
        running.iter().all(|(_, state)| state == "running"),
        "a clean stop must not kill the tries: {running:?}"
    );
    // Both containers exit while no scheduler runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_of(&run_id)
        .iter()
        .any(|(_, state)| state == "running")
    {
        assert!(Instant::now() < deadline, "the containers did not exit");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = workspace.json(&["runs", "show", &run_id, "-o", "json"]);
    assert_eq!(stopped["state"], "running", "{stopped}");

    let second = workspace.standalone(None);
    let shown = wait_for_run(
        &workspace,
        &run_id,
        "the exits were not recorded",
        Duration::from_secs(30),
        |shown| shown["state"] == "failed" || shown["state"] == "success",
    );
    assert_eq!(shown["state"], "failed", "{shown}");
    let task = |id: &str| {
        shown["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ti| ti["task_id"] == id)
            .unwrap()
            .clone()
    };
    let (good, bad) = (task("good"), task("bad"));
    assert_eq!(good["state"], "success", "{shown}");
    assert_eq!(good["tries"].as_array().unwrap().len(), 1);
    assert_eq!(good["tries"][0]["exit_code"], 0);
    assert_eq!(bad["state"], "failed", "{shown}");
    assert_eq!(bad["tries"].as_array().unwrap().len(), 1);
    assert_eq!(bad["tries"][0]["exit_code"], 3);
    assert_eq!(
        split_streams(&stored_log(&workspace, &run_id, "good")),
        counted(30)
    );
    assert_eq!(
        split_streams(&stored_log(&workspace, &run_id, "bad")),
        counted(20)
    );
    assert!(containers_of(&run_id).is_empty(), "containers left behind");
    second.interrupt();
}

#[test]
fn jobs_next_lists_the_schedules_intervals_in_utc_across_a_dst_change() {
    let dst = "id: dst\nschedule: \"30 2 * * *\"\ntimezone: Europe/Berlin\nstart_date: 2024-03-29\ntasks:\n  - id: t\n    image: stevedore/synth:0.1.0\n";
    let workspace = Workspace::new(&[("dst.yaml", dst)]);
    let intervals = workspace.json(&["jobs", "next", "dst", "--count", "3", "-o", "json"]);
    assert_eq!(
        intervals,
        serde_json::json!([
            {"start": "2024-03-29T01:30:00Z", "end": "2024-03-30T01:30:00Z"},
            // 02:30 does not exist on 03-31: it runs shifted by the gap, at 03:30 CEST, as
            // in Airflow.
            {"start": "2024-03-30T01:30:00Z", "end": "2024-03-31T01:30:00Z"},
            {"start": "2024-03-31T01:30:00Z", "end": "2024-04-01T00:30:00Z"},
        ])
    );
    // From a date in the job's timezone: the repeated 02:30 of October runs once, at its
    // later occurrence (CET), as in Airflow.
    let autumn = workspace.json(&[
        "jobs",
        "next",
        "dst",
        "--count",
        "2",
        "--from",
        "2024-10-26T12:00:00",
        "-o",
        "json",
    ]);
    assert_eq!(autumn[0]["start"], "2024-10-27T01:30:00Z");
    assert_eq!(autumn[1]["start"], "2024-10-28T01:30:00Z");
    let manual = workspace.run(&["jobs", "next", "retry_demo"]);
    assert!(!manual.status.success());
    assert!(String::from_utf8_lossy(&manual.stderr).contains("has no schedule"));
}

fn synth() -> String {
    repo_root()
        .join("images/synth/.build/synth")
        .display()
        .to_string()
}

fn wait_for_state(workspace: &Workspace, run_id: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = workspace.json(&["runs", "show", run_id, "-o", "json"]);
        if shown["state"] == wanted {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "run never became {wanted}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn clear_reruns_a_task_and_its_downstream_and_mark_sets_states_by_hand() {
    let chain = format!(
        "id: chain\ntasks:\n  - id: a\n    backend: process\n    command: [{0}]\n    args: [noop]\n  - id: b\n    backend: process\n    command: [{0}]\n    args: [noop]\n    depends_on: [a]\n  - id: c\n    backend: process\n    command: [{0}]\n    args: [noop]\n    depends_on: [b]\n",
        synth()
    );
    let slow = format!("id: slow_mark\ntasks:\n  - id: sleeper\n    backend: process\n    command: [{}]\n    args: [sleep, --seconds, 60]\n", synth());
    let workspace = Workspace::new(&[("chain.yaml", &chain), ("slow_mark.yaml", &slow)]);
    let standalone = workspace.standalone(None);
    let run = workspace.json(&["jobs", "trigger", "chain", "--wait", "-o", "json"]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let cleared = workspace.run(&["tasks", "clear", &run_id, "b", "--downstream"]);
    assert!(
        cleared.status.success(),
        "{}",
        String::from_utf8_lossy(&cleared.stderr)
    );
    assert!(String::from_utf8_lossy(&cleared.stdout).contains("cleared b, c"));
    let shown = wait_for_state(&workspace, &run_id, "success");
    let tries: Vec<i64> = shown["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ti| ti["try_number"].as_i64().unwrap())
        .collect();
    assert_eq!(tries, [1, 2, 2], "{shown}");

    let marked = workspace.run(&["tasks", "mark", &run_id, "c", "failed"]);
    assert!(marked.status.success());
    wait_for_state(&workspace, &run_id, "failed");
    workspace.run(&["tasks", "mark", &run_id, "c", "success"]);
    wait_for_state(&workspace, &run_id, "success");

    // Marking a running task instance stops its try and the mark stands.
    let slow_run = workspace.run(&["jobs", "trigger", "slow_mark"]);
    let slow_id = String::from_utf8_lossy(&slow_run.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while workspace.json(&["runs", "show", &slow_id, "-o", "json"])["task_instances"][0]["state"]
        != "running"
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    workspace.run(&["tasks", "mark", &slow_id, "sleeper", "success"]);
    let shown = wait_for_state(&workspace, &slow_id, "success");
    assert!(started.elapsed() < Duration::from_secs(20));
    let attempt = &shown["task_instances"][0]["tries"][0];
    assert_eq!(
        attempt["failure_reason"], "killed: task marked success",
        "{shown}"
    );
    assert_eq!(shown["task_instances"][0]["state"], "success");

    let refused = workspace.run(&["tasks", "clear", &run_id, "nope"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no task `nope`"));
    standalone.interrupt();
}

#[test]
fn backfill_creates_the_runs_of_a_range_in_order_and_reruns_failed_ones() {
    let flag = tempfile::tempdir().unwrap();
    let ok = flag.path().join("ok");
    let job = format!(
        "id: daily_load\nschedule: \"@daily\"\ntimezone: Europe/Berlin\nstart_date: 2024-01-01\nmax_active_runs: 1\ntasks:\n  - id: load\n    backend: process\n    command: [/bin/sh, -c, \"test -e {}\"]\n",
        ok.display()
    );
    let workspace = Workspace::new(&[("daily_load.yaml", &job)]);
    let standalone = workspace.standalone(None);
    let first = workspace.run(&[
        "jobs",
        "backfill",
        "daily_load",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-03",
        "--wait",
    ]);
    assert!(
        !first.status.success(),
        "the runs fail until the flag exists"
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        text.contains("3 interval(s)") && text.contains("3 run(s) created"),
        "{text}"
    );
    assert!(text.contains("3 run(s) finished, 3 failed"), "{text}");

    std::fs::write(&ok, "").unwrap();
    let again = workspace.run(&[
        "jobs",
        "backfill",
        "daily_load",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-03",
        "--rerun-failed",
        "--wait",
    ]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(text.contains("0 run(s) created, 3 rerun"), "{text}");

    let runs = workspace.json(&["runs", "list", "--job", "daily_load", "-o", "json"]);
    let mut backfilled: Vec<&Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "backfill")
        .collect();
    backfilled.sort_by_key(|r| r["logical_date"].as_str().unwrap().to_owned());
    let dates: Vec<&str> = backfilled
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    // Midnight in Berlin is 23:00 UTC the day before in winter.
    assert_eq!(
        dates,
        [
            "2023-12-31T23:00:00Z",
            "2024-01-01T23:00:00Z",
            "2024-01-02T23:00:00Z"
        ]
    );
    assert!(backfilled.iter().all(|r| r["state"] == "success"));

    // `db clean`: nothing ended before 2000; a dry run counts what would go and removes
    // nothing; then the backfilled runs go (the job's latest scheduled run, if the
    // scheduler made one, stays).
    let none = workspace.json(&[
        "db",
        "clean",
        "--job",
        "daily_load",
        "--before",
        "2000-01-01",
        "-o",
        "json",
    ]);
    assert_eq!(none["runs"], 0, "{none}");
    let dry = workspace.json(&[
        "db",
        "clean",
        "--job",
        "daily_load",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert!(dry["runs_found"].as_u64().unwrap() >= 3, "{dry}");
    assert_eq!(dry["runs"], 0);
    let runs = workspace.json(&["runs", "list", "--job", "daily_load", "-o", "json"]);
    assert!(
        runs.as_array().unwrap().len() >= 3,
        "a dry run removes nothing"
    );
    let cleaned = workspace.json(&["db", "clean", "--job", "daily_load", "-o", "json"]);
    assert_eq!(cleaned["runs"], dry["runs_found"], "{cleaned}");
    assert!(cleaned["tries"].as_u64().unwrap() >= 6, "{cleaned}");
    let runs = workspace.json(&["runs", "list", "--job", "daily_load", "-o", "json"]);
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["trigger"] != "backfill"),
        "{runs}"
    );
    standalone.interrupt();
}

#[test]
fn pools_come_from_the_pools_file_and_the_cli() {
    let workspace = Workspace::new(&[]);
    std::fs::write(
        workspace.dir.path().join("pools.yaml"),
        "stripe_api: {slots: 4, description: rate budget}\nwarehouse: 8\n",
    )
    .unwrap();
    let standalone = workspace.standalone(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let pools = loop {
        let pools = workspace.json(&["pools", "list", "-o", "json"]);
        if pools.as_array().unwrap().len() == 3 {
            break pools;
        }
        assert!(Instant::now() < deadline, "pools file not read: {pools}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        pools[0],
        serde_json::json!({"name": "default", "slots": 128, "description": "The pool of tasks that name none"})
    );
    assert_eq!(
        pools[1],
        serde_json::json!({"name": "stripe_api", "slots": 4, "description": "rate budget"})
    );
    assert!(workspace
        .run(&["pools", "set", "scratch", "2"])
        .status
        .success());
    let bad = workspace.run(&["pools", "set", "Bad-Name", "2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pool name `Bad-Name`"));
    assert!(workspace
        .run(&["pools", "delete", "scratch"])
        .status
        .success());
    assert!(!workspace
        .run(&["pools", "delete", "default"])
        .status
        .success());
    standalone.interrupt();
}

#[test]
fn images_are_built_with_oci_labels_pushed_to_a_registry_and_inspected() {
    let registry = stevedore_testkit::Registry::start();
    let workspace = Workspace::new(&[]);
    let images = repo_root().join("images");
    let built = workspace.run(&[
        "images",
        "build",
        "shell-transform",
        "--dir",
        images.to_str().unwrap(),
        "--push",
        "--registry",
        &registry.address,
    ]);
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let pushed = format!("{}/stevedore/shell-transform:0.1.1", registry.address);
    assert!(stdout.contains(&format!("pushed {pushed}")), "{stdout}");

    let inspected = workspace.json(&["images", "inspect", &pushed, "-o", "json"]);
    let labels = &inspected["labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "0.1.1");
    assert_eq!(labels["org.opencontainers.image.title"], "shell-transform");
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(revision.len() >= 40, "revision {revision}");
    assert!(!labels["org.opencontainers.image.source"]
        .as_str()
        .unwrap()
        .is_empty());
    let digests: Vec<&str> = inspected["repo_digests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    assert!(
        digests.iter().any(|d| d.starts_with(&format!(
            "{}/stevedore/shell-transform@sha256:",
            registry.address
        ))),
        "{digests:?}"
    );
    assert_eq!(inspected["spec"]["name"], "shell-transform");
    assert_eq!(inspected["spec"]["version"], "0.1.1");

    let missing = workspace.run(&["images", "inspect", "stevedore/absent:9"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no image `stevedore/absent:9`"));
}

#[test]
fn spec_and_check_of_an_image_that_ignores_them_end_at_their_timeout() {
    // demo-api's entrypoint is a server: it ignores `spec` and `check` and never exits.
    let workspace = Workspace::new(&[]);
    let image = "stevedore/demo-api:0.2.0";
    let containers = || {
        let listed = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("ancestor={image}")])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let before = containers();
    let started = std::time::Instant::now();
    let inspected = workspace.json(&["images", "inspect", image, "--timeout", "3s", "-o", "json"]);
    assert!(inspected["spec"].is_null(), "{inspected}");
    let error = inspected["spec_error"].as_str().unwrap();
    assert!(
        error.contains("`spec` did not finish within 3s")
            && error.contains("the image does not implement `spec`"),
        "{error}"
    );
    let checked = workspace.run(&["images", "check", image, "--timeout", "2s"]);
    assert!(!checked.status.success());
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        stderr.contains("`check` did not finish within 2s")
            && stderr.contains("does not implement `check`"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        containers(),
        before,
        "the spec and check containers were removed"
    );
}

#[test]
fn state_is_shown_set_cleared_kept_in_history_and_skipped_by_a_full_refresh() {
    let job = "id: stateful\ntasks:\n  - id: extract\n    image: stevedore/synth:0.1.0\n    args: [extract, --records, 5]\n  - id: load\n    image: stevedore/synth:0.1.0\n    depends_on: [extract]\n    args: [noop]\n";
    let workspace = Workspace::new(&[("stateful.yaml", job)]);
    let _standalone = workspace.standalone(None);
    // Each run: its id, and the cursor its extract started from.
    let run = |extra: &[&str]| -> (String, String) {
        let mut args = vec!["jobs", "trigger", "stateful", "--wait", "-o", "json"];
        args.extend_from_slice(extra);
        let run = workspace.json(&args);
        assert_eq!(run["state"], "success", "{run}");
        let run_id = run["run_id"].as_str().unwrap().to_owned();
        let logs = workspace.run(&["tasks", "logs", &run_id, "extract"]);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        let since = logs
            .split("last cursor: ")
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .unwrap_or_else(|| panic!("no cursor in {logs}"))
            .to_owned();
        (run_id, since)
    };
    let none = workspace.run(&["state", "show", "stateful", "extract"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("has no committed state"));

    let (first, since) = run(&[]);
    assert_eq!(since, "the beginning");
    let shown = workspace.json(&["state", "show", "stateful", "extract", "-o", "json"]);
    assert_eq!(
        (shown["action"].as_str(), shown["run_id"].as_str()),
        (Some("run"), Some(first.as_str()))
    );
    let committed = shown["value"]["cursor"].as_str().unwrap().to_owned();

    let file = workspace.dir.path().join("state.json");
    std::fs::write(&file, r#"{"cursor": "2020-01-01T00:00:00Z"}"#).unwrap();
    let set = workspace.run(&[
        "state",
        "set",
        "stateful",
        "extract",
        "--from-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let (_, since) = run(&[]);
    assert_eq!(
        since, "2020-01-01T00:00:00Z",
        "the set state reached the next try"
    );

    assert!(workspace
        .run(&["state", "clear", "stateful", "extract"])
        .status
        .success());
    let (_, since) = run(&[]);
    assert_eq!(
        since, "the beginning",
        "a cleared state: the next run starts from nothing"
    );

    // The state exists again; a full refresh of extract runs without it, load keeps its own.
    let (refresh, since) = run(&["--full-refresh", "--task", "extract"]);
    assert_eq!(since, "the beginning");
    let shown = workspace.json(&["runs", "show", &refresh, "-o", "json"]);
    assert_eq!(shown["full_refresh"], serde_json::json!(["extract"]));
    let after = workspace.json(&["state", "show", "stateful", "extract", "-o", "json"]);
    assert_eq!(
        after["run_id"].as_str(),
        Some(refresh.as_str()),
        "the refresh's state replaced the old"
    );

    let history = workspace.json(&["state", "history", "stateful", "extract", "-o", "json"]);
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["run", "run", "clear", "run", "set", "run"]);
    assert_eq!(
        history[5]["value"]["cursor"].as_str(),
        Some(committed.as_str())
    );
    assert_eq!(
        history[4]["actor"].as_str().map(|a| a.starts_with("cli")),
        Some(true)
    );
    let table = workspace.run(&["state", "history", "stateful", "extract"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("(cleared)"));

    // Bad input, each with what is wrong.
    std::fs::write(&file, "{\"cursor\": ").unwrap();
    let bad = workspace.run(&[
        "state",
        "set",
        "stateful",
        "extract",
        "--from-file",
        file.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not JSON"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let unknown = workspace.run(&["state", "clear", "stateful", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no task `nope`"));
    let alone = workspace.run(&["jobs", "trigger", "stateful", "--task", "extract"]);
    assert!(!alone.status.success(), "--task needs --full-refresh");
}

#[test]
fn connection_secrets_reach_the_task_and_nowhere_else() {
    const SECRET: &str = "sk_live_9f8e7d6c5b4a";
    let job = "id: uses_secret\ntasks:\n  - id: call_api\n    backend: process\n    command: [/bin/sh, -c, 'echo \"token=$STRIPE_TOKEN\"; echo \"len=${#STRIPE_TOKEN}\" >&2; sleep 2']\n    connections: [stripe]\n";
    let workspace = Workspace::new(&[("uses_secret.yaml", job)]);
    // The value comes from the environment, so it is not in this command's arguments either.
    let added = workspace
        .command(&[
            "connections",
            "add",
            "stripe",
            "--env",
            "STRIPE_TOKEN",
            "--description",
            "Stripe API",
        ])
        .env("STRIPE_TOKEN", SECRET)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let key_file = workspace.dir.path().join("stevedore.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let standalone = workspace.standalone(None);
    let run = workspace.run(&["jobs", "trigger", "uses_secret"]);
    let run_id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    // While the task runs, the host's process list does not show the secret.
    let deadline = Instant::now() + Duration::from_secs(30);
    while workspace.json(&["runs", "show", &run_id, "-o", "json"])["task_instances"][0]["state"]
        != "running"
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(SECRET),
        "secret in ps"
    );
    let shown = wait_for_state(&workspace, &run_id, "success");

    let logs = workspace.run(&["tasks", "logs", &run_id, "call_api"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("stdout token=***"), "{logs}");
    assert!(
        logs.contains(&format!("stderr len={}", SECRET.len())),
        "the task got the value: {logs}"
    );
    assert!(!logs.contains(SECRET));
    assert!(!shown.to_string().contains(SECRET));
    let listed = workspace.json(&["connections", "list", "-o", "json"]);
    assert_eq!(
        listed,
        serde_json::json!([{"name": "stripe", "keys": ["STRIPE_TOKEN"], "description": "Stripe API"}])
    );
    // Not in the store's files either (sealed with the key kept outside them).
    for entry in std::fs::read_dir(workspace.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path != key_file {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret in {}",
                path.display()
            );
        }
    }
    standalone.interrupt();
}

/// A registry that asks for a login gets it from a connection, for `images build --push` and
/// for the pulls of tasks that name it in `registry_connection`; the password shows nowhere.
#[test]
fn registry_credentials_come_from_a_connection() {
    const PASSWORD: &str = "registry-pass-4c1d9e";
    let registry = stevedore_testkit::Registry::start_with_login("puller", PASSWORD);
    let image = format!("{}/stevedore/shell-transform:0.1.1", registry.address);
    let job = |id: &str, connection: &str| {
        format!("id: {id}\ntasks:\n  - id: split\n    image: {image}\n    pull_policy: always\n    {connection}args: [--partition, 0, --of, 1, --records, 12]\n")
    };
    let workspace = Workspace::new(&[
        (
            "with_login.yaml",
            &job("with_login", "registry_connection: private_registry\n    "),
        ),
        ("without_login.yaml", &job("without_login", "")),
    ]);
    let added = workspace
        .command(&[
            "connections",
            "add",
            "private_registry",
            "--env",
            "REGISTRY_USERNAME=puller",
            "--env",
            "REGISTRY_PASSWORD",
        ])
        .env("REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(added.status.success());

    let push = |with_connection: bool| {
        let images = repo_root().join("images");
        let mut args = vec![
            "images",
            "build",
            "shell-transform",
            "--dir",
            images.to_str().unwrap(),
            "--push",
            "--registry",
            &registry.address,
        ];
        if with_connection {
            args.extend(["--registry-connection", "private_registry"]);
        }
        let output = workspace.run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!text.contains(PASSWORD), "{text}");
        (output.status.success(), text)
    };
    let (pushed, text) = push(false);
    assert!(!pushed, "a push without credentials went through: {text}");
    let (pushed, text) = push(true);
    assert!(pushed, "{text}");
    assert!(text.contains(&format!("pushed {image}")), "{text}");
    // Tasks must pull it from the registry.
    let removed = Command::new("docker")
        .args(["image", "rm", &image])
        .output()
        .unwrap();
    assert!(removed.status.success());

    let standalone = workspace.standalone(None);
    let trigger = |job: &str| {
        let run = workspace.run(&["jobs", "trigger", job]);
        String::from_utf8_lossy(&run.stdout).trim().to_owned()
    };
    let without = trigger("without_login");
    let shown = wait_for_state(&workspace, &without, "failed");
    let reason = shown["task_instances"][0]["failure_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!("cannot pull image `{image}`"))
            && (reason.contains("no basic auth credentials") || reason.contains("unauthorized")),
        "{reason}"
    );
    let with = trigger("with_login");
    let shown = wait_for_state(&workspace, &with, "success");
    let digest = shown["task_instances"][0]["image_digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{shown}");
    let logs = workspace.run(&["tasks", "logs", &with, "split"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains(&format!("pulling {image}")), "{logs}");
    for text in [
        logs.to_string(),
        shown.to_string(),
        workspace
            .json(&["connections", "list", "-o", "json"])
            .to_string(),
    ] {
        assert!(!text.contains(PASSWORD), "{text}");
    }
    let (_, log) = standalone.interrupt();
    assert!(!log.contains(PASSWORD), "password in the scheduler's log");
    let _ = Command::new("docker")
        .args(["image", "rm", &image])
        .output();
}

/// `images check` runs an image's `check` with a connection's variables and the task's args:
/// it passes with the right token, fails naming the cause with a wrong one, and prints no
/// secret either way.
#[test]
fn images_check_tries_a_connection_through_the_image() {
    const GOOD: &str = "demo-token";
    const WRONG: &str = "wrong-token-7d3e";
    let api = stevedore_testkit::DemoApi::start(5);
    let workspace = Workspace::new(&[]);
    for (name, token) in [("api", GOOD), ("api_wrong", WRONG)] {
        let added = workspace
            .command(&[
                "connections",
                "add",
                name,
                "--env",
                &format!("API_BASE_URL={}", api.container_url()),
                "--env",
                "API_TOKEN",
            ])
            .env("API_TOKEN", token)
            .output()
            .unwrap();
        assert!(added.status.success());
    }
    let check = |connection: &str| {
        let output = workspace.run(&[
            "images",
            "check",
            "stevedore/http-extract:0.3.0",
            "--connection",
            connection,
            "--",
            "--url",
            "/v1/charges",
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!text.contains(GOOD) && !text.contains(WRONG), "{text}");
        (output.status.code(), text)
    };
    let (code, text) = check("api");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("check ok: ") && text.contains("/v1/charges answered with its records"),
        "{text}"
    );
    let (code, text) = check("api_wrong");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("check FAILED: 401 from ") && text.contains("refused the credentials"),
        "{text}"
    );
    // The API saw one request for each check, no retry storm.
    assert_eq!(api.requests("GET", "/v1/charges", 200), 1);
    assert_eq!(api.requests("GET", "/v1/charges", 401), 1);

    // A failed check exits non-zero and still says why, as JSON when asked.
    let output = workspace.run(&[
        "images",
        "check",
        "stevedore/postgres-load:0.2.0",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect to the warehouse"),
        "{json}"
    );
}

/// `standalone` serves the REST API beside the scheduler: a token made with `tokens create`
/// triggers a run through it and watches it succeed; `tokens list` shows the token's use and
/// never the token; a revoked token is refused.
#[test]
fn standalone_serves_the_api_to_tokens_made_by_the_cli() {
    let workspace = Workspace::new(&[]);
    let created = workspace.json(&["tokens", "create", "ci", "--role", "operator", "-o", "json"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "operator");
    let standalone = workspace.standalone(None);
    // The URL it prints at start (with the port it was given: any free one here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        let log = std::fs::read_to_string(&standalone.log).unwrap_or_default();
        if let Some(rest) = log.split("API at ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no API URL in: {log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let call = |method: &str, path: &str, token: &str| -> (u16, Value) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(if method == "POST" { "{}" } else { "" }.to_owned())
            .unwrap();
        let mut response = agent.run(request).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let (status, run) = call("POST", "/jobs/retry_demo/runs", &token);
    assert_eq!(status, 201, "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, run) = call("GET", &format!("/runs/{run_id}"), &token);
        if run["state"] == "success" {
            break;
        }
        assert!(run["state"] != "failed", "{run}");
        assert!(Instant::now() < deadline, "{run}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let listed = workspace.json(&["tokens", "list", "-o", "json"]);
    assert_eq!(listed[0]["name"], "ci");
    assert!(listed[0]["last_used_at"].is_string(), "{listed}");
    assert!(!listed.to_string().contains(&token));
    assert!(workspace.run(&["tokens", "revoke", "ci"]).status.success());
    assert_eq!(call("GET", "/jobs", &token).0, 401);
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "{log}");
    assert!(!log.contains(&token), "the token in the log");
}

/// A configuration file sets what the environment does not: its store and jobs folder are
/// used, a STEVEDORE_* variable wins over it, and an unknown key is named.
#[test]
fn a_configuration_file_sets_what_the_environment_does_not() {
    let workspace = Workspace::new(&[]);
    let dir = workspace.dir.path();
    let config = dir.join("stevedore.yaml");
    std::fs::write(
        &config,
        format!(
            "db: {}\njobs: {}\nlease: 45s\n",
            dir.join("from-file.db").display(),
            dir.join("jobs").display()
        ),
    )
    .unwrap();
    let stevedore = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stevedore"));
        command
            .args(args)
            .current_dir(dir)
            .env_remove("STEVEDORE_DB")
            .env_remove("STEVEDORE_JOBS")
            .env_remove("STEVEDORE_CONFIG");
        command
    };
    let listed = stevedore(&[
        "--config",
        config.to_str().unwrap(),
        "jobs",
        "list",
        "-o",
        "json",
    ])
    .output()
    .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let jobs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(jobs.to_string().contains("retry_demo"), "{jobs}");
    let triggered = stevedore(&["jobs", "trigger", "retry_demo"])
        .env("STEVEDORE_CONFIG", &config)
        .output()
        .unwrap();
    assert!(
        triggered.status.success(),
        "{}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    assert!(
        dir.join("from-file.db").is_file(),
        "the file's store was not used"
    );
    // The environment wins over the file.
    let elsewhere = stevedore(&[
        "--config",
        config.to_str().unwrap(),
        "runs",
        "list",
        "-o",
        "json",
    ])
    .env("STEVEDORE_DB", dir.join("other.db"))
    .output()
    .unwrap();
    assert!(elsewhere.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&elsewhere.stdout).unwrap(),
        serde_json::json!([])
    );
    // A bad setting is named, with the file.
    std::fs::write(&config, "db: x.db\nleese: 30s\n").unwrap();
    let refused = stevedore(&["--config", config.to_str().unwrap(), "jobs", "list"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("unknown setting `leese`") && message.contains("stevedore.yaml"),
        "{message}"
    );
}

/// A SQLite store allows one scheduler: a second one on the same file refuses to start and
/// says why; the server alone may run beside it.
#[test]
fn a_second_scheduler_on_a_sqlite_store_refuses_to_start() {
    let workspace = Workspace::new(&[]);
    let first = workspace.standalone(None);
    // The first has taken the lock once its API answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&first.log)
        .unwrap_or_default()
        .contains("API at")
    {
        assert!(
            Instant::now() < deadline,
            "the first standalone did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = workspace.run(&["scheduler"]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("another scheduler (pid {})", first.child.id()))
            && stderr.contains("a SQLite store allows one scheduler at a time"),
        "{stderr}"
    );
    let server = workspace
        .command(&["server", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status();
    let server = server.wait_with_output().unwrap();
    assert!(
        server.status.success(),
        "{}",
        String::from_utf8_lossy(&server.stderr)
    );
    let (status, log) = first.interrupt();
    assert!(status.success(), "{log}");
}

/// The same binary on a PostgreSQL store (`--db postgres://...`): standalone runs the
/// example job to success and the CLI reads it back.
#[test]
fn standalone_runs_jobs_on_a_postgresql_store() {
    let postgres = stevedore_testkit::Postgres::start();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port);
    let workspace = Workspace::new(&[]);
    let on_postgres = |args: &[&str]| {
        let mut command = workspace.command(args);
        command.env("STEVEDORE_DB", &url);
        command
    };
    let log = std::fs::File::create(workspace.dir.path().join("pg.log")).unwrap();
    let mut standalone = on_postgres(&["standalone", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let run = on_postgres(&["jobs", "trigger", "retry_demo", "--wait"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run_id = stdout.lines().next().unwrap().trim().to_owned();
    let shown = on_postgres(&["runs", "show", &run_id, "-o", "json"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["state"], "success");
    let flaky = shown["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "flaky")
        .unwrap();
    assert_eq!(flaky["tries"].as_array().unwrap().len(), 2, "{shown}");
    // The runs are rows of the PostgreSQL database.
    assert_eq!(
        postgres.query(&format!("SELECT state FROM runs WHERE run_id = '{run_id}'")),
        "success"
    );

    // The scheduler is registered while it runs, and removed when it stops.
    let schedulers = |()| -> Value {
        let listed = on_postgres(&["schedulers", "-o", "json"]).output().unwrap();
        assert!(listed.status.success());
        serde_json::from_slice(&listed.stdout).unwrap()
    };
    let listed = schedulers(());
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["pid"], standalone.id());
    let _ = Command::new("kill")
        .args(["-INT", &standalone.id().to_string()])
        .status();
    assert!(standalone.wait().unwrap().success());
    assert_eq!(schedulers(()), serde_json::json!([]));
}

/// The engine's container `start` and `die` events of one job, from now on.
struct ContainerEvents {
    child: Child,
    path: PathBuf,
}

impl ContainerEvents {
    fn record(docker_host: &str, job_id: &str, dir: &Path) -> ContainerEvents {
        let path = dir.join(format!("events-{}.jsonl", docker_host.len()));
        let file = std::fs::File::create(&path).unwrap();
        let child = Command::new("docker")
            .args(["-H", docker_host, "events", "--format", "{{json .}}"])
            .args(["--filter", "type=container", "--filter", "event=start"])
            .args(["--filter", "event=die"])
            .args(["--filter", &format!("label=io.stevedore.job={job_id}")])
            .stdout(file)
            .spawn()
            .expect("docker events");
        std::thread::sleep(Duration::from_millis(500));
        ContainerEvents { child, path }
    }

    /// How many of the job's containers ran at once at the most, and how many started.
    fn most_at_once(mut self) -> (i64, usize) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.path).unwrap();
        let mut steps: Vec<(i64, i64)> = text
            .lines()
            .map(|line| {
                let event: Value = serde_json::from_str(line).unwrap();
                let step = if event["status"] == "start" { 1 } else { -1 };
                (event["timeNano"].as_i64().unwrap(), step)
            })
            .collect();
        steps.sort();
        let starts = steps.iter().filter(|(_, s)| *s == 1).count();
        let (mut now, mut most) = (0, 0);
        for (_, step) in steps {
            now += step;
            most = most.max(now);
        }
        (most, starts)
    }
}

/// Two Docker engines (this machine's, on its unix socket, and a second one the test starts,
/// reached over TCP with TLS) as one `docker` backend with two slots each: tries spread over
/// both, never more than two on one, a task whose placement names a label runs only where
/// it is, and one naming a label no host has fails saying so.
#[test]
fn tries_are_placed_by_capacity_and_labels_across_two_engines() {
    let second = stevedore_testkit::SecondEngine::start_tls(&[stevedore_testkit::SYNTH]);
    let (tls_endpoint, client) = second.tls.clone().expect("a TLS endpoint");
    let mut spread = "id: spread\ntasks:\n".to_owned();
    for index in 0..6 {
        spread.push_str(&format!(
            "  - id: t{index}\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"10\", --every-ms, \"100\"]\n"
        ));
    }
    spread.push_str("    placement:\n      zone: b\n");
    let nowhere = "id: nowhere\ntasks:\n  - id: t\n    image: stevedore/synth:0.1.0\n    placement:\n      zone: c\n";
    let workspace = Workspace::new(&[("spread.yaml", &spread), ("nowhere.yaml", nowhere)]);
    let hosts = format!(
        r#"[{{"name": "main", "endpoint": "unix:///var/run/docker.sock", "capacity": 2, "labels": {{"zone": "a"}}}},
            {{"name": "second", "endpoint": "{tls_endpoint}", "capacity": 2, "labels": {{"zone": "b"}},
              "tls": {{"ca": "{dir}/ca.pem", "cert": "{dir}/cert.pem", "key": "{dir}/key.pem"}}}}]"#,
        dir = client.display()
    );
    let main_events = ContainerEvents::record(
        "unix:///var/run/docker.sock",
        "spread",
        workspace.dir.path(),
    );
    let second_events = ContainerEvents::record(&second.host, "spread", workspace.dir.path());
    let standalone = workspace.standalone_with(Some(("STEVEDORE_DOCKER_HOSTS", &hosts)));
    let runs: Vec<String> = (0..2)
        .map(|_| {
            let run = workspace.run(&["jobs", "trigger", "spread"]);
            String::from_utf8_lossy(&run.stdout).trim().to_owned()
        })
        .collect();
    // `--wait` exits non-zero for a run that fails, and prints it.
    let failed = workspace.run(&["jobs", "trigger", "nowhere", "--wait", "-o", "json"]);
    assert!(!failed.status.success());
    let failed: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(failed["state"], "failed", "{failed}");
    let shown = workspace.json(&[
        "runs",
        "show",
        failed["run_id"].as_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(
        shown["task_instances"][0]["tries"][0]["failure_reason"],
        "backend: no Docker host has the labels zone=c",
        "{shown}"
    );
    let mut placed = std::collections::BTreeMap::new();
    for run_id in &runs {
        let shown = wait_for_run(
            &workspace,
            run_id,
            "the run did not end",
            Duration::from_secs(90),
            |shown| shown["state"] == "success" || shown["state"] == "failed",
        );
        assert_eq!(shown["state"], "success", "{shown}");
        for index in 0..6 {
            let task = format!("t{index}");
            let log = stored_log(&workspace, run_id, &task);
            let host = log
                .iter()
                .find_map(|(_, text)| text.strip_prefix("info: placed on Docker host "))
                .unwrap_or_else(|| panic!("{task} does not say where it ran: {log:?}"))
                .to_owned();
            if index == 5 {
                assert_eq!(host, "second", "t5 wants zone b");
            }
            *placed.entry(host).or_insert(0) += 1;
            assert_eq!(split_streams(&log), counted(10));
        }
    }
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "{log}");
    for run_id in &runs {
        assert_eq!(
            containers_of(run_id),
            vec![],
            "containers left on this engine"
        );
    }
    let left = second.docker(&["ps", "-aq"]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "containers left on the second engine"
    );
    let (main_most, main_started) = main_events.most_at_once();
    let (second_most, second_started) = second_events.most_at_once();
    assert_eq!(main_started + second_started, 12);
    assert_eq!(
        placed.get("main").copied().unwrap_or(0),
        main_started,
        "{placed:?}"
    );
    assert_eq!(
        placed.get("second").copied().unwrap_or(0),
        second_started,
        "{placed:?}"
    );
    assert!(
        main_started > 0 && second_started > 0,
        "one host did everything: {placed:?}"
    );
    assert!(
        main_most <= 2 && second_most <= 2,
        "a host ran more than its 2 slots: {main_most}, {second_most}"
    );
}

/// A Docker host that goes away while a try runs there: once it has not answered for
/// `STEVEDORE_HOST_LOST_AFTER`, the try is failed as lost, naming the host, and its retry
/// runs on the other host.
#[test]
fn a_try_on_a_host_that_goes_away_is_lost_and_retried_on_another() {
    let mut second = stevedore_testkit::SecondEngine::start(&[stevedore_testkit::SYNTH]);
    let job = "id: lonely\ntasks:\n  - id: long\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"60\", --every-ms, \"100\"]\n    retries: 1\n    retry_delay: 1s\n";
    let workspace = Workspace::new(&[("lonely.yaml", job)]);
    // The second engine first: with one free slot each, the first try goes there.
    let hosts = format!(
        r#"[{{"name": "second", "endpoint": "{}", "capacity": 1}},
            {{"name": "main", "endpoint": "unix:///var/run/docker.sock", "capacity": 1}}]"#,
        second.host
    );
    let mut command = workspace.command(&["standalone", "--port", "0"]);
    command
        .env("STEVEDORE_DOCKER_HOSTS", &hosts)
        .env("STEVEDORE_HOST_LOST_AFTER", "3s");
    let log = std::fs::File::create(workspace.dir.path().join("standalone.log")).unwrap();
    let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let standalone = Standalone {
        child,
        log: workspace.dir.path().join("standalone.log"),
    };
    let run = workspace.run(&["jobs", "trigger", "lonely"]);
    let run_id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    wait_for_run(
        &workspace,
        &run_id,
        "the try never ran",
        Duration::from_secs(30),
        |shown| {
            if !shown["task_instances"][0]["tries"][0].is_object() {
                return false;
            }
            let log = stored_log(&workspace, &run_id, "long");
            log.iter()
                .any(|(_, t)| t == "info: placed on Docker host second")
                && log.iter().filter(|(s, _)| s == "stdout").count() >= 3
        },
    );
    second.crash();
    let shown = wait_for_run(
        &workspace,
        &run_id,
        "the run did not end",
        Duration::from_secs(90),
        |shown| shown["state"] == "success" || shown["state"] == "failed",
    );
    assert_eq!(shown["state"], "success", "{shown}");
    let tries = shown["task_instances"][0]["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{shown}");
    assert_eq!(tries[0]["state"], "failed");
    assert_eq!(
        tries[0]["failure_reason"],
        "lost: Docker host second did not answer for 3s"
    );
    assert_eq!(tries[1]["state"], "success");
    let retry_log = {
        let output = workspace.run(&["tasks", "logs", &run_id, "long", "--try", "2", "-o", "json"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        retry_log.contains("placed on Docker host main"),
        "{retry_log}"
    );
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "{log}");
}

/// Issue 17: `jobs validate` checks a job's notify rules against the store's connections;
/// a failing run's alerts to a receiver that is not there are listed as failing, shown with
/// their attempts, and sent again on request.
#[test]
fn notify_rules_are_validated_and_failing_alerts_listed_shown_and_retried() {
    let job = "id: alerting\nnotify:\n  - {on: [failure], connection: ops}\ntasks:\n  - id: fail\n    backend: process\n    command: [/bin/sh, -c, \"exit 3\"]\n";
    let workspace = Workspace::new(&[("alerting.yaml", job)]);
    // No store yet: the connections cannot be checked, and nothing is created for it.
    let output = workspace.run(&["jobs", "validate"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not checked: no store"));
    assert!(!workspace.dir.path().join("stevedore.db").exists());
    // A connection with no channel: a load error naming the file and line.
    let added = workspace.run(&["connections", "add", "ops", "--env", "API_KEY=x"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let output = workspace.run(&["jobs", "validate"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("alerting.yaml:3: notify: connection `ops` has none of WEBHOOK_URL"),
        "{stderr}"
    );
    // A webhook nobody listens to.
    let added = workspace.run(&[
        "connections",
        "add",
        "ops",
        "--env",
        "WEBHOOK_URL=http://127.0.0.1:9/hook",
    ]);
    assert!(added.status.success());
    assert!(workspace.run(&["jobs", "validate"]).status.success());

    let standalone = workspace.standalone(None);
    let run = workspace.run(&["jobs", "trigger", "alerting", "--wait"]);
    assert_eq!(run.status.code(), Some(1), "the run failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let listed = workspace.json(&["notifications", "list", "--failed", "-o", "json"]);
        if let Some(first) = listed.as_array().and_then(|items| items.first()) {
            break first.clone();
        }
        assert!(Instant::now() < deadline, "no failing alert");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failing["event"], "failure");
    assert_eq!(failing["job_id"], "alerting");
    assert_eq!(failing["channel"], "webhook");
    assert_eq!(failing["status"], "pending");
    let error = failing["last_error"].as_str().unwrap();
    assert!(error.starts_with("cannot reach the webhook"), "{error}");
    assert!(
        !error.contains("127.0.0.1:9"),
        "the receiver's address is not told: {error}"
    );
    let id = failing["id"].as_str().unwrap().to_owned();
    let shown = workspace.run(&["notifications", "show", &id[..13]]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("event:        failure"), "{text}");
    assert!(text.contains("failing:"), "{text}");
    assert!(text.contains("cannot reach the webhook"), "{text}");
    let table = workspace.run(&["notifications", "list", "--job", "alerting"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&id));
    let retried = workspace.run(&["notifications", "retry", &id]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert!(String::from_utf8_lossy(&retried.stdout).contains("will be sent again"));
    let shown = workspace.run(&["runs", "show", run_id_of(&workspace, "alerting").as_str()]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&id),
        "runs show lists its alerts"
    );
    standalone.interrupt();
}

/// The newest run of a job.
fn run_id_of(workspace: &Workspace, job: &str) -> String {
    let runs = workspace.json(&["runs", "list", "--job", job, "-o", "json"]);
    runs[0]["run_id"].as_str().unwrap().to_owned()
}

#[test]
fn assets_are_listed_cycles_are_refused_and_only_an_events_job_gets_a_webhook_token() {
    let producer = "id: charges\ntasks:\n  - id: load\n    image: stevedore/synth:0.1.0\n    produces: [warehouse.charges]\n";
    let consumer = "id: models\nschedule: {assets: [warehouse.charges]}\ntasks:\n  - id: run\n    image: stevedore/synth:0.1.0\n";
    let hooks =
        "id: hooks\nevents: {max_batch: 10}\ntasks:\n  - id: t\n    image: stevedore/synth:0.1.0\n";
    let workspace = Workspace::new(&[
        ("charges.yaml", producer),
        ("models.yaml", consumer),
        ("hooks.yaml", hooks),
    ]);
    let listed = workspace.json(&["assets", "list", "-o", "json"]);
    let charges = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "warehouse.charges")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(charges["producers"], serde_json::json!(["charges.load"]));
    assert_eq!(charges["consumers"], serde_json::json!(["models"]));
    assert_eq!(charges["last_update"], Value::Null);

    let token = workspace.run(&["jobs", "webhook-token", "hooks"]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    assert!(String::from_utf8_lossy(&token.stdout).starts_with("stv_"));
    let refused = workspace.run(&["jobs", "webhook-token", "models"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("takes no events"));

    // Made into a cycle, both jobs are refused with their files and lines.
    std::fs::write(
        workspace.dir.path().join("jobs").join("charges.yaml"),
        producer.replace(
            "id: charges\n",
            "id: charges\nschedule: {after: [models]}\n",
        ),
    )
    .unwrap();
    let output = workspace.run(&["jobs", "validate"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("charges.yaml:2: job `charges` is in a cycle")
            && stderr.contains("models.yaml:2: job `models` is in a cycle"),
        "{stderr}"
    );
}

/// An OTLP/HTTP receiver on 127.0.0.1: every body posted to `/v1/traces` (JSON), answered
/// `200 {}` as a collector answers.
struct OtlpReceiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    // Requests one after another on a kept-alive connection.
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if request_line.starts_with("POST /v1/traces") {
                            if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                                kept.lock().unwrap().push(value);
                            }
                        }
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                        );
                    }
                });
            }
        });
        OtlpReceiver { url, bodies }
    }

    /// Every span received: `(trace id, span id, parent span id, name)`.
    /// The spans of a run's trace (its trace id is the run id).
    fn trace(&self, run_id: &str) -> Vec<(String, String, String, String)> {
        let trace_id = run_id.replace('-', "");
        self.spans()
            .into_iter()
            .filter(|(trace, ..)| *trace == trace_id)
            .collect()
    }

    fn spans(&self) -> Vec<(String, String, String, String)> {
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let text = |key: &str| span[key].as_str().unwrap_or("").to_owned();
                        spans.push((
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                            text("name"),
                        ));
                    }
                }
            }
        }
        spans
    }
}

/// The main job's run reaches an OTLP receiver as one trace: the run's span (its trace id
/// the run id), a span per try under it, and each try's dispatch and backend start under
/// the try's.
#[test]
fn a_run_of_the_example_job_reaches_an_otlp_receiver_as_one_trace() {
    let receiver = OtlpReceiver::start();
    let workspace = Workspace::with_examples(&[]);
    let standalone = workspace.standalone_envs(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "stevedore-test"),
    ]);
    let run = workspace.json(&["jobs", "trigger", "example_etl", "--wait", "-o", "json"]);
    assert_eq!(run["state"], "success", "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    // A clean stop sends what is batched.
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "{log}");
    let spans = receiver.trace(&run_id);
    let runs: Vec<_> = spans.iter().filter(|s| s.3 == "run example_etl").collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let run_span = &runs[0].1;
    assert_eq!(runs[0].2, "", "the run's span is the root");
    let tries: Vec<_> = spans.iter().filter(|s| s.3.starts_with("try ")).collect();
    assert_eq!(tries.len(), 5, "a span per try: {spans:#?}");
    assert!(
        tries.iter().all(|t| t.2 == *run_span),
        "tries under the run: {spans:#?}"
    );
    for try_span in &tries {
        let children: Vec<&str> = spans
            .iter()
            .filter(|s| s.2 == try_span.1)
            .map(|s| s.3.as_str())
            .collect();
        assert!(
            children.contains(&"dispatch") && children.contains(&"backend start"),
            "{}: {children:?}",
            try_span.3
        );
    }
    let body = serde_json::to_string(&*receiver.bodies.lock().unwrap()).unwrap();
    assert!(body.contains("stevedore-test"), "the service name");
}

/// A run an operator cancels is ended by the scheduler's stop, not a pass's plan: it has
/// its span too, with the stopped try's under it.
#[test]
fn a_cancelled_run_is_one_trace_too() {
    let receiver = OtlpReceiver::start();
    let job = "id: slow\ntasks:\n  - id: wait\n    backend: process\n    command: [/bin/sh, -c, \"echo started; sleep 60\"]\n";
    let workspace = Workspace::new(&[("slow.yaml", job)]);
    let standalone = workspace.standalone_envs(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ]);
    let run = workspace.json(&["jobs", "trigger", "slow", "-o", "json"]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let state = |workspace: &Workspace| {
        workspace.json(&["runs", "show", &run_id, "-o", "json"])["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    while state(&workspace) != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    workspace.run(&["runs", "cancel", &run_id]);
    while state(&workspace) != "failed" {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never ended the run"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, log) = standalone.interrupt();
    assert!(status.success(), "{log}");
    let spans = receiver.trace(&run_id);
    let runs: Vec<_> = spans.iter().filter(|s| s.3 == "run slow").collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.3.starts_with("try wait") && s.2 == runs[0].1),
        "the stopped try under the run: {spans:#?}"
    );
    let body = serde_json::to_string(&*receiver.bodies.lock().unwrap()).unwrap();
    assert!(body.contains("failed"), "the run's state: {body}");
}
