//! Job files: YAML parsed into a validated [`Job`], or a list of [`JobError`]s that each name
//! the file, the line and what is wrong. `docs/job-file.md` is the reference for users.
//!
//! The types of a validated job are here; the file's raw shape is in `raw.rs`, parsing and
//! each field's validation in `parse.rs`, the checks across tasks (upstreams, cycles,
//! template variables) in `checks.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::assets::{check_asset_name, job_asset, AssetMode, AssetTrigger};
use crate::duration::parse_duration;
use crate::image::ImageRef;
use crate::mapping::{ForEach, MAX_MAP_LENGTH};
use crate::notify::{NotifyEvent, NotifyRule};
use crate::retry::RetryPolicy;
use crate::schedule::{local_to_utc, Schedule, Timetable};
use crate::template::{self, Variable};
use crate::trigger::TriggerRule;

/// A validated job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub description: Option<String>,
    pub timetable: Timetable,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    /// Default params; a manual trigger may override them.
    pub params: Map<String, Value>,
    /// In the order of the file.
    pub tasks: Vec<Task>,
    /// The image names (`registry/path/name`, no tag) a templated `image` may render to when
    /// a param or an output chooses it; without it, they may not (docs/security.md).
    pub allowed_images: Vec<String>,
    /// SHA-256 of the file's bytes: the job version a run records.
    pub version: String,
    /// The job's `notify:` rules: they hear the run's events ([`crate::notify`]).
    pub notify: Vec<NotifyRule>,
    /// A run not ended this long after its data interval ended (scheduled runs) or after
    /// it was queued (manual, backfill) makes a `deadline_missed` event, once; it goes on.
    pub deadline: Option<Duration>,
    /// How long the job's ended runs are kept (`retention`); `None`: the configuration's.
    pub retention: Option<crate::retention::Retention>,
    /// A run not ended this long after it started is failed, its running tries killed
    /// (reason `run timeout`), as Airflow's `dagrun_timeout`.
    pub run_timeout: Option<Duration>,
    /// How many failed runs in a row make a `repeated_failure` event (default 3).
    pub repeated_failure_after: u32,
    /// `schedule: {assets: ...}` or `{after: ...}`: the job runs when they are updated
    /// ([`crate::assets`]); its timetable is then manual.
    pub asset_trigger: Option<AssetTrigger>,
    /// `events:`: the job accepts events posted to it and runs on batches of them.
    pub events: Option<EventsConfig>,
}

/// A job's `events:` ([docs/webhooks.md]): `POST /api/v1/jobs/{job_id}/events` stores
/// events, and a run starts when `max_batch` wait or the oldest has waited `max_wait`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    pub max_batch: u32,
    pub max_wait: Duration,
    /// The largest request body accepted, in bytes.
    pub max_body: u64,
    /// A connection whose `WEBHOOK_SECRET` signs requests (`X-Stevedore-Signature`), as
    /// another way in than the job's webhook token.
    pub secret_connection: Option<String>,
}

