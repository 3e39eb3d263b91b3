//! The store-facing commands: scheduler, jobs, runs, tasks, db.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use chrono::Utc;
use serde_json::{json, Map, Value};
use stevedore_backend::ProcessBackend;
use stevedore_domain::job::{parse_date, Job};
use stevedore_domain::protocol::rfc3339;
use stevedore_domain::schedule::Schedule;
use stevedore_domain::state::RunState;
use stevedore_ops::actions;
use stevedore_ops::jobs_dir::{load_job_file, load_jobs_dir};
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::secrets::SecretKey;
use stevedore_store::{RunFilter, RunRecord, SqliteStore, Store, TryRecord};

use crate::output::{duration, print_json, time, Format, Table};
use crate::settings::{is_postgres, store_path, Settings as Global};
use crate::{
    ConnectionsCommand, JobsCommand, PoolsCommand, RunsCommand, TasksCommand, TokensCommand,
};

/// Opens the store named by `--db`: a path, `sqlite://path`, or `postgres://...`.
pub async fn open_store(db: &str) -> anyhow::Result<Arc<dyn Store>> {
    if is_postgres(db) {
        let store = stevedore_store::PostgresStore::open(db)
            .await
            .context("cannot open the PostgreSQL store (--db)")?;
        return Ok(Arc::new(store));
    }
    let path = store_path(db);
    let store = SqliteStore::open(path)
        .await
        .with_context(|| format!("cannot open the store at {}", path.display()))?;
    Ok(Arc::new(store))
}

/// Opens a PostgreSQL store for a long-running process: a database that is restarting or
/// not reachable yet is tried again with backoff for up to two minutes (a wrong password or
/// address fails at once).
async fn open_postgres_patiently(db: &str) -> anyhow::Result<Arc<dyn Store>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(250);
    loop {
        match stevedore_store::PostgresStore::open(db).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(error) if error.is_transient() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "the PostgreSQL store cannot be opened yet; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error).context("cannot open the PostgreSQL store (--db)"),
        }
    }
}

/// Opens the store for a scheduler. A SQLite store allows one scheduler: its lock is taken
/// (a second scheduler refuses to start); PostgreSQL allows several, which share the runs
/// by claims (`None`).
async fn open_for_scheduler(
    db: &str,
) -> anyhow::Result<(Arc<dyn Store>, Option<Box<dyn std::any::Any + Send>>)> {
    if is_postgres(db) {
        return Ok((open_postgres_patiently(db).await?, None));
    }
    let lock = SqliteStore::lock_scheduler(store_path(db))?;
    Ok((open_store(db).await?, Some(Box::new(lock))))
}

pub async fn migrate(global: &Global) -> anyhow::Result<ExitCode> {
    open_store(&global.db).await?;
    println!("store {} is up to date", global.db);
    Ok(ExitCode::SUCCESS)
}

/// What `serve` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// Scheduler and server in one process, for a laptop: the `process` backend is on
    /// unless the settings turn it off.
    Standalone,
    /// The scheduler alone: the `process` backend only when the settings turn it on.
    Scheduler,
    /// The server alone.
    Server,
}

