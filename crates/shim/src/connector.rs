//! What every kind shares: the connector's config (from connections, args and params), its
//! process (stdout read a line at a time, never buffered whole), the records files per
//! stream in the workspace, and a JSON Schema inferred from records for targets.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use stevedore_sdk::{log, Context, Failure};

/// The longest line read from a connector; a longer one fails the try (a record that large
/// is a bug, and reading it whole would grow the shim's memory without bound).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The kinds of connector the shim speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SingerTap,
    SingerTarget,
    AirbyteSource,
    AirbyteDestination,
}

impl Kind {
    pub fn parse(text: &str) -> Result<Kind, String> {
        match text {
            "singer-tap" => Ok(Kind::SingerTap),
            "singer-target" => Ok(Kind::SingerTarget),
            "airbyte-source" => Ok(Kind::AirbyteSource),
            "airbyte-destination" => Ok(Kind::AirbyteDestination),
            other => Err(format!(
                "connector kind `{other}` is not singer-tap, singer-target, airbyte-source or airbyte-destination"
            )),
        }
    }
}

/// The wrapped connector, as the image's environment names it.
pub struct Connector {
    pub kind: Kind,
    /// Its executable (`/opt/connector/bin/tap-rest-api-msdk`).
    pub command: String,
    pub package: String,
    pub version: String,
}

impl Connector {
    pub fn from_env() -> Result<Connector, String> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!("{name} is not set: this image was not made by `stevedore images wrap`")
            })
        };
        Ok(Connector {
            kind: Kind::parse(&var("STEVEDORE_CONNECTOR_KIND")?)?,
            command: var("STEVEDORE_CONNECTOR_COMMAND")?,
            package: var("STEVEDORE_CONNECTOR_PACKAGE").unwrap_or_default(),
            version: var("STEVEDORE_CONNECTOR_VERSION").unwrap_or_default(),
        })
    }
}

/// A value from text: JSON when it parses as JSON, else the text.
fn loose(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The connector's config, merged from (later wins):
/// 1. `CONFIG_JSON`, a connection variable holding the whole config as a JSON object;
/// 2. one variable per key, `CONFIG_<KEY>` (the key lower-cased: `CONFIG_API_URL` is
///    `api_url`), the value read as JSON when it parses (numbers, booleans, lists);
/// 3. the task's `--config KEY=VALUE` args (settings that are not secret, in the job file);
/// 4. the run's `config` param, an object.
pub fn config(ctx: &Context) -> Result<Map<String, Value>, Failure> {
    let mut config = Map::new();
    if let Ok(text) = std::env::var("CONFIG_JSON") {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => config.extend(map),
            Ok(_) => {
                return Err(Failure::not_retryable(
                    "CONFIG_JSON is JSON but not an object",
                ))
            }
            Err(e) => {
                return Err(Failure::not_retryable(format!(
                    "CONFIG_JSON is not JSON: {e}"
                )))
            }
        }
    }
    let mut keys: Vec<(String, String)> = std::env::vars()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("CONFIG_")?;
            (key != "JSON" && !key.is_empty()).then(|| (key.to_ascii_lowercase(), value))
        })
        .collect();
    keys.sort();
    for (key, value) in keys {
        config.insert(key, loose(&value));
    }
    let flag = "--config".to_owned();
    for pair in ctx.args.windows(2).filter(|p| p[0] == flag) {
        let (key, value) = pair[1].split_once('=').ok_or_else(|| {
            Failure::not_retryable(format!("--config `{}` is not KEY=VALUE", pair[1]))
        })?;
        config.insert(key.to_owned(), loose(value));
    }
    if let Some(param) = ctx.param("config") {
        let Value::Object(map) = param else {
            return Err(Failure::not_retryable(
                "the run param `config` is not an object",
            ));
        };
        config.extend(map.clone());
    }
    Ok(config)
}

/// Every value of a repeatable `--name VALUE`.
pub fn all_args(ctx: &Context, name: &str) -> Vec<String> {
    let flag = format!("--{name}");
    ctx.args
        .windows(2)
        .filter(|pair| pair[0] == flag)
        .map(|pair| pair[1].clone())
        .collect()
}

