//! Chaos: several schedulers on one PostgreSQL store run a fan-out job on the real Docker
//! engine while a driver SIGKILLs a random scheduler every few seconds and starts it again.
//! At the end every run is terminal, every try was started exactly once (counted from the
//! engine's own events), every container's log is stored exactly once and in order, and no
//! container is left behind. Bounded in time; cleans up after itself.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stevedore_testkit::{Postgres, S3Server, SecondEngine, S3_ACCESS_KEY, S3_SECRET_KEY, SYNTH};

const SCHEDULERS: usize = 3;
const RUNS: usize = 50;
/// Lines the split and merge tasks print (`synth count`, one each 100 ms).
const EDGE_LINES: u32 = 4;

/// Lines each part prints: 1.2 s of work; 12 s when the engine restarts, so that parts are
/// still running when the engine, after waiting for them for its stop timeout (10 s: the
/// containers' PID 1 ignores SIGTERM), kills them.
fn part_lines(fault: Fault) -> u32 {
    if fault == Fault::EngineRestart {
        120
    } else {
        12
    }
}

/// The fan-out job: `split`, then four parts at once, then `merge`.
fn fan_out_job(job_id: &str, part_lines: u32) -> String {
    let count = |lines: u32| format!("[count, --lines, \"{lines}\", --every-ms, \"100\"]");
    let mut text = format!(
        "id: {job_id}\nmax_active_runs: 16\nmax_active_tasks: 64\ntasks:\n  - id: split\n    image: stevedore/synth:0.1.0\n    args: {}\n    retries: 2\n    retry_delay: 1s\n",
        count(EDGE_LINES)
    );
    for part in ["a", "b", "c", "d"] {
        text.push_str(&format!(
            "  - id: part_{part}\n    image: stevedore/synth:0.1.0\n    args: {}\n    depends_on: [split]\n    retries: 2\n    retry_delay: 1s\n",
            count(part_lines)
        ));
    }
    text.push_str(&format!(
        "  - id: merge\n    image: stevedore/synth:0.1.0\n    args: {}\n    depends_on: [part_a, part_b, part_c, part_d]\n    retries: 2\n    retry_delay: 1s\n",
        count(EDGE_LINES)
    ));
    text
}

/// A small deterministic random source (the seed is printed, so a run can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    job_id: String,
    /// The engine the schedulers use (`DOCKER_HOST`); the main one when `None`.
    docker_host: Option<String>,
    schedulers: Vec<Option<Child>>,
    started: usize,
    /// More settings of every scheduler and command (an artifact store, say).
    env: Vec<(String, String)>,
}

