//! Stevedore's domain: the pure rules of the product, with no I/O and no async.
//!
//! - [`job`]: the job file (YAML) parsed and validated into a [`job::Job`], with errors that
//!   name the file, the line and what is wrong.
//! - [`assets`]: assets tasks produce and the jobs their updates trigger.
//! - [`schedule`]: cron schedules and the data intervals they produce, in a job's timezone.
//! - [`retry`]: when the next try of a failed task instance starts (Airflow's formula).
//! - [`state`]: run, task-instance and try states, what an exit code means, why a try was
//!   stopped.
//! - [`attempt`]: what a try's end means (try state, task state, next try, reason).
//! - [`clock`]: where "now" comes from (the system's clock, or a test's).
//! - [`run`]: what a run does next and when it is over.
//! - [`trigger`]: trigger rules: whether a task instance runs, waits, skips or fails upstream.
//! - [`mapping`]: task mapping (`for_each`): task instance keys, expansion, `max_active`.
//! - [`limits`]: pools, `max_active_tasks` and priority: which ready task instances start.
//! - [`template`]: `{{ variable }}` rendering of args, env and image.
//! - [`protocol`]: the entrypoint contract: arguments, environment and stdout messages,
//!   and the limits a try's output is held to.
//! - [`mask`]: hiding connection values (and their common encodings) in what a try prints.
//! - [`duration`] and [`image`]: small value parsers used by job files.
//! - [`role`]: API roles and what each may do.
//! - [`names`]: the naming rules of ids and environment variables.
//! - [`notify`]: alert events and the `notify:` rules that route them to connections.

pub mod assets;
pub mod attempt;
pub mod clock;
pub mod duration;
pub mod image;
pub mod job;
pub mod limits;
pub mod mapping;
pub mod mask;
pub mod names;
pub mod notify;
pub mod protocol;
pub mod retention;
pub mod retry;
pub mod role;
pub mod run;
pub mod schedule;
pub mod state;
pub mod template;
pub mod trigger;
