//! The store side of the "year of hourly runs" benchmark (scripts/bench.sh archive, driven
//! by scripts/bench_archive.py): fills a SQLite store through the Store trait, archives
//! every try's log to an artifact store the way the scheduler does, and removes runs with
//! `db clean`'s code, printing what each step took and the store's size.
//!
//! ```text
//! archive_bench seed STORE.db JOBS_DIR RUNS TASKS LINES_PER_TRY BIG_LOG_LINES
//! archive_bench archive STORE.db ARTIFACT_URL [S3_ENDPOINT]
//! archive_bench clean STORE.db ARTIFACT_URL [S3_ENDPOINT] PERCENT
//! ```
//!
//! `seed` makes one job (`bench_hourly`, TASKS tasks in a chain) with RUNS hourly runs that
//! ended, each try printing LINES_PER_TRY lines, and gives the first run's first try
//! BIG_LOG_LINES lines. Tries are written in groups (`Store::write_tries`), as the
//! scheduler's group commit writes them. S3 credentials come from
//! `STEVEDORE_ARTIFACT_STORE_ACCESS_KEY_ID` / `..._SECRET_ACCESS_KEY`.

#[path = "common/fanout.rs"]
mod fanout;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures_util::StreamExt;
use serde_json::{json, Map};
use stevedore_artifacts::{ArtifactStore, StoreSettings};
use stevedore_backend::scripted::ScriptedBackend;
use stevedore_backend::Backend;
use stevedore_domain::job::parse_job;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};
use stevedore_ops::runs::trigger_manual;
use stevedore_scheduler::retention::CleanReport;
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::{
    CleanFilter, FencedWrite, LogLine, LogStream, NewRun, SqliteStore, Store, TryFinish, TryKey,
    TryWrite, TryWritten,
};

