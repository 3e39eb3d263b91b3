//! Finishing a try: what its end means (decided by `stevedore_domain::attempt`), recorded
//! fenced; its container record settled and the container removed; a left try that
//! cannot be masked stopped unread.

#[allow(unused_imports)]
use super::*;

impl TryRunner {
    /// Stops a left try whose connections cannot be opened (a scheduler started without the
    /// secret key, say) without reading a line of it, since its lines could not be masked,
    /// and fails it with the reason.
    pub(super) async fn stop_unmaskable(
        &self,
        job: &Job,
        task: &Task,
        context: &TryContext,
        record: &TryRecord,
        backend: Arc<dyn Backend>,
        message: String,
    ) -> anyhow::Result<TryEnd> {
        warn!(run_id = %context.run_id, task_id = %task.id, try_number = record.try_number, error = %message, "cannot open the connections of a left try: stopping it unread");
        let mut containers: Vec<String> = record.container_id.iter().cloned().collect();
        if let Ok(running) = backend.list_running().await {
            containers.extend(
                running
                    .into_iter()
                    .filter(|r| {
                        r.run_id == context.run_id
                            && r.task_id == task.id
                            && r.try_number == record.try_number
                    })
                    .map(|r| r.container_id),
            );
        }
        containers.sort();
        containers.dedup();
        for container_id in &containers {
            if let Err(error) = backend.remove(container_id).await {
                warn!(container_id, error = %error, "cannot stop the try's container");
            }
        }
        let exit = TryExit {
            exit_code: None,
            failure: Some(FailureReason::Backend(format!(
                "{message}; the try was stopped without reading its output, since its connection values could not be masked"
            ))),
        };
        self.finish(job, task, context, record.try_id, exit, Observed::default())
            .await
    }

    /// Records a try's end, fenced by this runner's claim.
    pub(super) async fn record(&self, finish: &TryFinish) -> anyhow::Result<()> {
        record_finish(&self.writes, finish, self.fence.as_ref()).await
    }

    /// Waits for the try's container record to be written; writes it again (with backoff)
    /// if that failed for a passing reason. `Some` with the store's message when the run was
    /// taken over.
    pub(super) async fn settle_container(
        &self,
        recorded: &mut Recorded,
    ) -> anyhow::Result<Option<String>> {
        let Some(pending) = recorded.container_write.take() else {
            return Ok(None);
        };
        let written = match pending.answer.await {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced(message)) => return Ok(Some(message)),
            Err(error) if error.is_transient() => {
                persist("recording the try's container", || {
                    self.writes.set_try_container(
                        pending.try_id,
                        &pending.container_id,
                        pending.image_digest.as_deref(),
                        pending.log_seq,
                        self.fence.as_ref(),
                    )
                })
                .await
            }
            Err(error) => Err(error.into()),
        };
        match written {
            Ok(()) => Ok(None),
            Err(error) => match fenced(&error) {
                Some(message) => Ok(Some(message)),
                None => Err(error),
            },
        }
    }

    /// Removes the exited container of a try whose end is recorded.
    pub(super) async fn discard(&self, backend: &Arc<dyn Backend>, container_id: Option<&str>) {
        if let Some(container_id) = container_id {
            if let Err(error) = backend.discard(container_id).await {
                warn!(container_id, error = %error, "cannot remove the try's container");
            }
        }
    }

    /// Records how the try ended, as `stevedore_domain::attempt::settle` decides from its exit
    /// and the task instance's history (read only for a failure or a reschedule).
    pub(super) async fn finish(
        &self,
        job: &Job,
        task: &Task,
        context: &TryContext,
        try_id: i64,
        exit: TryExit,
        observed: Observed,
    ) -> anyhow::Result<TryEnd> {
        let now = self.clock.now();
        let ending = Ending {
            exit_code: exit.exit_code,
            failure: exit.failure,
        };
        // Only a failure or a sensor's reschedule needs the task instance's history.
        let history = if attempt::needs_history(&ending) {
            task_history(self.store.as_ref(), &context.run_id, &task.id, Some(try_id)).await?
        } else {
            History::default()
        };
        let identity = TryIdentity {
            job_id: &job.id,
            logical_date: context.logical_date,
        };
        let Settled {
            try_state,
            task_state,
            next_try_at,
            failure_reason,
        } = attempt::settle(&ending, &history, task, identity, now);
        info!(
            run_id = %context.run_id, task_id = %task.id, try_number = context.try_number,
            exit_code = ?exit.exit_code, reason = ?failure_reason, state = %task_state, "try ended"
        );
        let notifications = match crate::alerts::task_event(task_state) {
            Some(event) => crate::alerts::for_task(
                job,
                task,
                crate::alerts::RunRef {
                    job_id: &job.id,
                    job_version: &job.version,
                    run_id: &context.run_id,
                    logical_date: context.logical_date,
                },
                event,
                Some(try_id),
                context.try_number,
                task_state,
                failure_reason.as_deref(),
                now,
            ),
            None => Vec::new(),
        };
        let finish = TryFinish {
            try_id,
            state: try_state,
            ended_at: now,
            exit_code: exit.exit_code,
            failure_reason,
            task_state,
            next_try_at,
            notifications,
            produces: if try_state == TryState::Success {
                task.produces.clone()
            } else {
                Vec::new()
            },
            metrics: observed.metrics,
        };
        match self.record(&finish).await {
            Ok(()) => {
                self.trace(
                    job,
                    context,
                    try_id,
                    observed.launch_requested_at,
                    observed.launched_at,
                )
                .await;
                Ok(TryEnd::Finished(task_state))
            }
            Err(error) => match fenced(&error) {
                Some(message) => Ok(TryEnd::Fenced(message)),
                None => Err(error),
            },
        }
    }
}