impl Cluster {
    fn new(
        postgres: &Postgres,
        job_id: &str,
        fault: Fault,
        docker_host: Option<String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(
            dir.path().join("jobs").join(format!("{job_id}.yaml")),
            fan_out_job(job_id, part_lines(fault)),
        )
        .unwrap();
        Cluster {
            dir,
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port),
            job_id: job_id.to_owned(),
            docker_host,
            schedulers: (0..SCHEDULERS).map(|_| None).collect(),
            started: 0,
            env: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stevedore"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("STEVEDORE_DB", &self.url)
            .env("STEVEDORE_JOBS", self.dir.path().join("jobs"))
            .env("STEVEDORE_HEARTBEAT_EVERY", "1s")
            .env("STEVEDORE_LEASE", "4s")
            .env("STEVEDORE_WORKSPACE_SWEEP_EVERY", "2s")
            .env("STEVEDORE_WORKSPACE_RETENTION", "0s")
            .env("STEVEDORE_LOG", "info");
        if let Some(host) = &self.docker_host {
            command.env("DOCKER_HOST", host);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// `docker` on the schedulers' engine.
    fn docker(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("docker");
        if let Some(host) = &self.docker_host {
            command.args(["-H", host]);
        }
        command.args(args).output().expect("docker")
    }

    fn start(&mut self, slot: usize) {
        self.started += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("scheduler-{slot}-{}.log", self.started)),
        )
        .unwrap();
        let child = self
            .command(&["scheduler"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a scheduler");
        self.schedulers[slot] = Some(child);
    }

    /// Starts schedulers in the first `count` slots and waits until all are registered.
    fn start_registered(&mut self, postgres: &Postgres, count: usize) {
        for slot in 0..count {
            self.start(slot);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while postgres.query("SELECT count(*) FROM schedulers") != count.to_string() {
            assert!(
                Instant::now() < deadline,
                "the schedulers did not start{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.schedulers[slot].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops every scheduler cleanly (SIGTERM), as an operator would.
    fn stop_all(&mut self) {
        for child in self.schedulers.iter_mut().filter_map(Option::take) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let mut child = child;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn trigger(&self) -> String {
        let output = self
            .command(&["jobs", "trigger", &self.job_id])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "trigger failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        entries.sort();
        for path in entries {
            let body = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(30).collect();
            text.push_str(&format!("\n--- {} (last lines)\n", path.display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for slot in 0..self.schedulers.len() {
            self.kill(slot);
        }
        // Containers of this test's job, whatever state they are in.
        let listed = self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.stevedore.job={}", self.job_id),
        ]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.docker(&["rm", "-f", id]);
        }
    }
}

/// The engine's `start` events of the job's containers, recorded from before the first run
/// to the end of the test (subscribed again after an engine restart: a restarted engine
/// replays the events since it started).
struct EngineEvents {
    recorders: Vec<(Child, PathBuf)>,
    job_id: String,
    docker_host: Option<String>,
    dir: PathBuf,
}

impl EngineEvents {
    fn record(job_id: &str, docker_host: Option<String>, dir: &Path) -> EngineEvents {
        let mut events = EngineEvents {
            recorders: Vec::new(),
            job_id: job_id.to_owned(),
            docker_host,
            dir: dir.to_owned(),
        };
        events.subscribe(None);
        events
    }

    fn subscribe(&mut self, since: Option<u64>) {
        let path = self
            .dir
            .join(format!("events-{}.jsonl", self.recorders.len()));
        let file = std::fs::File::create(&path).unwrap();
        let mut command = Command::new("docker");
        if let Some(host) = &self.docker_host {
            command.args(["-H", host]);
        }
        command.args([
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=start",
            "--filter",
            &format!("label=io.stevedore.job={}", self.job_id),
            "--format",
            "{{json .}}",
        ]);
        if let Some(since) = since {
            command.args(["--since", &since.to_string()]);
        }
        let child = command.stdout(file).spawn().expect("docker events");
        // Let the subscription take hold before anything starts.
        std::thread::sleep(Duration::from_millis(500));
        self.recorders.push((child, path));
    }

    /// How many times each try's container started: `(run, task, try) -> starts`.
    fn starts(mut self) -> HashMap<(String, String, i64), usize> {
        std::thread::sleep(Duration::from_millis(500));
        let mut starts = HashMap::new();
        for (child, path) in &mut self.recorders {
            let _ = child.kill();
            let _ = child.wait();
            let file = std::fs::File::open(&*path).unwrap();
            for line in std::io::BufReader::new(file).lines() {
                let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
                let labels = &event["Actor"]["Attributes"];
                let key = (
                    labels["io.stevedore.run"].as_str().unwrap().to_owned(),
                    labels["io.stevedore.task"].as_str().unwrap().to_owned(),
                    labels["io.stevedore.try"]
                        .as_str()
                        .unwrap()
                        .parse::<i64>()
                        .unwrap(),
                );
                *starts.entry(key).or_default() += 1;
            }
        }
        starts
    }
}

/// What else goes wrong, once, while the schedulers are being killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// The schedulers' Docker engine (a second engine of the test's own) restarts: its
    /// containers are stopped, the schedulers lose their connections.
    EngineRestart,
    /// The PostgreSQL store restarts: every connection is cut.
    PostgresRestart,
}

/// The chaos tests share the machine's two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Three schedulers, one of them SIGKILLed and started again every few seconds, run 50
/// fan-out runs: nothing is lost, nothing runs twice, no log line is lost or doubled.
#[test]
fn schedulers_killed_at_random_lose_no_task_and_run_none_twice() {
    chaos(Fault::None);
}

/// The same, with the Docker engine restarted once mid-test.
#[test]
fn an_engine_restart_during_chaos_loses_no_task_and_runs_none_twice() {
    chaos(Fault::EngineRestart);
}

/// The same, with PostgreSQL restarted once mid-test.
#[test]
fn a_postgresql_restart_during_chaos_loses_no_task_and_runs_none_twice() {
    chaos(Fault::PostgresRestart);
}

fn chaos(fault: Fault) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let postgres = Postgres::start();
    let mut engine = (fault == Fault::EngineRestart).then(|| SecondEngine::start(&[SYNTH]));
    let job_id = match fault {
        Fault::None => "chaos_kill",
        Fault::EngineRestart => "chaos_engine",
        Fault::PostgresRestart => "chaos_postgres",
    };
    let docker_host = engine.as_ref().map(|e| e.host.clone());
    let mut cluster = Cluster::new(&postgres, job_id, fault, docker_host.clone());
    // The schema exists before the schedulers and the CLI race to create it.
    let migrated = cluster.command(&["db", "migrate"]).output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let mut events = EngineEvents::record(job_id, docker_host, cluster.dir.path());
    for slot in 0..SCHEDULERS {
        cluster.start(slot);
    }
    let run_ids: Vec<String> = (0..RUNS).map(|_| cluster.trigger()).collect();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos ({fault:?}) seed {seed}");
    let mut random = Lcg(seed);
    let deadline = Instant::now() + Duration::from_secs(420);
    let mut kills = 0;
    let mut fault_done = fault == Fault::None;
    let terminal = format!(
        "SELECT count(*) FROM runs WHERE job_id = '{job_id}' AND state IN ('success', 'failed')"
    );
    loop {
        let done: usize = postgres.query(&terminal).parse().unwrap();
        if done == RUNS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {RUNS} runs ended in time (seed {seed}, {kills} kills){}",
            cluster.logs()
        );
        if !fault_done && done >= RUNS / 4 {
            fault_done = true;
            eprintln!("{fault:?} after {done} runs ended");
            match fault {
                Fault::EngineRestart => {
                    let engine = engine.as_mut().unwrap();
                    let since = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    engine.restart();
                    events.subscribe(Some(since));
                }
                Fault::PostgresRestart => postgres.restart(),
                Fault::None => {}
            }
        }
        std::thread::sleep(Duration::from_millis(2000 + random.next(2000)));
        let slot = random.next(SCHEDULERS as u64) as usize;
        cluster.kill(slot);
        kills += 1;
        cluster.start(slot);
    }
    assert!(fault_done, "the runs ended before the fault was injected");
    eprintln!("{RUNS} runs ended after {kills} scheduler kills");
    // A last sweep removes containers whose scheduler was killed before removing them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = cluster.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.stevedore.job={job_id}"),
        ]);
        let left = String::from_utf8_lossy(&left.stdout).lines().count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} containers left behind:\n{}{}",
            left_behind(&cluster, &postgres, job_id),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.stop_all();
    let starts = events.starts();
    check(&postgres, job_id, fault, &run_ids, &starts, &cluster.logs());
}

/// Each container of the job still in the engine, with its engine state and what the store
/// says of its try: what a failed sweep check needs to be understood.
fn left_behind(cluster: &Cluster, postgres: &Postgres, job_id: &str) -> String {
    let listed = cluster.docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.stevedore.job={job_id}"),
        "--format",
        "{{.Label \"io.stevedore.run\"}}|{{.Label \"io.stevedore.task\"}}|{{.Label \"io.stevedore.try\"}}|{{.State}}|{{.Status}}",
    ]);
    let mut text = String::new();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let fields: Vec<&str> = line.split('|').collect();
        let [run_id, task_id, try_number, ..] = fields[..] else {
            continue;
        };
        let try_row = postgres.query(&format!(
            "SELECT state, COALESCE(container_id, ''), COALESCE(failure_reason, '') FROM tries \
             WHERE run_id = '{run_id}' AND task_id = '{task_id}' AND try_number = {try_number}"
        ));
        let run_state =
            postgres.query(&format!("SELECT state FROM runs WHERE run_id = '{run_id}'"));
        text.push_str(&format!(
            "  {line} | store: try [{}] run [{}]\n",
            try_row.trim(),
            run_state.trim()
        ));
    }
    text
}