fn artifacts(url: &str, endpoint: Option<&String>) -> Result<ArtifactStore, String> {
    ArtifactStore::open(&StoreSettings {
        url: url.to_owned(),
        endpoint: endpoint.cloned(),
        region: endpoint.map(|_| "us-east-1".to_owned()),
        path_style: endpoint.is_some(),
        access_key_id: std::env::var("STEVEDORE_ARTIFACT_STORE_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("STEVEDORE_ARTIFACT_STORE_SECRET_ACCESS_KEY").ok(),
    })
    .map_err(|e| e.to_string())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

async fn write_all(store: &dyn Store, writes: Vec<TryWrite>) -> Result<Vec<TryWritten>, String> {
    let fenced: Vec<FencedWrite> = writes
        .into_iter()
        .map(|write| FencedWrite { write, fence: None })
        .collect();
    store
        .write_tries(&fenced)
        .await
        .into_iter()
        .map(|result| result.map_err(|e| e.to_string()))
        .collect()
}

async fn seed(args: &[String]) -> Result<(), String> {
    let [db, jobs, runs, tasks, lines, big] = args else {
        return Err("seed STORE.db JOBS_DIR RUNS TASKS LINES_PER_TRY BIG_LOG_LINES".into());
    };
    let number = |text: &String| text.parse::<u64>().map_err(|e| format!("{text}: {e}"));
    let (runs, tasks, lines, big) = (number(runs)?, number(tasks)?, number(lines)?, number(big)?);
    std::fs::create_dir_all(jobs).map_err(|e| e.to_string())?;
    // Hourly runs that all ended before today (they are archived and cleaned as past runs,
    // and the clean's cut falls before the runs a scheduler beside it makes now).
    let first = (Utc::now() - TimeDelta::hours(runs as i64 + 48))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .ok_or("midnight")?
        .and_utc();
    let mut text = format!(
        "id: bench_hourly\nschedule: \"@hourly\"\nstart_date: {}\ntasks:\n",
        first.format("%Y-%m-%d")
    );
    for index in 0..tasks {
        text.push_str(&format!(
            "  - id: task_{index:02}\n    image: stevedore/synth:0.1.0\n"
        ));
        if index > 0 {
            text.push_str(&format!("    depends_on: [task_{:02}]\n", index - 1));
        }
    }
    let path = std::path::Path::new(jobs).join("bench_hourly.yaml");
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    let job = parse_job("bench_hourly.yaml", &text).map_err(|e| format!("{e:?}"))?;
    let store = SqliteStore::open(db).await.map_err(|e| e.to_string())?;
    store
        .upsert_job(&job.id, &job.version, &path.display().to_string(), &text)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut written_lines: u64 = 0;
    for index in 0..runs {
        let start = first + TimeDelta::hours(index as i64);
        let run = store
            .create_run(NewRun {
                job_id: job.id.clone(),
                job_version: job.version.clone(),
                trigger: RunTrigger::Scheduled,
                logical_date: start,
                data_interval: DataInterval {
                    start,
                    end: start + TimeDelta::hours(1),
                },
                params: json!({}),
                task_ids: job.tasks.iter().map(|t| t.id.clone()).collect(),
                full_refresh: Vec::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
        store
            .set_run_state(&run.run_id, RunState::Running, start + TimeDelta::hours(1))
            .await
            .map_err(|e| e.to_string())?;
        let begun = start + TimeDelta::hours(1);
        let starts: Vec<TryWrite> = job
            .tasks
            .iter()
            .map(|task| TryWrite::Start {
                key: TryKey {
                    run_id: run.run_id.clone(),
                    task_id: task.id.clone(),
                    try_number: 1,
                },
                backend: "docker".into(),
                image_ref: task.image.clone(),
                at: begun,
            })
            .collect();
        let mut try_ids = Vec::new();
        for written in write_all(&store, starts).await? {
            if let TryWritten::Started { record, .. } = written {
                try_ids.push(record.try_id);
            }
        }
        let mut writes = Vec::new();
        for (position, try_id) in try_ids.iter().enumerate() {
            let count = if index == 0 && position == 0 {
                big
            } else {
                lines
            };
            let mut seq = 0;
            while seq < count as i64 {
                let batch: Vec<LogLine> = (seq..(seq + 5_000).min(count as i64))
                    .map(|n| LogLine {
                        try_id: *try_id,
                        seq: n,
                        stream: if n % 10 == 0 {
                            LogStream::Stderr
                        } else {
                            LogStream::Stdout
                        },
                        timestamp: begun + TimeDelta::milliseconds(n),
                        text: format!(
                            "{n}: fetched page of charges, 100 records, cursor ch_{n:08} <ok>"
                        ),
                    })
                    .collect();
                seq += batch.len() as i64;
                written_lines += batch.len() as u64;
                writes.push(TryWrite::Logs(batch));
                if writes.len() >= 20 {
                    write_all(&store, std::mem::take(&mut writes)).await?;
                }
            }
            writes.push(TryWrite::Finish(TryFinish {
                try_id: *try_id,
                state: TryState::Success,
                ended_at: begun + TimeDelta::minutes(position as i64 + 1),
                exit_code: Some(0),
                failure_reason: None,
                task_state: TaskState::Success,
                next_try_at: None,
                notifications: Vec::new(),
                produces: Vec::new(),
                metrics: vec![("records".into(), 100.0)],
            }));
        }
        write_all(&store, writes).await?;
        store
            .set_run_state(
                &run.run_id,
                RunState::Success,
                begun + TimeDelta::minutes(tasks as i64 + 1),
            )
            .await
            .map_err(|e| e.to_string())?;
        if (index + 1) % 1000 == 0 {
            eprintln!(
                "seeded {} runs, {written_lines} lines, {:.0} s",
                index + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "seeded {runs} runs x {tasks} tasks and {written_lines} log lines in {:.1} s; store {}",
        started.elapsed().as_secs_f64(),
        mb(store.size_bytes().await.map_err(|e| e.to_string())?)
    );
    Ok(())
}

async fn archive(args: &[String]) -> Result<(), String> {
    let (db, url, endpoint) = match args {
        [db, url] => (db, url, None),
        [db, url, endpoint] => (db, url, Some(endpoint)),
        _ => return Err("archive STORE.db ARTIFACT_URL [S3_ENDPOINT]".into()),
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(db).await.map_err(|e| e.to_string())?);
    let artifacts = artifacts(url, endpoint)?;
    let before = store.size_bytes().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (mut tries, mut lines, mut bytes, mut raw) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let due = store
            .logs_to_archive(Utc::now() + TimeDelta::days(1), 200)
            .await
            .map_err(|e| e.to_string())?;
        if due.is_empty() {
            break;
        }
        let done: Vec<_> = futures_util::stream::iter(due)
            .map(|candidate| {
                let (store, artifacts) = (store.clone(), artifacts.clone());
                async move {
                    stevedore_artifacts::logs::archive(
                        store.as_ref(),
                        &artifacts,
                        &candidate,
                        Utc::now(),
                    )
                    .await
                }
            })
            .buffer_unordered(
                std::env::var("BENCH_ARCHIVE_CONCURRENCY")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(32),
            )
            .collect()
            .await;
        for result in done {
            let archived = result.map_err(|e| e.to_string())?;
            tries += 1;
            lines += archived.lines;
            bytes += archived.bytes;
            raw += archived.raw_bytes;
        }
        if tries % 10_000 < 200 {
            eprintln!(
                "archived {tries} tries, {lines} lines, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let took = started.elapsed().as_secs_f64();
    let reclaimed = store.reclaim_space().await.map_err(|e| e.to_string())?;
    let after = store.size_bytes().await.map_err(|e| e.to_string())?;
    println!(
        "archived {tries} tries' logs ({lines} lines, {} of JSON lines as {} of zstd, {:.1}x) in {took:.1} s ({:.0} lines/s); store {} before, {} after{}",
        mb(raw),
        mb(bytes),
        raw as f64 / bytes.max(1) as f64,
        lines as f64 / took.max(0.001),
        mb(before),
        mb(after),
        if reclaimed { "" } else { " (free pages kept for reuse)" }
    );
    Ok(())
}

async fn clean(args: &[String]) -> Result<(), String> {
    let (db, url, endpoint, percent) = match args {
        [db, url, percent] => (db, url, None, percent),
        [db, url, endpoint, percent] => (db, url, Some(endpoint), percent),
        _ => return Err("clean STORE.db ARTIFACT_URL [S3_ENDPOINT] PERCENT".into()),
    };
    let percent: u64 = percent.parse().map_err(|e| format!("{percent}: {e}"))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(db).await.map_err(|e| e.to_string())?);
    let artifacts = artifacts(url, endpoint)?;
    // The year's runs (not the load's, from an earlier try), oldest first.
    let year = CleanFilter {
        job_id: Some("bench_hourly".to_owned()),
        ..Default::default()
    };
    let all = store
        .runs_to_clean(&year, u32::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let cut = all
        .get((all.len() as u64 * percent / 100) as usize)
        .map(|run| run.ended_at)
        .ok_or("no runs")?;
    drop(all);
    let filter = CleanFilter {
        ended_before: Some(cut),
        ..Default::default()
    };

    if std::env::var_os("BENCH_NO_LOAD").is_some() {
        let report = stevedore_scheduler::retention::clean(
            store.as_ref(),
            Some(&artifacts),
            &filter,
            false,
            |_| {},
        )
        .await
        .map_err(|e| e.to_string())?;
        println!("{}", cleaned(&cut, &report));
        return Ok(());
    }
    // A scheduler on the same store, its throughput measured in rounds before, during and
    // after the clean.
    let load = Load::start(store.clone()).await?;
    let mut without = Vec::new();
    for _ in 0..ROUNDS {
        without.push(load.round().await?);
    }
    // The clean as `stevedore db clean` runs it: another process, its own connections.
    let clean_db = db.clone();
    let cleaning = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let store = SqliteStore::open(&clean_db)
                .await
                .map_err(|e| e.to_string())?;
            stevedore_scheduler::retention::clean(&store, Some(&artifacts), &filter, false, |_| {})
                .await
                .map_err(|e| e.to_string())
        })
    });
    let mut during = Vec::new();
    while !cleaning.is_finished() {
        let figure = load.round().await?;
        // Only the rounds that ended with the clean still going.
        if !cleaning.is_finished() {
            during.push(figure);
        }
    }
    let report = cleaning.join().map_err(|_| "the clean panicked")??;
    for _ in 0..ROUNDS {
        without.push(load.round().await?);
    }
    load.stop().await?;
    println!("{}", cleaned(&cut, &report));
    // The store's size after the clean with the load's runs taken out again (they came
    // during the clean).
    let load_runs = CleanFilter {
        job_id: Some("fanout".to_owned()),
        ..Default::default()
    };
    let removed =
        stevedore_scheduler::retention::clean(store.as_ref(), None, &load_runs, false, |_| {})
            .await
            .map_err(|e| e.to_string())?;
    println!(
        "store {} after the clean and the load's {} runs removed again",
        mb(removed.size_after),
        removed.cleaned.runs
    );
    let (base, base_low, base_high) = median_range(&without);
    if during.is_empty() {
        println!(
            "scheduling throughput without a clean {base:.0} task instances/s ({base_low:.0}-{base_high:.0}, {} rounds); the clean ended before a round did",
            without.len()
        );
        return Ok(());
    }
    let (busy, busy_low, busy_high) = median_range(&during);
    println!(
        "scheduling throughput ({LOAD_RUNS} runs x {LOAD_TASKS} task instances a round, instant backend, one scheduler on the same store): without a clean {base:.0} task instances/s ({base_low:.0}-{base_high:.0}, {} rounds before and after), while it runs {busy:.0} ({busy_low:.0}-{busy_high:.0}, {} rounds); ratio {:.2} (target >= 0.8)",
        without.len(),
        during.len(),
        busy / base
    );
    Ok(())
}

fn cleaned(cut: &chrono::DateTime<Utc>, report: &CleanReport) -> String {
    format!(
        "db clean --before {cut}: {} runs, {} tries, {} log rows, {} objects removed in {:.1} s; store {} before, {} after",
        report.cleaned.runs,
        report.cleaned.tries,
        report.cleaned.log_lines,
        report.objects,
        report.took.as_secs_f64(),
        mb(report.size_before),
        mb(report.size_after)
    )
}

/// Rounds of the scheduling load measured before and after the clean (each).
const ROUNDS: usize = 5;
/// Runs of a round, and task instances of each (a fan-out: one, eight, one).
const LOAD_RUNS: usize = 300;
const LOAD_TASKS: usize = 10;

/// One scheduler with an instant backend (every try ends at once) over its own job folder,
/// the benchmark's `fanout` job: what `scripts/bench.sh scheduler` measures, here on the
/// year's store.
struct Load {
    store: Arc<dyn Store>,
    job: stevedore_domain::job::Job,
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
    _jobs: tempfile::TempDir,
}

impl Load {
    async fn start(store: Arc<dyn Store>) -> Result<Load, String> {
        let jobs = tempfile::tempdir().map_err(|e| e.to_string())?;
        let text = format!(
            "id: fanout\nmax_active_runs: {LOAD_RUNS}\nmax_active_tasks: 100000\n{}",
            fanout::fanout_tasks(LOAD_TASKS)
        );
        let path = jobs.path().join("fanout.yaml");
        std::fs::write(&path, &text).map_err(|e| e.to_string())?;
        let job = parse_job("fanout.yaml", &text).map_err(|e| format!("{e:?}"))?;
        store
            .upsert_job(&job.id, &job.version, &path.display().to_string(), &text)
            .await
            .map_err(|e| e.to_string())?;
        store
            .set_pool(&stevedore_store::PoolRecord {
                name: "default".to_owned(),
                slots: 100_000,
                description: "benchmark: no pool limit".to_owned(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut config = SchedulerConfig::new(jobs.path());
        config.tick = Duration::from_millis(200);
        config.sweep_every = Duration::from_secs(3600);
        config.exclusive = true;
        let backend: Arc<dyn Backend> = Arc::new(ScriptedBackend::instant("docker"));
        let scheduler = Scheduler::new(store.clone(), vec![backend], config);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(scheduler.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(Load {
            store,
            job,
            stop,
            running,
            _jobs: jobs,
        })
    }

    /// Task instances a second through `LOAD_RUNS` manual runs, from their trigger to the
    /// last one's end.
    async fn round(&self) -> Result<f64, String> {
        let started = Instant::now();
        let mut runs = Vec::with_capacity(LOAD_RUNS);
        for _ in 0..LOAD_RUNS {
            let run = trigger_manual(self.store.as_ref(), &self.job, &Map::new(), Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            runs.push(run.run_id);
        }
        // The runs end in about the order they began: wait for each in turn.
        for run_id in &runs {
            loop {
                let run = self
                    .store
                    .get_run(run_id)
                    .await
                    .map_err(|e| e.to_string())?;
                if run.state.is_finished() {
                    if run.state != RunState::Success {
                        return Err(format!("run {run_id} ended {}", run.state));
                    }
                    break;
                }
                if started.elapsed() > Duration::from_secs(600) {
                    return Err("a round's runs did not end in 10 minutes".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok((LOAD_RUNS * LOAD_TASKS) as f64 / started.elapsed().as_secs_f64())
    }

    async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.running
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Median, lowest and highest of `figures` (not empty).
fn median_range(figures: &[f64]) -> (f64, f64, f64) {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("seed") => seed(&args[1..]).await,
        Some("archive") => archive(&args[1..]).await,
        Some("clean") => clean(&args[1..]).await,
        _ => Err("archive_bench seed|archive|clean ...".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("archive_bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
