//! `assets`: the assets the job files name, who produces them, which jobs their updates
//! trigger, and their updates (docs/assets.md).

#[allow(unused_imports)]
use super::*;

use crate::AssetsCommand;
use stevedore_ops::assets::{self, AssetEventView};

pub async fn assets(global: &Global, command: AssetsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        AssetsCommand::List => {
            let listed = assets::list(store.as_ref(), &global.jobs).await?;
            if global.output == Format::Json {
                print_json(&serde_json::to_value(&listed)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut table =
                Table::new(&["ASSET", "PRODUCERS", "CONSUMERS", "LAST UPDATE", "BY RUN"]);
            for asset in &listed {
                let last = asset.last_update.as_ref();
                table.row(vec![
                    asset.name.clone(),
                    list_or_dash(&asset.producers),
                    list_or_dash(&asset.consumers),
                    last.map_or_else(|| "-".into(), |e| e.at.clone()),
                    last.map_or_else(|| "-".into(), |e| e.run_id.chars().take(13).collect()),
                ]);
            }
            table.print();
        }
        AssetsCommand::Show { name, limit } => {
            let detail = assets::show(store.as_ref(), &global.jobs, &name, limit).await?;
            if global.output == Format::Json {
                print_json(&serde_json::to_value(&detail)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("asset:      {}", detail.asset.name);
            println!("producers:  {}", list_or_dash(&detail.asset.producers));
            println!("consumers:  {}", list_or_dash(&detail.asset.consumers));
            println!("updates:    {}", detail.updates.len());
            let mut table = Table::new(&["SEQ", "AT", "JOB", "RUN", "TASK"]);
            for event in &detail.updates {
                let AssetEventView {
                    seq,
                    at,
                    job_id,
                    run_id,
                    task_id,
                    ..
                } = event;
                table.row(vec![
                    seq.to_string(),
                    at.clone(),
                    job_id.clone(),
                    run_id.clone(),
                    task_id.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