/// What the store and the engine's events say at the end of a chaos test.
fn check(
    postgres: &Postgres,
    job_id: &str,
    fault: Fault,
    run_ids: &[String],
    starts: &HashMap<(String, String, i64), usize>,
    logs_of_schedulers: &str,
) {
    // Every run succeeded: no try was lost (a lost try would have spent retries, and the
    // tries' records show whether any did).
    let states = postgres.query(&format!(
        "SELECT state, count(*) FROM runs WHERE job_id = '{job_id}' GROUP BY state"
    ));
    let failures = postgres.query(&format!(
        "SELECT t.task_id, t.try_number, t.state, t.exit_code, t.failure_reason FROM tries t \
         JOIN runs r ON r.run_id = t.run_id WHERE r.job_id = '{job_id}' AND t.state <> 'success' LIMIT 10"
    ));
    assert_eq!(
        states,
        format!("success|{RUNS}"),
        "tries that did not succeed:\n{failures}\n{logs_of_schedulers}"
    );
    assert_eq!(
        postgres.query(&format!(
            "SELECT count(*) FROM runs WHERE job_id = '{job_id}'"
        )),
        RUNS.to_string()
    );

    // Every container that started belongs to a try in the store and started once.
    let tries = postgres.query(&format!(
        "SELECT t.run_id, t.task_id, t.try_number, t.state, COALESCE(t.exit_code::text, ''), COALESCE(t.failure_reason, '') \
         FROM tries t JOIN runs r ON r.run_id = t.run_id WHERE r.job_id = '{job_id}'"
    ));
    let mut recorded: BTreeMap<(String, String, i64), (String, String, String)> = BTreeMap::new();
    for line in tries.lines() {
        let fields: Vec<&str> = line.split('|').collect();
        recorded.insert(
            (
                fields[0].to_owned(),
                fields[1].to_owned(),
                fields[2].parse().unwrap(),
            ),
            (
                fields[3].to_owned(),
                fields[4].to_owned(),
                fields[5].to_owned(),
            ),
        );
    }
    for (key, count) in starts {
        assert_eq!(*count, 1, "try {key:?} was started {count} times");
        assert!(
            recorded.contains_key(key),
            "a container of {key:?} started, but the store has no such try"
        );
    }
    let (mut interrupted, mut failed) = (0, 0);
    for (key, (state, exit_code, reason)) in &recorded {
        match state.as_str() {
            "success" => assert_eq!(
                starts.get(key),
                Some(&1),
                "successful try {key:?} has no start event"
            ),
            // A scheduler killed before the container started: nothing ran.
            "interrupted" => {
                assert_eq!(
                    starts.get(key),
                    None,
                    "interrupted try {key:?} had started: {reason}"
                );
                interrupted += 1;
            }
            // Containers the engine stopped as it restarted.
            "failed" if fault == Fault::EngineRestart => failed += 1,
            other => panic!("try {key:?} ended {other} (exit code {exit_code}, {reason})"),
        }
    }
    let instances = RUNS * 6;
    assert_eq!(recorded.len(), instances + interrupted + failed);
    eprintln!(
        "{} tries, {} containers started, {interrupted} tries interrupted before their container started, {failed} failed as the engine stopped them",
        recorded.len(),
        starts.len()
    );

    // Every try's log holds each line its container printed once, in order: all of them for
    // a try that succeeded, the lines up to where it was stopped for one that failed.
    let lines = postgres.query(&format!(
        "SELECT t.run_id, t.task_id, t.try_number, l.stream, l.text FROM log_lines l JOIN tries t ON t.try_id = l.try_id \
         JOIN runs r ON r.run_id = t.run_id WHERE r.job_id = '{job_id}' \
         AND l.stream IN (1, 2) ORDER BY l.try_id, l.seq"
    ));
    let mut logs: HashMap<(String, String, i64), (Vec<String>, Vec<String>)> = HashMap::new();
    for line in lines.lines() {
        let fields: Vec<&str> = line.splitn(5, '|').collect();
        let entry = logs
            .entry((
                fields[0].to_owned(),
                fields[1].to_owned(),
                fields[2].parse().unwrap(),
            ))
            .or_default();
        match fields[3] {
            "1" => entry.0.push(fields[4].to_owned()),
            _ => entry.1.push(fields[4].to_owned()),
        }
    }
    let expected = |lines: u32| {
        (
            (1..=lines).map(|n| format!("out {n}")).collect::<Vec<_>>(),
            (1..=lines)
                .filter(|n| n % 3 == 0)
                .map(|n| format!("err {n}"))
                .collect::<Vec<_>>(),
        )
    };
    let mut checked = 0;
    for (key, (state, _, _)) in &recorded {
        let (run_id, task, _) = key;
        assert!(run_ids.contains(run_id));
        let lines = if task.starts_with("part") {
            part_lines(fault)
        } else {
            EDGE_LINES
        };
        let (out, err) = expected(lines);
        let stored = logs.remove(key).unwrap_or_default();
        match state.as_str() {
            "success" => {
                assert_eq!(
                    stored,
                    (out, err),
                    "the log of {key:?} is not its container's output, once and in order"
                );
                checked += 1;
            }
            _ => assert!(
                out.starts_with(&stored.0) && err.starts_with(&stored.1),
                "the log of {state} try {key:?} is not a prefix of its container's output: {stored:?}"
            ),
        }
    }
    assert_eq!(checked, instances);
    assert!(
        logs.is_empty(),
        "log lines of tries the store does not have"
    );
}

