//! Singer taps and targets (the Singer spec, and the Meltano SDK's conventions): a tap is
//! discovered, its streams selected in the catalog, run with the committed state, and its
//! RECORD messages written per stream; a target is fed SCHEMA and RECORD messages from
//! records files.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use stevedore_sdk::{log, output, state, Context, Failure};

use crate::connector::{
    all_args, config, feed_records, infer_schema, log_line, publish_files, run_connector,
    run_short, Connector, Scratch, StreamFiles,
};

const DISCOVER_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest catalog read from `--discover`.
const MAX_CATALOG_BYTES: usize = 64 * 1024 * 1024;

/// The streams `--streams a,b` names (`None`: every stream).
pub fn chosen_streams(ctx: &Context) -> Option<Vec<String>> {
    ctx.arg("streams").map(|list| {
        list.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Marks the chosen streams selected in a Singer catalog (the stream's breadcrumb `[]`
/// metadata `selected: true`, and the rest `false`); returns the selected streams' names.
pub fn select(catalog: &mut Value, chosen: Option<&[String]>) -> Result<Vec<String>, Failure> {
    let streams = catalog["streams"]
        .as_array_mut()
        .ok_or_else(|| Failure::not_retryable("the tap's catalog has no `streams` list"))?;
    let names: Vec<String> = streams
        .iter()
        .map(|s| {
            s["tap_stream_id"]
                .as_str()
                .or(s["stream"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    if let Some(chosen) = chosen {
        for name in chosen {
            if !names.contains(name) {
                return Err(Failure::not_retryable(format!(
                    "--streams: the tap has no stream `{name}` (its streams: {})",
                    names.join(", ")
                )));
            }
        }
    }
    let mut selected = Vec::new();
    for (stream, name) in streams.iter_mut().zip(&names) {
        let on = chosen.is_none_or(|c| c.contains(name));
        if on {
            selected.push(name.clone());
        }
        let metadata = stream
            .as_object_mut()
            .expect("a stream is an object")
            .entry("metadata")
            .or_insert_with(|| json!([]));
        let Value::Array(entries) = metadata else {
            continue;
        };
        match entries
            .iter_mut()
            .find(|m| m["breadcrumb"].as_array().is_some_and(|b| b.is_empty()))
        {
            Some(top) => {
                top["metadata"]["selected"] = json!(on);
            }
            None => entries.push(json!({"breadcrumb": [], "metadata": {"selected": on}})),
        }
    }
    Ok(selected)
}

pub fn run_tap(connector: &Connector, ctx: &Context) -> Result<(), Failure> {
    let workspace = ctx
        .workspace
        .clone()
        .ok_or_else(|| Failure::not_retryable("STEVEDORE_WORKSPACE is not set"))?;
    let scratch = Scratch::new()?;
    let config_path = scratch.write("config.json", &Value::Object(config(ctx)?))?;
    let config_arg = config_path.display().to_string();
    let chosen = chosen_streams(ctx);
    let discover = match ctx.arg("discover").unwrap_or("auto") {
        "always" => true,
        "never" => false,
        // A Meltano SDK tap selects every stream by itself when it gets no catalog, and
        // discovers on its own: a separate discovery would only start Python twice.
        "auto" => chosen.is_some() || !is_sdk_tap(&connector.command),
        other => {
            return Err(Failure::not_retryable(format!(
                "--discover `{other}` is not auto, always or never"
            )))
        }
    };
    let mut args = vec!["--config".to_owned(), config_arg.clone()];
    let mut selected = Vec::new();
    let mut kept_catalog = None;
    if discover {
        log(
            "info",
            &format!("discovering the streams of {}", connector.package),
        );
        let (code, lines) = run_short(
            &connector.command,
            &["--config".to_owned(), config_arg, "--discover".to_owned()],
            DISCOVER_TIMEOUT,
            MAX_CATALOG_BYTES,
        )?;
        if code != 0 {
            return Err(Failure::from(format!(
                "the tap's discovery exited with {code} (its log above says why)"
            )));
        }
        let mut catalog: Value = serde_json::from_str(&lines.join("\n")).map_err(|e| {
            Failure::from(format!(
                "the tap's discovery did not print a JSON catalog: {e}"
            ))
        })?;
        selected = select(&mut catalog, chosen.as_deref())?;
        log(
            "info",
            &format!("streams selected: {}", selected.join(", ")),
        );
        let catalog_path = scratch.write("catalog.json", &catalog)?;
        // The catalog is kept with the run's files.
        let kept = workspace.join(format!("{}.catalog.json", ctx.task_id));
        std::fs::write(
            &kept,
            serde_json::to_vec_pretty(&catalog).unwrap_or_default(),
        )
        .map_err(|e| format!("cannot write {}: {e}", kept.display()))?;
        kept_catalog = Some(kept);
        let catalog_flag = ctx.arg("catalog-flag").unwrap_or("catalog");
        args.push(format!("--{catalog_flag}"));
        args.push(catalog_path.display().to_string());
    } else {
        log(
            "info",
            "running the tap without a catalog: it selects and discovers every stream itself",
        );
    }
    match &ctx.state {
        Some(previous) => {
            let state_path = scratch.write("state.json", previous)?;
            args.push("--state".to_owned());
            args.push(state_path.display().to_string());
            log("info", "running from the committed state");
        }
        None => log(
            "info",
            "no committed state: the tap starts from the beginning",
        ),
    }
    let mut files = StreamFiles::new(&workspace, &ctx.task_id);
    for stream in &selected {
        files.open(stream)?;
    }
    let mut schemas: Map<String, Value> = Map::new();
    let mut latest_state: Option<Value> = None;
    let mut since_progress = 0u64;
    let code = run_connector(&connector.command, &args, None, None, |line| {
        let message: Value = match serde_json::from_str(line) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => {
                log_line(line);
                return Ok(());
            }
        };
        match message["type"].as_str() {
            Some("RECORD") => {
                let stream = message["stream"].as_str().unwrap_or("default");
                files.write(stream, &message["record"])?;
                since_progress += 1;
                if since_progress >= 10_000 {
                    since_progress = 0;
                    stevedore_sdk::progress(files.total(), None);
                }
            }
            Some("SCHEMA") => {
                let stream = message["stream"].as_str().unwrap_or("default").to_owned();
                // Every stream the tap announces has its file, records or not.
                files.open(&stream)?;
                schemas.insert(
                    stream,
                    json!({"schema": message["schema"], "key_properties": message["key_properties"]}),
                );
            }
            Some("STATE") => latest_state = Some(message["value"].clone()),
            Some("ACTIVATE_VERSION") | Some("BATCH") => {}
            _ => log_line(line),
        }
        Ok(())
    })?;
    if code != 0 {
        return Err(Failure::from(format!(
            "the tap exited with {code} after {} records (its log above says why); no state is committed",
            files.total()
        )));
    }
    let finished = files.finish()?;
    let schemas_path = workspace.join(format!("{}.schemas.json", ctx.task_id));
    std::fs::write(&schemas_path, Value::Object(schemas).to_string())
        .map_err(|e| format!("cannot write {}: {e}", schemas_path.display()))?;
    publish_files(&finished);
    output("schemas_file", schemas_path.display().to_string());
    if let Some(kept) = &kept_catalog {
        output("catalog_file", kept.display().to_string());
    }
    log(
        "info",
        &format!(
            "the tap sent {} records in {} streams",
            finished.iter().map(|f| f.2).sum::<u64>(),
            finished.len()
        ),
    );
    if let Some(value) = latest_state {
        state(value);
    }
    Ok(())
}

/// Whether the tap is built on the Meltano Singer SDK: its virtualenv (the folder above the
/// command's `bin`) holds `singer_sdk`.
pub fn is_sdk_tap(command: &str) -> bool {
    let Some(venv) = std::path::Path::new(command)
        .parent()
        .and_then(|b| b.parent())
    else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|entry| {
        entry
            .path()
            .join("site-packages")
            .join("singer_sdk")
            .is_dir()
    })
}

/// The records files a target loads: `--input FILE` (its stream named by `--stream`, else
/// the file's name), or `--input STREAM=FILE` (repeatable).
pub fn inputs(ctx: &Context) -> Result<Vec<(String, PathBuf)>, Failure> {
    let given = all_args(ctx, "input");
    if given.is_empty() {
        return Err(Failure::not_retryable(
            "--input FILE is required (a records file, such as {{ outputs.extract.records_file }})",
        ));
    }
    let mut inputs = Vec::new();
    for input in given {
        let (stream, path) = match input.split_once('=') {
            Some((stream, path)) if !stream.contains('/') => {
                (stream.to_owned(), PathBuf::from(path))
            }
            _ => {
                let path = PathBuf::from(&input);
                let stream = ctx.arg("stream").map(str::to_owned).unwrap_or_else(|| {
                    path.file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("records")
                        .rsplit('.')
                        .next()
                        .unwrap_or("records")
                        .to_owned()
                });
                (stream, path)
            }
        };
        if !path.is_file() {
            return Err(Failure::not_retryable(format!(
                "--input {}: no such file",
                path.display()
            )));
        }
        inputs.push((stream, path));
    }
    Ok(inputs)
}

/// A stream's schema and key: from `--schemas-file` (a wrapped tap's `schemas_file`) when it
/// has the stream, else inferred from the records; the key from `--key-properties a,b`.
pub fn schema_of(
    ctx: &Context,
    stream: &str,
    path: &std::path::Path,
) -> Result<(Value, Vec<String>), Failure> {
    let keys: Vec<String> = ctx
        .arg("key-properties")
        .map(|k| k.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    if let Some(file) = ctx.arg("schemas-file") {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Failure::not_retryable(format!("cannot read --schemas-file {file}: {e}"))
        })?;
        let schemas: Value = serde_json::from_str(&text).map_err(|e| {
            Failure::not_retryable(format!("--schemas-file {file} is not JSON: {e}"))
        })?;
        if let Some(found) = schemas.get(stream) {
            let keys = if keys.is_empty() {
                found["key_properties"]
                    .as_array()
                    .map(|k| {
                        k.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                keys
            };
            return Ok((found["schema"].clone(), keys));
        }
    }
    Ok((infer_schema(path, 1000)?, keys))
}

pub fn run_target(connector: &Connector, ctx: &Context) -> Result<(), Failure> {
    let scratch = Scratch::new()?;
    let config_path = scratch.write("config.json", &Value::Object(config(ctx)?))?;
    let inputs = inputs(ctx)?;
    let mut plan = Vec::new();
    for (stream, path) in inputs {
        let (schema, keys) = schema_of(ctx, &stream, &path)?;
        plan.push((stream, path, schema, keys));
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let feed = Box::new(move |stdin: &mut dyn Write| -> Result<(), String> {
        for (stream, path, schema, keys) in plan {
            let schema = json!({"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": keys});
            writeln!(stdin, "{schema}").map_err(|e| format!("the target stopped reading: {e}"))?;
            feed_records(
                stdin,
                &path,
                "target",
                &counter,
                |record| json!({"type": "RECORD", "stream": stream, "record": record}),
            )?;
        }
        // A STATE message at the end: targets flush what they hold when they see one.
        writeln!(stdin, "{}", json!({"type": "STATE", "value": {}}))
            .map_err(|e| format!("the target stopped reading: {e}"))?;
        Ok(())
    });
    let code = run_connector(
        &connector.command,
        &["--config".to_owned(), config_path.display().to_string()],
        Some(feed),
        None,
        |line| {
            match serde_json::from_str::<Value>(line) {
                Ok(message) if message["type"] == "STATE" => {}
                _ => log_line(line),
            }
            Ok(())
        },
    )?;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    if code != 0 {
        return Err(Failure::from(format!(
            "the target exited with {code} after {sent} records were sent (its log above says why)"
        )));
    }
    log("info", &format!("the target loaded {sent} records"));
    output("records", sent);
    stevedore_sdk::metric("records", sent as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_streams_are_selected_and_an_unknown_one_is_an_error() {
        let mut catalog = json!({"streams": [
            {"tap_stream_id": "charges", "metadata": [{"breadcrumb": [], "metadata": {"inclusion": "available"}}]},
            {"tap_stream_id": "refunds"}
        ]});
        let chosen = vec!["refunds".to_owned()];
        assert_eq!(select(&mut catalog, Some(&chosen)).unwrap(), ["refunds"]);
        assert_eq!(
            catalog["streams"][0]["metadata"][0]["metadata"]["selected"],
            false
        );
        assert_eq!(
            catalog["streams"][0]["metadata"][0]["metadata"]["inclusion"],
            "available"
        );
        assert_eq!(
            catalog["streams"][1]["metadata"][0]["metadata"]["selected"],
            true
        );
        assert_eq!(select(&mut catalog, None).unwrap(), ["charges", "refunds"]);
        let wrong = vec!["payouts".to_owned()];
        let error = select(&mut catalog, Some(&wrong)).unwrap_err();
        assert!(!error.retryable);
        assert!(error
            .message
            .contains("no stream `payouts` (its streams: charges, refunds)"));
    }
}
