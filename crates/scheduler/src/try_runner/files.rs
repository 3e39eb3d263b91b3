//! The try's files: which of its run's files it starts with (staged by the backend before
//! it starts) and the files it left, captured into the artifact store and recorded on the
//! try before its end is (so a downstream try that starts finds them recorded).

#[allow(unused_imports)]
use super::*;

use std::collections::BTreeSet;
use stevedore_backend::{CaptureFailure, CaptureLimits, StagedFile, WorkspaceFile};
use stevedore_store::CapturedFile;

/// Where a run made for posted events finds them in its workspace.
pub const EVENTS_FILE: &str = "events.jsonl";

/// How long a successful try's files are waited for while the artifact store (or the
/// backend holding them) does not answer, before the try fails for it.
const CAPTURE_WAIT: Duration = Duration::from_secs(600);

impl TryRunner {
    /// The files `task` starts with: those of the latest successful try of each task it
    /// depends on (directly or not), at their paths. When two of them wrote one path, the
    /// try that ended last wins, as when they shared one folder.
    pub(super) async fn staged_inputs(
        &self,
        job: &Job,
        task: &Task,
        run_id: &str,
    ) -> anyhow::Result<Vec<StagedFile>> {
        if self.artifacts.is_none() {
            return Ok(Vec::new());
        }
        let mut staged = self.staged_upstream_files(job, task, run_id).await?;
        if let Some(events) = self.events_file(run_id).await? {
            staged.push(events);
        }
        Ok(staged)
    }

    /// A run made for posted events (`events:` on its job): `events.jsonl`, one event per
    /// line in arrival order, put into the artifact store (content-addressed, so every try of
    /// the run stages the same blob) and staged in every try's workspace.
    async fn events_file(&self, run_id: &str) -> anyhow::Result<Option<StagedFile>> {
        let Some(store) = &self.artifacts else {
            return Ok(None);
        };
        let events = self.store.run_events(run_id).await?;
        if events.is_empty() {
            return Ok(None);
        }
        let mut text = String::with_capacity(events.iter().map(|e| e.len() + 1).sum());
        for event in &events {
            text.push_str(event);
            text.push('\n');
        }
        let blob = store
            .put(run_id, std::io::Cursor::new(text.into_bytes()), u64::MAX)
            .await
            .map_err(|e| anyhow::anyhow!("cannot store the run's events.jsonl: {e}"))?;
        Ok(Some(StagedFile {
            file: WorkspaceFile {
                path: EVENTS_FILE.to_owned(),
                size: blob.size,
                sha256: blob.sha256,
                modified: 0,
            },
            task_id: "events".to_owned(),
        }))
    }

    /// The files of the latest successful try of each task `task` depends on.
    async fn staged_upstream_files(
        &self,
        job: &Job,
        task: &Task,
        run_id: &str,
    ) -> anyhow::Result<Vec<StagedFile>> {
        let ancestors = job.ancestors(task.task_id());
        if ancestors.is_empty() {
            return Ok(Vec::new());
        }
        let artifacts = self.store.run_artifacts(run_id).await?;
        // The task instances (each instance of a mapped ancestor) that left files.
        let upstreams: BTreeSet<&str> = artifacts
            .iter()
            .map(|a| a.task_id.as_str())
            .filter(|key| ancestors.contains(mapping::task_of_key(key)))
            .collect();
        let mut chosen = Vec::new();
        for upstream in upstreams {
            let tries = self.store.tries(run_id, upstream).await?;
            if let Some(latest) = tries
                .iter()
                .filter(|t| t.state == TryState::Success)
                .max_by_key(|t| t.try_number)
            {
                chosen.push((latest.ended_at, latest.try_id));
            }
        }
        chosen.sort();
        let mut by_path: BTreeMap<String, StagedFile> = BTreeMap::new();
        for (_, try_id) in chosen {
            for artifact in artifacts.iter().filter(|a| a.try_id == try_id) {
                by_path.insert(
                    artifact.path.clone(),
                    StagedFile {
                        file: WorkspaceFile {
                            path: artifact.path.clone(),
                            size: artifact.size,
                            sha256: artifact.sha256.clone(),
                            modified: artifact.modified,
                        },
                        task_id: artifact.task_id.clone(),
                    },
                );
            }
        }
        Ok(by_path.into_values().collect())
    }

    /// Captures the files the exited try left in its workspace and records them on the
    /// try. A try that succeeded waits for a store (or backend) that does not answer, up to
    /// [`CAPTURE_WAIT`], and fails when its files cannot be kept (too large, too many,
    /// gone), since a downstream try would miss them; a try that failed keeps what can be
    /// kept at once, for a user to look at, and its end stays as it was.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn capture_files(
        &self,
        backend: &Arc<dyn Backend>,
        container_id: Option<&str>,
        context: &TryContext,
        task: &Task,
        try_id: i64,
        inputs: &[StagedFile],
        mut exit: TryExit,
    ) -> anyhow::Result<TryExit> {
        let (Some(store), Some(container_id)) = (&self.artifacts, container_id) else {
            return Ok(exit);
        };
        let succeeded = exit.failure.is_none() && exit.exit_code == Some(0);
        let staged: Vec<WorkspaceFile> = inputs.iter().map(|s| s.file.clone()).collect();
        let limits = CaptureLimits {
            max_file_size: task.max_artifact_size,
            max_files: stevedore_artifacts::workspace::MAX_FILES,
        };
        let waited = std::time::Instant::now();
        let mut pause = Duration::from_secs(1);
        let captured = loop {
            match backend
                .capture(container_id, &context.run_id, store, &staged, &limits)
                .await
            {
                Ok(files) => break Ok(files),
                Err(failure)
                    if succeeded && failure.is_passing() && waited.elapsed() < CAPTURE_WAIT =>
                {
                    warn!(run_id = %context.run_id, task_id = %task.id, try_number = context.try_number, error = %failure, retry_in_s = pause.as_secs(), "cannot capture the try's files yet; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(failure) => break Err(failure),
            }
        };
        let files = match captured {
            Ok(files) => files,
            Err(failure) => {
                if succeeded {
                    let why = match &failure {
                        CaptureFailure::Capture(
                            error @ (stevedore_backend::CaptureError::TooLarge { .. }
                            | stevedore_backend::CaptureError::TooMany { .. }),
                        ) => error.to_string(),
                        other => format!("the try's files could not be kept: {other}"),
                    };
                    warn!(run_id = %context.run_id, task_id = %task.id, try_number = context.try_number, reason = %why, "failing the try: its files cannot travel");
                    exit.failure = Some(FailureReason::Artifact(why));
                } else {
                    debug!(run_id = %context.run_id, task_id = %task.id, error = %failure, "the failed try's files were not kept");
                }
                return Ok(exit);
            }
        };
        if files.is_empty() {
            return Ok(exit);
        }
        let records: Vec<CapturedFile> = files
            .iter()
            .map(|f| CapturedFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                modified: f.modified,
            })
            .collect();
        persist("recording the try's files", || {
            self.store.record_artifacts(try_id, &records)
        })
        .await?;
        info!(run_id = %context.run_id, task_id = %task.id, try_number = context.try_number, files = files.len(), bytes = files.iter().map(|f| f.size).sum::<u64>(), "captured the try's files");
        Ok(exit)
    }
}
