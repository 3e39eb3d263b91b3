//! `stevedore`: the command line. A thin layer over the library crates: it parses
//! arguments, opens the store and the backend, and prints tables or JSON.

mod commands;
mod config;
mod connectors;
mod images;
mod output;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "stevedore",
    version,
    about = "Container-per-task workflow scheduler"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes. Those left unset are looked for in the config file,
/// then take their defaults ([`settings::Settings`]).
#[derive(Args, Clone)]
pub struct Global {
    /// Metadata store: a SQLite file path or sqlite:// URL, or postgres://... [default:
    /// stevedore.db]
    #[arg(long, global = true, env = "STEVEDORE_DB")]
    pub db: Option<String>,
    /// Folder of job files. [default: jobs]
    #[arg(long, global = true, env = "STEVEDORE_JOBS")]
    pub jobs: Option<PathBuf>,
    /// Pools file (`name: slots`), read by the scheduler when it exists. [default:
    /// pools.yaml]
    #[arg(long, global = true, env = "STEVEDORE_POOLS")]
    pub pools: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Configuration file (YAML; docs/configuration.md): command-line options and
    /// STEVEDORE_* variables win over its settings.
    #[arg(long, global = true, env = "STEVEDORE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Scheduler and server (REST API) with the embedded store, in one process, until Ctrl-C.
    Standalone(ServeArgs),
    /// The scheduler alone.
    Scheduler,
    /// The schedulers of the store, with their last heartbeat and the runs they hold.
    Schedulers,
    /// The server alone: the REST API on the store the schedulers use.
    Server(ServeArgs),
    /// API tokens: create (printed once), list, revoke.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Job files: list, validate, trigger, pause.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Runs: list and show.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Task instances: logs.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Pools: named slot counts shared across jobs.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Connections: named secret sets injected into the tasks that list them.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Alerts the `notify:` rules made, and their delivery.
    #[command(subcommand)]
    Notifications(NotificationsCommand),
    /// Assets tasks produce, and the jobs their updates trigger.
    #[command(subcommand)]
    Assets(AssetsCommand),
    /// Incremental state a task committed: show, history, set, clear.
    #[command(subcommand)]
    State(StateCommand),
    /// Integration images under images/.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The metadata store.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The port the server listens on (0: any free one). [default: 8080]
    #[arg(long, env = "STEVEDORE_PORT")]
    pub port: Option<u16>,
    /// The address the server listens on. [default: 127.0.0.1]
    #[arg(long, env = "STEVEDORE_BIND")]
    pub bind: Option<std::net::IpAddr>,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Creates a token and prints it, once: only its hash is stored.
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// Tokens, with their role and when they were last used (never the tokens).
    List,
    /// Revokes the active token of that name.
    Revoke { name: String },
}

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Jobs in the jobs folder, with their state in the store.
    List,
    /// Checks job files (a file or a folder; default the jobs folder).
    Validate {
        path: Option<PathBuf>,
    },
    /// Creates a manual run and prints its id.
    Trigger {
        job: String,
        /// Overrides a param: key=value (value read as JSON when it parses, else as text).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Waits until the run ends; exits non-zero when it failed.
        #[arg(long)]
        wait: bool,
        /// Runs the tasks without their committed state (every task, or those of --task),
        /// as on their first run; what they commit replaces the old state.
        #[arg(long)]
        full_refresh: bool,
        /// With --full-refresh: only this task (repeatable).
        #[arg(long = "task", requires = "full_refresh")]
        tasks: Vec<String>,
    },
    /// Creates the runs of every data interval whose start lies in [--from, --to].
    Backfill {
        job: String,
        /// First logical date (job timezone unless it has an offset).
        #[arg(long)]
        from: String,
        /// Last logical date, included.
        #[arg(long)]
        to: String,
        /// Runs of the range that failed run again (their failed task instances cleared).
        #[arg(long)]
        rerun_failed: bool,
        /// Waits for the runs to end, with a progress bar; exits non-zero if one failed.
        #[arg(long)]
        wait: bool,
    },
    /// The next data intervals the job's schedule produces.
    Next {
        job: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// First interval at or after this date (job timezone unless it has an offset);
        /// default the job's start_date, else now.
        #[arg(long)]
        from: Option<String>,
    },
    /// Stops creating scheduled runs for a job.
    /// Makes (or replaces) the job's webhook token and prints it once: events posted to
    /// `POST /api/v1/jobs/JOB/events` with it are taken (the job needs `events:`).
    WebhookToken {
        job: String,
    },
    Pause {
        job: String,
    },
    /// Resumes a paused job.
    Unpause {
        job: String,
    },
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Newest runs first.
    List {
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A run and its task instances (a unique prefix of the run id is enough).
    Show { run: String },
    /// Cancels a queued or running run: kills its running tries, skips what has not
    /// started, fails the run.
    Cancel { run: String },
    /// The files a run's tries left in their workspaces (kept in the artifact store); with
    /// `--get PATH`, one of them written to `--out FILE` (standard output without it),
    /// checked against its sha256.
    Artifacts {
        run: String,
        /// Only this task's files (and, with `--get`, the task whose file it is).
        #[arg(long)]
        task: Option<String>,
        /// A file's path under the workspace: the latest try's that has it.
        #[arg(long)]
        get: Option<String>,
        /// Where `--get` writes the file (`-o` is the output format of every command).
        #[arg(long, value_name = "FILE", requires = "get")]
        out: Option<std::path::PathBuf>,
    },
    /// Waits until a run has finished and prints its state; exits non-zero unless it
    /// succeeded. With `--job` instead of a run: the job's newest run, waiting for one to
    /// be created (by its schedule, say) if there is none yet.
    Wait {
        #[arg(required_unless_present = "job", conflicts_with = "job")]
        run: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// Gives up (exit code 2) after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Log lines of a task instance's try (the latest by default).
    Logs {
        run: String,
        task: String,
        /// One instance of a mapped task (`TASK[N]` works too).
        #[arg(long)]
        map_index: Option<u32>,
        #[arg(long = "try")]
        try_number: Option<u32>,
        /// Keeps printing new lines until the try ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Runs a task instance again (a new try, with a fresh retry budget); the run runs again.
    Clear {
        run: String,
        task: String,
        /// Clears one instance of a mapped task (without it, a mapped task is cleared whole
        /// and expanded again from its list).
        #[arg(long)]
        map_index: Option<u32>,
        /// Clears every task downstream of it too.
        #[arg(long)]
        downstream: bool,
    },
    /// Sets a task instance's state by hand (a running try is stopped).
    Mark {
        run: String,
        task: String,
        /// Marks one instance of a mapped task.
        #[arg(long)]
        map_index: Option<u32>,
        #[arg(value_parser = ["success", "failed"])]
        state: String,
    },
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Adds (or replaces) a connection; its values are stored encrypted and never shown.
    Add {
        name: String,
        /// A variable of the connection: KEY=VALUE, or KEY alone to take the value from this
        /// command's environment (so it never shows in the process list). Repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE", required = true)]
        env: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Connections and the variable names they set (never their values).
    List,
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum AssetsCommand {
    /// Every asset the job files name or that was updated: producers, consumers, last update.
    List,
    /// One asset and its updates, newest first.
    Show {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand)]
pub enum NotificationsCommand {
    /// Newest first, with where each delivery stands.
    List {
        #[arg(long)]
        job: Option<String>,
        /// Only this run's (a unique prefix of its id is enough).
        #[arg(long)]
        run: Option<String>,
        /// Only those whose delivery failed: given up, or failing and tried again.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One notification and every delivery attempt (a unique prefix of its id is enough).
    Show { id: String },
    /// Sends a notification again at once (the receiver sees the same id).
    Retry { id: String },
}

#[derive(Subcommand)]
pub enum StateCommand {
    /// The task's committed state now: what its next run's tries get.
    Show { job: String, task: String },
    /// Every state the task committed, newest first: each successful run's, each set and
    /// clear.
    History {
        job: String,
        task: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Sets the task's committed state from a JSON file (`-` reads stdin); the next run's
    /// tries get it.
    Set {
        job: String,
        task: String,
        #[arg(long = "from-file", value_name = "FILE")]
        from_file: PathBuf,
    },
    /// Clears the task's committed state: its next run starts from nothing.
    Clear { job: String, task: String },
}

#[derive(Subcommand)]
pub enum PoolsCommand {
    List,
    /// Creates or resizes a pool (a pools file, if it names the pool, wins at the next sync).
    Set {
        name: String,
        slots: i64,
        #[arg(long, default_value = "")]
        description: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Builds and tags every image under images/ (or the named ones) from its VERSION.
    Build {
        names: Vec<String>,
        /// Folder holding the images.
        #[arg(long, default_value = "images")]
        dir: PathBuf,
        /// Also pushes each image built from a Dockerfile to the registry.
        #[arg(long)]
        push: bool,
        /// The registry `--push` pushes to. [default: 127.0.0.1:5000]
        #[arg(long, env = "STEVEDORE_REGISTRY")]
        registry: Option<String>,
        /// A connection holding REGISTRY_USERNAME and REGISTRY_PASSWORD for a registry that
        /// asks for credentials (the same connection tasks name in `registry_connection`).
        #[arg(long, requires = "push")]
        registry_connection: Option<String>,
    },
    /// An image's identity, labels and `spec`.
    Inspect {
        image: String,
        /// How long `spec` may take before the image is said not to implement it (its
        /// container is removed).
        #[arg(long, default_value = "30s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Wraps a published Singer or Airbyte connector, unmodified, as an integration image
    /// `stevedore/NAME:VERSION` whose entrypoint (stevedore-shim) speaks the contract.
    Wrap {
        /// singer-tap, singer-target, airbyte-source or airbyte-destination.
        kind: String,
        /// The package, pinned: PACKAGE==VERSION.
        package: String,
        /// The image's name. [default: the package's]
        #[arg(long)]
        name: Option<String>,
        /// The connector's executable in the package. [default: the package's name]
        #[arg(long)]
        command: Option<String>,
        /// The stevedore-shim binary to copy in. [default: beside this executable]
        #[arg(long, env = "STEVEDORE_SHIM")]
        shim: Option<PathBuf>,
        /// Also pushes the image to the registry.
        #[arg(long)]
        push: bool,
        /// The registry `--push` pushes to. [default: 127.0.0.1:5000]
        #[arg(long, env = "STEVEDORE_REGISTRY")]
        registry: Option<String>,
    },
    /// Runs an image's `check` (does its connection work?) with connections' variables in
    /// its environment and the task's args after `--`.
    Check {
        image: String,
        /// A connection whose variables the check gets (repeatable).
        #[arg(long = "connection")]
        connections: Vec<String>,
        /// How long `check` may take before the image is said not to implement it (its
        /// container is removed).
        #[arg(long, default_value = "30s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
        /// The task's args, as in the job file.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// A duration such as `30s`, `2m` or `500ms` for `--timeout`.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    stevedore_domain::duration::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Creates or upgrades the store's schema.
    Migrate,
    /// Removes ended runs and all they left (task instances, tries, log lines and archived
    /// logs, files, outputs, alerts), in batches: what `retention` does daily, on demand.
    /// Never a run that has not ended, a job's latest scheduled run, the committed state or
    /// a job version still used.
    Clean {
        /// Runs that ended before this date or time (in UTC unless it carries an offset);
        /// all ended runs without it.
        #[arg(long)]
        before: Option<String>,
        /// This job's runs only.
        #[arg(long)]
        job: Option<String>,
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn init_tracing(setting: Option<&str>, default: &str) {
    let filter = setting
        .and_then(|text| tracing_subscriber::EnvFilter::try_new(text).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = match &cli.command {
        Command::Standalone(serve) | Command::Server(serve) => Some(serve),
        _ => None,
    };
    let settings =
        match settings::Settings::resolve(&cli.global, serve, &|name| std::env::var(name).ok()) {
            Ok(settings) => settings,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
    let long_running = matches!(
        cli.command,
        Command::Standalone(_) | Command::Scheduler | Command::Server(_)
    );
    init_tracing(
        settings.log.as_deref(),
        if long_running {
            "info,sqlx=warn"
        } else {
            "warn"
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let global = settings;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Standalone(_) => commands::serve(&global, commands::Serve::Standalone).await,
            Command::Scheduler => commands::serve(&global, commands::Serve::Scheduler).await,
            Command::Schedulers => commands::schedulers(&global).await,
            Command::Server(_) => commands::serve(&global, commands::Serve::Server).await,
            Command::Tokens(command) => commands::tokens(&global, command).await,
            Command::Jobs(command) => commands::jobs(&global, command).await,
            Command::Runs(command) => commands::runs(&global, command).await,
            Command::Tasks(command) => commands::tasks(&global, command).await,
            Command::Pools(command) => commands::pools(&global, command).await,
            Command::Connections(command) => commands::connections(&global, command).await,
            Command::Notifications(command) => commands::notifications(&global, command).await,
            Command::Assets(command) => commands::assets(&global, command).await,
            Command::State(command) => commands::state(&global, command).await,
            Command::Images(ImagesCommand::Build {
                names,
                dir,
                push,
                registry,
                registry_connection,
            }) => {
                let auth = match registry_connection {
                    Some(name) => Some(commands::registry_auth(&global, &name).await?),
                    None => None,
                };
                let registry = registry.unwrap_or_else(|| global.registry.clone());
                let push = push.then(|| images::PushTo { registry, auth });
                images::build(&global.docker()?, &dir, &names, push.as_ref()).await
            }
            Command::Images(ImagesCommand::Check {
                image,
                connections,
                timeout,
                args,
            }) => {
                let values = commands::connection_values(&global, &connections).await?;
                images::check(
                    &global.docker()?,
                    &image,
                    values,
                    &args,
                    timeout,
                    global.output == Format::Json,
                )
                .await
            }
            Command::Images(ImagesCommand::Wrap {
                kind,
                package,
                name,
                command,
                shim,
                push,
                registry,
            }) => {
                let declaration = connectors::Declaration::new(
                    &kind,
                    &package,
                    name.as_deref(),
                    command.as_deref(),
                )?;
                let shim = connectors::shim_path(shim)?;
                let registry = registry.unwrap_or_else(|| global.registry.clone());
                let push = push.then(|| images::PushTo {
                    registry,
                    auth: None,
                });
                connectors::wrap(&global.docker()?, &declaration, &shim, push.as_ref()).await
            }
            Command::Images(ImagesCommand::Inspect { image, timeout }) => {
                images::inspect(
                    &global.docker()?,
                    &image,
                    timeout,
                    global.output == Format::Json,
                )
                .await
            }
            Command::Db(DbCommand::Migrate) => commands::migrate(&global).await,
            Command::Db(DbCommand::Clean {
                before,
                job,
                dry_run,
            }) => commands::clean(&global, before, job, dry_run).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
