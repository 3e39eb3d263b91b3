//! The JSON shapes of runs, task instances, tries, log lines, pools and connections: one
//! set of serde types that the CLI's `-o json`, the REST API and the API's OpenAPI document
//! (their `ToSchema`, through utoipa) all use, so the three cannot disagree (restate's
//! `admin-rest-model`, shared by its server and its CLI).
//!
//! Times are RFC 3339 in UTC: logical dates and data intervals in whole seconds (they are
//! schedule instants), the times things happened (queued, started, ended, next try) with
//! microseconds.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use stevedore_domain::mapping;
use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};
use stevedore_store::{
    ConnectionRecord, LogLine, PoolRecord, RunRecord, TaskInstanceRecord, TryRecord,
};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::ToSchema;

/// The schema of a string that is one of `values`.
pub fn one_of(values: impl IntoIterator<Item = &'static str>) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .build()
}

/// The schema of a run's state.
pub fn run_state() -> utoipa::openapi::Object {
    one_of(RunState::ALL.iter().map(|s| s.as_str()))
}

fn task_state() -> utoipa::openapi::Object {
    one_of(TaskState::ALL.iter().map(|s| s.as_str()))
}

/// The schema of a try's state.
pub fn try_state() -> utoipa::openapi::Object {
    one_of(TryState::ALL.iter().map(|s| s.as_str()))
}

fn trigger() -> utoipa::openapi::Object {
    one_of(RunTrigger::ALL.iter().map(|s| s.as_str()))
}

fn stream() -> utoipa::openapi::Object {
    one_of(["stdout", "stderr", "log"])
}

/// A schedule instant: `2024-01-01T00:00:00Z`.
pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// When something happened: `2024-01-01T00:00:01.123456Z`.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A run.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Run)]
pub struct RunView {
    pub run_id: String,
    pub job_id: String,
    pub job_version: String,
    #[schema(schema_with = trigger)]
    pub trigger: String,
    #[schema(schema_with = run_state)]
    pub state: String,
    #[schema(format = DateTime)]
    pub logical_date: String,
    #[schema(format = DateTime)]
    pub data_interval_start: String,
    #[schema(format = DateTime)]
    pub data_interval_end: String,
    #[schema(value_type = Object)]
    pub params: Value,
    #[schema(format = DateTime)]
    pub queued_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    pub cancel_requested: bool,
    /// When its job's `deadline` passed while it had not ended.
    #[schema(format = DateTime)]
    pub deadline_missed_at: Option<String>,
    /// The tasks this run runs without their committed state (a full refresh).
    pub full_refresh: Vec<String>,
}

impl From<&RunRecord> for RunView {
    fn from(run: &RunRecord) -> RunView {
        RunView {
            run_id: run.run_id.clone(),
            job_id: run.job_id.clone(),
            job_version: run.job_version.clone(),
            trigger: run.trigger.as_str().to_owned(),
            state: run.state.as_str().to_owned(),
            logical_date: instant(run.logical_date),
            data_interval_start: instant(run.data_interval.start),
            data_interval_end: instant(run.data_interval.end),
            params: run.params.clone(),
            queued_at: time(run.queued_at),
            started_at: run.started_at.map(time),
            ended_at: run.ended_at.map(time),
            cancel_requested: run.cancel_requested,
            deadline_missed_at: run.deadline_missed_at.map(time),
            full_refresh: run.full_refresh.clone(),
        }
    }
}

/// One committed state of a task (`state show`, `state history`,
/// `GET /api/v1/jobs/{job_id}/tasks/{task_id}/state`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = StateEntry)]
pub struct StateView {
    pub job_id: String,
    pub task_id: String,
    /// The state; `null` when it was cleared (the next run starts from nothing).
    #[schema(value_type = Object, nullable)]
    pub value: Option<Value>,
    /// `run` (a successful run committed it), `set` or `clear` (an operator).
    #[schema(schema_with = state_action)]
    pub action: String,
    /// The run that committed it.
    pub run_id: Option<String>,
    /// Who set or cleared it.
    pub actor: Option<String>,
    #[schema(format = DateTime)]
    pub committed_at: String,
}

