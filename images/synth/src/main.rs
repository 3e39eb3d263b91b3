//! `synth`: a synthetic source integration. It makes deterministic records for the data
//! interval it is given, so demos and tests behave like a real SaaS extract without a
//! network. The first of the task's args picks what it does:
//!
//! - `extract [--records N] [--sleep SECS]`: "pulls" N records, reports progress, publishes
//!   `records` and `checksum` outputs and commits `{"cursor": interval_end}` as state.
//! - `load --inputs A,B,C`: sums upstream counts (or a JSON list of them, such as a mapped
//!   task's outputs) and logs the total it "loaded".
//! - `list --count N [--fail-first-try-at K]`: publishes `accounts`, a list of N accounts
//!   `{"id": "acct_I", "records": 10*I, "fail_first_try": I == K}`, for a mapped task.
//! - `extract ... --fail-first-try true`: fails its first try (exit 1), then extracts.
//! - `flaky --fail-until-try K`: fails (exit 1, on stderr) while the try number is below K.
//! - `sensor --ready-on-try K`: not ready yet (exit 75) while the try number is below K.
//! - `write --file NAME --text TEXT` / `read --file NAME`: a file in the run's workspace
//!   (`STEVEDORE_WORKSPACE`), to hand data from one task to the next.
//! - `fail --message M [--not-retryable]`: fails saying why (an `error` message); with
//!   `--not-retryable` it says no retry can mend it (exit 78).
//! - `sleep --seconds S [--tick]` (with `--tick`, a line each second), `exit --code C`, `noop`.
//! - `spew --lines N`: prints N plain lines as fast as it can (log throughput benchmark).
//! - `count --lines N [--every-ms M] [--exit C]`: prints `out 1` .. `out N` on stdout, one
//!   each M ms (and `err K` on stderr after every third), then exits with C: a log whose
//!   every line is known, for checking that none is lost or stored twice.

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use stevedore_sdk::{log, metric, output, progress, state, Context, Failure, Integration, Outcome};

fn number(ctx: &Context, name: &str, default: u64) -> Result<u64, String> {
    match ctx.arg(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("--{name} `{text}` is not a number")),
    }
}

fn extract(ctx: &Context) -> Result<Outcome, String> {
    let records = number(ctx, "records", 100)?;
    let sleep = number(ctx, "sleep", 0)?;
    let since = ctx
        .state
        .as_ref()
        .and_then(|s| s["cursor"].as_str())
        .unwrap_or("the beginning");
    log(
        "info",
        &format!(
            "extracting {records} records for [{}, {}), last cursor: {since}",
            ctx.interval_start, ctx.interval_end
        ),
    );
    let mut checksum: u64 = 0;
    for index in 0..records {
        checksum = checksum
            .wrapping_mul(31)
            .wrapping_add(index ^ ctx.interval_start.len() as u64);
        if (index + 1) % (records / 4).max(1) == 0 {
            progress(index + 1, Some(records));
        }
    }
    if sleep > 0 {
        std::thread::sleep(Duration::from_secs(sleep));
    }
    eprintln!("extract finished without warnings");
    output("records", records);
    output("checksum", format!("{checksum:016x}"));
    metric("records", records as f64);
    state(json!({"cursor": ctx.interval_end}));
    Ok(Outcome::Success)
}

fn load(ctx: &Context) -> Result<Outcome, String> {
    let inputs = ctx.arg("inputs").ok_or("load needs --inputs A,B,...")?;
    println!("inputs {inputs}");
    let mut total = 0u64;
    let parts: Vec<String> = match serde_json::from_str::<Vec<serde_json::Value>>(inputs) {
        Ok(list) => list.iter().map(|v| v.to_string()).collect(),
        Err(_) => inputs.split(',').map(str::to_owned).collect(),
    };
    for part in &parts {
        total += part
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("input `{part}` is not a count"))?;
    }
    println!("loading {total} rows into the warehouse");
    output("loaded", total);
    Ok(Outcome::Success)
}

fn list(ctx: &Context) -> Result<Outcome, String> {
    let count = number(ctx, "count", 5)?;
    let flaky = number(ctx, "fail-first-try-at", 0)?;
    let accounts: Vec<serde_json::Value> = (1..=count)
        .map(
            |i| json!({"id": format!("acct_{i}"), "records": 10 * i, "fail_first_try": i == flaky}),
        )
        .collect();
    log("info", &format!("listed {count} accounts"));
    output("accounts", accounts);
    Ok(Outcome::Success)
}

