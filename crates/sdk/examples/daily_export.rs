//! `daily-export`: a complete integration on the Stevedore SDK (walked through in
//! docs/sdk.md). Each run exports the orders of its data interval's day into the run's
//! workspace as JSON lines, for a downstream load; a day already exported is skipped; with
//! `--wait-for FILE` it is a sensor that waits for that file in the workspace first.

use std::io::Write;

use serde_json::{json, Value};
use stevedore_sdk::{
    log, metric, output, progress, required_env, state, Context, Failure, Integration, Outcome,
};

/// `check -- ARGS`: are the credentials there and well-formed? (A real integration would
/// call its API here.)
fn check(ctx: &Context) -> Result<String, String> {
    let token = required_env("EXPORT_TOKEN")?;
    if !token.starts_with("exp_") {
        return Err("EXPORT_TOKEN is not an export token (they start with exp_)".into());
    }
    let source = ctx.arg("source").unwrap_or("orders");
    Ok(format!("EXPORT_TOKEN accepted for source `{source}`"))
}

fn export(ctx: &Context) -> Result<Outcome, Failure> {
    // A missing or malformed token is not mended by a retry: fail once (exit 78).
    check(ctx).map_err(Failure::not_retryable)?;
    let workspace = ctx
        .workspace
        .as_ref()
        .ok_or("STEVEDORE_WORKSPACE is not set")?;

    // A sensor: not ready until an upstream task (or anyone) has left the file.
    if let Some(name) = ctx.arg("wait-for") {
        if !workspace.join(name).exists() {
            log("info", &format!("waiting for {name} in the workspace"));
            return Ok(Outcome::NotReady);
        }
    }

    // Incremental: the state remembers the last day exported.
    let day = ctx
        .interval_start
        .get(..10)
        .ok_or("the run has no data interval")?;
    let last = ctx.state.as_ref().and_then(|s| s["last_day"].as_str());
    if let Some(last) = last {
        if last >= day {
            log("info", &format!("{day} is exported already (last: {last})"));
            return Ok(Outcome::Skip);
        }
    }

    // How many orders: a run param first, then the task's args, then 1000.
    let orders = match (ctx.param("orders"), ctx.arg("orders")) {
        (Some(value), _) => value.as_u64().ok_or("param `orders` is not a count")?,
        (None, Some(text)) => text
            .parse()
            .map_err(|_| format!("--orders `{text}` is not a count"))?,
        (None, None) => 1000,
    };
    let path = workspace.join(format!("{}-{day}.jsonl", ctx.task_id));
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    log("info", &format!("exporting {orders} orders of {day}"));
    for index in 0..orders {
        let order = json!({"id": format!("{day}-{index}"), "day": day, "cents": index * 7 % 1000});
        writeln!(writer, "{order}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if (index + 1) % 500 == 0 {
            progress(index + 1, Some(orders));
        }
    }
    writer
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    output("file", path.display().to_string());
    output("orders", orders);
    metric("orders", orders as f64);
    // Committed only if this try succeeds (and, with Stevedore, once the whole run has).
    state(json!({"last_day": day}));
    Ok(Outcome::Success)
}

fn main() {
    let params: Value = json!({
        "type": "object",
        "properties": {"orders": {"type": "integer", "minimum": 0}},
    });
    Integration::new("daily-export", env!("CARGO_PKG_VERSION"))
        .params_schema(params)
        .check(check)
        .run(export)
}
