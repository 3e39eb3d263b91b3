//! `runs`: list, show, cancel, clear, mark.

#[allow(unused_imports)]
use super::*;

pub(super) fn run_json(run: &RunRecord) -> Value {
    serde_json::to_value(stevedore_ops::views::RunView::from(run)).unwrap_or_default()
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
                // Task instances waiting for a backend that does not answer: since when, why.
                for (ti, _) in &details {
                    if let Some(waiting) = &ti.waiting {
                        println!();
                        println!(
                            "{} waits for its backend since {}: {}",
                            ti.task_id,
                            time(Some(waiting.since)),
                            waiting.reason
                        );
                    }
                }
                if let Some(at) = run.deadline_missed_at {
                    println!();
                    println!("deadline missed at {}", time(Some(at)));
                }
                if !run.full_refresh.is_empty() {
                    println!();
                    println!(
                        "full refresh (without committed state): {}",
                        run.full_refresh.join(", ")
                    );
                }
                let artifacts = store.run_artifacts(&run.run_id).await?;
                if !artifacts.is_empty() {
                    println!();
                    artifacts_table(&artifacts).print();
                }
                let mut notifications = store
                    .list_notifications(&stevedore_store::NotificationFilter {
                        run_id: Some(run.run_id.clone()),
                        limit: 200,
                        ..Default::default()
                    })
                    .await?;
                if !notifications.is_empty() {
                    notifications.reverse();
                    println!();
                    super::notifications::notifications_table(&notifications).print();
                }
            }
        }
        RunsCommand::Artifacts {
            run,
            task,
            get,
            out,
        } => {
            let run = store.find_run(&run).await?;
            let artifacts: Vec<_> = store
                .run_artifacts(&run.run_id)
                .await?
                .into_iter()
                .filter(|a| task.as_ref().is_none_or(|t| &a.task_id == t))
                .collect();
            let Some(path) = get else {
                if global.output == Format::Json {
                    let views: Vec<_> = artifacts
                        .iter()
                        .map(stevedore_ops::views::ArtifactView::from)
                        .collect();
                    print_json(&serde_json::to_value(views)?);
                } else {
                    artifacts_table(&artifacts).print();
                }
                return Ok(ExitCode::SUCCESS);
            };
            let found = pick_artifact(&artifacts, &path, task.as_deref(), &run.run_id)?;
            let out = out.unwrap_or_else(|| "-".into());
            let artifact_store = global.artifacts(None).map_err(|e| anyhow!(e))?;
            let blob = stevedore_artifacts::Blob {
                sha256: found.sha256.clone(),
                size: found.size,
            };
            if out.as_os_str() == "-" {
                let mut stdout = tokio::io::stdout();
                artifact_store
                    .copy_to(&run.run_id, &blob, &mut stdout)
                    .await
                    .map_err(|e| anyhow!("{path}: {e}"))?;
            } else {
                // Written beside the target and renamed once checked: a corrupt blob leaves
                // nothing at FILE.
                let part = out.with_extension("stevedore-part");
                let mut file = tokio::fs::File::create(&part)
                    .await
                    .map_err(|e| anyhow!("cannot create {}: {e}", part.display()))?;
                if let Err(error) = artifact_store.copy_to(&run.run_id, &blob, &mut file).await {
                    drop(file);
                    let _ = std::fs::remove_file(&part);
                    return Err(anyhow!("{path}: {error}"));
                }
                std::fs::rename(&part, &out)
                    .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
                eprintln!(
                    "{path} of task {} (try {}): {} bytes to {}",
                    found.task_id,
                    found.try_number,
                    found.size,
                    out.display()
                );
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

pub(super) fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", &hex[..12.min(hex.len())]),
        None => digest.to_owned(),
    }
}

/// The artifacts of a run as a table: task, try, path, size and a short sha256.
fn artifacts_table(artifacts: &[stevedore_store::ArtifactRecord]) -> Table {
    let mut table = Table::new(&["TASK", "TRY", "PATH", "SIZE", "SHA256"]);
    for artifact in artifacts {
        table.row(vec![
            artifact.task_id.clone(),
            artifact.try_number.to_string(),
            artifact.path.clone(),
            artifact.size.to_string(),
            artifact.sha256[..12.min(artifact.sha256.len())].to_owned(),
        ]);
    }
    table
}

/// The artifact at `path`: of `task` when given, else of the one task that has it; the
/// latest try's.
fn pick_artifact<'a>(
    artifacts: &'a [stevedore_store::ArtifactRecord],
    path: &str,
    task: Option<&str>,
    run_id: &str,
) -> anyhow::Result<&'a stevedore_store::ArtifactRecord> {
    let matching: Vec<&stevedore_store::ArtifactRecord> =
        artifacts.iter().filter(|a| a.path == path).collect();
    let mut tasks: Vec<&str> = matching.iter().map(|a| a.task_id.as_str()).collect();
    tasks.dedup();
    match (matching.is_empty(), tasks.len(), task) {
        (true, _, Some(task)) => Err(anyhow!(
            "task `{task}` of run {run_id} left no file `{path}`"
        )),
        (true, _, None) => Err(anyhow!("no try of run {run_id} left a file `{path}`")),
        (false, n, None) if n > 1 => Err(anyhow!(
            "tasks {} of run {run_id} each left a file `{path}`: say which with --task",
            tasks.join(", ")
        )),
        _ => Ok(matching
            .into_iter()
            .max_by_key(|a| a.try_number)
            .expect("not empty")),
    }
}
