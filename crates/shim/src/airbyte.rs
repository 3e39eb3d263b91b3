//! Airbyte sources and destinations (the Airbyte protocol, v0): a source is discovered, a
//! configured catalog made of the chosen streams (incremental where the stream supports
//! it), read with the committed state (kept per stream), and its RECORD messages written per
//! stream; LOG and TRACE messages become log lines, a TRACE error the try's reason. A
//! destination is fed RECORD messages from records files.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use stevedore_sdk::{error, log, output, state, Context, Failure};

use crate::connector::{
    config, feed_records, log_line, publish_files, run_connector, run_short, Connector, Scratch,
    StreamFiles,
};
use crate::singer::{chosen_streams, inputs, schema_of};

const DISCOVER_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_CATALOG_BYTES: usize = 64 * 1024 * 1024;

/// The AirbyteMessage of `type` among a short command's lines.
pub fn message_of<'a>(lines: &'a [String], kind: &str) -> Option<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["type"] == kind)
}

/// The committed state as Airbyte's `--state` takes it: a list of per-stream (or global)
/// state messages. Stevedore keeps it as `{"streams": {name: message}, "global": message}`.
pub fn state_messages(committed: &Value) -> Value {
    let mut list: Vec<Value> = committed["streams"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    if let Some(global) = committed.get("global").filter(|g| !g.is_null()) {
        list.push(global.clone());
    }
    if let Some(legacy) = committed.get("legacy").filter(|g| !g.is_null()) {
        list.push(json!({"type": "LEGACY", "data": legacy}));
    }
    Value::Array(list)
}

/// Folds one STATE message into the state kept per stream.
pub fn fold_state(
    kept: &mut BTreeMap<String, Value>,
    global: &mut Option<Value>,
    legacy: &mut Option<Value>,
    message: &Value,
) {
    let inner = &message["state"];
    match inner["type"].as_str() {
        Some("STREAM") => {
            let descriptor = &inner["stream"]["stream_descriptor"];
            let name = match descriptor["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => {
                    format!("{ns}.{}", descriptor["name"].as_str().unwrap_or(""))
                }
                _ => descriptor["name"].as_str().unwrap_or("").to_owned(),
            };
            let mut kept_message = inner.clone();
            // `sourceStats` and the like are per-read counts, not state.
            if let Some(map) = kept_message.as_object_mut() {
                map.remove("sourceStats");
                map.remove("destinationStats");
            }
            kept.insert(name, kept_message);
        }
        Some("GLOBAL") => *global = Some(inner.clone()),
        _ => *legacy = inner.get("data").cloned(),
    }
}