/// Runs the scheduler, the server or both on one store until Ctrl-C or SIGTERM.
pub async fn serve(global: &Global, what: Serve) -> anyhow::Result<ExitCode> {
    let with_scheduler = what != Serve::Server;
    // A scheduler on SQLite holds its store's scheduler lock for as long as it runs.
    let (store, lock) = if with_scheduler {
        open_for_scheduler(&global.db).await?
    } else {
        let store = if is_postgres(&global.db) {
            open_postgres_patiently(&global.db).await?
        } else {
            open_store(&global.db).await?
        };
        (store, None)
    };
    let exclusive = lock.is_some();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let signals = tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });

    let server = match what {
        Serve::Standalone | Serve::Server => {
            let address = std::net::SocketAddr::new(global.bind, global.port);
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (--bind, --port)"))?;
            let address = listener.local_addr()?;
            let secret_key = SecretKey::load(&global.secret_key, false).ok();
            let state =
                stevedore_server::AppState::new(store.clone(), global.jobs.clone(), secret_key);
            tracing::info!(url = %format!("http://{address}/"), api = %format!("http://{address}/api/v1"), "server listening");
            eprintln!("stevedore: web UI at http://{address}/ and API at http://{address}/api/v1 (log in with a token: stevedore tokens create NAME --role ROLE)");
            Some(tokio::spawn(stevedore_server::serve(
                listener,
                state,
                stopped(),
            )))
        }
        Serve::Scheduler => None,
    };
    if with_scheduler {
        let process = global.process_backend.unwrap_or(what == Serve::Standalone);
        scheduler(global, store, exclusive, process, stopped()).await?;
    } else {
        stopped().await;
    }
    if let Some(server) = server {
        // Open log follows end with their tries; do not wait on them for ever.
        let abort = server.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(error))) => tracing::warn!(error = %error, "server ended with an error"),
            Err(_) => abort.abort(),
            _ => {}
        }
    }
    signals.abort();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn scheduler(
    global: &Global,
    store: Arc<dyn Store>,
    exclusive: bool,
    with_process_backend: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // One Docker engine (`docker_host`), or several with capacities and labels.
    let backend: Arc<dyn stevedore_backend::Backend> = match &global.docker_hosts {
        Some(hosts) => {
            let names: Vec<String> = hosts
                .iter()
                .map(|h| format!("{} ({})", h.name, h.endpoint))
                .collect();
            tracing::info!(db = %global.db, jobs = %global.jobs.display(), docker_hosts = %names.join(", "), "scheduler starting");
            Arc::new(stevedore_backend::docker_hosts::DockerHosts::new(
                hosts.clone(),
                global.host_lost_after,
            )?)
        }
        None => {
            let backend = global.docker()?;
            tracing::info!(db = %global.db, jobs = %global.jobs.display(), docker = backend.endpoint(), "scheduler starting");
            Arc::new(backend)
        }
    };
    let mut backends: Vec<Arc<dyn stevedore_backend::Backend>> = vec![backend];
    // Local processes run as the scheduler's own user, outside any container: for
    // development (on in `standalone`), only on request in a `scheduler`.
    if with_process_backend {
        let process = ProcessBackend::new(&global.process_dir);
        tracing::info!(dir = %global.process_dir.display(), "process backend enabled");
        backends.push(Arc::new(process));
    }
    // A Nomad cluster, when one is configured (`nomad_addr`).
    if let Some(config) = &global.nomad {
        let nomad = stevedore_backend::NomadBackend::new(config.clone())?;
        tracing::info!(nomad = nomad.address(), "nomad backend configured");
        backends.push(Arc::new(nomad));
    }
    let mut config = SchedulerConfig::new(&global.jobs);
    config.pools_file = Some(global.pools.clone());
    config.exclusive = exclusive;
    config.limits = global.limits;
    config.try_defaults = global.try_defaults.clone();
    for (value, setting) in [
        (global.workspace_retention, &mut config.workspace_retention),
        (
            global.workspace_sweep_every,
            &mut config.workspace_sweep_every,
        ),
        (global.heartbeat_every, &mut config.heartbeat_every),
        (global.lease, &mut config.lease),
        (global.shutdown_grace, &mut config.shutdown_grace),
    ] {
        if let Some(value) = value {
            *setting = value;
        }
    }
    if config.lease <= config.heartbeat_every {
        return Err(anyhow!(
            "lease ({:?}) must be longer than heartbeat_every ({:?})",
            config.lease,
            config.heartbeat_every
        ));
    }
    config.secret_key = match SecretKey::load(&global.secret_key, false) {
        Ok(key) => Some(key),
        Err(message) => {
            tracing::info!(reason = %message, "no secret key: tasks that use connections will fail");
            None
        }
    };
    let scheduler = Scheduler::new(store, backends, config);
    scheduler.run(shutdown).await?;
    Ok(())
}