/// Two schedulers share one pool of two slots: however they interleave, no more than two of
/// its task instances run at once (they take turns deciding what is queued).
#[test]
fn a_pool_holds_across_schedulers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let postgres = Postgres::start();
    let job_id = "narrow";
    let mut text = format!("id: {job_id}\nmax_active_runs: 16\nmax_active_tasks: 64\ntasks:\n");
    for index in 0..6 {
        text.push_str(&format!(
            "  - id: t{index}\n    image: stevedore/synth:0.1.0\n    args: [count, --lines, \"5\", --every-ms, \"100\"]\n    pool: narrow\n"
        ));
    }
    let mut cluster = Cluster::new(&postgres, job_id, Fault::None, None);
    std::fs::write(
        cluster
            .dir
            .path()
            .join("jobs")
            .join(format!("{job_id}.yaml")),
        text,
    )
    .unwrap();
    let set = cluster
        .command(&["pools", "set", "narrow", "2"])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    // Both registered before the runs exist, so each claims its share.
    cluster.start_registered(&postgres, 2);
    let runs = 4;
    for _ in 0..runs {
        cluster.trigger();
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let terminal = format!(
        "SELECT count(*) FROM runs WHERE job_id = '{job_id}' AND state IN ('success', 'failed')"
    );
    let mut owners = 0;
    while postgres.query(&terminal) != runs.to_string() {
        assert!(
            Instant::now() < deadline,
            "the runs did not end{}",
            cluster.logs()
        );
        let now: usize = postgres
            .query(&format!(
                "SELECT count(DISTINCT owner) FROM runs WHERE job_id = '{job_id}' AND state IN ('queued', 'running')"
            ))
            .parse()
            .unwrap();
        owners = owners.max(now);
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop_all();
    assert_eq!(owners, 2, "the runs were not shared by both schedulers");
    // The tries' intervals: at no moment more than two at once.
    let intervals = postgres.query(&format!(
        "SELECT t.started_at, t.ended_at FROM tries t JOIN runs r ON r.run_id = t.run_id WHERE r.job_id = '{job_id}'"
    ));
    let mut edges: Vec<(String, i32)> = Vec::new();
    for line in intervals.lines() {
        let (start, end) = line.split_once('|').unwrap();
        edges.push((start.to_owned(), 1));
        edges.push((end.to_owned(), -1));
    }
    assert_eq!(edges.len(), 2 * 6 * runs);
    // Timestamps are fixed-width RFC 3339 text: their order is time order; an end sorts
    // before a start at the same instant.
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    assert!(most <= 2, "{most} tries of a two-slot pool ran at once");
    assert_eq!(most, 2, "the pool was never full: the test shows nothing");
}

/// Issue 16, must show 3: two schedulers on PostgreSQL with an S3 artifact store (moto's
/// server). The scheduler that holds the run watches `extract` write its file and is
/// SIGKILLed while `wait` runs, before `load` starts; the other one takes the run over and
/// runs `load` with extract's file from the store: the run succeeds, load reads the file
/// once, and load ran once.
#[test]
fn a_downstream_try_gets_the_files_of_an_upstream_try_another_scheduler_watched() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let postgres = Postgres::start();
    let s3 = S3Server::start();
    let job_id = "handover";
    let mut cluster = Cluster::new(&postgres, job_id, Fault::None, None);
    std::fs::write(
        cluster.dir.path().join("jobs").join(format!("{job_id}.yaml")),
        format!(
            "id: {job_id}\ntasks:\n  - id: extract\n    image: {SYNTH}\n    args: [write, --file, out/records.jsonl, --text, \"{{{{ run_id }}}}\"]\n  - id: wait\n    image: {SYNTH}\n    depends_on: [extract]\n    args: [sleep, --seconds, \"6\"]\n  - id: load\n    image: {SYNTH}\n    depends_on: [wait]\n    args: [read, --file, out/records.jsonl]\n"
        ),
    )
    .unwrap();
    cluster.env = [
        (
            "STEVEDORE_ARTIFACT_STORE",
            format!("s3://{}/handover", s3.bucket),
        ),
        ("STEVEDORE_ARTIFACT_STORE_ENDPOINT", s3.endpoint.clone()),
        ("STEVEDORE_ARTIFACT_STORE_REGION", "us-east-1".to_owned()),
        ("STEVEDORE_ARTIFACT_STORE_PATH_STYLE", "true".to_owned()),
        (
            "STEVEDORE_ARTIFACT_STORE_ACCESS_KEY_ID",
            S3_ACCESS_KEY.to_owned(),
        ),
        (
            "STEVEDORE_ARTIFACT_STORE_SECRET_ACCESS_KEY",
            S3_SECRET_KEY.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The store is made (migrated) before anything polls it.
    let listed = cluster.command(&["schedulers"]).output().unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    cluster.start_registered(&postgres, 2);
    let run_id = cluster.trigger();
    let of = |task: &str, column: &str| {
        postgres.query(&format!(
            "SELECT {column} FROM tries WHERE run_id = '{run_id}' AND task_id = '{task}' ORDER BY try_number"
        ))
    };
    // extract has ended with its file kept, and wait runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(of("extract", "state") == "success" && !of("wait", "container_id").is_empty()) {
        assert!(
            Instant::now() < deadline,
            "extract did not end{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        postgres.query(&format!(
            "SELECT task_id, path FROM artifacts WHERE run_id = '{run_id}'"
        )),
        "extract|out/records.jsonl"
    );
    let holder: u32 = postgres
        .query(&format!(
            "SELECT s.pid FROM runs r JOIN schedulers s ON s.id = r.owner WHERE r.run_id = '{run_id}'"
        ))
        .parse()
        .expect("the run has a holder");
    let slot = (0..2)
        .find(|&slot| {
            cluster.schedulers[slot]
                .as_ref()
                .is_some_and(|c| c.id() == holder)
        })
        .expect("the holder is one of the two");
    cluster.kill(slot);
    assert_eq!(of("load", "state"), "", "load must not have started yet");

    let deadline = Instant::now() + Duration::from_secs(120);
    let terminal = format!(
        "SELECT state FROM runs WHERE run_id = '{run_id}' AND state IN ('success', 'failed')"
    );
    while postgres.query(&terminal).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the run did not end{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivor = 1 - slot;
    let survivor_pid = cluster.schedulers[survivor].as_ref().unwrap().id();
    assert_eq!(postgres.query(&terminal), "success", "{}", cluster.logs());
    assert_eq!(of("load", "state"), "success", "load ran once");
    let read = postgres.query(&format!(
        "SELECT l.text FROM log_lines l JOIN tries t ON t.try_id = l.try_id WHERE t.run_id = '{run_id}' AND t.task_id = 'load'"
    ));
    assert_eq!(read, format!("read out/records.jsonl: {run_id}"));
    // The one left is the one that launched load.
    assert_eq!(
        postgres.query(&format!(
            "SELECT pid FROM schedulers WHERE pid = {survivor_pid}"
        )),
        survivor_pid.to_string()
    );
    cluster.stop_all();
}

/// Issue 17, must show 3: three schedulers on PostgreSQL, one SIGKILLed and started again
/// every few seconds, make and deliver the alerts of 20 failing runs (a retry, the task's
/// failure and the run's, each): every event reaches the webhook at least once, and after
/// dropping repeats by `id`, exactly the expected set is left.
#[test]
fn alerts_from_schedulers_killed_at_random_arrive_at_least_once_and_exactly_as_made() {
    const ALERT_RUNS: usize = 20;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = runtime.block_on(stevedore_testkit::Receiver::start(
        stevedore_testkit::ReceiverKind::Webhook,
    ));
    let postgres = Postgres::start();
    let job_id = "chaos_alerts";
    let mut cluster = Cluster::new(&postgres, job_id, Fault::None, None);
    std::fs::write(
        cluster.dir.path().join("jobs").join(format!("{job_id}.yaml")),
        format!(
            "id: {job_id}\nmax_active_runs: 16\nnotify:\n  - {{on: [failure], connection: ops}}\ndefaults:\n  notify:\n    - {{on: [retry, failure], connection: ops}}\ntasks:\n  - id: load\n    image: {SYNTH}\n    args: [count, --lines, \"30\", --every-ms, \"100\", --exit, \"2\"]\n    retries: 1\n    retry_delay: 1s\n"
        ),
    )
    .unwrap();
    let migrated = cluster.command(&["db", "migrate"]).output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let added = cluster
        .command(&[
            "connections",
            "add",
            "ops",
            "--env",
            &format!("WEBHOOK_URL={}", receiver.url),
        ])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    cluster.start_registered(&postgres, SCHEDULERS);
    let run_ids: Vec<String> = (0..ALERT_RUNS).map(|_| cluster.trigger()).collect();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("alert chaos seed {seed}");
    let mut random = Lcg(seed);
    let expected_events = 3 * ALERT_RUNS;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    // Runs end, then their events are delivered; the kills go on until both are done.
    loop {
        let ended: usize = postgres
            .query(&format!(
                "SELECT count(*) FROM runs WHERE job_id = '{job_id}' AND state IN ('success', 'failed')"
            ))
            .parse()
            .unwrap();
        let delivered: usize = postgres
            .query(&format!(
                "SELECT count(*) FROM notifications WHERE job_id = '{job_id}' AND status = 'delivered'"
            ))
            .parse()
            .unwrap();
        if ended == ALERT_RUNS && delivered == expected_events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ended} of {ALERT_RUNS} runs ended, {delivered} of {expected_events} events delivered (seed {seed}, {kills} kills){}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(2000 + random.next(2000)));
        let slot = random.next(SCHEDULERS as u64) as usize;
        cluster.kill(slot);
        kills += 1;
        cluster.start(slot);
    }
    cluster.stop_all();
    eprintln!(
        "{ALERT_RUNS} runs ended and their alerts were delivered after {kills} scheduler kills"
    );

    // What was made: each run's three events, once each.
    let made = postgres.query(&format!(
        "SELECT id, run_id, event, coalesce(task_id, '-'), coalesce(try_number, 0) FROM notifications WHERE job_id = '{job_id}' ORDER BY seq"
    ));
    let made: Vec<Vec<String>> = made
        .lines()
        .map(|line| line.split('|').map(str::to_owned).collect())
        .collect();
    let mut expected: Vec<(String, String, String, String)> = Vec::new();
    for run_id in &run_ids {
        // The `load` tries that failed, in order: the first is told of as a retry, the second
        // as the failure. A try a killed scheduler left before its container started is
        // interrupted and not counted, so the failed ones are not always tries 1 and 2.
        let failed = postgres.query(&format!(
            "SELECT try_number FROM tries WHERE run_id = '{run_id}' AND task_id = 'load' AND state = 'failed' ORDER BY try_number"
        ));
        let failed: Vec<&str> = failed.lines().collect();
        assert_eq!(failed.len(), 2, "run {run_id}: two failed tries of load");
        expected.push((
            run_id.clone(),
            "retry".into(),
            "load".into(),
            failed[0].into(),
        ));
        expected.push((
            run_id.clone(),
            "failure".into(),
            "load".into(),
            failed[1].into(),
        ));
        expected.push((run_id.clone(), "failure".into(), "-".into(), "0".into()));
    }
    expected.sort();
    let mut made_set: Vec<(String, String, String, String)> = made
        .iter()
        .map(|row| {
            (
                row[1].clone(),
                row[2].clone(),
                row[3].clone(),
                row[4].clone(),
            )
        })
        .collect();
    made_set.sort();
    assert_eq!(made_set, expected, "each event made once");

    // What arrived: at least once each, and after dropping repeats, exactly what was made.
    let received = receiver.received();
    let mut arrived: BTreeMap<String, (String, String, String, String)> = BTreeMap::new();
    for request in &received {
        let body = request.json();
        let id = body["id"].as_str().unwrap().to_owned();
        let key = (
            body["run_id"].as_str().unwrap().to_owned(),
            body["event"].as_str().unwrap().to_owned(),
            body["task_id"].as_str().unwrap_or("-").to_owned(),
            body["try_number"].as_u64().unwrap_or(0).to_string(),
        );
        if let Some(before) = arrived.insert(id.clone(), key.clone()) {
            assert_eq!(before, key, "event {id} arrived with different contents");
        }
    }
    let made_ids: BTreeMap<String, (String, String, String, String)> = made
        .iter()
        .map(|row| {
            (
                row[0].clone(),
                (
                    row[1].clone(),
                    row[2].clone(),
                    row[3].clone(),
                    row[4].clone(),
                ),
            )
        })
        .collect();
    assert_eq!(
        arrived, made_ids,
        "every event at least once, and nothing else"
    );
    eprintln!(
        "{} deliveries for {} events ({} repeats)",
        received.len(),
        made_ids.len(),
        received.len() - made_ids.len()
    );
    drop(receiver);
    drop(runtime);
}