/// The configured catalog: each chosen stream incremental when it supports it (its cursor
/// the source's or the stream's default cursor field), else full refresh; appended.
pub fn configure(
    catalog: &Value,
    chosen: Option<&[String]>,
) -> Result<(Value, Vec<String>), Failure> {
    let streams = catalog["streams"]
        .as_array()
        .ok_or_else(|| Failure::not_retryable("the source's catalog has no `streams` list"))?;
    let names: Vec<String> = streams
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    if let Some(chosen) = chosen {
        for name in chosen {
            if !names.contains(name) {
                return Err(Failure::not_retryable(format!(
                    "--streams: the source has no stream `{name}` (its streams: {})",
                    names.join(", ")
                )));
            }
        }
    }
    let mut configured = Vec::new();
    let mut selected = Vec::new();
    for (stream, name) in streams.iter().zip(&names) {
        if !chosen.is_none_or(|c| c.contains(name)) {
            continue;
        }
        let modes: Vec<&str> = stream["supported_sync_modes"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let incremental = modes.contains(&"incremental");
        let mut entry = json!({
            "stream": stream,
            "sync_mode": if incremental { "incremental" } else { "full_refresh" },
            "destination_sync_mode": "append",
        });
        if incremental {
            if let Some(cursor) = stream["default_cursor_field"]
                .as_array()
                .filter(|c| !c.is_empty())
            {
                entry["cursor_field"] = json!(cursor);
            }
        }
        if let Some(key) = stream["source_defined_primary_key"].as_array() {
            entry["primary_key"] = json!(key);
        }
        configured.push(entry);
        selected.push(name.clone());
    }
    Ok((json!({"streams": configured}), selected))
}

/// What a TRACE error says: its message, and whether a retry may mend it
/// (`failure_type: config_error` may not).
pub fn trace_failure(message: &Value) -> Option<(String, bool)> {
    let trace = &message["trace"];
    if trace["type"] != "ERROR" {
        return None;
    }
    let error = &trace["error"];
    let kind = error["failure_type"].as_str().unwrap_or("system_error");
    let text = error["message"]
        .as_str()
        .unwrap_or("the source reported an error");
    Some((format!("{text} ({kind})"), kind != "config_error"))
}

pub fn run_source(connector: &Connector, ctx: &Context) -> Result<(), Failure> {
    let workspace = ctx
        .workspace
        .clone()
        .ok_or_else(|| Failure::not_retryable("STEVEDORE_WORKSPACE is not set"))?;
    let scratch = Scratch::new()?;
    let config_path = scratch.write("config.json", &serde_json::Value::Object(config(ctx)?))?;
    let config_arg = config_path.display().to_string();
    log(
        "info",
        &format!("discovering the streams of {}", connector.package),
    );
    let (code, lines) = run_short(
        &connector.command,
        &[
            "discover".to_owned(),
            "--config".to_owned(),
            config_arg.clone(),
        ],
        DISCOVER_TIMEOUT,
        MAX_CATALOG_BYTES,
    )?;
    for line in &lines {
        report_side_message(line);
    }
    if let Some((text, retryable)) = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| trace_failure(&m))
    {
        return Err(Failure {
            message: text,
            retryable,
        });
    }
    let catalog = message_of(&lines, "CATALOG")
        .map(|m| m["catalog"].clone())
        .ok_or_else(|| {
            Failure::from(format!(
                "the source's discover printed no CATALOG (exit {code})"
            ))
        })?;
    let (configured, selected) = configure(&catalog, chosen_streams(ctx).as_deref())?;
    log(
        "info",
        &format!("streams selected: {}", selected.join(", ")),
    );
    let catalog_path = scratch.write("catalog.json", &configured)?;
    let kept_catalog = workspace.join(format!("{}.catalog.json", ctx.task_id));
    std::fs::write(
        &kept_catalog,
        serde_json::to_vec_pretty(&configured).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", kept_catalog.display()))?;

    let mut args = vec![
        "read".to_owned(),
        "--config".to_owned(),
        config_arg,
        "--catalog".to_owned(),
        catalog_path.display().to_string(),
    ];
    let mut kept: BTreeMap<String, Value> = BTreeMap::new();
    let mut global: Option<Value> = None;
    let mut legacy: Option<Value> = None;
    match &ctx.state {
        Some(previous) => {
            if let Some(streams) = previous["streams"].as_object() {
                kept.extend(streams.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            global = previous.get("global").cloned().filter(|g| !g.is_null());
            legacy = previous.get("legacy").cloned().filter(|g| !g.is_null());
            let path = scratch.write("state.json", &state_messages(previous))?;
            args.push("--state".to_owned());
            args.push(path.display().to_string());
            log("info", "reading from the committed state");
        }
        None => log(
            "info",
            "no committed state: the source reads from the beginning",
        ),
    }
    let mut files = StreamFiles::new(&workspace, &ctx.task_id);
    for stream in &selected {
        files.open(stream)?;
    }
    let mut failure: Option<(String, bool)> = None;
    let mut changed_state = false;
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
                let record = &message["record"];
                let stream = record["stream"].as_str().unwrap_or("default");
                files.write(stream, &record["data"])?;
                since_progress += 1;
                if since_progress >= 10_000 {
                    since_progress = 0;
                    stevedore_sdk::progress(files.total(), None);
                }
            }
            Some("STATE") => {
                fold_state(&mut kept, &mut global, &mut legacy, &message);
                changed_state = true;
            }
            Some("TRACE") => {
                if let Some(found) = trace_failure(&message) {
                    error(&found.0, found.1);
                    failure = Some(found);
                }
            }
            _ => report_side_message(line),
        }
        Ok(())
    })?;
    if let Some((message, retryable)) = failure {
        return Err(Failure { message, retryable });
    }
    if code != 0 {
        return Err(Failure::from(format!(
            "the source exited with {code} after {} records (its log above says why); no state is committed",
            files.total()
        )));
    }
    let finished = files.finish()?;
    publish_files(&finished);
    output("catalog_file", kept_catalog.display().to_string());
    if changed_state {
        state(json!({"streams": kept, "global": global, "legacy": legacy}));
    }
    Ok(())
}

/// A LOG, TRACE (not an error), CONTROL or other AirbyteMessage as a log line; anything that
/// is not one, as the text it is.
fn report_side_message(line: &str) {
    match serde_json::from_str::<Value>(line) {
        Ok(message) if message["type"] == "LOG" => {
            let level = match message["log"]["level"].as_str().unwrap_or("INFO") {
                "FATAL" | "ERROR" => "error",
                "WARN" => "warn",
                "DEBUG" | "TRACE" => "debug",
                _ => "info",
            };
            log(
                level,
                message["log"]["message"].as_str().unwrap_or_default(),
            );
        }
        Ok(message) if message["type"] == "TRACE" || message["type"] == "CONTROL" => {
            if trace_failure(&message).is_none() {
                log("debug", line);
            }
        }
        Ok(message)
            if message["type"].is_string()
                && message["type"] != "CATALOG"
                && message["type"] != "SPEC"
                && message["type"] != "CONNECTION_STATUS" =>
        {
            log("debug", line)
        }
        Ok(message) if message["type"].is_string() => {}
        _ => log_line(line),
    }
}

