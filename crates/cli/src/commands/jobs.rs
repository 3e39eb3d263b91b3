//! `jobs`: list, show, validate, trigger, pause, backfill.

#[allow(unused_imports)]
use super::*;

/// Loads one job by id from the jobs folder, with its file errors when it is invalid.
pub(super) fn load_job(
    jobs_dir: &Path,
    job_id: &str,
) -> anyhow::Result<(Arc<Job>, String, String)> {
    Ok(actions::load_job(jobs_dir, job_id)?)
}

pub async fn jobs(global: &Global, command: JobsCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::Validate { path } => {
            let path = path.unwrap_or_else(|| global.jobs.clone());
            let (loaded, mut errors) = if path.is_dir() {
                let found = load_jobs_dir(&path);
                (found.jobs, found.errors)
            } else {
                match load_job_file(&path) {
                    Ok(loaded) => (vec![loaded], Vec::new()),
                    Err(errors) => (Vec::new(), errors),
                }
            };
            // Alert rules name connections, which live in the store: checked when there is
            // one (a SQLite file that does not exist is not created for it).
            let has_rules = loaded
                .iter()
                .any(|l| stevedore_domain::notify::rules(&l.job).next().is_some());
            let mut jobs = Vec::new();
            if has_rules && (is_postgres(&global.db) || store_path(&global.db).exists()) {
                let store = open_store(&global.db).await?;
                let connections = store.list_connections().await?;
                for loaded in loaded {
                    let file = loaded.path.display().to_string();
                    let problems =
                        stevedore_ops::notifications::check_rules(&loaded.job, &file, &connections);
                    if problems.is_empty() {
                        jobs.push(loaded.job);
                    }
                    errors.extend(problems);
                }
            } else {
                if has_rules {
                    eprintln!(
                        "note: notify rules' connections not checked: no store at {}",
                        store_path(&global.db).display()
                    );
                }
                jobs = loaded.into_iter().map(|l| l.job).collect();
            }
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
        JobsCommand::Trigger {
            job,
            params,
            wait,
            full_refresh,
            tasks,
        } => {
            let overrides: Map<String, Value> = params
                .iter()
                .map(|p| parse_param(p))
                .collect::<anyhow::Result<_>>()?;
            let store = open_store(&global.db).await?;
            let full_refresh = match (full_refresh, tasks.is_empty()) {
                (false, _) => None,
                (true, true) => Some(actions::FullRefresh::All),
                (true, false) => Some(actions::FullRefresh::Tasks(tasks)),
            };
            let mut run = actions::trigger_refreshing(
                store.as_ref(),
                &global.jobs,
                &job,
                &overrides,
                full_refresh,
            )
            .await?;
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
        JobsCommand::WebhookToken { job } => {
            let (loaded, _, _) = actions::load_job(&global.jobs, &job)?;
            if loaded.events.is_none() {
                bail!("job `{job}` takes no events: add `events:` to its file (docs/webhooks.md)");
            }
            let store = open_store(&global.db).await?;
            let (token, hash) = stevedore_server::auth::new_token().map_err(|e| anyhow!(e))?;
            store
                .set_webhook_token(&loaded.id, &hash, Utc::now())
                .await?;
            // Only the hash is kept: this is the one time the token is shown.
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Pause { job } => set_paused(global, &job, true).await,
        JobsCommand::Unpause { job } => set_paused(global, &job, false).await,
    }
}

pub(super) async fn set_paused(
    global: &Global,
    job_id: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    actions::set_paused(store.as_ref(), &global.jobs, job_id, paused).await?;
    println!(
        "job {job_id} {}",
        if paused { "paused" } else { "unpaused" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `jobs backfill`: [`stevedore_ops::backfill`], with progress bars; `wait` waits for the runs.
pub(super) async fn backfill(
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