/// What the try runner saw of a try besides its exit: its metrics, and when the backend was
/// asked to run it and said it runs (for its spans).
#[derive(Default)]
pub(super) struct Observed {
    pub metrics: Vec<(String, f64)>,
    pub launch_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    pub launched_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryRunner {
    /// The try's spans, once its end is recorded (when traces are exported): read back as
    /// recorded, so the span says what the store says.
    async fn trace(
        &self,
        job: &Job,
        context: &TryContext,
        try_id: i64,
        launch_requested_at: Option<chrono::DateTime<chrono::Utc>>,
        launched_at: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let Some(traces) = &self.traces else {
            return;
        };
        let task_key = match context.map_index {
            Some(index) => stevedore_domain::mapping::instance_key(&context.task_id, index),
            None => context.task_id.clone(),
        };
        let Ok(tries) = self.store.tries(&context.run_id, &task_key).await else {
            return;
        };
        let Some(record) = tries.iter().find(|t| t.try_id == try_id) else {
            return;
        };
        let Some(ended_at) = record.ended_at else {
            return;
        };
        traces.attempt(&crate::traces::TrySpan {
            job_id: &job.id,
            run_id: &context.run_id,
            task_id: &task_key,
            try_id,
            try_number: record.try_number,
            backend: &record.backend,
            image: &record.image_ref,
            state: record.state.as_str(),
            exit_code: record.exit_code,
            reason: record.failure_reason.as_deref(),
            started_at: record.started_at,
            ended_at,
            launch_requested_at,
            launched_at,
        });
    }
}

/// `exit` failed for breaking the protocol's limits when its events did (they are all
/// stored before the exit is looked at), even if the try ended before the kill reached it.
pub(super) fn with_protocol_failure(
    mut exit: TryExit,
    kill: &stevedore_backend::KillReceiver,
) -> TryExit {
    if let Some(StopReason::Protocol(why)) = kill.borrow().clone() {
        exit.failure = Some(FailureReason::Protocol(why));
    }
    exit
}

/// A failing exit of a try that said why (its last `error` message) or exited 78 carries
/// that: its reason, and whether a retry may mend it.
pub(super) fn with_reported_error(
    mut exit: TryExit,
    error: Option<&stevedore_domain::state::ReportedError>,
) -> TryExit {
    if exit.failure.is_none() {
        if let Some(code) = exit.exit_code {
            if let Some(reported @ FailureReason::Reported { .. }) =
                FailureReason::from_exit(code, error)
            {
                exit.failure = Some(reported);
            }
        }
    }
    exit
}

/// What a task instance went through since it was last cleared: its failed tries (all but
/// `this_try`) and when its first try started.
pub async fn task_history(
    store: &dyn Store,
    run_id: &str,
    task_id: &str,
    this_try: Option<i64>,
) -> anyhow::Result<History> {
    let earlier_tries = store.tries(run_id, task_id).await?;
    let retry_base = store
        .task_instances(run_id)
        .await?
        .into_iter()
        .find(|ti| ti.task_id == task_id)
        .map(|ti| ti.retry_base)
        .unwrap_or(0);
    Ok(History {
        earlier_failures: earlier_tries
            .iter()
            .filter(|t| {
                Some(t.try_id) != this_try
                    && t.try_number > retry_base
                    && t.state == TryState::Failed
            })
            .count() as u32,
        first_started_at: earlier_tries.first().map(|t| t.started_at),
    })
}