pub async fn schedulers(global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    let schedulers = store.list_schedulers().await?;
    if global.output == Format::Json {
        print_json(&Value::Array(
            schedulers
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "host": s.host,
                        "pid": s.pid,
                        "started_at": precise(s.started_at),
                        "heartbeat_at": precise(s.heartbeat_at),
                        "runs": s.runs,
                    })
                })
                .collect(),
        ));
    } else {
        let mut table = Table::new(&["SCHEDULER", "HOST", "PID", "STARTED", "HEARTBEAT", "RUNS"]);
        for s in &schedulers {
            table.row(vec![
                s.id.clone(),
                s.host.clone(),
                s.pid.to_string(),
                time(Some(s.started_at)),
                precise(s.heartbeat_at),
                s.runs.to_string(),
            ]);
        }
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tokens(global: &Global, command: TokensCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        TokensCommand::Create { name, role } => {
            let role: stevedore_domain::role::Role =
                role.parse().map_err(|e: String| anyhow!(e))?;
            let (token, hash) = stevedore_server::auth::new_token().map_err(|e| anyhow!(e))?;
            store.create_token(&name, role, &hash).await?;
            if global.output == Format::Json {
                print_json(&json!({"name": name, "role": role.as_str(), "token": token}));
            } else {
                eprintln!("token {name} ({role}); it is shown this once:");
                println!("{token}");
            }
        }
        TokensCommand::List => {
            let tokens = store.list_tokens().await?;
            if global.output == Format::Json {
                print_json(&Value::Array(
                    tokens
                        .iter()
                        .map(|t| {
                            json!({
                                "name": t.name,
                                "role": t.role.as_str(),
                                "created_at": precise(t.created_at),
                                "last_used_at": t.last_used_at.map(precise),
                                "revoked_at": t.revoked_at.map(precise),
                            })
                        })
                        .collect(),
                ));
            } else {
                let mut table = Table::new(&["TOKEN", "ROLE", "CREATED", "LAST USED", "REVOKED"]);
                for t in &tokens {
                    table.row(vec![
                        t.name.clone(),
                        t.role.to_string(),
                        time(Some(t.created_at)),
                        time(t.last_used_at),
                        time(t.revoked_at),
                    ]);
                }
                table.print();
            }
        }
        TokensCommand::Revoke { name } => {
            store.revoke_token(&name).await?;
            println!("token {name} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Event times in JSON, as every view writes them (`stevedore_ops::views::time`).
fn precise(time: chrono::DateTime<Utc>) -> String {
    stevedore_ops::views::time(time)
}

fn parse_param(text: &str) -> anyhow::Result<(String, Value)> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("--param `{text}` must look like key=value"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn run_json(run: &RunRecord) -> Value {
    serde_json::to_value(stevedore_ops::views::RunView::from(run)).unwrap_or_default()
}

/// Loads one job by id from the jobs folder, with its file errors when it is invalid.
fn load_job(jobs_dir: &Path, job_id: &str) -> anyhow::Result<(Arc<Job>, String, String)> {
    Ok(actions::load_job(jobs_dir, job_id)?)
}

pub async fn jobs(global: &Global, command: JobsCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::Validate { path } => {
            let path = path.unwrap_or_else(|| global.jobs.clone());
            let (jobs, errors) = if path.is_dir() {
                let found = load_jobs_dir(&path);
                (
                    found.jobs.into_iter().map(|l| l.job).collect::<Vec<_>>(),
                    found.errors,
                )
            } else {
                match load_job_file(&path) {
                    Ok(loaded) => (vec![loaded.job], Vec::new()),
                    Err(errors) => (Vec::new(), errors),
                }
            };
            if global.output == Format::Json {
                print_json(&json!({
                    "valid": jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
                    "errors": errors.iter().map(|e| json!({"file": e.file, "line": e.line, "message": e.message})).collect::<Vec<_>>(),
                }));
            } else {
                for error in &errors {
                    eprintln!("{error}");
                }
                println!("{} valid job(s), {} error(s)", jobs.len(), errors.len());
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JobsCommand::List => {
            let store = open_store(&global.db).await?;
            let found = load_jobs_dir(&global.jobs);
            let records = store.list_jobs().await?;
            let mut rows = Vec::new();
            for loaded in &found.jobs {
                let job = &loaded.job;
                let paused = records
                    .iter()
                    .find(|r| r.job_id == job.id)
                    .is_some_and(|r| r.paused);
                let last = store
                    .list_runs(&RunFilter {
                        job_id: Some(job.id.clone()),
                        limit: Some(1),
                        ..Default::default()
                    })
                    .await?;
                rows.push((
                    job.clone(),
                    loaded.path.display().to_string(),
                    paused,
                    last.into_iter().next(),
                ));
            }
            if global.output == Format::Json {
                print_json(&Value::Array(
                    rows.iter()
                        .map(|(job, path, paused, last)| {
                            json!({
                                "job_id": job.id,
                                "file": path,
                                "schedule": job.timetable.schedule.expression(),
                                "timezone": job.timetable.timezone.name(),
                                "tasks": job.tasks.len(),
                                "paused": paused,
                                "version": job.version,
                                "last_run": last.as_ref().map(run_json),
                            })
                        })
                        .collect(),
                ));
            } else {
                let mut table = Table::new(&[
                    "JOB", "SCHEDULE", "TIMEZONE", "TASKS", "PAUSED", "LAST RUN", "STATE",
                ]);
                for (job, _, paused, last) in &rows {
                    table.row(vec![
                        job.id.clone(),
                        job.timetable
                            .schedule
                            .expression()
                            .unwrap_or("manual")
                            .to_owned(),
                        job.timetable.timezone.name().to_owned(),
                        job.tasks.len().to_string(),
                        paused.to_string(),
                        last.as_ref()
                            .map(|r| r.run_id.clone())
                            .unwrap_or_else(|| "-".into()),
                        last.as_ref()
                            .map(|r| r.state.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                table.print();
            }
            for problem in &found.errors {
                eprintln!("invalid: {problem}");
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Trigger { job, params, wait } => {
            let overrides: Map<String, Value> = params
                .iter()
                .map(|p| parse_param(p))
                .collect::<anyhow::Result<_>>()?;
            let store = open_store(&global.db).await?;
            let mut run = actions::trigger(store.as_ref(), &global.jobs, &job, &overrides).await?;
            if global.output == Format::Table {
                println!("{}", run.run_id);
            }
            if wait {
                while !run.state.is_finished() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    run = store.get_run(&run.run_id).await?;
                }
                if global.output == Format::Table {
                    println!("run {} {}", run.run_id, run.state);
                }
            }
            if global.output == Format::Json {
                print_json(&run_json(&run));
            }
            Ok(if run.state == RunState::Failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        JobsCommand::Backfill {
            job,
            from,
            to,
            rerun_failed,
            wait,
        } => backfill(global, &job, &from, &to, rerun_failed, wait).await,
        JobsCommand::Next { job, count, from } => {
            let (job, _, _) = load_job(&global.jobs, &job)?;
            let timetable = &job.timetable;
            if matches!(timetable.schedule, Schedule::Manual) {
                bail!(
                    "job `{}` has no schedule: it runs only when triggered",
                    job.id
                );
            }
            let from = match from {
                Some(text) => {
                    parse_date(&text, timetable.timezone).map_err(|e| anyhow!("--from {e}"))?
                }
                None => timetable.start_date.unwrap_or_else(Utc::now),
            };
            let intervals = timetable.intervals_from(from, count);
            if global.output == Format::Json {
                print_json(&Value::Array(
                    intervals
                        .iter()
                        .map(|i| json!({"start": rfc3339(i.start), "end": rfc3339(i.end)}))
                        .collect(),
                ));
            } else {
                let mut table = Table::new(&["START (UTC)", "END (UTC)", "START (LOCAL)"]);
                for interval in &intervals {
                    let local = interval.start.with_timezone(&timetable.timezone);
                    table.row(vec![
                        rfc3339(interval.start),
                        rfc3339(interval.end),
                        format!(
                            "{} {}",
                            local.format("%Y-%m-%d %H:%M %Z"),
                            timetable.timezone.name()
                        ),
                    ]);
                }
                table.print();
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Pause { job } => set_paused(global, &job, true).await,
        JobsCommand::Unpause { job } => set_paused(global, &job, false).await,
    }
}

async fn set_paused(global: &Global, job_id: &str, paused: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    actions::set_paused(store.as_ref(), &global.jobs, job_id, paused).await?;
    println!(
        "job {job_id} {}",
        if paused { "paused" } else { "unpaused" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn runs(global: &Global, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        RunsCommand::List { job, limit } => {
            let runs = store
                .list_runs(&RunFilter {
                    job_id: job,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            if global.output == Format::Json {
                print_json(&Value::Array(runs.iter().map(run_json).collect()));
            } else {
                let mut table = Table::new(&[
                    "RUN",
                    "JOB",
                    "TRIGGER",
                    "LOGICAL DATE",
                    "STATE",
                    "STARTED",
                    "DURATION",
                ]);
                for run in &runs {
                    table.row(vec![
                        run.run_id.clone(),
                        run.job_id.clone(),
                        run.trigger.to_string(),
                        rfc3339(run.logical_date),
                        run.state.to_string(),
                        time(run.started_at),
                        duration(run.started_at, run.ended_at),
                    ]);
                }
                table.print();
            }
        }
        RunsCommand::Show { run } => {
            let run = store.find_run(&run).await?;
            let instances = store.task_instances(&run.run_id).await?;
            let mut details = Vec::new();
            for ti in &instances {
                let tries = store.tries(&run.run_id, &ti.task_id).await?;
                details.push((ti, tries));
            }
            if global.output == Format::Json {
                let value = serde_json::to_value(
                    stevedore_ops::views::run_detail(store.as_ref(), &run).await?,
                )?;
                print_json(&value);
            } else {
                println!("run:           {}", run.run_id);
                println!(
                    "job:           {} (version {})",
                    run.job_id,
                    &run.job_version[..12.min(run.job_version.len())]
                );
                println!("trigger:       {}", run.trigger);
                println!("state:         {}", run.state);
                println!("logical date:  {}", rfc3339(run.logical_date));
                println!(
                    "data interval: {} .. {}",
                    rfc3339(run.data_interval.start),
                    rfc3339(run.data_interval.end)
                );
                println!("params:        {}", run.params);
                println!("duration:      {}", duration(run.started_at, run.ended_at));
                println!();
                let mut table = Table::new(&[
                    "TASK",
                    "STATE",
                    "TRY",
                    "EXIT",
                    "DURATION",
                    "IMAGE DIGEST",
                    "REASON",
                ]);
                for (ti, tries) in &details {
                    let last = tries.last();
                    table.row(vec![
                        ti.task_id.clone(),
                        ti.state.to_string(),
                        ti.try_number.to_string(),
                        last.and_then(|t| t.exit_code)
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        duration(ti.started_at, ti.ended_at),
                        last.and_then(|t| t.image_digest.clone())
                            .map(|d| short_digest(&d))
                            .unwrap_or_else(|| "-".into()),
                        last.and_then(|t| t.failure_reason.clone())
                            .unwrap_or_default(),
                    ]);
                }
                table.print();
                // Every try, earlier ones included: which image digest each one ran.
                println!();
                let mut tries = Table::new(&[
                    "TASK",
                    "TRY",
                    "STATE",
                    "EXIT",
                    "STARTED",
                    "DURATION",
                    "IMAGE",
                    "IMAGE DIGEST",
                ]);
                for (ti, attempts) in &details {
                    for attempt in attempts.iter() {
                        tries.row(vec![
                            ti.task_id.clone(),
                            attempt.try_number.to_string(),
                            attempt.state.as_str().to_owned(),
                            attempt
                                .exit_code
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "-".into()),
                            time(Some(attempt.started_at)),
                            duration(Some(attempt.started_at), attempt.ended_at),
                            attempt.image_ref.clone(),
                            attempt.image_digest.clone().unwrap_or_else(|| "-".into()),
                        ]);
                    }
                }
                tries.print();
            }
        }
        RunsCommand::Wait { run, job, timeout } => {
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let timed_out = || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let mut run = loop {
                let found = match (&run, &job) {
                    (Some(run), _) => Some(store.find_run(run).await?),
                    (None, job) => store
                        .list_runs(&RunFilter {
                            job_id: job.clone(),
                            limit: Some(1),
                            ..Default::default()
                        })
                        .await?
                        .into_iter()
                        .next(),
                };
                if let Some(found) = found {
                    break found;
                }
                if timed_out() {
                    eprintln!(
                        "no run of job `{}` appeared in time",
                        job.unwrap_or_default()
                    );
                    return Ok(ExitCode::from(2));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            while !run.state.is_finished() {
                if timed_out() {
                    eprintln!("run {} is still {}", run.run_id, run.state);
                    return Ok(ExitCode::from(2));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                run = store.get_run(&run.run_id).await?;
            }
            if global.output == Format::Json {
                print_json(&run_json(&run));
            } else {
                println!("{} {}", run.run_id, run.state);
            }
            return Ok(if run.state == RunState::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        RunsCommand::Cancel { run } => {
            let run = store.find_run(&run).await?;
            let run = actions::cancel(store.as_ref(), &run).await?;
            println!(
                "cancel of run {} requested; the scheduler stops it on its next pass",
                run.run_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", &hex[..12.min(hex.len())]),
        None => digest.to_owned(),
    }
}

/// Fails with a clear message when the run has no task instance of that task.
async fn ensure_task(store: &dyn Store, run: &RunRecord, task: &str) -> anyhow::Result<()> {
    if !store
        .task_instances(&run.run_id)
        .await?
        .iter()
        .any(|ti| ti.task_id == task)
    {
        bail!("run {} has no task `{task}`", run.run_id);
    }
    Ok(())
}

pub async fn tasks(global: &Global, command: TasksCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    let (run, task, try_number, follow) = match command {
        TasksCommand::Logs {
            run,
            task,
            try_number,
            follow,
        } => (run, task, try_number, follow),
        TasksCommand::Clear {
            run,
            task,
            downstream,
        } => {
            let run = store.find_run(&run).await?;
            let cleared = actions::clear(store.as_ref(), &run, &task, downstream).await?;
            println!("cleared {} in run {}", cleared.join(", "), run.run_id);
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Mark { run, task, state } => {
            let run = store.find_run(&run).await?;
            actions::mark(store.as_ref(), &run, &task, &state).await?;
            println!("task {task} of run {} marked {state}", run.run_id);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let run = store.find_run(&run).await?;
    let pick = |tries: &[TryRecord]| -> Option<TryRecord> {
        match try_number {
            Some(n) => tries.iter().find(|t| t.try_number == n).cloned(),
            None => tries.last().cloned(),
        }
    };
    let attempt = loop {
        let tries = store.tries(&run.run_id, &task).await?;
        if let Some(attempt) = pick(&tries) {
            break attempt;
        }
        ensure_task(store.as_ref(), &run, &task).await?;
        if !follow {
            bail!(match try_number {
                Some(n) => format!("task `{task}` of run {} has no try {n}", run.run_id),
                None => format!("task `{task}` of run {} has not started yet", run.run_id),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    use futures_util::StreamExt;
    let options = stevedore_ops::logs::FollowOptions {
        after: None,
        live: follow,
        poll: Duration::from_millis(250),
    };
    let events = stevedore_ops::logs::follow(store.clone(), attempt, options);
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        let stevedore_ops::logs::LogEvent::Line(line) = event? else {
            break;
        };
        if global.output == Format::Json {
            println!(
                "{}",
                json!({"seq": line.seq, "stream": line.stream.as_str(), "timestamp": line.timestamp.to_rfc3339(), "text": line.text})
            );
        } else {
            println!(
                "{} {:<6} {}",
                line.timestamp.format("%H:%M:%S%.3f"),
                line.stream.as_str(),
                line.text
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pools(global: &Global, command: PoolsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        PoolsCommand::List => {
            let pools = store.list_pools().await?;
            if global.output == Format::Json {
                print_json(&Value::Array(
                    pools.iter().map(|p| json!({"name": p.name, "slots": p.slots, "description": p.description})).collect(),
                ));
            } else {
                let mut table = Table::new(&["POOL", "SLOTS", "DESCRIPTION"]);
                for pool in &pools {
                    table.row(vec![
                        pool.name.clone(),
                        pool.slots.to_string(),
                        pool.description.clone(),
                    ]);
                }
                table.print();
            }
        }
        PoolsCommand::Set {
            name,
            slots,
            description,
        } => {
            stevedore_ops::pools::set(store.as_ref(), &name, slots, &description).await?;
            println!("pool {name}: {slots} slots");
        }
        PoolsCommand::Delete { name } => {
            store.delete_pool(&name).await?;
            println!("pool {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jobs backfill`: [`stevedore_ops::backfill`], with progress bars; `wait` waits for the runs.
async fn backfill(
    global: &Global,
    job_id: &str,
    from: &str,
    to: &str,
    rerun_failed: bool,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg:<16} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("creating runs");
    let request = stevedore_ops::backfill::BackfillRequest {
        job_id: job_id.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        rerun_failed,
    };
    let done =
        stevedore_ops::backfill::backfill(store.as_ref(), &global.jobs, &request, |at, of| {
            bar.set_length(of as u64);
            bar.set_position(at as u64);
        })
        .await?;
    bar.finish_and_clear();
    println!(
        "{} interval(s) from {} to {}: {} run(s) created, {} rerun, {} already there",
        done.intervals,
        done.from.map(rfc3339).unwrap_or_default(),
        done.to.map(rfc3339).unwrap_or_default(),
        done.created.len(),
        done.rerun.len(),
        done.kept
    );
    let watched: Vec<String> = done.runs().cloned().collect();
    if !wait || watched.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let bar = indicatif::ProgressBar::new(watched.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg:<16} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("runs finished");
    let failed = loop {
        let mut finished = 0;
        let mut failed = 0;
        for run_id in &watched {
            let run = store.get_run(run_id).await?;
            if run.state.is_finished() {
                finished += 1;
                failed += usize::from(run.state == RunState::Failed);
            }
        }
        bar.set_position(finished as u64);
        if finished == watched.len() {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    bar.finish_and_clear();
    println!("{} run(s) finished, {failed} failed", watched.len());
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn connections(global: &Global, command: ConnectionsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        ConnectionsCommand::Add {
            name,
            env,
            description,
        } => {
            stevedore_domain::names::check_name("connection", &name).map_err(|e| anyhow!(e))?;
            let mut values = std::collections::BTreeMap::new();
            for pair in &env {
                // `--env KEY` takes the value from this command's own environment, so the
                // secret never shows in the process list.
                let (key, value) = match pair.split_once('=') {
                    Some((key, value)) => (key.to_owned(), value.to_owned()),
                    None => match std::env::var(pair) {
                        Ok(value) => (pair.clone(), value),
                        Err(_) => {
                            bail!("--env {pair}: give KEY=VALUE, or set {pair} in the environment")
                        }
                    },
                };
                values.insert(key, value);
            }
            // The CLI makes the key file on first use; the API, which cannot, answers 503.
            let key = SecretKey::load(&global.secret_key, true).map_err(|e| anyhow!(e))?;
            let record =
                stevedore_ops::connections::put(store.as_ref(), &key, &name, &values, &description)
                    .await?;
            let keys = record.keys;
            println!("connection {name}: {}", keys.join(", "));
        }
        ConnectionsCommand::List => {
            let connections = store.list_connections().await?;
            if global.output == Format::Json {
                print_json(&Value::Array(
                    connections.iter().map(|c| json!({"name": c.name, "keys": c.keys, "description": c.description})).collect(),
                ));
            } else {
                let mut table = Table::new(&["CONNECTION", "VARIABLES", "DESCRIPTION"]);
                for connection in &connections {
                    table.row(vec![
                        connection.name.clone(),
                        connection.keys.join(", "),
                        connection.description.clone(),
                    ]);
                }
                table.print();
            }
        }
        ConnectionsCommand::Delete { name } => {
            store.delete_connection(&name).await?;
            println!("connection {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The variables of the named connections, unsealed (for `images check`).
pub async fn connection_values(
    global: &Global,
    names: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    if names.is_empty() {
        return Ok(Default::default());
    }
    let store = open_store(&global.db).await?;
    let key = SecretKey::load(&global.secret_key, false).map_err(|e| anyhow!(e))?;
    stevedore_ops::connections::open_all(store.as_ref(), Some(&key), names)
        .await
        .map_err(|e| anyhow!(e))
}

/// The registry credentials held by connection `name` (for `images build --push`).
pub async fn registry_auth(
    global: &Global,
    name: &str,
) -> anyhow::Result<stevedore_backend::RegistryAuth> {
    let values = connection_values(global, &[name.to_owned()]).await?;
    let credentials =
        stevedore_ops::connections::registry_credentials(name, values).map_err(|e| anyhow!(e))?;
    Ok(stevedore_backend::RegistryAuth {
        username: credentials.username,
        password: credentials.password,
        server: credentials.server,
    })
}
