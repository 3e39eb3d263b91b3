//! `state`: the incremental state a task committed (its cursor, its bookmarks per stream),
//! its history, and an operator setting or clearing it (docs/connectors.md).

#[allow(unused_imports)]
use super::*;

use crate::StateCommand;
use stevedore_ops::views::StateView;

/// Who the CLI's sets and clears are recorded as: `cli` and the local user.
fn actor() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("cli ({user})"),
        _ => "cli".to_owned(),
    }
}

/// The most of a `--from-file` that is read: a try's state may be 1 MiB of JSON.
const MAX_STATE_FILE: u64 = 2 * 1024 * 1024;

fn read_state_file(path: &std::path::Path) -> anyhow::Result<Value> {
    use std::io::Read;
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_STATE_FILE + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(MAX_STATE_FILE + 1)
            .read_to_string(&mut text)
    };
    read.with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_STATE_FILE {
        bail!("{} is over {MAX_STATE_FILE} bytes", path.display());
    }
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not JSON: {e} (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

fn print_entry(entry: &StateView) {
    println!("job:          {}", entry.job_id);
    println!("task:         {}", entry.task_id);
    let by = match (entry.action.as_str(), &entry.run_id, &entry.actor) {
        ("run", Some(run_id), _) => format!("run {run_id}"),
        (action, _, Some(actor)) => format!("{action} by {actor}"),
        (action, _, None) => action.to_owned(),
    };
    println!("committed by: {by}");
    println!("committed at: {}", entry.committed_at);
    match &entry.value {
        Some(value) => println!(
            "state:\n{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        None => println!("state:        (cleared)"),
    }
}

pub async fn state(global: &Global, command: StateCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    let store = store.as_ref();
    match command {
        StateCommand::Show { job, task } => {
            let shown = stevedore_ops::state::show(store, &job, &task).await?;
            match (&shown, global.output) {
                (_, Format::Json) => print_json(&json!(shown)),
                (Some(entry), _) => print_entry(entry),
                (None, _) => println!(
                    "task `{task}` of job `{job}` has no committed state: its next run starts from nothing"
                ),
            }
        }
        StateCommand::History { job, task, limit } => {
            let entries = stevedore_ops::state::history(store, &job, &task, limit).await?;
            if global.output == Format::Json {
                print_json(&json!(entries));
            } else {
                let mut table = Table::new(&["COMMITTED AT", "BY", "RUN", "STATE"]);
                for entry in &entries {
                    let by = match &entry.actor {
                        Some(actor) => format!("{} ({actor})", entry.action),
                        None => entry.action.clone(),
                    };
                    let mut value = entry
                        .value
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_else(|| "(cleared)".to_owned());
                    if value.len() > 80 {
                        let mut end = 77;
                        while !value.is_char_boundary(end) {
                            end -= 1;
                        }
                        value.truncate(end);
                        value.push_str("...");
                    }
                    table.row(vec![
                        entry.committed_at.clone(),
                        by,
                        entry.run_id.clone().unwrap_or_else(|| "-".into()),
                        value,
                    ]);
                }
                table.print();
            }
        }
        StateCommand::Set {
            job,
            task,
            from_file,
        } => {
            let value = read_state_file(&from_file)?;
            let entry =
                stevedore_ops::state::set(store, &global.jobs, &job, &task, Some(value), &actor())
                    .await?;
            if global.output == Format::Json {
                print_json(&json!(entry));
            } else {
                println!("state of {job}.{task} set: its next run's tries get it");
            }
        }
        StateCommand::Clear { job, task } => {
            let entry =
                stevedore_ops::state::set(store, &global.jobs, &job, &task, None, &actor()).await?;
            if global.output == Format::Json {
                print_json(&json!(entry));
            } else {
                println!("state of {job}.{task} cleared: its next run starts from nothing");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
