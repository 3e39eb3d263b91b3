//! Job files: YAML parsed into a validated [`Job`], or a list of [`JobError`]s that each name
//! the file, the line and what is wrong. `docs/job-file.md` is the reference for users.

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

use crate::duration::parse_duration;
use crate::image::ImageRef;
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
}

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
}

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

/// A YAML scalar read as text: `PAGE_SIZE: 100` and `PAGE_SIZE: "100"` mean the same.
#[derive(Clone, Debug, PartialEq)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    id: Spanned<String>,
    description: Option<String>,
    schedule: Option<Spanned<Option<String>>>,
    timezone: Option<Spanned<String>>,
    start_date: Option<Spanned<Scalar>>,
    end_date: Option<Spanned<Option<Scalar>>>,
    catchup: Option<bool>,
    max_active_runs: Option<u32>,
    max_active_tasks: Option<u32>,
    params: Option<Map<String, Value>>,
    defaults: Option<Spanned<RawTask>>,
    allowed_images: Option<Spanned<Vec<String>>>,
    tasks: Spanned<Vec<Spanned<RawTask>>>,
}

/// A task entry, or the `defaults` block (which may not carry `id` or `depends_on`).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    command: Option<Vec<String>>,
    args: Option<Spanned<Vec<Scalar>>>,
    env: Option<Spanned<BTreeMap<String, Scalar>>>,
    connections: Option<Spanned<Vec<String>>>,
    registry_connection: Option<Spanned<String>>,
    placement: Option<Spanned<BTreeMap<String, Scalar>>>,
    resources: Option<RawResources>,
    pool: Option<Spanned<String>>,
    pool_slots: Option<u32>,
    priority: Option<i32>,
    depends_on: Option<Vec<Spanned<String>>>,
    trigger_rule: Option<Spanned<String>>,
    retries: Option<u32>,
    retry_delay: Option<Spanned<Scalar>>,
    retry_exponential_backoff: Option<bool>,
    max_retry_delay: Option<Spanned<Scalar>>,
    timeout: Option<Spanned<Scalar>>,
    backend: Option<Spanned<String>>,
    pull_policy: Option<Spanned<String>>,
    depends_on_past: Option<bool>,
    reschedule_interval: Option<Spanned<Scalar>>,
    sensor_timeout: Option<Spanned<Scalar>>,
    read_only_rootfs: Option<bool>,
    user: Option<Spanned<Scalar>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu: Option<f64>,
    memory: Option<Spanned<Scalar>>,
}

/// Collects errors for one file.
struct Problems<'a> {
    file: &'a str,
    errors: Vec<JobError>,
}

impl Problems<'_> {
    fn at(&mut self, line: u64, message: impl Into<String>) {
        self.errors.push(JobError {
            file: self.file.to_owned(),
            line: Some(line),
            message: message.into(),
        });
    }
}

fn line_of<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

use crate::names::is_identifier;

/// Parses and validates one job file. `file` is only used in error messages.
pub fn parse_job(file: &str, text: &str) -> Result<Job, Vec<JobError>> {
    if text.trim().is_empty() {
        return Err(vec![JobError {
            file: file.to_owned(),
            line: None,
            message: "the file is empty; a job needs at least `id` and `tasks`".to_owned(),
        }]);
    }
    let raw: RawJob = serde_saphyr::from_str(text).map_err(|error| {
        vec![JobError {
            file: file.to_owned(),
            line: error.location().map(|location| location.line()),
            message: yaml_error_sentence(&error),
        }]
    })?;
    let mut problems = Problems {
        file,
        errors: Vec::new(),
    };
    let job = build_job(raw, text, &mut problems);
    if problems.errors.is_empty() {
        Ok(job)
    } else {
        problems.errors.sort_by_key(|error| error.line);
        Err(problems.errors)
    }
}

/// The parser's message without its source snippet: the file and line are ours to add.
fn yaml_error_sentence(error: &serde_saphyr::Error) -> String {
    let rendered = error.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    // Strip a trailing " at line N column M" that the parser may add.
    let sentence = match first.find(" at line ") {
        Some(index) => &first[..index],
        None => first,
    };
    sentence.trim_end_matches('.').to_owned()
}

