//! `tasks`: logs (followed or not), tries, outputs.

#[allow(unused_imports)]
use super::*;

/// Fails with a clear message when the run has no task instance of that task.
pub(super) async fn ensure_task(
    store: &dyn Store,
    run: &RunRecord,
    task: &str,
) -> anyhow::Result<()> {
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
    // `--map-index N` names instance `TASK[N]` of a mapped task.
    let key = |task: String, map_index: Option<u32>| match map_index {
        Some(index) => stevedore_domain::mapping::instance_key(&task, index),
        None => task,
    };
    let (run, task, try_number, follow) = match command {
        TasksCommand::Logs {
            run,
            task,
            map_index,
            try_number,
            follow,
        } => (run, key(task, map_index), try_number, follow),
        TasksCommand::Clear {
            run,
            task,
            map_index,
            downstream,
        } => {
            let run = store.find_run(&run).await?;
            let task = key(task, map_index);
            let cleared = actions::clear(store.as_ref(), &run, &task, downstream).await?;
            println!("cleared {} in run {}", cleared.join(", "), run.run_id);
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Mark {
            run,
            task,
            map_index,
            state,
        } => {
            let run = store.find_run(&run).await?;
            let task = key(task, map_index);
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
    // An archived log is read from the artifact store (opened only then).
    let artifacts = match store.log_archive(attempt.try_id).await? {
        Some(_) => Some(global.artifacts(None).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let lines = Arc::new(stevedore_artifacts::logs::Logs::new(
        store.clone(),
        artifacts,
    ));
    let events = stevedore_ops::logs::follow(store.clone(), lines, attempt, options);
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        let stevedore_ops::logs::LogEvent::Line(line) = event? else {
            break;
        };
        if global.output == Format::Json {
            println!("{}", json!(stevedore_ops::views::LogLineView::from(&line)));
        } else {
            // A progress message reads as one: `progress: 300 of 1200 (25%)`.
            let progress = (line.stream == stevedore_store::LogStream::Stdout)
                .then(|| stevedore_domain::protocol::progress_text(&line.text))
                .flatten();
            println!(
                "{} {:<6} {}",
                line.timestamp.format("%H:%M:%S%.3f"),
                line.stream.as_str(),
                progress.as_deref().unwrap_or(&line.text)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