/// `events:` defaults: runs of at most 100 events, after at most a minute, bodies of 1 MiB.
pub const DEFAULT_MAX_BATCH: u32 = 100;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// The largest `max_batch` and `max_body` a job may ask for.
pub const MAX_BATCH_LIMIT: u32 = 100_000;
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// A task with the job's `defaults` merged in.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: String,
    /// An image reference, possibly with `{{ }}` templates (validated after rendering).
    pub image: String,
    /// Overrides the image's entrypoint when set.
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub connections: Vec<String>,
    /// The connection holding the registry credentials the image is pulled with
    /// (`REGISTRY_USERNAME`, `REGISTRY_PASSWORD`); never put in the container's environment.
    pub registry_connection: Option<String>,
    /// Labels the Docker host that runs the task must carry (`placement: {zone: eu}`).
    pub placement: BTreeMap<String, String>,
    pub resources: Resources,
    pub pool: String,
    pub pool_slots: u32,
    pub priority: i32,
    pub depends_on: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub retry: RetryPolicy,
    /// Per try; the container is killed at the deadline.
    pub timeout: Option<Duration>,
    pub backend: BackendKind,
    pub pull_policy: PullPolicy,
    pub depends_on_past: bool,
    pub reschedule_interval: Duration,
    pub sensor_timeout: Duration,
    /// The image's filesystem is mounted read-only.
    pub read_only_rootfs: bool,
    /// The user the try runs as (`uid`, `uid:gid` or a name), instead of the image's.
    pub user: Option<String>,
    /// The largest file a try may leave in its workspace (`max_artifact_size`, default
    /// 10 GiB): a larger one fails the try, naming the file and its size.
    pub max_artifact_size: u64,
    /// The task's `notify:` rules (its own, else the `defaults`'): they hear its events.
    pub notify: Vec<NotifyRule>,
    /// The assets each successful try of the task updates (`produces`).
    pub produces: Vec<String>,
    /// A mapped task: one task instance per item of this list ([`crate::mapping`]).
    pub for_each: Option<ForEach>,
    /// How many instances of a mapped task may be active at once in a run.
    pub max_active: Option<u32>,
    /// Set on the [`Job::instance`] of a mapped task, whose `id` is then the instance key
    /// `task[N]`; `None` in the job itself.
    pub map_index: Option<u32>,
    /// The item of a mapped instance, when the scheduler read it with the instance (else the
    /// try reads it from the store); `None` in the job itself.
    pub map_item: Option<Value>,
}

impl Task {
    /// The task's id in the job file (an instance's `id` is its key, `task[N]`).
    pub fn task_id(&self) -> &str {
        crate::mapping::task_of_key(&self.id)
    }
}

/// `max_artifact_size` when a task sets none: 10 GiB.
pub const DEFAULT_MAX_ARTIFACT_SIZE: u64 = 10 * 1024 * 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// CPUs, such as 0.5.
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Docker,
    Nomad,
    Process,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Nomad => "nomad",
            BackendKind::Process => "process",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl Job {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|task| task.id == id)
    }

    /// The task a task instance key (`task` or `task[N]`) belongs to.
    pub fn task_of(&self, key: &str) -> Option<&Task> {
        self.task(crate::mapping::task_of_key(key))
    }

    /// The task as one task instance runs it: the task itself for an unmapped key, and for
    /// `task[N]` of a mapped task a copy whose `id` is the key and `map_index` is N.
    pub fn instance(&self, key: &str) -> Option<Task> {
        let (task_id, index) = crate::mapping::split_key(key);
        let task = self.task(task_id)?;
        match index {
            None => Some(task.clone()),
            Some(_) if task.for_each.is_none() => None,
            Some(index) => {
                let mut instance = task.clone();
                instance.id = key.to_owned();
                instance.map_index = Some(index);
                Some(instance)
            }
        }
    }

    /// Tasks that no other task depends on: they decide the run's outcome.
    pub fn leaves(&self) -> Vec<&Task> {
        let upstreams: BTreeSet<&str> = self
            .tasks
            .iter()
            .flat_map(|t| t.depends_on.iter().map(String::as_str))
            .collect();
        self.tasks
            .iter()
            .filter(|t| !upstreams.contains(t.id.as_str()))
            .collect()
    }

    /// Every task `task_id` depends on, directly or not (its run's files it is staged with).
    pub fn ancestors(&self, task_id: &str) -> BTreeSet<&str> {
        let index: HashMap<&str, &Task> = self.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        match index.get(task_id) {
            Some(task) => checks::ancestors(task, &index),
            None => BTreeSet::new(),
        }
    }

    /// Direct downstream task ids of each task.
    pub fn downstream(&self) -> HashMap<&str, Vec<&str>> {
        let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
        for task in &self.tasks {
            for upstream in &task.depends_on {
                map.entry(upstream.as_str())
                    .or_default()
                    .push(task.id.as_str());
            }
        }
        map
    }
}

/// One problem in a job file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub file: String,
    /// 1-based; `None` when the problem has no single place (such as an empty file).
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for JobError {}

mod checks;
mod parse;
mod raw;
#[cfg(test)]
mod tests;

use checks::*;
use parse::*;
pub use parse::{parse_date, parse_job, parse_memory};
use raw::*;
