//! The Rust SDK for Stevedore integrations: parse the entrypoint contract, publish protocol
//! messages, exit with the right code. A whole integration:
//!
//! ```no_run
//! use stevedore_sdk::{Failure, Integration, Outcome};
//!
//! fn main() {
//!     Integration::new("hello", "0.1.0")
//!         .run(|ctx| -> Result<Outcome, Failure> {
//!             if ctx.interval_start.is_empty() {
//!                 return Err(Failure::not_retryable("the run has no data interval"));
//!             }
//!             stevedore_sdk::log("info", &format!("hello for {}", ctx.interval_start));
//!             stevedore_sdk::output("greeting", "hello");
//!             Ok(Outcome::Success)
//!         })
//! }
//! ```
//!
//! The protocol is plain JSON lines on stdout (see `docs/entrypoint-contract.md`), so an
//! integration in another language needs no SDK.

use std::io::Write;

use serde_json::{json, Value};

/// What the `run` command reports, mapped to the contract's exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 99: the task instance becomes `skipped`.
    Skip,
    /// Exit 75: a sensor that is not ready yet; tried again after `reschedule_interval`.
    NotReady,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Skip => 99,
            Outcome::NotReady => 75,
        }
    }
}

/// The run's context as the contract passes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    pub job_id: String,
    pub task_id: String,
    pub run_id: String,
    pub try_number: u32,
    pub logical_date: String,
    pub interval_start: String,
    pub interval_end: String,
    pub params: Value,
    /// The task's `args`, after `--`.
    pub args: Vec<String>,
    /// The last state this task committed, `None` on its first successful run.
    pub state: Option<Value>,
    /// The run's shared workspace (`STEVEDORE_WORKSPACE`), where a task leaves files for
    /// the tasks downstream of it.
    pub workspace: Option<std::path::PathBuf>,
}

impl Context {
    /// The value after `--name` in the task's args.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        let position = self.args.iter().position(|arg| *arg == flag)?;
        self.args.get(position + 1).map(String::as_str)
    }

    /// Whether `--name` appears in the task's args.
    pub fn flag(&self, name: &str) -> bool {
        let flag = format!("--{name}");
        self.args.contains(&flag)
    }

    /// A run param (`--params`), such as `ctx.param("records")`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.params.get(name)
    }
}

/// An environment variable the integration cannot do without, such as a token from a
/// connection; the error says where it should come from.
pub fn required_env(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!(
            "{name} is not set (give the task a connection that holds it)"
        )),
    }
}

/// Parses `run --job J --task T ... [--params JSON] -- ARGS...` (the arguments after the
/// command name) and the state file named by `STEVEDORE_STATE_FILE`.
pub fn parse_run_args(argv: &[String], state_file: Option<&str>) -> Result<Context, String> {
    let mut context = Context {
        params: json!({}),
        ..Context::default()
    };
    let mut index = 0;
    while index < argv.len() {
        let flag = argv[index].as_str();
        if flag == "--" {
            context.args = argv[index + 1..].to_vec();
            break;
        }
        let value = argv
            .get(index + 1)
            .ok_or_else(|| format!("`{flag}` needs a value"))?
            .clone();
        match flag {
            "--job" => context.job_id = value,
            "--task" => context.task_id = value,
            "--run" => context.run_id = value,
            "--try" => {
                context.try_number = value
                    .parse()
                    .map_err(|_| format!("--try `{value}` is not a number"))?
            }
            "--logical-date" => context.logical_date = value,
            "--interval-start" => context.interval_start = value,
            "--interval-end" => context.interval_end = value,
            "--params" => {
                context.params = serde_json::from_str(&value)
                    .map_err(|e| format!("--params is not JSON: {e}"))?
            }
            other => return Err(format!("unknown option `{other}`")),
        }
        index += 2;
    }
    for (name, value) in [
        ("--job", &context.job_id),
        ("--task", &context.task_id),
        ("--run", &context.run_id),
    ] {
        if value.is_empty() {
            return Err(format!("`{name}` is required"));
        }
    }
    if let Some(path) = state_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read state file {path}: {e}"))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("state file {path} is not JSON: {e}"))?;
        context.state = (!value.is_null()).then_some(value);
    }
    Ok(context)
}

fn workspace() -> Option<std::path::PathBuf> {
    std::env::var_os("STEVEDORE_WORKSPACE").map(std::path::PathBuf::from)
}

fn emit(message: Value) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout means nobody reads the protocol any more; nothing useful to do.
    let _ = writeln!(stdout, "{message}");
    let _ = stdout.flush();
}

/// A `log` protocol message (levels: debug, info, warn, error).
pub fn log(level: &str, message: &str) {
    emit(json!({"type": "log", "level": level, "message": message}));
}

/// An output for downstream tasks' `{{ outputs.<task>.<key> }}`.
pub fn output(key: &str, value: impl Into<Value>) {
    emit(json!({"type": "output", "key": key, "value": value.into()}));
}

/// New incremental state, committed only if this try succeeds.
pub fn state(value: impl Into<Value>) {
    emit(json!({"type": "state", "value": value.into()}));
}

pub fn progress(done: u64, total: Option<u64>) {
    emit(json!({"type": "progress", "done": done, "total": total}));
}

pub fn metric(name: &str, value: f64) {
    emit(json!({"type": "metric", "name": name, "value": value}));
}