/// Webhooks under chaos (issue 19): 10 clients post 1,000 events at once to `stevedore
/// server` (single events and JSON lines), two schedulers batch them into runs of at most
/// 100, and one scheduler is SIGKILLed in the middle and started again. In the end every
/// event is in exactly one run, each run's container read exactly its events from
/// `events.jsonl`, in order, and every run succeeded.
#[test]
fn posted_events_land_in_exactly_one_run_each_while_a_scheduler_is_killed() {
    const CLIENTS: usize = 10;
    const PER_CLIENT: usize = 100;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let postgres = Postgres::start_local();
    let mut cluster = Cluster::new(&postgres, "clicks", Fault::None, None);
    // Only the webhook's job in the folder.
    std::fs::remove_file(cluster.dir.path().join("jobs").join("clicks.yaml")).unwrap();
    std::fs::write(
        cluster.dir.path().join("jobs").join("clicks.yaml"),
        "id: clicks\nmax_active_runs: 16\nevents: {max_batch: 100, max_wait: 1s}\ntasks:\n  - id: load\n    image: stevedore/synth:0.1.0\n    args: [read, --file, events.jsonl]\n",
    )
    .unwrap();
    let output = cluster
        .command(&["jobs", "webhook-token", "clicks"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let server_log = std::fs::File::create(cluster.dir.path().join("server.log")).unwrap();
    let mut server = cluster
        .command(&["server", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(server_log)
        .spawn()
        .expect("start the server");
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/api/v1/health")).call().is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.start_registered(&postgres, 2);

    // Each client posts its 100 events: 50 alone, then 5 requests of 10 JSON lines.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (agent, base, token) = (agent.clone(), base.clone(), token.clone());
            std::thread::spawn(move || {
                let url = format!("{base}/api/v1/jobs/clicks/events");
                let event = |i: usize| format!("{{\"client\":{client},\"n\":{i}}}");
                let post = |body: String, content_type: &str| {
                    let reply = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .header("Content-Type", content_type)
                        .send(body)
                        .unwrap();
                    assert_eq!(reply.status().as_u16(), 202);
                };
                for i in 0..PER_CLIENT / 2 {
                    post(event(i), "application/json");
                }
                for chunk in (PER_CLIENT / 2..PER_CLIENT).collect::<Vec<_>>().chunks(10) {
                    let lines: Vec<String> = chunk.iter().map(|i| event(*i)).collect();
                    post(lines.join("\n"), "application/x-ndjson");
                }
            })
        })
        .collect();
    // Kill a scheduler once it has made some runs, and start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while postgres.query("SELECT count(*) FROM runs WHERE job_id = 'clicks'") == "0" {
        assert!(
            Instant::now() < deadline,
            "no run was made{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(0);
    for client in clients {
        client.join().expect("a client");
    }
    cluster.start(0);

    // Every event given to a run, and every run ended.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let waiting = postgres.query("SELECT count(*) FROM job_events WHERE run_id IS NULL");
        let open = postgres.query(
            "SELECT count(*) FROM runs WHERE job_id = 'clicks' AND state NOT IN ('success', 'failed')",
        );
        if waiting == "0" && open == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} events wait, {open} runs open{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop_all();
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(
        postgres.query("SELECT count(*) FROM job_events"),
        (CLIENTS * PER_CLIENT).to_string(),
        "every 202 stored once"
    );
    assert_eq!(
        postgres.query("SELECT count(DISTINCT body) FROM job_events"),
        (CLIENTS * PER_CLIENT).to_string()
    );
    assert_eq!(
        postgres.query("SELECT count(*) FROM runs WHERE job_id = 'clicks' AND state <> 'success'"),
        "0",
        "every run succeeded{}",
        cluster.logs()
    );
    assert_eq!(
        postgres.query(
            "SELECT count(*) FROM (SELECT run_id FROM job_events GROUP BY run_id HAVING count(*) > 100) t"
        ),
        "0",
        "no run over max_batch"
    );
    assert_eq!(
        postgres.query(
            "SELECT count(*) FROM runs r WHERE job_id = 'clicks' AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.run_id = r.run_id)"
        ),
        "0",
        "no run without events"
    );
    // Each run's container read exactly its events, in arrival order.
    let runs = postgres.query("SELECT run_id FROM runs WHERE job_id = 'clicks' ORDER BY run_id");
    let mut read_in_all = 0;
    for run_id in runs.lines() {
        let expected = postgres.query(&format!(
            "SELECT body FROM job_events WHERE run_id = '{run_id}' ORDER BY seq"
        ));
        let output = cluster
            .command(&["tasks", "logs", run_id, "load"])
            .output()
            .unwrap();
        let logs = String::from_utf8_lossy(&output.stdout);
        let read: Vec<&str> = logs
            .lines()
            .filter_map(|line| line.split_once("stdout ").map(|(_, text)| text))
            .map(|text| text.trim_start_matches("read events.jsonl: "))
            .filter(|text| !text.is_empty())
            .collect();
        let expected: Vec<&str> = expected.lines().collect();
        assert_eq!(read, expected, "run {run_id}: {logs}");
        read_in_all += read.len();
    }
    assert_eq!(read_in_all, CLIENTS * PER_CLIENT);
}
