//! Housekeeping: containers of tries whose end is recorded, and the files of runs past
//! `artifact_retention`, removed at every sweep (`sweep_every`) and at a clean stop; the
//! logs of tries that ended `log_archive_after` ago moved to the artifact store, by a task
//! of its own beside the scheduling loop.

#[allow(unused_imports)]
use super::*;

impl Scheduler {
    /// Removes the containers of tries whose end is recorded: a scheduler that stopped
    /// between recording a try's end and removing its container leaves one behind. A
    /// container whose try this store does not know is left alone (another installation may
    /// share the engine), as is one whose try still runs.
    pub(crate) async fn sweep_containers(&self) {
        for (name, backend) in &self.backends {
            if !self.is_ready(name) || !backend.can_adopt() {
                continue;
            }
            let Ok(containers) = backend.list_running().await else {
                continue;
            };
            for container in containers {
                let Ok(tries) = self
                    .store
                    .tries(&container.run_id, &container.task_id)
                    .await
                else {
                    continue;
                };
                let ended = tries
                    .iter()
                    .find(|t| t.try_number == container.try_number)
                    .is_some_and(|t| t.state != TryState::Running);
                if ended {
                    info!(run_id = %container.run_id, task_id = %container.task_id, try_number = container.try_number, "removing the container of a try that ended");
                    if let Err(error) = backend.discard(&container.container_id).await {
                        warn!(backend = name, error = %error, "cannot remove a container");
                    }
                }
            }
        }
    }

    /// Deletes the files of runs that ended longer than `artifact_retention` ago (a
    /// failed try's too: they are kept as long, for a user to look at), blobs first and
    /// then their records, a batch at a time. A store that does not answer is tried again
    /// at the next sweep.
    pub(crate) async fn sweep_artifacts(&self) {
        let Some(artifacts) = &self.config.artifacts else {
            return;
        };
        let retention = chrono::TimeDelta::from_std(self.config.artifact_retention)
            .unwrap_or(chrono::TimeDelta::MAX);
        let Some(cutoff) = self.now().checked_sub_signed(retention) else {
            return;
        };
        let run_ids = match self
            .store
            .runs_with_artifacts_ended_before(cutoff, 100)
            .await
        {
            Ok(run_ids) => run_ids,
            Err(error) => {
                warn!(error = %error, "cannot look for expired artifacts");
                return;
            }
        };
        for run_id in run_ids {
            match artifacts.remove_run(&run_id).await {
                Ok(blobs) => {
                    if let Err(error) = self.store.delete_run_artifacts(&run_id).await {
                        warn!(run_id, error = %error, "cannot forget a run's artifacts");
                        return;
                    }
                    info!(
                        run_id,
                        blobs, "deleted the files of a run past artifact_retention"
                    );
                }
                Err(error) => {
                    warn!(run_id, error = %error, "cannot delete a run's files from the artifact store");
                    return;
                }
            }
        }
    }

    /// Where tries' log lines are read: the store's rows, or their archives.
    pub(crate) fn logs(&self) -> stevedore_artifacts::logs::Logs {
        stevedore_artifacts::logs::Logs::new(self.store.clone(), self.config.artifacts.clone())
    }

    /// Archives the logs of tries that ended `log_archive_after` ago, one at a time, until
    /// the scheduler stops: a backlog (the first start after an upgrade) is worked through
    /// without pause, otherwise it looks again every `sweep_every`. A try whose archive
    /// cannot be written keeps its rows and is tried again at the next look.
    pub(crate) async fn archive_loop(self: Arc<Self>) {
        let (Some(after), Some(artifacts)) =
            (self.config.log_archive_after, self.config.artifacts.clone())
        else {
            return;
        };
        let after = chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
        loop {
            let busy = match self.now().checked_sub_signed(after) {
                Some(cutoff) => self.archive_logs(&artifacts, cutoff).await,
                None => false,
            };
            if !busy {
                tokio::time::sleep(self.config.sweep_every).await;
            }
        }
    }

