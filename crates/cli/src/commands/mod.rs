//! The store-facing commands, one file per command group (`jobs.rs`, `runs.rs`, `tasks.rs`,
//! `pools.rs`, `connections.rs`, and `serve.rs` for the long-running processes); opening the
//! store, `db migrate`, `schedulers` and `tokens` are here.

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

mod assets;
mod connections;
mod jobs;
mod notifications;
mod pools;
mod runs;
mod serve;
mod state;
mod tasks;

pub use assets::assets;
pub use connections::{connection_values, connections, registry_auth};
pub use jobs::jobs;
pub use notifications::notifications;
pub use pools::pools;
use runs::run_json;
pub use runs::runs;
pub use serve::{serve, Serve};
pub use state::state;
pub use tasks::tasks;

/// Opens the store named by `--db`: a path, `sqlite://path`, or `postgres://...`.
pub async fn open_store(db: &str) -> anyhow::Result<Arc<dyn Store>> {
    stevedore_store::open(db).await.with_context(|| {
        if is_postgres(db) {
            "cannot open the PostgreSQL store (--db)".to_owned()
        } else {
            format!("cannot open the store at {}", store_path(db).display())
        }
    })
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

/// `db clean`: see [`stevedore_scheduler::retention`].
pub async fn clean(
    global: &Global,
    before: Option<String>,
    job: Option<String>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    let ended_before = match before {
        Some(text) => Some(
            stevedore_domain::job::parse_date(&text, chrono_tz::Tz::UTC)
                .map_err(|e| anyhow!("--before {e}"))?,
        ),
        None => None,
    };
    let filter = stevedore_store::CleanFilter {
        job_id: job,
        ended_before,
        ..Default::default()
    };
    let artifacts = global.artifacts(None).map_err(|e| anyhow!(e))?;
    let human = global.output != Format::Json;
    let report = stevedore_scheduler::retention::clean(
        store.as_ref(),
        Some(&artifacts),
        &filter,
        dry_run,
        |so_far| {
            if human {
                eprintln!("removed {} runs…", so_far.cleaned.runs);
            }
        },
    )
    .await?;
    if !human {
        print_json(&json!({
            "dry_run": dry_run,
            "runs_found": report.runs_found,
            "runs": report.cleaned.runs,
            "task_instances": report.cleaned.task_instances,
            "tries": report.cleaned.tries,
            "log_lines": report.cleaned.log_lines,
            "notifications": report.cleaned.notifications,
            "objects": report.objects,
            "job_versions": report.job_versions,
            "size_before": report.size_before,
            "size_after": report.size_after,
            "space_given_back": report.space_given_back,
            "seconds": report.took.as_secs_f64(),
        }));
    } else if dry_run {
        println!(
            "{} ended runs would be removed (store {} bytes); nothing was removed",
            report.runs_found, report.size_before
        );
    } else {
        println!(
            "removed {} runs ({} task instances, {} tries, {} log lines, {} alerts), {} objects from the artifact store and {} unused job versions in {:.1} s; store {} -> {} bytes{}",
            report.cleaned.runs,
            report.cleaned.task_instances,
            report.cleaned.tries,
            report.cleaned.log_lines,
            report.cleaned.notifications,
            report.objects,
            report.job_versions,
            report.took.as_secs_f64(),
            report.size_before,
            report.size_after,
            if report.space_given_back || store.size_bytes().await? < report.size_before {
                ""
            } else {
                " (the freed space is reused by the database; a SQLite store made before Stevedore gave space back keeps its file size)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
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
