//! What both SQL stores share: how values are stored (timestamps as fixed-width RFC 3339
//! text, JSON as text, states by name) and the rows they read back.

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::FromRow;

use crate::*;

/// Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is time order.
pub(crate) fn ts(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, role, created_at, last_used_at, revoked_at FROM tokens ",
            $rest
        )
    };
}

pub(crate) type TokenRow = (i64, String, String, String, Option<String>, Option<String>);

pub(crate) fn token_record(row: TokenRow) -> Result<TokenRecord> {
    let (id, name, role, created_at, last_used_at, revoked_at) = row;
    Ok(TokenRecord {
        id,
        name,
        role: role.parse().map_err(StoreError::Corrupt)?,
        created_at: parse_ts(&created_at)?,
        last_used_at: last_used_at.as_deref().map(parse_ts).transpose()?,
        revoked_at: revoked_at.as_deref().map(parse_ts).transpose()?,
    })
}

pub(crate) fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt(format!("timestamp `{text}`")))
}

pub(crate) fn parse_opt_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.as_deref().map(parse_ts).transpose()
}

pub(crate) fn parse_enum<T: FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("json: {e}")))
}

#[derive(FromRow)]
pub(crate) struct JobRow {
    job_id: String,
    current_version: String,
    file_path: String,
    paused: bool,
    updated_at: String,
}

