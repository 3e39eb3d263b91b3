//! Parsing: the raw file into a [`Job`], each field validated, defaults merged, with every
//! problem collected (file, line, message) rather than the first one only.

#[allow(unused_imports)]
use super::*;

/// Collects errors for one file.
pub(super) struct Problems<'a> {
    pub(super) file: &'a str,
    pub(super) errors: Vec<JobError>,
}

impl Problems<'_> {
    pub(super) fn at(&mut self, line: u64, message: impl Into<String>) {
        self.errors.push(JobError {
            file: self.file.to_owned(),
            line: Some(line),
            message: message.into(),
        });
    }
}

pub(super) fn line_of<T>(spanned: &Spanned<T>) -> u64 {
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
pub(super) fn yaml_error_sentence(error: &serde_saphyr::Error) -> String {
    let rendered = error.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    // Strip a trailing " at line N column M" that the parser may add.
    let sentence = match first.find(" at line ") {
        Some(index) => &first[..index],
        None => first,
    };
    sentence.trim_end_matches('.').to_owned()
}

pub(super) fn build_job(raw: RawJob, text: &str, problems: &mut Problems<'_>) -> Job {
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

    let schedule_line = raw.schedule.as_ref().map(line_of).unwrap_or(1);
    let (schedule_text, asset_trigger) = match raw.schedule.as_ref().map(|s| &s.value) {
        None | Some(Value::Null) => (None, None),
        Some(Value::String(text)) => (Some(text.clone()), None),
        Some(Value::Object(map)) => (None, build_asset_trigger(map, schedule_line, problems)),
        Some(_) => {
            problems.at(
                schedule_line,
                "schedule must be a cron expression, a preset such as @daily, null, \
                 {assets: [...]} or {after: [...]}",
            );
            (None, None)
        }
    };
    let schedule = Schedule::parse(schedule_text.as_deref()).unwrap_or_else(|message| {
        problems.at(schedule_line, format!("schedule {message}"));
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
        if spanned.value.for_each.is_some()
            || spanned.value.max_active.is_some()
            || spanned.value.produces.is_some()
        {
            problems.at(
                line_of(spanned),
                "defaults may not set `for_each`, `max_active` or `produces`: they belong to one task",
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

    let notify = raw
        .notify
        .as_ref()
        .map(|rules| build_rules(rules, None, problems))
        .unwrap_or_default();
    let job_duration =
        |field: &str, value: &Option<Spanned<Scalar>>, problems: &mut Problems<'_>| {
            let spanned = value.as_ref()?;
            match parse_duration(&spanned.value.0) {
                Ok(duration) if duration.is_zero() => {
                    problems.at(line_of(spanned), format!("{field} must be above 0"));
                    None
                }
                Ok(duration) => Some(duration),
                Err(message) => {
                    problems.at(line_of(spanned), format!("{field} {message}"));
                    None
                }
            }
        };
    let events = raw
        .events
        .as_ref()
        .map(|spanned| build_events(&spanned.value, line_of(spanned), problems));
    let deadline = job_duration("deadline", &raw.deadline, problems);
    let run_timeout = job_duration("run_timeout", &raw.run_timeout, problems);
    let retention = raw.retention.as_ref().and_then(|spanned| {
        crate::retention::Retention::parse(&spanned.value.0)
            .map_err(|message| problems.at(line_of(spanned), format!("retention: {message}")))
            .ok()
    });
    let repeated_failure_after = match &raw.repeated_failure_after {
        Some(spanned) if spanned.value == 0 => {
            problems.at(
                line_of(spanned),
                "repeated_failure_after must be at least 1",
            );
            3
        }
        Some(spanned) => spanned.value,
        None => 3,
    };

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
        notify,
        deadline,
        retention,
        run_timeout,
        repeated_failure_after,
        asset_trigger,
        events,
    }
}

/// `events: {max_batch, max_wait, max_body, secret_connection}`, each checked.
fn build_events(raw: &RawEvents, line: u64, problems: &mut Problems<'_>) -> EventsConfig {
    let max_batch = match &raw.max_batch {
        None => DEFAULT_MAX_BATCH,
        Some(spanned) if (1..=MAX_BATCH_LIMIT).contains(&spanned.value) => spanned.value,
        Some(spanned) => {
            problems.at(
                line_of(spanned),
                format!("events: max_batch must be between 1 and {MAX_BATCH_LIMIT}"),
            );
            DEFAULT_MAX_BATCH
        }
    };
    let max_wait = match &raw.max_wait {
        None => DEFAULT_MAX_WAIT,
        Some(spanned) => match parse_duration(&spanned.value.0) {
            Ok(wait) if !wait.is_zero() => wait,
            Ok(_) => {
                problems.at(line_of(spanned), "events: max_wait must be above 0");
                DEFAULT_MAX_WAIT
            }
            Err(message) => {
                problems.at(line_of(spanned), format!("events: max_wait {message}"));
                DEFAULT_MAX_WAIT
            }
        },
    };
    let max_body = match &raw.max_body {
        None => DEFAULT_MAX_BODY,
        Some(spanned) => match parse_memory(&spanned.value.0) {
            Ok(bytes) if (1..=MAX_BODY_LIMIT).contains(&bytes) => bytes,
            Ok(_) => {
                problems.at(
                    line_of(spanned),
                    "events: max_body must be between 1 byte and 64Mi",
                );
                DEFAULT_MAX_BODY
            }
            Err(message) => {
                problems.at(line_of(spanned), format!("events: max_body {message}"));
                DEFAULT_MAX_BODY
            }
        },
    };
    let secret_connection = raw.secret_connection.as_ref().map(|spanned| {
        if let Err(message) = crate::names::check_name("connection", &spanned.value) {
            problems.at(line_of(spanned), format!("events: {message}"));
        }
        spanned.value.clone()
    });
    let _ = line;
    EventsConfig {
        max_batch,
        max_wait,
        max_body,
        secret_connection,
    }
}

/// `schedule: {assets: [NAME...], mode: all|any}` or `schedule: {after: [JOB...]}`.
fn build_asset_trigger(
    map: &Map<String, Value>,
    line: u64,
    problems: &mut Problems<'_>,
) -> Option<AssetTrigger> {
    let names = |key: &str, problems: &mut Problems<'_>| -> Option<Vec<String>> {
        let Some(Value::Array(items)) = map.get(key) else {
            problems.at(line, format!("schedule: `{key}` must be a list"));
            return None;
        };
        let names: Vec<String> = items
            .iter()
            .filter_map(|item| match item {
                Value::String(name) => Some(name.clone()),
                other => {
                    problems.at(line, format!("schedule: `{key}` holds {other}, not a name"));
                    None
                }
            })
            .collect();
        if names.is_empty() {
            problems.at(line, format!("schedule: `{key}` needs at least one name"));
            return None;
        }
        Some(names)
    };
    let unknown: Vec<&String> = map
        .keys()
        .filter(|key| !["assets", "after", "mode"].contains(&key.as_str()))
        .collect();
    if let Some(key) = unknown.first() {
        problems.at(
            line,
            format!(
                "schedule: unknown field `{key}` (a schedule map holds assets and mode, or after)"
            ),
        );
        return None;
    }
    match (map.contains_key("assets"), map.contains_key("after")) {
        (true, false) => {
            let assets = names("assets", problems)?;
            for asset in &assets {
                if let Err(message) = check_asset_name(asset) {
                    problems.at(line, format!("schedule: {message}"));
                }
            }
            let mode = match map.get("mode") {
                None => AssetMode::All,
                Some(Value::String(mode)) if mode == "all" => AssetMode::All,
                Some(Value::String(mode)) if mode == "any" => AssetMode::Any,
                Some(other) => {
                    problems.at(
                        line,
                        format!("schedule: mode {other} is neither all nor any"),
                    );
                    AssetMode::All
                }
            };
            Some(AssetTrigger { assets, mode, line })
        }
        (false, true) => {
            if map.contains_key("mode") {
                problems.at(
                    line,
                    "schedule: `after` waits for every job it names; it takes no mode",
                );
            }
            let jobs = names("after", problems)?;
            for job in &jobs {
                if !is_identifier(job) {
                    problems.at(line, format!("schedule: after: `{job}` is not a job id"));
                }
            }
            Some(AssetTrigger {
                assets: jobs.iter().map(|job| job_asset(job)).collect(),
                mode: AssetMode::All,
                line,
            })
        }
        _ => {
            problems.at(
                line,
                "schedule: a schedule map holds either `assets` or `after`",
            );
            None
        }
    }
}

/// The `notify:` rules of the job (`task` is `None`) or of a task: each event known, a task's
/// rules without the run-only ones, each connection a valid name.
pub(super) fn build_rules(
    rules: &[Spanned<RawRule>],
    task: Option<&str>,
    problems: &mut Problems<'_>,
) -> Vec<NotifyRule> {
    let whose = |message: String| match task {
        Some(id) => format!("task `{id}`: notify: {message}"),
        None => format!("notify: {message}"),
    };
    let mut built = Vec::with_capacity(rules.len());
    for spanned in rules {
        let rule = &spanned.value;
        let mut on = Vec::new();
        if rule.on.value.is_empty() {
            problems.at(
                line_of(&rule.on),
                whose("`on` needs at least one event".to_owned()),
            );
        }
        for event in &rule.on.value {
            match event.value.parse::<NotifyEvent>() {
                Ok(parsed) if task.is_some() && parsed.is_run_only() => problems.at(
                    line_of(event),
                    whose(format!(
                        "`{parsed}` is an event of the run: put it in the job's `notify`"
                    )),
                ),
                Ok(parsed) if !on.contains(&parsed) => on.push(parsed),
                Ok(_) => {}
                Err(message) => problems.at(line_of(event), whose(message)),
            }
        }
        let connection = rule.connection.value.clone();
        if !is_identifier(&connection) {
            problems.at(
                line_of(&rule.connection),
                whose(format!(
                    "connection name `{connection}` may only hold a-z, 0-9 and _"
                )),
            );
        }
        built.push(NotifyRule {
            on,
            connection,
            line: line_of(spanned),
        });
    }
    built
}

pub(super) fn hex(bytes: &[u8]) -> String {
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

/// The least memory Nomad gives a task: 10 MB (its `MinResources`; Stevedore sends memory
/// in MiB).
pub const NOMAD_MIN_MEMORY: u64 = 10 * 1024 * 1024;

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

pub(super) fn build_task(
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
                // Nomad refuses a task under 10 MB (`nomad/structs/structs.go`,
                // `MinResources`, checked by `Resources.Validate`): say so when the file is
                // read, not when the try is registered.
                Ok(bytes) if backend == BackendKind::Nomad && bytes < NOMAD_MIN_MEMORY => problems
                    .at(
                        line_of(spanned),
                        format!(
                            "task `{id}`: resources.memory `{}` is under Nomad's minimum of 10Mi",
                            spanned.value.0
                        ),
                    ),
                Ok(bytes) => resources.memory_bytes = Some(bytes),
                Err(message) => problems.at(line_of(spanned), format!("task `{id}`: {message}")),
            }
        }
    }

    let mut max_artifact_size = DEFAULT_MAX_ARTIFACT_SIZE;
    if let Some(spanned) = pick!(max_artifact_size) {
        match parse_memory(&spanned.value.0) {
            Ok(0) => problems.at(
                line_of(spanned),
                format!("task `{id}`: max_artifact_size must be above 0"),
            ),
            Ok(bytes) => max_artifact_size = bytes,
            Err(_) => problems.at(
                line_of(spanned),
                format!(
                    "task `{id}`: max_artifact_size `{}` is not a size such as 512Mi or 10Gi",
                    spanned.value.0
                ),
            ),
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

    let notify = pick!(notify)
        .map(|rules| build_rules(rules, Some(&id), problems))
        .unwrap_or_default();
    let produces = raw
        .produces
        .as_ref()
        .map(|spanned| {
            for name in &spanned.value {
                if let Err(message) = check_asset_name(name) {
                    problems.at(
                        line_of(spanned),
                        format!("task `{id}`: produces: {message}"),
                    );
                }
            }
            spanned.value.clone()
        })
        .unwrap_or_default();
    let for_each = raw
        .for_each
        .as_ref()
        .and_then(|spanned| build_for_each(&id, spanned, problems));
    let max_active = raw.max_active.as_ref().and_then(|spanned| {
        let problem = if for_each.is_none() && raw.for_each.is_none() {
            Some("max_active applies to a mapped task (one with `for_each`)")
        } else if spanned.value == 0 {
            Some("max_active must be at least 1")
        } else {
            None
        };
        match problem {
            Some(message) => {
                problems.at(line_of(spanned), format!("task `{id}`: {message}"));
                None
            }
            None => Some(spanned.value),
        }
    });
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
        max_artifact_size,
        notify,
        produces,
        for_each,
        max_active,
        map_index: None,
        map_item: None,
    })
}