/// Why a `run` failed: said as the try's `{"type":"error"}` message, so it becomes the try's
/// failure reason. A `String` or `&str` error converts into a retryable one (`?` works on
/// them); [`Failure::not_retryable`] fails the task instance once, whatever its `retries`
/// (a refused credential, a config missing a key: no retry can mend it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn not_retryable(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            retryable: true,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Exit code of a failure no retry can mend (EX_CONFIG): the scheduler fails the task
/// instance without retrying it.
pub const EXIT_NOT_RETRYABLE: i32 = 78;

/// An `error` protocol message: why the try is about to fail.
pub fn error(message: &str, retryable: bool) {
    emit(json!({"type": "error", "message": message, "retryable": retryable}));
}

type RunFn = dyn FnOnce(&Context) -> Result<Outcome, Failure>;
type CheckFn = dyn Fn(&Context) -> Result<String, String>;

/// An integration: its name, version, the JSON Schema of its params (`spec`) and how it
/// checks its connection (`check`).
pub struct Integration {
    name: String,
    version: String,
    params_schema: Value,
    check: Option<Box<CheckFn>>,
}

impl Integration {
    pub fn new(name: &str, version: &str) -> Integration {
        Integration {
            name: name.to_owned(),
            version: version.to_owned(),
            params_schema: json!({"type": "object"}),
            check: None,
        }
    }

    /// What `check -- ARGS` does: try the connection (the environment, the task's args in
    /// `ctx.args`; the run's fields are empty) and say what was reached, or why not.
    pub fn check(
        mut self,
        check: impl Fn(&Context) -> Result<String, String> + 'static,
    ) -> Integration {
        self.check = Some(Box::new(check));
        self
    }

    pub fn params_schema(mut self, schema: Value) -> Integration {
        self.params_schema = schema;
        self
    }

    /// Dispatches `spec`, `check` and `run` from the process arguments, and exits.
    /// `run` may fail with a [`Failure`], a `String` or a `&str` (the last two retryable).
    pub fn run<E: Into<Failure>>(
        self,
        run: impl FnOnce(&Context) -> Result<Outcome, E> + 'static,
    ) -> ! {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let code = self.dispatch(&argv, Box::new(|ctx| run(ctx).map_err(Into::into)));
        std::process::exit(code)
    }

    fn dispatch(&self, argv: &[String], run: Box<RunFn>) -> i32 {
        match argv.first().map(String::as_str) {
            Some("spec") => {
                emit(json!({
                    "type": "spec",
                    "name": self.name,
                    "version": self.version,
                    "params": self.params_schema,
                }));
                0
            }
            Some("check") => {
                // `check [-- ARGS]`: the task's args, as `run` gets them.
                let args = match argv.get(1).map(String::as_str) {
                    None => Vec::new(),
                    Some("--") => argv[2..].to_vec(),
                    Some(other) => {
                        eprintln!("{}: check takes `-- ARGS`, not `{other}`", self.name);
                        return 2;
                    }
                };
                let context = Context {
                    args,
                    params: json!({}),
                    workspace: workspace(),
                    ..Context::default()
                };
                let result = match &self.check {
                    Some(check) => check(&context),
                    None => Ok("nothing to check".to_owned()),
                };
                match result {
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
            Some("run") => {
                let state_file = std::env::var("STEVEDORE_STATE_FILE").ok();
                let mut context = match parse_run_args(&argv[1..], state_file.as_deref()) {
                    Ok(context) => context,
                    Err(message) => {
                        eprintln!("{}: {message}", self.name);
                        return 2;
                    }
                };
                context.workspace = workspace();
                match run(&context) {
                    Ok(outcome) => outcome.exit_code(),
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
            _ => {
                eprintln!(
                    "usage: {} spec | check [-- ARGS] | run --job J --task T --run R --try N ... -- ARGS",
                    self.name
                );
                2
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_contract_arguments() {
        let context = parse_run_args(
            &argv("--job j --task t --run r --try 2 --logical-date 2024-01-01T00:00:00Z --interval-start a --interval-end b --params {\"n\":3} -- --records 5 --fast"),
            None,
        )
        .unwrap();
        assert_eq!(context.try_number, 2);
        assert_eq!(context.params["n"], 3);
        assert_eq!(context.arg("records"), Some("5"));
        assert!(context.flag("fast"));
        assert_eq!(context.state, None);
    }

    #[test]
    fn reports_missing_and_unknown_options() {
        assert!(parse_run_args(&argv("--job j --task t"), None)
            .unwrap_err()
            .contains("--run"));
        assert!(parse_run_args(&argv("--job j --bogus x"), None)
            .unwrap_err()
            .contains("--bogus"));
        assert!(parse_run_args(&argv("--job"), None)
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn reads_the_state_file() {
        let dir = std::env::temp_dir().join(format!("sdk-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, "{\"cursor\":\"x\"}").unwrap();
        let context = parse_run_args(&argv("--job j --task t --run r"), path.to_str()).unwrap();
        assert_eq!(context.state, Some(json!({"cursor": "x"})));
        std::fs::write(&path, "null").unwrap();
        assert_eq!(
            parse_run_args(&argv("--job j --task t --run r"), path.to_str())
                .unwrap()
                .state,
            None
        );
    }
}