    /// One batch of [`Scheduler::archive_loop`]; whether it was full and went through
    /// without an error (more may be waiting).
    async fn archive_logs(
        &self,
        artifacts: &stevedore_backend::ArtifactStore,
        cutoff: DateTime<Utc>,
    ) -> bool {
        const BATCH: u32 = 40;
        const ARCHIVING_AT_ONCE: usize = 4;
        let tries = match self.store.logs_to_archive(cutoff, BATCH).await {
            Ok(tries) => tries,
            Err(error) => {
                warn!(error = %error, "cannot look for logs to archive");
                return false;
            }
        };
        // A few at a time: an upload waits on the network, not on this scheduler.
        use futures_util::StreamExt;
        let store = self.store.clone();
        let now = self.now();
        let results: Vec<(stevedore_store::LogToArchive, Result<_, _>)> =
            futures_util::stream::iter(tries.clone())
                .map(|candidate| {
                    let (store, artifacts) = (store.clone(), artifacts.clone());
                    async move {
                        let result = stevedore_artifacts::logs::archive(
                            store.as_ref(),
                            &artifacts,
                            &candidate,
                            now,
                        )
                        .await;
                        (candidate, result)
                    }
                })
                .buffer_unordered(ARCHIVING_AT_ONCE)
                .collect()
                .await;
        let mut all_done = true;
        for (candidate, result) in results {
            match result {
                Ok(done) => tracing::debug!(
                    try_id = candidate.try_id,
                    lines = done.lines,
                    bytes = done.bytes,
                    raw_bytes = done.raw_bytes,
                    "archived a try's log"
                ),
                Err(error) => {
                    all_done = false;
                    warn!(try_id = candidate.try_id, run_id = %candidate.run_id, error = %error, "cannot archive a try's log; its lines stay in the store and it is tried again later");
                }
            }
        }
        all_done && tries.len() as u32 == BATCH
    }

    /// Applies the retention (each job's own, else the configuration's) a minute after the
    /// start (or `retention_every`, if sooner), then every `retention_every`.
    pub(crate) async fn retention_loop(self: Arc<Self>) {
        let every = self.config.retention_every;
        tokio::time::sleep(every.min(Duration::from_secs(60))).await;
        loop {
            self.apply_retention().await;
            tokio::time::sleep(every).await;
        }
    }

    async fn apply_retention(&self) {
        use crate::retention::{clean, filter_of};
        let dir = self.config.jobs_dir.clone();
        let jobs = tokio::task::spawn_blocking(move || load_jobs_dir(&dir))
            .await
            .unwrap_or_default()
            .jobs;
        let now = self.now();
        let mut own = Vec::new();
        let mut filters = Vec::new();
        for loaded in &jobs {
            if let Some(retention) = loaded.job.retention {
                own.push(loaded.job.id.clone());
                if let Some(filter) = filter_of(retention, now) {
                    filters.push(stevedore_store::CleanFilter {
                        job_id: Some(loaded.job.id.clone()),
                        ..filter
                    });
                }
            }
        }
        if let Some(filter) = filter_of(self.config.retention, now) {
            filters.push(stevedore_store::CleanFilter {
                except_jobs: own,
                ..filter
            });
        }
        for filter in filters {
            match clean(
                self.store.as_ref(),
                self.config.artifacts.as_ref(),
                &filter,
                false,
                |_| {},
            )
            .await
            {
                Ok(report) if report.cleaned.runs > 0 => info!(
                    job_id = filter.job_id.as_deref().unwrap_or("*"),
                    runs = report.cleaned.runs,
                    tries = report.cleaned.tries,
                    log_lines = report.cleaned.log_lines,
                    objects = report.objects,
                    size_before = report.size_before,
                    size_after = report.size_after,
                    "removed runs past their retention"
                ),
                Ok(_) => {}
                Err(error) => {
                    warn!(error = %error, "cannot apply the retention; trying again at the next one")
                }
            }
        }
    }
}