/// `for_each`: a list, or a template naming one upstream output or param and nothing else.
fn build_for_each(
    id: &str,
    spanned: &Spanned<Value>,
    problems: &mut Problems<'_>,
) -> Option<ForEach> {
    let line = line_of(spanned);
    let wrong = |problems: &mut Problems<'_>, why: &str| {
        problems.at(
            line,
            format!(
                "task `{id}`: for_each {why}; write a list, or one variable such as                  \"{{{{ outputs.TASK.KEY }}}}\" or \"{{{{ params.NAME }}}}\""
            ),
        );
        None
    };
    match &spanned.value {
        Value::Array(list) if list.len() > MAX_MAP_LENGTH => wrong(
            problems,
            &format!(
                "lists {} items, more than the {MAX_MAP_LENGTH} one mapped task may expand to",
                list.len()
            ),
        ),
        Value::Array(list) => Some(ForEach::Literal(list.clone())),
        Value::String(text) => {
            let trimmed = text.trim();
            let variables = match template::variables(trimmed) {
                Ok(variables) => variables,
                Err(message) => return wrong(problems, &message),
            };
            let alone = trimmed.starts_with("{{")
                && trimmed.ends_with("}}")
                && trimmed.matches("{{").count() == 1;
            match variables.as_slice() {
                [variable @ (Variable::Output { .. } | Variable::Param(_))] if alone => {
                    Some(ForEach::Variable(variable.clone()))
                }
                _ => wrong(problems, &format!("`{text}` is not one output or param")),
            }
        }
        _ => wrong(problems, "is neither a list nor a template"),
    }
}

/// A user as Docker and Nomad take it: a name or uid, optionally `:group` or `:gid`.
pub(super) fn is_user(text: &str) -> bool {
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
