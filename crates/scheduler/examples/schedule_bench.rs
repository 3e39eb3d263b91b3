//! Scheduling throughput with an instant backend (`ScriptedBackend::instant`: every try completes at once): how many
//! task instances N schedulers take from `none` to `success` per second, over 1,000 runs of
//! a 10-task fan-out job created up front. Run by `scripts/bench.sh scheduler`.
//!
//! `cargo run --release -p stevedore-scheduler --example schedule_bench -- STORE [N] [DELAY_MS]`
//! where STORE is a SQLite path or a `postgres://` URL (N > 1 needs PostgreSQL); each
//! scheduler has its own connection pool, as separate processes would. With DELAY_MS, the
//! schedulers reach PostgreSQL through a proxy that holds every packet that long in each
//! direction, as a database on another machine would be (the store's own setup and the
//! clock's checks go direct).
//!
//! With `STEVEDORE_BENCH_ALERTS=failures`, the job and every task have the rules teams
//! write (`failure` and `retry`, to a webhook): the runs succeed, so they cost their
//! evaluation and no event. With `STEVEDORE_BENCH_ALERTS=all`, the rules hear `success`
//! too: 11 events a run (11,000 in all), made in the transactions of the tries' and runs'
//! ends and delivered in the background to a receiver on 127.0.0.1. It prints the
//! scheduling throughput as without, then how fast the events were delivered and how long
//! after it happened each one reached the receiver (issue 17).
//!
//! With `STEVEDORE_BENCH_SHAPE=wide`, the job is `t0` then 1,000 tasks after it, over
//! 20 runs; with `STEVEDORE_BENCH_SHAPE=mapped`, `t0` publishes a list of 1,000 accounts
//! and one task mapped over it expands at run time into as many instances, over 20 runs: the
//! cost of mapping against the same work written out (issue 19).

#[path = "common/fanout.rs"]
mod fanout;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Map;
use stevedore_backend::scripted::ScriptedBackend;
use stevedore_backend::Backend;
use stevedore_domain::job::parse_job;
use stevedore_domain::state::RunState;
use stevedore_ops::runs::trigger_manual;
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::{PostgresStore, SqliteStore, Store};