impl JobRow {
    pub(crate) fn into_record(self) -> Result<JobRecord> {
        Ok(JobRecord {
            job_id: self.job_id,
            current_version: self.current_version,
            file_path: self.file_path,
            paused: self.paused,
            updated_at: parse_ts(&self.updated_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct RunRow {
    run_id: String,
    job_id: String,
    job_version: String,
    run_trigger: String,
    logical_date: String,
    data_interval_start: String,
    data_interval_end: String,
    params: String,
    state: String,
    queued_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    cancel_requested: bool,
    deadline_missed_at: Option<String>,
    full_refresh: Option<String>,
}

impl RunRow {
    pub(crate) fn into_record(self) -> Result<RunRecord> {
        Ok(RunRecord {
            run_id: self.run_id,
            job_id: self.job_id,
            job_version: self.job_version,
            trigger: parse_enum::<RunTrigger>(&self.run_trigger)?,
            logical_date: parse_ts(&self.logical_date)?,
            data_interval: DataInterval {
                start: parse_ts(&self.data_interval_start)?,
                end: parse_ts(&self.data_interval_end)?,
            },
            params: parse_json(&self.params)?,
            state: parse_enum::<RunState>(&self.state)?,
            queued_at: parse_ts(&self.queued_at)?,
            started_at: parse_opt_ts(self.started_at)?,
            ended_at: parse_opt_ts(self.ended_at)?,
            cancel_requested: self.cancel_requested,
            deadline_missed_at: parse_opt_ts(self.deadline_missed_at)?,
            full_refresh: match self.full_refresh {
                Some(text) => serde_json::from_value(parse_json(&text)?)
                    .map_err(|e| StoreError::Corrupt(format!("runs.full_refresh: {e}")))?,
                None => Vec::new(),
            },
        })
    }
}

#[derive(FromRow)]
pub(crate) struct TaskInstanceRow {
    run_id: String,
    task_id: String,
    state: String,
    try_number: i64,
    next_try_at: Option<String>,
    started_at: Option<String>,
    ended_at: Option<String>,
    retry_base: i64,
    waiting_since: Option<String>,
    waiting_reason: Option<String>,
}

impl TaskInstanceRow {
    pub(crate) fn into_record(self) -> Result<TaskInstanceRecord> {
        Ok(TaskInstanceRecord {
            run_id: self.run_id,
            task_id: self.task_id,
            state: parse_enum::<TaskState>(&self.state)?,
            try_number: self.try_number as u32,
            next_try_at: parse_opt_ts(self.next_try_at)?,
            started_at: parse_opt_ts(self.started_at)?,
            ended_at: parse_opt_ts(self.ended_at)?,
            retry_base: self.retry_base as u32,
            waiting: match (parse_opt_ts(self.waiting_since)?, self.waiting_reason) {
                (Some(since), reason) => Some(Waiting {
                    since,
                    reason: reason.unwrap_or_default(),
                }),
                (None, _) => None,
            },
        })
    }
}

#[derive(FromRow)]
pub(crate) struct TryRow {
    try_id: i64,
    run_id: String,
    task_id: String,
    try_number: i64,
    backend: String,
    container_id: Option<String>,
    image_ref: String,
    image_digest: Option<String>,
    state: String,
    started_at: String,
    ended_at: Option<String>,
    exit_code: Option<i64>,
    failure_reason: Option<String>,
}

impl TryRow {
    pub(crate) fn into_record(self) -> Result<TryRecord> {
        Ok(TryRecord {
            try_id: self.try_id,
            run_id: self.run_id,
            task_id: self.task_id,
            try_number: self.try_number as u32,
            backend: self.backend,
            container_id: self.container_id,
            image_ref: self.image_ref,
            image_digest: self.image_digest,
            state: parse_enum::<TryState>(&self.state)?,
            started_at: parse_ts(&self.started_at)?,
            ended_at: parse_opt_ts(self.ended_at)?,
            exit_code: self.exit_code,
            failure_reason: self.failure_reason,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct LogRow {
    try_id: i64,
    seq: i64,
    stream: i64,
    ts: i64,
    text: String,
}

impl LogRow {
    pub(crate) fn into_line(self) -> Result<LogLine> {
        Ok(LogLine {
            try_id: self.try_id,
            seq: self.seq,
            stream: LogStream::from_code(self.stream)
                .ok_or_else(|| StoreError::Corrupt(format!("log stream {}", self.stream)))?,
            timestamp: DateTime::from_timestamp_micros(self.ts)
                .ok_or_else(|| StoreError::Corrupt(format!("log timestamp {}", self.ts)))?,
            text: self.text,
        })
    }
}

pub(crate) const RUN_COLUMNS: &str = "run_id, job_id, job_version, run_trigger, logical_date, \
    data_interval_start, data_interval_end, params, state, queued_at, started_at, ended_at, \
    cancel_requested, deadline_missed_at, full_refresh";
pub(crate) const TASK_INSTANCE_COLUMNS: &str = "run_id, task_id, state, try_number, next_try_at, \
    started_at, ended_at, retry_base, waiting_since, waiting_reason";
pub(crate) const TRY_COLUMNS: &str = "try_id, run_id, task_id, try_number, backend, container_id, \
    image_ref, image_digest, state, started_at, ended_at, exit_code, failure_reason";

pub(crate) fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(FromRow)]
pub(crate) struct ArtifactRow {
    try_id: i64,
    run_id: String,
    task_id: String,
    try_number: i64,
    path: String,
    size: i64,
    sha256: String,
    mtime: i64,
}

impl ArtifactRow {
    pub(crate) fn into_record(self) -> ArtifactRecord {
        ArtifactRecord {
            try_id: self.try_id,
            run_id: self.run_id,
            task_id: self.task_id,
            try_number: self.try_number as u32,
            path: self.path,
            size: self.size.max(0) as u64,
            sha256: self.sha256,
            modified: self.mtime,
        }
    }
}

pub(crate) const NOTIFICATION_COLUMNS: &str =
    "seq, id, event, job_id, job_version, run_id, task_id, try_number, \
    connection, state, reason, logical_date, occurred_at, status, channel, attempts, \
    next_attempt_at, last_status_code, last_error, delivered_at";

#[derive(FromRow)]
pub(crate) struct NotificationRow {
    seq: i64,
    id: String,
    event: String,
    job_id: String,
    job_version: String,
    run_id: String,
    task_id: Option<String>,
    try_number: Option<i64>,
    connection: String,
    state: String,
    reason: Option<String>,
    logical_date: String,
    occurred_at: String,
    status: String,
    channel: Option<String>,
    attempts: i64,
    next_attempt_at: String,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<String>,
}

impl NotificationRow {
    pub(crate) fn into_record(self) -> Result<NotificationRecord> {
        Ok(NotificationRecord {
            seq: self.seq,
            id: self.id,
            event: parse_enum(&self.event)?,
            job_id: self.job_id,
            job_version: self.job_version,
            run_id: self.run_id,
            task_id: self.task_id,
            try_number: self.try_number.map(|n| n as u32),
            connection: self.connection,
            state: self.state,
            reason: self.reason,
            logical_date: parse_ts(&self.logical_date)?,
            occurred_at: parse_ts(&self.occurred_at)?,
            status: parse_enum(&self.status)?,
            channel: self.channel,
            attempts: self.attempts.max(0) as u32,
            next_attempt_at: parse_ts(&self.next_attempt_at)?,
            last_status_code: self.last_status_code.and_then(|c| u16::try_from(c).ok()),
            last_error: self.last_error,
            delivered_at: parse_opt_ts(self.delivered_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct AttemptRow {
    attempt: i64,
    at: String,
    channel: Option<String>,
    ok: bool,
    status_code: Option<i64>,
    error: Option<String>,
    duration_ms: i64,
}

impl AttemptRow {
    pub(crate) fn into_record(self) -> Result<NotificationAttempt> {
        Ok(NotificationAttempt {
            attempt: self.attempt.max(0) as u32,
            at: parse_ts(&self.at)?,
            channel: self.channel,
            ok: self.ok,
            status_code: self.status_code.and_then(|c| u16::try_from(c).ok()),
            error: self.error,
            duration_ms: self.duration_ms.max(0) as u64,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct StateEntryRow {
    seq: i64,
    job_id: String,
    task_id: String,
    value: Option<String>,
    run_id: Option<String>,
    action: String,
    actor: Option<String>,
    committed_at: String,
}

impl StateEntryRow {
    pub(crate) fn into_record(self) -> Result<StateEntry> {
        Ok(StateEntry {
            seq: self.seq,
            job_id: self.job_id,
            task_id: self.task_id,
            value: self.value.as_deref().map(parse_json).transpose()?,
            run_id: self.run_id,
            action: self.action,
            actor: self.actor,
            committed_at: parse_ts(&self.committed_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct AssetEventRow {
    seq: i64,
    asset: String,
    job_id: String,
    run_id: String,
    task_id: Option<String>,
    created_at: String,
}

impl AssetEventRow {
    pub(crate) fn into_record(self) -> Result<AssetEventRecord> {
        Ok(AssetEventRecord {
            seq: self.seq,
            asset: self.asset,
            job_id: self.job_id,
            run_id: self.run_id,
            task_id: self.task_id,
            created_at: parse_ts(&self.created_at)?,
        })
    }
}
