//! Fills a store for the UI benchmark (scripts/bench.sh ui): one job (`bench_grid`) of 20
//! tasks with 1,000 finished runs, 9,000 runs of a one-task job, and one try whose log has
//! 100,000 lines. Writes through the Store trait, as the scheduler does.
//!
//! `cargo run --release -p stevedore-server --example seed_bench -- STORE.db JOBS_DIR`

use std::time::Instant;

use chrono::{TimeDelta, TimeZone, Utc};
use serde_json::json;
use stevedore_domain::job::parse_job;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};
use stevedore_store::{LogLine, LogStream, NewRun, SqliteStore, Store, TryFinish, TryKey};

const GRID_RUNS: usize = 1_000;
const OTHER_RUNS: usize = 9_000;
const TASKS: usize = 20;
const LOG_LINES: i64 = 100_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (db, jobs) = match (args.get(1), args.get(2)) {
        (Some(db), Some(jobs)) => (db.clone(), std::path::PathBuf::from(jobs)),
        _ => return Err("usage: seed_bench STORE.db JOBS_DIR".into()),
    };
    std::fs::create_dir_all(&jobs)?;
    let mut grid = String::from("id: bench_grid\ndescription: 20 tasks, 1000 runs\nschedule: \"@daily\"\nstart_date: 2020-01-01\ntasks:\n");
    for index in 0..TASKS {
        grid.push_str(&format!(
            "  - id: task_{index:02}\n    image: stevedore/synth:0.1.0\n"
        ));
        if index > 0 {
            grid.push_str(&format!("    depends_on: [task_{:02}]\n", (index - 1) / 2));
        }
    }
    let small = "id: bench_small\nschedule: \"@hourly\"\nstart_date: 2020-01-01\ntasks:\n  - id: only\n    image: stevedore/synth:0.1.0\n";
    let store = SqliteStore::open(&db).await?;
    let started = Instant::now();
    let mut log_try = None;
    for (file, text, runs) in [
        ("bench_grid.yaml", grid.as_str(), GRID_RUNS),
        ("bench_small.yaml", small, OTHER_RUNS),
    ] {
        let path = jobs.join(file);
        std::fs::write(&path, text)?;
        let job = parse_job(file, text).map_err(|e| format!("{e:?}"))?;
        store
            .upsert_job(&job.id, &job.version, &path.display().to_string(), text)
            .await?;
        let step = if runs == GRID_RUNS {
            TimeDelta::days(1)
        } else {
            TimeDelta::hours(1)
        };
        let first = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        for index in 0..runs {
            let start = first + step * index as i32;
            let run = store
                .create_run(NewRun {
                    job_id: job.id.clone(),
                    job_version: job.version.clone(),
                    trigger: RunTrigger::Scheduled,
                    logical_date: start,
                    data_interval: DataInterval {
                        start,
                        end: start + step,
                    },
                    params: json!({}),
                    task_ids: job.tasks.iter().map(|t| t.id.clone()).collect(),
                    full_refresh: Vec::new(),
                })
                .await?;
            store
                .set_run_state(&run.run_id, RunState::Running, Utc::now())
                .await?;
            // Every twentieth run of the grid job failed in one task, as real grids do.
            let failing = runs == GRID_RUNS && index % 20 == 7;
            for (position, task) in job.tasks.iter().enumerate() {
                let key = TryKey {
                    run_id: run.run_id.clone(),
                    task_id: task.id.clone(),
                    try_number: 1,
                };
                let attempt = store
                    .start_try(&key, "docker", &task.image, Utc::now())
                    .await?;
                let failed = failing && position == 3;
                store
                    .finish_try(&TryFinish {
                        try_id: attempt.try_id,
                        state: if failed {
                            TryState::Failed
                        } else {
                            TryState::Success
                        },
                        ended_at: Utc::now(),
                        exit_code: Some(if failed { 1 } else { 0 }),
                        failure_reason: failed.then(|| "exit_code: 1".to_owned()),
                        task_state: if failed {
                            TaskState::Failed
                        } else {
                            TaskState::Success
                        },
                        next_try_at: None,
                        notifications: Vec::new(),
                        produces: Vec::new(),
                        metrics: Vec::new(),
                    })
                    .await?;
                if log_try.is_none() {
                    log_try = Some(attempt.try_id);
                }
            }
            let state = if failing {
                RunState::Failed
            } else {
                RunState::Success
            };
            store.set_run_state(&run.run_id, state, Utc::now()).await?;
        }
    }
    // One try with a long log.
    let try_id = log_try.ok_or("no try")?;
    let mut seq = 0;
    while seq < LOG_LINES {
        let lines: Vec<LogLine> = (seq..(seq + 5_000).min(LOG_LINES))
            .map(|n| LogLine {
                try_id,
                seq: n,
                stream: if n % 10 == 0 {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
                timestamp: Utc::now(),
                text: format!("line {n}: <record id={n}> loaded & checked"),
            })
            .collect();
        seq += lines.len() as i64;
        store.append_logs(&lines).await?;
    }
    let runs = store.list_runs(&Default::default()).await?.len();
    println!("seeded {runs} runs ({GRID_RUNS} of bench_grid × {TASKS} tasks), a {LOG_LINES}-line log, in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