fn state_action() -> utoipa::openapi::Object {
    one_of(["run", "set", "clear"])
}

impl From<&stevedore_store::StateEntry> for StateView {
    fn from(entry: &stevedore_store::StateEntry) -> StateView {
        StateView {
            job_id: entry.job_id.clone(),
            task_id: entry.task_id.clone(),
            value: entry.value.clone(),
            action: entry.action.clone(),
            run_id: entry.run_id.clone(),
            actor: entry.actor.clone(),
            committed_at: time(entry.committed_at),
        }
    }
}

/// A try of a task instance.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Try)]
pub struct TryView {
    pub run_id: String,
    pub task_id: String,
    /// The index of a mapped task's instance (`null` for a task that is not mapped); the
    /// instance's URLs name it `task_id[map_index]`.
    pub map_index: Option<u32>,
    #[schema(minimum = 1)]
    pub try_number: u32,
    #[schema(schema_with = try_state)]
    pub state: String,
    pub backend: String,
    pub container_id: Option<String>,
    pub image: String,
    pub image_digest: Option<String>,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
    pub failure_reason: Option<String>,
}

impl From<&TryRecord> for TryView {
    fn from(attempt: &TryRecord) -> TryView {
        let (task_id, map_index) = mapping::split_key(&attempt.task_id);
        TryView {
            run_id: attempt.run_id.clone(),
            task_id: task_id.to_owned(),
            map_index,
            try_number: attempt.try_number,
            state: attempt.state.as_str().to_owned(),
            backend: attempt.backend.clone(),
            container_id: attempt.container_id.clone(),
            image: attempt.image_ref.clone(),
            image_digest: attempt.image_digest.clone(),
            started_at: time(attempt.started_at),
            ended_at: attempt.ended_at.map(time),
            exit_code: attempt.exit_code,
            failure_reason: attempt.failure_reason.clone(),
        }
    }
}

/// A task instance, with what its latest try says (exit code, digest, reason).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = TaskInstance)]
pub struct TaskInstanceView {
    pub run_id: String,
    pub task_id: String,
    /// The index of a mapped task's instance (`null` for a task that is not mapped, or a
    /// mapped one not expanded yet); its URLs name it `task_id[map_index]`.
    pub map_index: Option<u32>,
    #[schema(schema_with = task_state)]
    pub state: String,
    pub try_number: u32,
    #[schema(format = DateTime)]
    pub next_try_at: Option<String>,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
    pub image_digest: Option<String>,
    pub failure_reason: Option<String>,
    /// Since when it waits for a backend that does not answer (it fails after
    /// `backend_unavailable_timeout`).
    #[schema(format = DateTime)]
    pub waiting_since: Option<String>,
    /// What that backend answered.
    pub waiting_reason: Option<String>,
}

impl TaskInstanceView {
    pub fn new(ti: &TaskInstanceRecord, tries: &[TryRecord]) -> TaskInstanceView {
        let last = tries.last();
        let (task_id, map_index) = mapping::split_key(&ti.task_id);
        TaskInstanceView {
            run_id: ti.run_id.clone(),
            task_id: task_id.to_owned(),
            map_index,
            state: ti.state.as_str().to_owned(),
            try_number: ti.try_number,
            next_try_at: ti.next_try_at.map(time),
            started_at: ti.started_at.map(time),
            ended_at: ti.ended_at.map(time),
            exit_code: last.and_then(|t| t.exit_code),
            image_digest: last.and_then(|t| t.image_digest.clone()),
            failure_reason: last.and_then(|t| t.failure_reason.clone()),
            waiting_since: ti.waiting.as_ref().map(|w| time(w.since)),
            waiting_reason: ti.waiting.as_ref().map(|w| w.reason.clone()),
        }
    }
}

/// A task instance and every try of it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TaskInstanceDetail {
    #[serde(flatten)]
    pub instance: TaskInstanceView,
    pub tries: Vec<TryView>,
}

/// A run with its task instances and their tries (`runs show`, `GET /api/v1/runs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub task_instances: Vec<TaskInstanceDetail>,
    /// The files the run's tries left in their workspaces, kept in the artifact store.
    pub artifacts: Vec<ArtifactView>,
    /// The alerts the run made (oldest first), with where their delivery stands.
    pub notifications: Vec<NotificationView>,
}