/// Runs and task instances per run of the default shape (a 10-task fan-out).
const FANOUT: (usize, usize) = (1_000, 10);
/// Runs and task instances per run of the `wide` and `mapped` shapes.
const WIDE: (usize, usize) = (20, 1_001);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RUST_LOG=stevedore_scheduler=debug shows each pass and each group of writes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let target = std::env::args()
        .nth(1)
        .ok_or("usage: schedule_bench STORE [SCHEDULERS]")?;
    let schedulers: usize = std::env::args()
        .nth(2)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1);
    let delay_ms: Option<f64> = std::env::args().nth(3).map(|n| n.parse()).transpose()?;
    if schedulers > 1 && !target.starts_with("postgres://") {
        return Err("several schedulers need a PostgreSQL store".into());
    }
    if delay_ms.is_some() && !target.starts_with("postgres://") {
        return Err("a delay needs a PostgreSQL store".into());
    }
    let dir = tempfile::tempdir()?;
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs)?;
    let mode = std::env::var("STEVEDORE_BENCH_ALERTS").unwrap_or_default();
    let rules = match mode.as_str() {
        "" => "",
        "failures" => "notify:\n  - {on: [failure, repeated_failure], connection: bench}\ndefaults:\n  notify:\n    - {on: [failure, retry], connection: bench}\n",
        "all" => "notify:\n  - {on: [success, failure], connection: bench}\ndefaults:\n  notify:\n    - {on: [success, failure, retry], connection: bench}\n",
        other => return Err(format!("STEVEDORE_BENCH_ALERTS `{other}`: failures or all").into()),
    };
    let alerts = !rules.is_empty();

    let shape = std::env::var("STEVEDORE_BENCH_SHAPE").unwrap_or_default();
    let (runs, tasks) = match shape.as_str() {
        "" => FANOUT,
        "wide" | "mapped" => WIDE,
        other => return Err(format!("STEVEDORE_BENCH_SHAPE `{other}`: wide or mapped").into()),
    };
    // In the `mapped` shape, t0 lists the 1,000 items the mapped task expands to.
    let t0_args = if shape == "mapped" {
        format!("    args: [list, --count, {}]\n", tasks - 1)
    } else {
        String::new()
    };
    let mut text =
        format!("id: fanout\nmax_active_runs: {runs}\nmax_active_tasks: 100000\n{rules}");
    if shape.is_empty() {
        // A fan-out: t0, then t1..t8 in parallel, then t9.
        text.push_str(&fanout::fanout_tasks(tasks));
    } else {
        text.push_str(&format!(
            "tasks:\n  - id: t0\n    image: stevedore/synth:0.1.0\n{t0_args}"
        ));
    }
    match shape.as_str() {
        "" => {}
        "wide" => {
            // The same work as the mapped shape, written out: each task its account.
            for index in 1..tasks {
                text.push_str(&format!(
                    "  - id: t{index}\n    image: stevedore/synth:0.1.0\n    depends_on: [t0]\n    args: [noop, --account, acct_{index}]\n"
                ));
            }
        }
        _ => text.push_str(
            "  - id: each\n    image: stevedore/synth:0.1.0\n    depends_on: [t0]\n    for_each: \"{{ outputs.t0.accounts }}\"\n    args: [noop, --account, \"{{ item.id }}\"]\n",
        ),
    }
    std::fs::write(jobs.join("fanout.yaml"), &text)?;
    let job = parse_job("fanout.yaml", &text).map_err(|e| format!("{e:?}"))?;

    let store: Arc<dyn Store> = if target.starts_with("postgres://") {
        Arc::new(PostgresStore::open(&target).await?)
    } else {
        Arc::new(SqliteStore::open(&target).await?)
    };
    store
        .upsert_job(
            &job.id,
            &job.version,
            &jobs.join("fanout.yaml").display().to_string(),
            &text,
        )
        .await?;
    // The default pool's 128 slots would cap the tries in flight: the benchmark measures the
    // scheduler, not a pool limit.
    store
        .set_pool(&stevedore_store::PoolRecord {
            name: "default".to_owned(),
            slots: 100_000,
            description: "benchmark: no pool limit".to_owned(),
        })
        .await?;
    let expected_events = if mode == "all" { runs * (tasks + 1) } else { 0 };
    for _ in 0..runs {
        trigger_manual(store.as_ref(), &job, &Map::new(), Utc::now()).await?;
    }
    let mut config = SchedulerConfig::new(&jobs);
    let receiver = if alerts {
        let receiver =
            stevedore_testkit::Receiver::start(stevedore_testkit::ReceiverKind::Webhook).await;
        let key = stevedore_store::secrets::SecretKey::generate()?;
        let values =
            std::collections::BTreeMap::from([("WEBHOOK_URL".to_owned(), receiver.url.clone())]);
        stevedore_ops::connections::put(store.as_ref(), &key, "bench", &values, "")
            .await
            .map_err(|e| e.to_string())?;
        config.secret_key = Some(key);
        Some(receiver)
    } else {
        None
    };
    config.tick = Duration::from_millis(200);
    config.sweep_every = Duration::from_secs(3600);
    config.exclusive = schedulers == 1 && !target.starts_with("postgres://");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The schedulers' address of the database: direct, or through the delaying proxy.
    let mut link = String::new();
    let scheduler_target = match delay_ms {
        Some(ms) => {
            let (through, round_trip) =
                delayed(&target, Duration::from_secs_f64(ms / 1000.0)).await?;
            link = format!(", {round_trip:.1} ms round trip to the database");
            through
        }
        None => target.clone(),
    };
    let mut instances = Vec::new();
    for _ in 0..schedulers {
        let own: Arc<dyn Store> = if target.starts_with("postgres://") {
            Arc::new(PostgresStore::open(&scheduler_target).await?)
        } else {
            store.clone()
        };
        let backend: Arc<dyn Backend> = Arc::new(ScriptedBackend::instant("docker"));
        instances.push(Scheduler::new(own, vec![backend], config.clone()));
    }
    let cpu_before = cpu_times();
    let started = Instant::now();
    let mut running = Vec::new();
    for scheduler in instances {
        let mut stop_rx = stop_rx.clone();
        running.push(tokio::spawn(scheduler.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })));
    }
    loop {
        let counts = store.state_counts().await?;
        let finished: i64 = counts
            .runs
            .iter()
            .filter(|(state, _)| state.is_finished())
            .map(|(_, n)| n)
            .sum();
        if finished as usize >= runs {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err("the runs did not finish in 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_times();
    let succeeded_now = store
        .state_counts()
        .await?
        .runs
        .iter()
        .find(|(state, _)| *state == RunState::Success)
        .map_or(0, |(_, n)| *n);
    let kind = if target.starts_with("postgres://") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    // How busy the machine's cores were while the clock ran (every process: the schedulers
    // and the database server share them).
    let busy = match (cpu_before, cpu_after) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            format!(
                ", cores {:.0}% busy",
                100.0 * (busy1 - busy0) as f64 / (total1 - total0) as f64
            )
        }
        _ => String::new(),
    };
    println!(
        "{kind}, {schedulers} scheduler(s){}{}: {runs} runs × {tasks} task instances in {elapsed:.2}s = {:.0} task instances/s ({succeeded_now} runs succeeded{busy}{link})",
        match mode.as_str() {
            "failures" => " with failure rules",
            "all" => " with rules on every event",
            _ => "",
        },
        match shape.as_str() {
            "wide" => ", 1,000 tasks after one",
            "mapped" => ", 1,000 instances of one mapped task",
            _ => "",
        },
        (runs * tasks) as f64 / elapsed
    );
    // The events go on being delivered after the last run ended: wait for every one.
    let delivery = match receiver.as_ref().filter(|_| expected_events > 0) {
        Some(receiver) => {
            let expected = expected_events;
            let received = receiver
                .wait_for(expected, Duration::from_secs(600))
                .await
                .len();
            let all_delivered = started.elapsed().as_secs_f64();
            let listed = store
                .list_notifications(&stevedore_store::NotificationFilter {
                    limit: (expected * 2) as u32,
                    ..Default::default()
                })
                .await?;
            let mut latencies: Vec<f64> = listed
                .iter()
                .filter_map(|n| Some((n.delivered_at? - n.occurred_at).as_seconds_f64() * 1000.0))
                .collect();
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| {
                latencies
                    .get(((latencies.len() as f64 - 1.0) * q) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            let first = listed.iter().map(|n| n.occurred_at).min();
            let last = listed.iter().filter_map(|n| n.delivered_at).max();
            let span = match (first, last) {
                (Some(first), Some(last)) => (last - first).as_seconds_f64(),
                _ => f64::NAN,
            };
            format!(
                "alerts: {} events made, {received} received in {all_delivered:.2}s from the start; {:.0} events/s delivered (first made to last delivered {span:.2}s); latency made -> delivered: median {:.0} ms, p95 {:.0} ms, max {:.0} ms",
                listed.len(),
                listed.len() as f64 / span,
                at(0.5),
                at(0.95),
                at(1.0),
            )
        }
        None => String::new(),
    };
    if !delivery.is_empty() {
        println!("{}", delivery.trim_start());
    }
    let _ = stop_tx.send(true);
    for scheduler in running {
        scheduler.await??;
    }
    let counts = store.state_counts().await?;
    let succeeded = counts
        .runs
        .iter()
        .find(|(state, _)| *state == RunState::Success)
        .map_or(0, |(_, n)| *n);
    if succeeded as usize != runs {
        return Err(format!("{} runs did not succeed", runs - succeeded as usize).into());
    }
    Ok(())
}

/// `(busy, total)` jiffies of all cores since boot, from `/proc/stat` (idle and iowait are
/// not busy).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// `url` (a `postgres://` URL on 127.0.0.1) reached through a local TCP proxy that holds
/// every chunk `one_way` in each direction, and the round trip of a `SELECT 1` through it, in
/// milliseconds. The proxy runs on threads of its own that sleep with the kernel's
/// high-resolution timers: tokio's timer, with millisecond ticks, held a chunk for 4 ms or
/// more on this machine whatever the delay asked.
async fn delayed(
    url: &str,
    one_way: Duration,
) -> Result<(String, f64), Box<dyn std::error::Error>> {
    let (head, rest) = url.split_once('@').ok_or("the URL has no user@")?;
    let (host_port, path) = rest.split_once('/').ok_or("the URL has no database")?;
    let upstream: std::net::SocketAddr = host_port.parse()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let proxy = listener.local_addr()?;
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(upstream) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            for (from, to) in [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ] {
                if let (Ok(from), Ok(to)) = (from, to) {
                    hold_and_pass(from, to, one_way);
                }
            }
        }
    });
    let through = format!("{head}@{proxy}/{path}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&through)
        .await?;
    // The simple query protocol: one round trip per query.
    sqlx::raw_sql("SELECT 1").execute(&pool).await?;
    let timed = Instant::now();
    for _ in 0..50 {
        sqlx::raw_sql("SELECT 1").execute(&pool).await?;
    }
    let round_trip = timed.elapsed().as_secs_f64() * 1000.0 / 50.0;
    pool.close().await;
    Ok((through, round_trip))
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, in order (two threads).
fn hold_and_pass(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (held, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer) {
            if read == 0
                || held
                    .send((Instant::now() + delay, buffer[..read].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, bytes)) = due.recv() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