pub fn run_destination(connector: &Connector, ctx: &Context) -> Result<(), Failure> {
    let scratch = Scratch::new()?;
    let config_path = scratch.write("config.json", &Value::Object(config(ctx)?))?;
    let mut configured = Vec::new();
    let mut plan = Vec::new();
    for (stream, path) in inputs(ctx)? {
        let (schema, keys) = schema_of(ctx, &stream, &path)?;
        let mut entry = json!({
            "stream": {"name": stream, "json_schema": schema, "supported_sync_modes": ["full_refresh", "incremental"]},
            "sync_mode": "incremental",
            "destination_sync_mode": if keys.is_empty() { "append" } else { "append_dedup" },
        });
        if !keys.is_empty() {
            entry["primary_key"] = json!(keys.iter().map(|k| vec![k.clone()]).collect::<Vec<_>>());
        }
        configured.push(entry);
        plan.push((stream, path));
    }
    let catalog_path = scratch.write("catalog.json", &json!({"streams": configured}))?;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let feed = Box::new(move |stdin: &mut dyn Write| -> Result<(), String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        for (stream, path) in plan {
            feed_records(
                stdin,
                &path,
                "destination",
                &counter,
                |data| json!({"type": "RECORD", "record": {"stream": stream, "data": data, "emitted_at": now}}),
            )?;
            let done = json!({"type": "STATE", "state": {"type": "STREAM", "stream": {"stream_descriptor": {"name": stream}, "stream_state": {"loaded": true}}}});
            writeln!(stdin, "{done}")
                .map_err(|e| format!("the destination stopped reading: {e}"))?;
        }
        Ok(())
    });
    let mut failure: Option<(String, bool)> = None;
    let code = run_connector(
        &connector.command,
        &[
            "write".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--catalog".to_owned(),
            catalog_path.display().to_string(),
        ],
        Some(feed),
        None,
        |line| {
            match serde_json::from_str::<Value>(line) {
                Ok(message) if message["type"] == "STATE" => {}
                Ok(message) if message["type"] == "TRACE" => {
                    if let Some(found) = trace_failure(&message) {
                        error(&found.0, found.1);
                        failure = Some(found);
                    }
                }
                _ => report_side_message(line),
            }
            Ok(())
        },
    )?;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    if let Some((message, retryable)) = failure {
        return Err(Failure { message, retryable });
    }
    if code != 0 {
        return Err(Failure::from(format!(
            "the destination exited with {code} after {sent} records were sent"
        )));
    }
    log("info", &format!("the destination loaded {sent} records"));
    output("records", sent);
    stevedore_sdk::metric("records", sent as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_kept_per_stream_and_handed_back_as_a_list() {
        let mut kept = BTreeMap::new();
        let (mut global, mut legacy) = (None, None);
        for (stream, cursor) in [("charges", 1), ("refunds", 7), ("charges", 2)] {
            let message = json!({"type": "STATE", "state": {"type": "STREAM", "stream": {
                "stream_descriptor": {"name": stream}, "stream_state": {"cursor": cursor}},
                "sourceStats": {"recordCount": 3.0}}});
            fold_state(&mut kept, &mut global, &mut legacy, &message);
        }
        assert_eq!(kept["charges"]["stream"]["stream_state"]["cursor"], 2);
        assert!(kept["charges"].get("sourceStats").is_none());
        let committed = json!({"streams": kept, "global": null, "legacy": null});
        let list = state_messages(&committed);
        assert_eq!(list.as_array().unwrap().len(), 2);
        assert_eq!(list[0]["stream"]["stream_descriptor"]["name"], "charges");
    }

    #[test]
    fn streams_are_configured_incremental_where_they_can_be() {
        let catalog = json!({"streams": [
            {"name": "charges", "supported_sync_modes": ["full_refresh", "incremental"], "default_cursor_field": ["updated_at"], "source_defined_primary_key": [["id"]]},
            {"name": "rates", "supported_sync_modes": ["full_refresh"]}
        ]});
        let (configured, selected) = configure(&catalog, None).unwrap();
        assert_eq!(selected, ["charges", "rates"]);
        assert_eq!(configured["streams"][0]["sync_mode"], "incremental");
        assert_eq!(
            configured["streams"][0]["cursor_field"],
            json!(["updated_at"])
        );
        assert_eq!(configured["streams"][1]["sync_mode"], "full_refresh");
        let only = vec!["rates".to_owned()];
        assert_eq!(configure(&catalog, Some(&only)).unwrap().1, ["rates"]);
        assert!(
            !configure(&catalog, Some(&["nope".to_owned()]))
                .unwrap_err()
                .retryable
        );
    }

    #[test]
    fn a_config_error_is_not_retryable() {
        let trace = json!({"type": "TRACE", "trace": {"type": "ERROR", "error": {"message": "Invalid API key", "failure_type": "config_error"}}});
        assert_eq!(
            trace_failure(&trace),
            Some(("Invalid API key (config_error)".to_owned(), false))
        );
        let system = json!({"type": "TRACE", "trace": {"type": "ERROR", "error": {"message": "boom", "failure_type": "system_error"}}});
        assert_eq!(trace_failure(&system).unwrap().1, true);
        assert_eq!(
            trace_failure(&json!({"type": "TRACE", "trace": {"type": "ESTIMATE"}})),
            None
        );
    }
}