fn spew(ctx: &Context) -> Result<Outcome, String> {
    let lines = number(ctx, "lines", 1000)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    for index in 0..lines {
        writeln!(out, "line {index}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(Outcome::Success)
}

fn main() {
    Integration::new("synth", env!("CARGO_PKG_VERSION"))
        .params_schema(json!({"type": "object", "additionalProperties": true}))
        .run(|ctx| -> Result<Outcome, Failure> {
            let mode = ctx.args.first().map(String::as_str).unwrap_or("noop");
            match mode {
                "extract" if ctx.arg("fail-first-try") == Some("true") && ctx.try_number == 1 => {
                    eprintln!("the API timed out on the first try");
                    Err(Failure::from("simulated failure on try 1"))
                }
                "extract" => Ok(extract(ctx)?),
                "list" => Ok(list(ctx)?),
                "load" => Ok(load(ctx)?),
                "spew" => Ok(spew(ctx)?),
                "flaky" => {
                    let until = number(ctx, "fail-until-try", 2)?;
                    if u64::from(ctx.try_number) < until {
                        eprintln!(
                            "try {} fails on purpose (succeeds from try {until})",
                            ctx.try_number
                        );
                        return Err(format!("simulated failure on try {}", ctx.try_number).into());
                    }
                    println!("try {} succeeds", ctx.try_number);
                    Ok(Outcome::Success)
                }
                "sensor" => {
                    let ready_on = number(ctx, "ready-on-try", 2)?;
                    if u64::from(ctx.try_number) < ready_on {
                        println!("not ready on try {} (ready on try {ready_on})", ctx.try_number);
                        return Ok(Outcome::NotReady);
                    }
                    println!("ready on try {}", ctx.try_number);
                    Ok(Outcome::Success)
                }
                                "write" | "read" => {
                    let workspace = std::env::var("STEVEDORE_WORKSPACE").map_err(|_| "STEVEDORE_WORKSPACE is not set")?;
                    let name = ctx.arg("file").ok_or("--file is required")?;
                    let path = std::path::Path::new(&workspace).join(name);
                    if mode == "write" {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                        }
                        match ctx.arg("bytes") {
                            // --bytes N: N bytes of a repeating pattern, written a chunk at a time.
                            Some(_) => {
                                let total = number(ctx, "bytes", 0)?;
                                write_bytes(&path, total).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                            }
                            None => std::fs::write(&path, ctx.arg("text").unwrap_or_default()).map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                        }
                        println!("wrote {name}");
                    } else {
                        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                        println!("read {name}: {text}");
                    }
                    Ok(Outcome::Success)
                }
                "measure" => {
                    // Reads a workspace file a chunk at a time and says how big it is.
                    let workspace = std::env::var("STEVEDORE_WORKSPACE").map_err(|_| "STEVEDORE_WORKSPACE is not set")?;
                    let name = ctx.arg("file").ok_or("--file is required")?;
                    let path = std::path::Path::new(&workspace).join(name);
                    let mut file = std::fs::File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let size = std::io::copy(&mut file, &mut std::io::sink()).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    println!("measured {name}: {size} bytes");
                    Ok(Outcome::Success)
                }
                "sleep" => {
                    let seconds = number(ctx, "seconds", 1)?;
                    println!("sleeping {seconds}s");
                    // With --tick, a line every second, for watching a log grow.
                    if ctx.flag("tick") {
                        for second in 1..=seconds {
                            std::thread::sleep(Duration::from_secs(1));
                            println!("tick {second} of {seconds}");
                        }
                    } else {
                        std::thread::sleep(Duration::from_secs(seconds));
                    }
                    println!("woke up");
                    Ok(Outcome::Success)
                }
                "count" => {
                    let lines = number(ctx, "lines", 10)?;
                    let every = number(ctx, "every-ms", 100)?;
                    let code = number(ctx, "exit", 0)?;
                    for n in 1..=lines {
                        println!("out {n}");
                        if n % 3 == 0 {
                            eprintln!("err {n}");
                        }
                        std::thread::sleep(Duration::from_millis(every));
                    }
                    if code != 0 {
                        std::process::exit(code as i32);
                    }
                    Ok(Outcome::Success)
                }
                "exit" => {
                    let code = number(ctx, "code", 0)?;
                    println!("exiting with {code}");
                    std::process::exit(code as i32)
                }
                "noop" => Ok(Outcome::Success),
                "fail" => {
                    let message = ctx.arg("message").unwrap_or("failed on purpose").to_owned();
                    Err(if ctx.flag("not-retryable") {
                        Failure::not_retryable(message)
                    } else {
                        Failure::from(message)
                    })
                }
                other => Err(Failure::from(format!(
                    "unknown mode `{other}`; use extract, list, load, flaky, sensor, write, read, measure, sleep, count, exit, fail, spew or noop"
                ))),
            }
        })
}

/// Writes `total` bytes of a repeating pattern to `path`, 1 MiB at a time.
fn write_bytes(path: &std::path::Path, total: u64) -> std::io::Result<()> {
    use std::io::Write;
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}
