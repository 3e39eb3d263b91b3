//! `connections`: add, list, remove; their values opened for `process` tries.

#[allow(unused_imports)]
use super::*;

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
                let views: Vec<_> = connections
                    .iter()
                    .map(stevedore_ops::views::ConnectionView::from)
                    .collect();
                print_json(&json!(views));
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
