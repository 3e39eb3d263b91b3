//! `stevedore-shim`: the entrypoint of an image made by `stevedore images wrap`. It speaks
//! Stevedore's entrypoint contract (`spec`, `check`, `run`) and runs the wrapped Singer tap
//! or target, or Airbyte source or destination, unmodified: the config from the task's
//! connections, args and params; streams chosen in the catalog; the committed state handed
//! in and the connector's latest state committed; records written per stream to the
//! workspace as JSON lines, streamed, never held whole. docs/connectors.md says it all.
//!
//! The image names its connector in its environment: `STEVEDORE_CONNECTOR_KIND`,
//! `STEVEDORE_CONNECTOR_COMMAND`, `STEVEDORE_CONNECTOR_PACKAGE`, `STEVEDORE_CONNECTOR_VERSION`.

mod airbyte;
mod connector;
mod singer;

use std::time::Duration;

use serde_json::{json, Value};
use stevedore_sdk::{error, parse_run_args, Context, Failure, EXIT_NOT_RETRYABLE};

use connector::{config, run_short, Connector, Kind, Scratch};

const SHORT_TIMEOUT: Duration = Duration::from_secs(25);

fn emit(message: Value) {
    println!("{message}");
}

/// `spec`: the connector's name, version and the JSON Schema of its config (the Airbyte
/// connector's own `spec`; a Singer connector's `--about --format json` settings, when it
/// has them).
fn spec(connector: &Connector) -> i32 {
    let (command, args) = match connector.kind {
        Kind::AirbyteSource | Kind::AirbyteDestination => {
            (connector.command.as_str(), vec!["spec".to_owned()])
        }
        Kind::SingerTap | Kind::SingerTarget => (
            connector.command.as_str(),
            vec![
                "--about".to_owned(),
                "--format".to_owned(),
                "json".to_owned(),
            ],
        ),
    };
    let schema = match run_short(command, &args, SHORT_TIMEOUT, 4 * 1024 * 1024) {
        Ok((0, lines)) => match connector.kind {
            Kind::AirbyteSource | Kind::AirbyteDestination => airbyte::message_of(&lines, "SPEC")
                .map(|m| m["spec"]["connectionSpecification"].clone()),
            _ => serde_json::from_str::<Value>(&lines.join("\n"))
                .ok()
                .map(|about| about["settings"].clone())
                .filter(|s| !s.is_null()),
        },
        _ => None,
    };
    emit(json!({
        "type": "spec",
        "name": connector.package,
        "version": connector.version,
        "params": {"type": "object", "properties": {"config": schema.clone().unwrap_or_else(|| json!({"type": "object"}))}},
        "connector": {
            "kind": format!("{:?}", connector.kind),
            "package": connector.package,
            "version": connector.version,
            "config_schema": schema,
        },
    }));
    0
}

/// `check -- ARGS`: the connector's own check (Airbyte's `check`; a Singer tap's discovery,
/// which needs a working config), its own message when it fails.
fn check(connector: &Connector, args: Vec<String>) -> i32 {
    let ctx = Context {
        args,
        params: json!({}),
        ..Context::default()
    };
    let verdict = (|| -> Result<String, String> {
        let scratch = Scratch::new().map_err(|f| f.message)?;
        let config = config(&ctx).map_err(|f| f.message)?;
        let path = scratch
            .write("config.json", &Value::Object(config))
            .map_err(|f| f.message)?
            .display()
            .to_string();
        match connector.kind {
            Kind::AirbyteSource | Kind::AirbyteDestination => {
                let (_, lines) = run_short(
                    &connector.command,
                    &["check".to_owned(), "--config".to_owned(), path],
                    SHORT_TIMEOUT * 4,
                    4 * 1024 * 1024,
                )
                .map_err(|f| f.message)?;
                let status = airbyte::message_of(&lines, "CONNECTION_STATUS")
                    .ok_or("the connector's check printed no CONNECTION_STATUS")?;
                let said = status["connectionStatus"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if status["connectionStatus"]["status"] == "SUCCEEDED" {
                    Ok(if said.is_empty() {
                        "the connector's check succeeded".to_owned()
                    } else {
                        said
                    })
                } else {
                    Err(if said.is_empty() {
                        "the connector's check failed".to_owned()
                    } else {
                        said
                    })
                }
            }
            Kind::SingerTap => {
                let (code, _) = run_short(
                    &connector.command,
                    &["--config".to_owned(), path, "--discover".to_owned()],
                    SHORT_TIMEOUT * 4,
                    64 * 1024 * 1024,
                )
                .map_err(|f| f.message)?;
                if code == 0 {
                    Ok("the tap discovered its streams with this config".to_owned())
                } else {
                    Err(format!(
                        "the tap's discovery exited with {code}: its log says why"
                    ))
                }
            }
            Kind::SingerTarget => {
                Ok("a Singer target has no check; its config is read when it loads".to_owned())
            }
        }
    })();
    match verdict {
        Ok(message) => {
            emit(json!({"type": "check", "ok": true, "message": message}));
            0
        }
        Err(message) => {
            emit(json!({"type": "check", "ok": false, "message": message}));
            1
        }
    }
}

fn run(connector: &Connector, argv: &[String]) -> i32 {
    let state_file = std::env::var("STEVEDORE_STATE_FILE").ok();
    let mut ctx = match parse_run_args(argv, state_file.as_deref()) {
        Ok(ctx) => ctx,
        Err(message) => {
            eprintln!("stevedore-shim: {message}");
            return 2;
        }
    };
    ctx.workspace = std::env::var_os("STEVEDORE_WORKSPACE").map(std::path::PathBuf::from);
    let result: Result<(), Failure> = match connector.kind {
        Kind::SingerTap => singer::run_tap(connector, &ctx),
        Kind::SingerTarget => singer::run_target(connector, &ctx),
        Kind::AirbyteSource => airbyte::run_source(connector, &ctx),
        Kind::AirbyteDestination => airbyte::run_destination(connector, &ctx),
    };
    match result {
        Ok(()) => 0,
        Err(failure) => {
            error(&failure.message, failure.retryable);
            if failure.retryable {
                1
            } else {
                EXIT_NOT_RETRYABLE
            }
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let connector = match Connector::from_env() {
        Ok(connector) => connector,
        Err(message) => {
            eprintln!("stevedore-shim: {message}");
            std::process::exit(EXIT_NOT_RETRYABLE);
        }
    };
    let code = match argv.first().map(String::as_str) {
        Some("spec") => spec(&connector),
        Some("check") => {
            let args = match argv.get(1).map(String::as_str) {
                None => Vec::new(),
                Some("--") => argv[2..].to_vec(),
                Some(other) => {
                    eprintln!("stevedore-shim: check takes `-- ARGS`, not `{other}`");
                    std::process::exit(2);
                }
            };
            check(&connector, args)
        }
        Some("run") => run(&connector, &argv[1..]),
        _ => {
            eprintln!("usage: stevedore-shim spec | check [-- ARGS] | run --job J --task T --run R --try N ... -- ARGS");
            2
        }
    };
    std::process::exit(code)
}