/// Private files for the connector (config, catalog, state) in a folder only the try can
/// read, never in the workspace (whose files travel as artifacts): config holds secrets.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Result<Scratch, Failure> {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("stevedore-shim-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Scratch { dir })
    }

    pub fn write(&self, name: &str, value: &Value) -> Result<PathBuf, Failure> {
        let path = self.dir.join(name);
        std::fs::write(&path, value.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command args` to its end, its stdout read a line at a time into `on_line` (lines
/// over [`MAX_LINE_BYTES`] fail), its stderr passed through as the try's stderr (plain log
/// lines), its stdin fed by `feed` when given, killed after `timeout` when given. Returns
/// its exit code.
pub fn run_connector(
    command: &str,
    args: &[String],
    feed: Option<Box<dyn FnOnce(&mut dyn Write) -> Result<(), String> + Send>>,
    timeout: Option<Duration>,
    mut on_line: impl FnMut(&str) -> Result<(), Failure>,
) -> Result<i32, Failure> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut child: Child = Command::new(command)
        .args(args)
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Failure::not_retryable(format!("cannot start {command}: {e}")))?;
    let feeder = match (feed, child.stdin.take()) {
        (Some(feed), Some(stdin)) => Some(std::thread::spawn(move || {
            let mut stdin = BufWriter::with_capacity(256 * 1024, stdin);
            let fed = feed(&mut stdin);
            // A connector that stops reading closes the pipe: its exit says why.
            let _ = stdin.flush();
            fed
        })),
        _ => None,
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let child = Arc::new(Mutex::new(child));
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = timeout.map(|timeout| {
        let (child, done, timed_out) = (child.clone(), done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    let _ = child.lock().map(|mut c| c.kill());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    });
    let mut reader = BufReader::with_capacity(256 * 1024, Batching::new(stdout));
    let mut line: Vec<u8> = Vec::new();
    let mut result = Ok(());
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading {command}'s output: {e}"));
        match read {
            Ok(0) => break,
            Ok(_) if line.len() > MAX_LINE_BYTES && !line.ends_with(b"\n") => {
                result = Err(Failure::from(format!(
                    "{command} printed a line over {MAX_LINE_BYTES} bytes"
                )));
                break;
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if let Err(failure) = on_line(text) {
                    result = Err(failure);
                    break;
                }
            }
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
    }
    drop(reader);
    let status = {
        let mut child = child.lock().expect("the child's lock");
        if result.is_err() {
            let _ = child.kill();
        }
        child
            .wait()
            .map_err(|e| format!("waiting for {command}: {e}"))?
    };
    done.store(true, Ordering::Relaxed);
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    if timed_out.load(Ordering::Relaxed) {
        return Err(Failure::from(format!(
            "{command} did not finish within {} s and was stopped",
            timeout.unwrap_or_default().as_secs()
        )));
    }
    if let Some(feeder) = feeder {
        if let Ok(Err(problem)) = feeder.join() {
            if result.is_ok() && status.success() {
                result = Err(Failure::from(problem));
            }
        }
    }
    result?;
    Ok(status.code().unwrap_or(-1))
}

/// A reader that lets a chatty writer fill the pipe between reads: after a read that
/// returned little, it waits a millisecond before the next one. A connector that prints
/// one record per write (and flushes each, as the Singer SDK does) would otherwise wake the
/// shim for every record: a hundred thousand context switches on a two-core host cost it
/// more than all of the shim's parsing. At most a millisecond of latency per read; the
/// pipe (64 KiB) does not fill in that time at any speed a connector prints at.
pub struct Batching<R> {
    inner: R,
    small: bool,
}

impl<R> Batching<R> {
    pub fn new(inner: R) -> Batching<R> {
        Batching {
            inner,
            small: false,
        }
    }
}

impl<R: Read> Read for Batching<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.small {
            std::thread::sleep(Duration::from_millis(1));
        }
        let read = self.inner.read(buf)?;
        self.small = read > 0 && read < 16 * 1024;
        Ok(read)
    }
}

/// Runs a short command of the connector (`discover`, `spec`, `check`) and returns its exit
/// code and stdout lines (at most `max_bytes` of them), stopped after `timeout`.
pub fn run_short(
    command: &str,
    args: &[String],
    timeout: Duration,
    max_bytes: usize,
) -> Result<(i32, Vec<String>), Failure> {
    let mut lines = Vec::new();
    let mut size = 0;
    let code = run_connector(command, args, None, Some(timeout), |line| {
        size += line.len();
        if size > max_bytes {
            return Err(Failure::from(format!(
                "{command} printed over {max_bytes} bytes"
            )));
        }
        lines.push(line.to_owned());
        Ok(())
    })?;
    Ok((code, lines))
}

/// Where a stream's records go: `<workspace>/<task>.<stream>.jsonl`, the stream's name made
/// safe for a file name.
pub fn stream_file(workspace: &Path, task_id: &str, stream: &str) -> PathBuf {
    let safe: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    workspace.join(format!("{task_id}.{safe}.jsonl"))
}

/// The output key of a stream's records file: `records_file_<stream>`.
pub fn stream_key(stream: &str) -> String {
    let safe: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("records_file_{safe}")
}

/// Records written as JSON lines, one file per stream, buffered (never held whole).
pub struct StreamFiles {
    workspace: PathBuf,
    task_id: String,
    files: BTreeMap<String, (PathBuf, BufWriter<std::fs::File>, u64)>,
}

impl StreamFiles {
    pub fn new(workspace: &Path, task_id: &str) -> StreamFiles {
        StreamFiles {
            workspace: workspace.to_owned(),
            task_id: task_id.to_owned(),
            files: BTreeMap::new(),
        }
    }

    /// Makes sure a stream has its (perhaps empty) file.
    pub fn open(&mut self, stream: &str) -> Result<(), Failure> {
        if !self.files.contains_key(stream) {
            let path = stream_file(&self.workspace, &self.task_id, stream);
            let file = std::fs::File::create(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            self.files.insert(
                stream.to_owned(),
                (path, BufWriter::with_capacity(128 * 1024, file), 0),
            );
        }
        Ok(())
    }

    pub fn write(&mut self, stream: &str, record: &Value) -> Result<(), Failure> {
        self.open(stream)?;
        let (path, writer, count) = self.files.get_mut(stream).expect("opened");
        serde_json::to_writer(&mut *writer, record)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        writer
            .write_all(b"\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        *count += 1;
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.files.values().map(|(_, _, n)| n).sum()
    }

    /// Flushes every file; `(stream, path, records)` of each.
    pub fn finish(mut self) -> Result<Vec<(String, PathBuf, u64)>, Failure> {
        let mut done = Vec::new();
        for (stream, (path, mut writer, count)) in std::mem::take(&mut self.files) {
            writer
                .flush()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            done.push((stream, path, count));
        }
        Ok(done)
    }
}

/// Publishes the records files: `records_file_<stream>` for each, `records_file` when
/// there is one stream, `records` (the total) and `records_<stream>` counts.
pub fn publish_files(files: &[(String, PathBuf, u64)]) {
    use stevedore_sdk::{metric, output};
    let mut total = 0;
    for (stream, path, count) in files {
        output(&stream_key(stream), path.display().to_string());
        output(
            &stream_key(stream).replacen("records_file_", "records_", 1),
            *count,
        );
        total += count;
    }
    if let [(_, path, _)] = files {
        output("records_file", path.display().to_string());
    }
    output("records", total);
    metric("records", total as f64);
}

/// Writes every record of a records file to a connector's stdin, each as `message(record)`,
/// a line at a time (never the file whole), counting them in `sent`; blank lines are
/// skipped. `who` names the connector in the error when it stops reading.
pub fn feed_records(
    stdin: &mut dyn Write,
    path: &Path,
    who: &str,
    sent: &std::sync::atomic::AtomicU64,
    message: impl Fn(Value) -> Value,
) -> Result<(), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(&line)
            .map_err(|e| format!("{}: a line is not JSON: {e}", path.display()))?;
        writeln!(stdin, "{}", message(record))
            .map_err(|e| format!("the {who} stopped reading: {e}"))?;
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// The JSON type name of a value, for an inferred schema.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A JSON Schema for records: each top-level field typed by the values seen in the first
/// `sample` records (every field nullable; integer and number seen together is number; a
/// field of several other types is a string), for targets that need a SCHEMA.
pub fn infer_schema(path: &Path, sample: usize) -> Result<Value, Failure> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut types: BTreeMap<String, std::collections::BTreeSet<&'static str>> = BTreeMap::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        if index >= sample {
            break;
        }
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(&line).map_err(|e| {
            Failure::not_retryable(format!(
                "{} line {}: not JSON: {e}",
                path.display(),
                index + 1
            ))
        })?;
        let Value::Object(map) = record else {
            return Err(Failure::not_retryable(format!(
                "{} line {}: a record is not a JSON object",
                path.display(),
                index + 1
            )));
        };
        for (key, value) in map {
            types.entry(key).or_default().insert(type_of(&value));
        }
    }
    let properties: Map<String, Value> = types
        .into_iter()
        .map(|(key, seen)| {
            let mut seen: Vec<&str> = seen.into_iter().filter(|t| *t != "null").collect();
            if seen.contains(&"integer") && seen.contains(&"number") {
                seen.retain(|t| *t != "integer");
            }
            let kind = match seen.as_slice() {
                [] => "string",
                [one] => one,
                _ => "string",
            };
            let schema = match kind {
                "object" => json!({"type": ["null", "object"]}),
                "array" => json!({"type": ["null", "array"]}),
                other => json!({"type": ["null", other]}),
            };
            (key, schema)
        })
        .collect();
    Ok(json!({"type": "object", "properties": properties}))
}

/// Logs what the connector said that is not a protocol message, as an `info` log line (so a
/// connector's stdout can never pass for one of Stevedore's own messages).
pub fn log_line(text: &str) {
    if !text.trim().is_empty() {
        log("info", text);
    }
}