/// A file a try left in its workspace (`runs artifacts`, `GET /api/v1/runs/{id}/artifacts`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ArtifactView {
    pub task_id: String,
    /// The index of the mapped task instance that left it (`null` when not mapped).
    pub map_index: Option<u32>,
    pub try_number: u32,
    /// Its path under the workspace.
    pub path: String,
    /// In bytes.
    pub size: u64,
    /// Its content's sha256, hex.
    pub sha256: String,
    /// When it was last written where the try ran.
    #[schema(format = DateTime)]
    pub modified: String,
}

impl From<&stevedore_store::ArtifactRecord> for ArtifactView {
    fn from(record: &stevedore_store::ArtifactRecord) -> Self {
        let (task_id, map_index) = mapping::split_key(&record.task_id);
        ArtifactView {
            task_id: task_id.to_owned(),
            map_index,
            try_number: record.try_number,
            path: record.path.clone(),
            size: record.size,
            sha256: record.sha256.clone(),
            modified: time(DateTime::from_timestamp(record.modified, 0).unwrap_or_default()),
        }
    }
}

/// The detail of `run`, read from the store.
pub async fn run_detail(
    store: &dyn stevedore_store::Store,
    run: &RunRecord,
) -> Result<RunDetail, stevedore_store::StoreError> {
    let mut task_instances = Vec::new();
    for ti in store.task_instances(&run.run_id).await? {
        let tries = store.tries(&run.run_id, &ti.task_id).await?;
        task_instances.push(TaskInstanceDetail {
            instance: TaskInstanceView::new(&ti, &tries),
            tries: tries.iter().map(TryView::from).collect(),
        });
    }
    let artifacts = store
        .run_artifacts(&run.run_id)
        .await?
        .iter()
        .map(ArtifactView::from)
        .collect();
    let mut notifications: Vec<NotificationView> = store
        .list_notifications(&stevedore_store::NotificationFilter {
            run_id: Some(run.run_id.clone()),
            limit: 200,
            ..Default::default()
        })
        .await?
        .iter()
        .map(NotificationView::from)
        .collect();
    notifications.reverse();
    Ok(RunDetail {
        run: RunView::from(run),
        task_instances,
        artifacts,
        notifications,
    })
}

/// A try with the outputs its task published (`tasks show`, `GET .../tries/{n}`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TryDetail {
    #[serde(flatten)]
    pub attempt: TryView,
    /// Output key to value.
    #[schema(value_type = Object)]
    pub outputs: Value,
}

/// One log line of a try.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = LogLine)]
pub struct LogLineView {
    #[schema(minimum = 0)]
    pub seq: i64,
    #[schema(schema_with = stream)]
    pub stream: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    pub text: String,
}

impl From<&LogLine> for LogLineView {
    fn from(line: &LogLine) -> LogLineView {
        LogLineView {
            seq: line.seq,
            stream: line.stream.as_str().to_owned(),
            timestamp: time(line.timestamp),
            text: line.text.clone(),
        }
    }
}

/// A pool.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Pool)]
pub struct PoolView {
    pub name: String,
    #[schema(minimum = 0)]
    pub slots: i64,
    pub description: String,
}

impl From<&PoolRecord> for PoolView {
    fn from(pool: &PoolRecord) -> PoolView {
        PoolView {
            name: pool.name.clone(),
            slots: pool.slots,
            description: pool.description.clone(),
        }
    }
}

/// A connection: its name and variable names, never its values.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView {
    pub name: String,
    pub keys: Vec<String>,
    pub description: String,
}

impl From<&ConnectionRecord> for ConnectionView {
    fn from(connection: &ConnectionRecord) -> ConnectionView {
        ConnectionView {
            name: connection.name.clone(),
            keys: connection.keys.clone(),
            description: connection.description.clone(),
        }
    }
}

