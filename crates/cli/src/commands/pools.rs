//! `pools`: list and set.

#[allow(unused_imports)]
use super::*;

pub async fn pools(global: &Global, command: PoolsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        PoolsCommand::List => {
            let pools = store.list_pools().await?;
            if global.output == Format::Json {
                let views: Vec<_> = pools
                    .iter()
                    .map(stevedore_ops::views::PoolView::from)
                    .collect();
                print_json(&json!(views));
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
