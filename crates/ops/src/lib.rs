//! Stevedore's use-cases: what an operator (or the scheduler on their behalf) does, written
//! once and called by the CLI, the REST API and the web UI alike, so the same action
//! answers the same way at every door. It depends on the domain and the store only: no
//! backend, no engine, no HTTP (windmill's `windmill-queue` between its API and its
//! workers; see docs/architecture.md).
//!
//! - [`actions`]: trigger, pause, cancel, clear, mark.
//! - [`backfill`]: the runs of a range of data intervals.
//! - [`connections`]: sealing, opening and checking connections; registry credentials.
//! - [`logs`]: following a try's log as it grows.
//! - [`notifications`]: alert rules checked against the connections; the outbox listed and
//!   retried.
//! - [`pools`]: pools set by hand.
//! - [`jobs_dir`]: reading job files (a bad file never stops the good ones).
//! - [`runs`]: creating scheduled and manual runs.
//! - [`state`]: a task's committed state shown, its history, set and cleared by an operator.
//! - [`views`]: the JSON shapes of runs, task instances and tries, for every door.

pub mod actions;
pub mod assets;
pub mod backfill;
pub mod connections;
pub mod jobs_dir;
pub mod logs;
pub mod notifications;
pub mod pools;
pub mod runs;
pub mod state;
pub mod views;