/// What a backfill created (`jobs backfill`, `POST /api/v1/jobs/{job_id}/backfill`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Backfill)]
pub struct BackfillView {
    /// The first interval's logical date.
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// The last interval's logical date.
    #[schema(format = DateTime)]
    pub to: Option<String>,
    /// Intervals in the range.
    #[schema(minimum = 0)]
    pub intervals: usize,
    /// Runs created, in logical-date order.
    pub created: Vec<String>,
    /// Failed runs cleared to run again.
    pub rerun: Vec<String>,
    /// Intervals whose run was left as it is.
    #[schema(minimum = 0)]
    pub kept: usize,
}

impl From<&crate::backfill::Backfill> for BackfillView {
    fn from(done: &crate::backfill::Backfill) -> BackfillView {
        BackfillView {
            from: done.from.map(instant),
            to: done.to.map(instant),
            intervals: done.intervals,
            created: done.created.clone(),
            rerun: done.rerun.clone(),
            kept: done.kept,
        }
    }
}

fn notification_event() -> utoipa::openapi::Object {
    one_of(
        stevedore_domain::notify::ALL_EVENTS
            .iter()
            .map(|event| event.as_str()),
    )
}

fn notification_status() -> utoipa::openapi::Object {
    one_of(["pending", "delivered", "failed"])
}

/// An alert in the outbox and where its delivery stands (`notifications list`,
/// `GET /api/v1/notifications`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = Notification)]
pub struct NotificationView {
    /// The event's id, the same at every delivery (receivers drop repeats by it).
    pub id: String,
    #[schema(schema_with = notification_event)]
    pub event: String,
    pub job_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    /// The connection the rule named.
    pub connection: String,
    /// `webhook`, `slack` or `email`, once an attempt has been made.
    pub channel: Option<String>,
    /// The run's or task instance's state the event tells of.
    pub state: String,
    pub reason: Option<String>,
    #[schema(format = DateTime)]
    pub logical_date: String,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    #[schema(schema_with = notification_status)]
    pub status: String,
    pub attempts: u32,
    /// When it is tried next (pending ones).
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// The receiver's last answer: an HTTP status or an SMTP reply code.
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
}

impl From<&stevedore_store::NotificationRecord> for NotificationView {
    fn from(n: &stevedore_store::NotificationRecord) -> Self {
        NotificationView {
            id: n.id.clone(),
            event: n.event.as_str().to_owned(),
            job_id: n.job_id.clone(),
            run_id: n.run_id.clone(),
            task_id: n.task_id.clone(),
            try_number: n.try_number,
            connection: n.connection.clone(),
            channel: n.channel.clone(),
            state: n.state.clone(),
            reason: n.reason.clone(),
            logical_date: instant(n.logical_date),
            occurred_at: time(n.occurred_at),
            status: n.status.as_str().to_owned(),
            attempts: n.attempts,
            next_attempt_at: (n.status == stevedore_store::NotificationStatus::Pending)
                .then(|| time(n.next_attempt_at)),
            last_status_code: n.last_status_code,
            last_error: n.last_error.clone(),
            delivered_at: n.delivered_at.map(time),
        }
    }
}

/// One delivery attempt of a notification.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = NotificationAttempt)]
pub struct NotificationAttemptView {
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub at: String,
    pub channel: Option<String>,
    pub ok: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<&stevedore_store::NotificationAttempt> for NotificationAttemptView {
    fn from(a: &stevedore_store::NotificationAttempt) -> Self {
        NotificationAttemptView {
            attempt: a.attempt,
            at: time(a.at),
            channel: a.channel.clone(),
            ok: a.ok,
            status_code: a.status_code,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
        }
    }
}

/// A notification with every delivery attempt (`notifications show`,
/// `GET /api/v1/notifications/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct NotificationDetailView {
    #[serde(flatten)]
    pub notification: NotificationView,
    pub attempts: Vec<NotificationAttemptView>,
}

impl From<&crate::notifications::NotificationDetail> for NotificationDetailView {
    fn from(detail: &crate::notifications::NotificationDetail) -> Self {
        NotificationDetailView {
            notification: NotificationView::from(&detail.notification),
            attempts: detail
                .attempts
                .iter()
                .map(NotificationAttemptView::from)
                .collect(),
        }
    }
}