fn build_job(raw: RawJob, text: &str, problems: &mut Problems<'_>) -> Job {
    let id = raw.id.value.clone();
    if !is_identifier(&id) {
        problems.at(
            line_of(&raw.id),
            format!("job id `{id}` may only hold lowercase letters, digits and _"),
        );
    }

    let timezone = match &raw.timezone {
        None => Tz::UTC,
        Some(spanned) => spanned.value.parse::<Tz>().unwrap_or_else(|_| {
            problems.at(
                line_of(spanned),
                format!(
                    "`{}` is not an IANA timezone such as Europe/Berlin",
                    spanned.value
                ),
            );
            Tz::UTC
        }),
    };

    let schedule_text = raw.schedule.as_ref().and_then(|s| s.value.clone());
    let schedule = Schedule::parse(schedule_text.as_deref()).unwrap_or_else(|message| {
        let line = raw.schedule.as_ref().map(line_of).unwrap_or(1);
        problems.at(line, format!("schedule {message}"));
        Schedule::Manual
    });

    let start_date = raw.start_date.as_ref().and_then(|spanned| {
        parse_date(&spanned.value.0, timezone)
            .map_err(|message| problems.at(line_of(spanned), format!("start_date {message}")))
            .ok()
    });
    let end_date = raw.end_date.as_ref().and_then(|spanned| {
        let value = spanned.value.as_ref()?;
        parse_date(&value.0, timezone)
            .map_err(|message| problems.at(line_of(spanned), format!("end_date {message}")))
            .ok()
    });
    if matches!(schedule, Schedule::Once) && start_date.is_none() {
        let line = raw.schedule.as_ref().map(line_of).unwrap_or(1);
        problems.at(line, "schedule @once needs a start_date");
    }
    if let (Some(start), Some(end), Some(spanned)) = (start_date, end_date, &raw.end_date) {
        if end < start {
            problems.at(line_of(spanned), "end_date is before start_date");
        }
    }

    let params = raw.params.unwrap_or_default();
    let defaults = raw
        .defaults
        .as_ref()
        .map(|d| d.value.clone())
        .unwrap_or_default();
    if let Some(spanned) = &raw.defaults {
        if spanned.value.id.is_some() || spanned.value.depends_on.is_some() {
            problems.at(
                line_of(spanned),
                "defaults may not set `id` or `depends_on`",
            );
        }
    }

    if raw.tasks.value.is_empty() {
        problems.at(line_of(&raw.tasks), "a job needs at least one task");
    }

    let mut tasks = Vec::new();
    let mut task_lines = HashMap::new();
    for spanned in &raw.tasks.value {
        let line = line_of(spanned);
        if let Some(task) = build_task(&spanned.value, &defaults, line, problems) {
            if task_lines.contains_key(&task.id) {
                problems.at(
                    line,
                    format!(
                        "task id `{}` is used twice (first on line {})",
                        task.id, task_lines[&task.id]
                    ),
                );
                continue;
            }
            task_lines.insert(task.id.clone(), line);
            tasks.push(task);
        }
    }

    let mut allowed_images = Vec::new();
    if let Some(spanned) = &raw.allowed_images {
        for name in &spanned.value {
            match ImageRef::parse(name) {
                Ok(image) if image.tag.is_none() && image.digest.is_none() => {
                    allowed_images.push(image.name())
                }
                Ok(_) => problems.at(
                    line_of(spanned),
                    format!("allowed_images: `{name}` must be an image name without a tag or digest, such as localhost:5000/integrations/http-extract"),
                ),
                Err(message) => problems.at(line_of(spanned), format!("allowed_images: {message}")),
            }
        }
    }

    check_dependencies(&raw.tasks.value, &tasks, problems);
    if let Some(cycle) = find_cycle(&tasks) {
        let line = task_lines.get(&cycle[0]).copied().unwrap_or(1);
        problems.at(line, format!("tasks form a cycle: {}", cycle.join(" → ")));
    } else {
        check_templates(
            &raw.tasks.value,
            &tasks,
            &params,
            !allowed_images.is_empty(),
            problems,
        );
    }

    let max_active_runs = raw.max_active_runs.unwrap_or(16);
    let max_active_tasks = raw.max_active_tasks.unwrap_or(16);
    if max_active_runs == 0 || max_active_tasks == 0 {
        problems.at(1, "max_active_runs and max_active_tasks must be at least 1");
    }

    Job {
        id,
        description: raw.description,
        timetable: Timetable {
            schedule,
            timezone,
            start_date,
            end_date,
            catchup: raw.catchup.unwrap_or(false),
        },
        max_active_runs,
        max_active_tasks,
        params,
        tasks,
        allowed_images,
        version: hex(&Sha256::digest(text.as_bytes())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A date or date-time in the job's timezone; an explicit offset or `Z` wins.
pub fn parse_date(text: &str, timezone: Tz) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .map_err(|_| {
            format!("`{text}` is not a date; write it like 2024-01-01 or 2024-01-01T00:00:00")
        })?;
    Ok(local_to_utc(naive, timezone))
}

/// A memory size: bytes, or a number with Ki, Mi, Gi (or K, M, G) after it.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}` is not a memory size such as 256Mi or 1Gi"))?;
    let multiplier: u64 = match &text[digits..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}`; use Ki, Mi, Gi, K, M or G"
            ))
        }
    };
    Ok(number.saturating_mul(multiplier))
}

fn build_task(
    raw: &RawTask,
    defaults: &RawTask,
    line: u64,
    problems: &mut Problems<'_>,
) -> Option<Task> {
    let Some(id_spanned) = &raw.id else {
        problems.at(line, "a task needs an `id`");
        return None;
    };
    let id = id_spanned.value.clone();
    if !is_identifier(&id) {
        problems.at(
            line_of(id_spanned),
            format!("task id `{id}` may only hold lowercase letters, digits and _"),
        );
    }
    // Each field comes from the task, else from `defaults`.
    macro_rules! pick {
        ($field:ident) => {
            raw.$field.as_ref().or(defaults.$field.as_ref())
        };
    }
    let duration = |field: &str, value: Option<&Spanned<Scalar>>, problems: &mut Problems<'_>| {
        let spanned = value?;
        parse_duration(&spanned.value.0)
            .map_err(|message| {
                problems.at(line_of(spanned), format!("task `{id}`: {field} {message}"))
            })
            .ok()
    };

    let runs_a_process = pick!(backend).is_some_and(|b| b.value == "process");
    let image = match pick!(image) {
        // A local process needs no image: its `command` is what runs.
        None if runs_a_process => String::new(),
        None => {
            problems.at(line, format!("task `{id}` needs an `image`"));
            String::new()
        }
        Some(spanned) => {
            if !spanned.value.contains("{{") {
                if let Err(message) = ImageRef::parse(&spanned.value) {
                    problems.at(line_of(spanned), format!("task `{id}`: {message}"));
                }
            }
            spanned.value.clone()
        }
    };

    let trigger_rule = match pick!(trigger_rule) {
        None => TriggerRule::AllSuccess,
        Some(spanned) => spanned.value.parse().unwrap_or_else(|message: String| {
            problems.at(line_of(spanned), format!("task `{id}`: {message}"));
            TriggerRule::AllSuccess
        }),
    };
    let backend = match pick!(backend) {
        None => BackendKind::Docker,
        Some(spanned) => match spanned.value.as_str() {
            "docker" => BackendKind::Docker,
            "nomad" => BackendKind::Nomad,
            "process" => BackendKind::Process,
            other => {
                problems.at(
                    line_of(spanned),
                    format!("task `{id}`: backend `{other}` is not one of docker, nomad, process"),
                );
                BackendKind::Docker
            }
        },
    };
    let pull_policy = match pick!(pull_policy) {
        None => PullPolicy::IfNotPresent,
        Some(spanned) => match spanned.value.as_str() {
            "if_not_present" => PullPolicy::IfNotPresent,
            "always" => PullPolicy::Always,
            "never" => PullPolicy::Never,
            other => {
                problems.at(
                    line_of(spanned),
                    format!(
                        "task `{id}`: pull_policy `{other}` is not one of if_not_present, always, never"
                    ),
                );
                PullPolicy::IfNotPresent
            }
        },
    };
    let command = pick!(command).cloned();
    if backend == BackendKind::Process && command.is_none() {
        problems.at(
            line,
            format!("task `{id}`: the process backend needs a `command`"),
        );
    }

    let mut resources = Resources::default();
    if let Some(raw_resources) = pick!(resources) {
        resources.cpu = raw_resources.cpu;
        if raw_resources.cpu.is_some_and(|cpu| cpu <= 0.0) {
            problems.at(line, format!("task `{id}`: resources.cpu must be above 0"));
        }
        if let Some(spanned) = &raw_resources.memory {
            match parse_memory(&spanned.value.0) {
                Ok(bytes) => resources.memory_bytes = Some(bytes),
                Err(message) => problems.at(line_of(spanned), format!("task `{id}`: {message}")),
            }
        }
    }

    let connections = pick!(connections)
        .map(|c| c.value.clone())
        .unwrap_or_default();
    for connection in &connections {
        if !is_identifier(connection) {
            let line = pick!(connections).map(line_of).unwrap_or(line);
            problems.at(
                line,
                format!("task `{id}`: connection name `{connection}` may only hold a-z, 0-9 and _"),
            );
        }
    }
    let registry_connection = pick!(registry_connection).map(|c| c.value.clone());
    if let Some(name) = &registry_connection {
        if !is_identifier(name) {
            let line = pick!(registry_connection).map(line_of).unwrap_or(line);
            problems.at(
                line,
                format!("task `{id}`: registry_connection `{name}` may only hold a-z, 0-9 and _"),
            );
        }
    }
    let placement = pick!(placement).map(scalar_texts).unwrap_or_default();
    let pool = pick!(pool)
        .map(|p| p.value.clone())
        .unwrap_or_else(|| "default".to_owned());
    let pool_slots = raw.pool_slots.or(defaults.pool_slots).unwrap_or(1);
    if pool_slots == 0 {
        problems.at(line, format!("task `{id}`: pool_slots must be at least 1"));
    }

    let retry_delay = duration("retry_delay", pick!(retry_delay), problems);
    let max_retry_delay = duration("max_retry_delay", pick!(max_retry_delay), problems);
    let timeout = duration("timeout", pick!(timeout), problems);
    let reschedule_interval = duration("reschedule_interval", pick!(reschedule_interval), problems);
    let sensor_timeout = duration("sensor_timeout", pick!(sensor_timeout), problems);
    if timeout == Some(Duration::ZERO) {
        problems.at(line, format!("task `{id}`: timeout must be above 0"));
    }

    let user = pick!(user).map(|spanned| spanned.value.0.clone());
    if let Some(name) = &user {
        if !is_user(name) {
            let line = pick!(user).map(line_of).unwrap_or(line);
            problems.at(
                line,
                format!(
                    "task `{id}`: user `{name}` is not a user such as 1000, 1000:1000 or nobody"
                ),
            );
        }
    }

    let env = pick!(env).map(scalar_texts).unwrap_or_default();
    let args = pick!(args)
        .map(|spanned| spanned.value.iter().map(|v| v.0.clone()).collect())
        .unwrap_or_default();

    Some(Task {
        id: id.clone(),
        image,
        command,
        args,
        env,
        connections,
        registry_connection,
        placement,
        resources,
        pool,
        pool_slots,
        priority: raw.priority.or(defaults.priority).unwrap_or(1),
        depends_on: raw
            .depends_on
            .as_ref()
            .map(|list| list.iter().map(|d| d.value.clone()).collect())
            .unwrap_or_default(),
        trigger_rule,
        retry: RetryPolicy {
            retries: raw.retries.or(defaults.retries).unwrap_or(0),
            retry_delay: retry_delay.unwrap_or(RetryPolicy::default().retry_delay),
            exponential_backoff: raw
                .retry_exponential_backoff
                .or(defaults.retry_exponential_backoff)
                .unwrap_or(false),
            max_retry_delay,
        },
        timeout,
        backend,
        pull_policy,
        depends_on_past: raw
            .depends_on_past
            .or(defaults.depends_on_past)
            .unwrap_or(false),
        reschedule_interval: reschedule_interval.unwrap_or(Duration::from_secs(60)),
        sensor_timeout: sensor_timeout.unwrap_or(Duration::from_secs(7 * 86_400)),
        read_only_rootfs: raw
            .read_only_rootfs
            .or(defaults.read_only_rootfs)
            .unwrap_or(false),
        user,
    })
}

/// A user as Docker and Nomad take it: a name or uid, optionally `:group` or `:gid`.
fn is_user(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            && !p.starts_with('-')
    };
    match text.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(text),
    }
}

fn check_dependencies(raw_tasks: &[Spanned<RawTask>], tasks: &[Task], problems: &mut Problems<'_>) {
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for raw in raw_tasks {
        let Some(task_id) = raw.value.id.as_ref().map(|id| id.value.as_str()) else {
            continue;
        };
        for upstream in raw.value.depends_on.iter().flatten() {
            if upstream.value == task_id {
                problems.at(
                    line_of(upstream),
                    format!("task `{task_id}` depends on itself"),
                );
            } else if !ids.contains(upstream.value.as_str()) {
                problems.at(
                    line_of(upstream),
                    format!(
                        "task `{task_id}` depends on `{}`, which is not a task of this job",
                        upstream.value
                    ),
                );
            }
        }
    }
}

/// A dependency cycle as a path of task ids that returns to its first one.
fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        index: &HashMap<&'a str, &'a Task>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Visiting);
        path.push(id);
        if let Some(task) = index.get(id) {
            for upstream in &task.depends_on {
                if upstream != id && index.contains_key(upstream.as_str()) {
                    if let Some(cycle) = visit(upstream.as_str(), index, marks, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for task in tasks {
        let mut path = Vec::new();
        if let Some(mut cycle) = visit(task.id.as_str(), &index, &mut marks, &mut path) {
            // Upstream edges were followed; show the cycle in the direction work flows.
            cycle.reverse();
            return Some(cycle);
        }
    }
    None
}

/// All tasks `task` depends on, directly or not.
fn ancestors<'a>(task: &'a Task, index: &HashMap<&'a str, &'a Task>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = task.depends_on.iter().map(String::as_str).collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            if let Some(upstream) = index.get(id) {
                stack.extend(upstream.depends_on.iter().map(String::as_str));
            }
        }
    }
    seen
}

fn check_templates(
    raw_tasks: &[Spanned<RawTask>],
    tasks: &[Task],
    params: &Map<String, Value>,
    images_allowed: bool,
    problems: &mut Problems<'_>,
) {
    let index: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for (raw, task) in raw_tasks.iter().zip(tasks) {
        let upstream = ancestors(task, &index);
        let task_line = line_of(raw);
        let line_for = |field: Option<u64>| field.unwrap_or(task_line);
        let fields: Vec<(&str, u64, &str)> = std::iter::once((
            "image",
            line_for(raw.value.image.as_ref().map(line_of)),
            task.image.as_str(),
        ))
        .chain(task.args.iter().map(|arg| {
            (
                "args",
                line_for(raw.value.args.as_ref().map(line_of)),
                arg.as_str(),
            )
        }))
        .chain(task.env.values().map(|value| {
            (
                "env",
                line_for(raw.value.env.as_ref().map(line_of)),
                value.as_str(),
            )
        }))
        .collect();
        for (field, line, text) in fields {
            let variables = match template::variables(text) {
                Ok(variables) => variables,
                Err(message) => {
                    problems.at(line, format!("task `{}`: {field}: {message}", task.id));
                    continue;
                }
            };
            for variable in variables {
                // Whoever chooses the image chooses where the task's connections and
                // registry credentials go: a param (any operator's trigger) or an output
                // (any upstream image) may only do that within the job's allow-list.
                if field == "image"
                    && !images_allowed
                    && matches!(variable, Variable::Param(_) | Variable::Output { .. })
                {
                    problems.at(
                        line,
                        format!(
                            "task `{}`: image uses `{variable}`: a param or an output may choose the image only among the job's `allowed_images` (list the image names it may render to)",
                            task.id
                        ),
                    );
                    continue;
                }
                match variable {
                    Variable::Param(name) if !params.contains_key(&name) => problems.at(
                        line,
                        format!(
                            "task `{}`: {field} uses `params.{name}`, which the job's `params` \
                             does not declare",
                            task.id
                        ),
                    ),
                    Variable::Output { task: source, .. }
                        if !upstream.contains(source.as_str()) =>
                    {
                        problems.at(
                            line,
                            format!(
                                "task `{}`: {field} uses outputs of `{source}`, which is not \
                                 upstream of it",
                                task.id
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A map of scalars (`env`, `placement`) with each value as its text.
fn scalar_texts(spanned: &Spanned<BTreeMap<String, Scalar>>) -> BTreeMap<String, String> {
    spanned
        .value
        .iter()
        .map(|(key, value)| (key.clone(), value.0.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id: stripe_to_warehouse
description: Hourly Stripe charges into the warehouse
schedule: "0 * * * *"
timezone: Europe/Berlin
start_date: 2024-01-01T00:00:00
end_date: null
catchup: false
max_active_runs: 1
max_active_tasks: 16
params: {lookback_days: 1}
defaults:
  retries: 3
  retry_delay: 30s
  retry_exponential_backoff: true
  max_retry_delay: 10m
  timeout: 1h
  backend: docker
tasks:
  - id: extract
    image: localhost:5000/integrations/http-extract:1.4.2
    args: ["--since", "{{ data_interval_start }}", "--stream", "charges", "--days", "{{ params.lookback_days }}"]
    env: {PAGE_SIZE: 100}
    connections: [stripe]
    resources: {cpu: 0.5, memory: 256Mi}
    pool: stripe_api
    priority: 10
  - id: load
    image: localhost:5000/integrations/postgres-load:0.3.0
    depends_on: [extract]
    trigger_rule: all_success
    retries: 0
    args: ["--rows", "{{ outputs.extract.rows_file }}"]
"#;

    fn errors(text: &str) -> Vec<String> {
        parse_job("jobs/bad.yaml", text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parses_the_design_example_with_defaults_merged() {
        let job = parse_job("jobs/stripe.yaml", GOOD).unwrap();
        assert_eq!(job.id, "stripe_to_warehouse");
        assert_eq!(job.timetable.timezone, Tz::Europe__Berlin);
        // Midnight in Berlin in winter is 23:00 UTC the day before.
        assert_eq!(
            job.timetable.start_date.unwrap().to_rfc3339(),
            "2023-12-31T23:00:00+00:00"
        );
        let extract = job.task("extract").unwrap();
        assert_eq!(extract.retry.retries, 3);
        assert_eq!(extract.retry.retry_delay, Duration::from_secs(30));
        assert_eq!(
            extract.retry.max_retry_delay,
            Some(Duration::from_secs(600))
        );
        assert_eq!(extract.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(extract.env["PAGE_SIZE"], "100");
        assert_eq!(extract.resources.memory_bytes, Some(256 << 20));
        assert_eq!(extract.pool, "stripe_api");
        let load = job.task("load").unwrap();
        assert_eq!(load.retry.retries, 0);
        assert_eq!(load.depends_on, vec!["extract"]);
        assert_eq!(
            job.leaves()
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            vec!["load"]
        );
        assert_eq!(job.version.len(), 64);
    }

    /// Security review, finding 9: a param or an upstream output could choose the image
    /// that receives the task's connections and registry credentials.
    #[test]
    fn a_param_or_an_output_chooses_the_image_only_from_the_allow_list() {
        let by_param = "id: a\nparams: {tag: \"1\"}\ntasks:\n  - id: t\n    image: \"evil/{{ params.tag }}\"\n";
        let found = errors(by_param);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("jobs/bad.yaml:5:"), "{found:?}");
        assert!(found[0].contains("image uses `params.tag`"), "{found:?}");
        assert!(found[0].contains("allowed_images"), "{found:?}");
        let by_output = "id: a\ntasks:\n  - id: up\n    image: x:1\n  - id: t\n    depends_on: [up]\n    image: \"{{ outputs.up.image }}\"\n";
        assert!(errors(by_output)[0].contains("image uses `outputs.up.image`"));
        // The run's own context may shape the image; the allow-list opens params.
        let context = "id: a\ntasks:\n  - id: t\n    image: \"x:{{ job_id }}\"\n";
        assert!(parse_job("a.yaml", context).is_ok());
        let allowed = "id: a\nparams: {tag: \"1\"}\nallowed_images: [stevedore/synth, \"localhost:5000/i/x\"]\ntasks:\n  - id: t\n    image: \"stevedore/synth:{{ params.tag }}\"\n";
        let job = parse_job("a.yaml", allowed).unwrap();
        assert_eq!(
            job.allowed_images,
            ["stevedore/synth", "localhost:5000/i/x"]
        );
        let tagged = "id: a\nallowed_images: [\"x:1\"]\ntasks:\n  - id: t\n    image: x:1\n";
        assert!(
            errors(tagged)[0].contains("without a tag"),
            "{:?}",
            errors(tagged)
        );
    }

    #[test]
    fn read_only_rootfs_and_user_come_from_the_task_or_defaults() {
        let text = "id: a\ndefaults: {read_only_rootfs: true, user: 1000}\ntasks:\n  - id: t\n    image: x:1\n  - id: u\n    image: x:1\n    read_only_rootfs: false\n    user: \"nobody:nogroup\"\n";
        let job = parse_job("a.yaml", text).unwrap();
        let t = job.task("t").unwrap();
        assert!(t.read_only_rootfs);
        assert_eq!(t.user.as_deref(), Some("1000"));
        let u = job.task("u").unwrap();
        assert!(!u.read_only_rootfs);
        assert_eq!(u.user.as_deref(), Some("nobody:nogroup"));
        let bad = "id: a\ntasks:\n  - id: t\n    image: x:1\n    user: \"root; rm\"\n";
        assert!(
            errors(bad)[0].contains("user `root; rm`"),
            "{:?}",
            errors(bad)
        );
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let text = "id: a\ntasks:\n  - id: t\n    image: x:1\n    imgae: y\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("jobs/bad.yaml:5:"), "{errors:?}");
        assert!(errors[0].contains("imgae"), "{errors:?}");
    }

    #[test]
    fn duplicate_ids_cycles_and_unknown_upstreams_are_rejected() {
        let duplicate = "id: a\ntasks:\n  - id: t\n    image: x:1\n  - id: t\n    image: x:1\n";
        assert_eq!(
            errors(duplicate),
            vec!["jobs/bad.yaml:5: task id `t` is used twice (first on line 3)"]
        );

        let cycle = "id: a\ntasks:\n  - id: x\n    image: i:1\n    depends_on: [y]\n  - id: y\n    image: i:1\n    depends_on: [x]\n";
        let cycle_errors = errors(cycle);
        assert!(
            cycle_errors[0].contains("tasks form a cycle: x → y → x"),
            "{cycle_errors:?}"
        );

        let unknown = "id: a\ntasks:\n  - id: x\n    image: i:1\n    depends_on:\n      - nope\n";
        assert_eq!(
            errors(unknown),
            vec!["jobs/bad.yaml:6: task `x` depends on `nope`, which is not a task of this job"]
        );
    }

    #[test]
    fn bad_cron_duration_image_and_timezone_are_rejected_with_lines() {
        let text = "id: a\nschedule: \"0 0 * *\"\ntimezone: Mars/Olympus\ntasks:\n  - id: x\n    image: Not/Valid:1\n    retry_delay: 30\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("jobs/bad.yaml:2: schedule `0 0 * *` has 4 fields"));
        assert!(errors[1].starts_with("jobs/bad.yaml:3: `Mars/Olympus` is not an IANA timezone"));
        assert!(errors[2].starts_with("jobs/bad.yaml:6: task `x`: `Not` in the image reference"));
        assert!(errors[3].starts_with("jobs/bad.yaml:7: task `x`: retry_delay `30` has no unit"));
    }

    #[test]
    fn unknown_template_variables_are_load_errors() {
        let text = "id: a\nparams: {n: 1}\ntasks:\n  - id: x\n    image: i:1\n    args: [\"{{ data_interval_begin }}\"]\n  - id: y\n    image: i:1\n    args: [\"{{ params.m }}\", \"{{ outputs.z.k }}\"]\n  - id: z\n    image: i:1\n    depends_on: [y]\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("jobs/bad.yaml:6: task `x`: args:"));
        assert!(errors[1].contains("`params.m`, which the job's `params` does not declare"));
        assert!(errors[2].contains("outputs of `z`, which is not upstream of it"));
    }

    #[test]
    fn yaml_syntax_errors_carry_a_line() {
        let errors = parse_job("f.yaml", "id: a\ntasks: [\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].line.is_some(), "{errors:?}");
        assert!(parse_job("f.yaml", "").unwrap_err()[0]
            .message
            .contains("empty"));
    }

    #[test]
    fn defaults_cannot_carry_ids_and_process_needs_a_command() {
        let text = "id: a\ndefaults:\n  id: nope\ntasks:\n  - id: x\n    image: i:1\n    backend: process\n";
        let errors = errors(text);
        assert!(
            errors.iter().any(|e| e.contains("defaults may not set")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("process backend needs a `command`")),
            "{errors:?}"
        );
    }
}
