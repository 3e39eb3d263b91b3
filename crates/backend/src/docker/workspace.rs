//! The try's workspace through the engine's archive API: its run's upstream files unpacked
//! into the created container before it starts (a tar archive streamed from the artifact
//! store), and the files it left read out of the exited container (a tar archive streamed
//! into the store) before the container is removed. Neither needs a volume shared between
//! tries, so the tries of one run may run on any engines.

#[allow(unused_imports)]
use super::*;

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use futures_util::TryStreamExt;

impl DockerBackend {
    /// Unpacks `workspace.inputs` into the container's workspace. `Err` with how the try
    /// ends (or why it waits) when that failed.
    pub(super) async fn stage_inputs(
        &self,
        docker: &Docker,
        container_id: &str,
        run_id: &str,
        workspace: &WorkspaceExchange,
    ) -> Result<(), Result<TryExit, BackendError>> {
        let (archive, problem) = stevedore_artifacts::workspace::stage_tar(
            workspace.store.clone(),
            run_id.to_owned(),
            workspace.inputs.clone(),
        );
        let options = UploadToContainerOptionsBuilder::default()
            .path(WORKSPACE_DIR)
            .build();
        let uploaded = docker
            .upload_to_container(
                container_id,
                Some(options),
                bollard::body_try_stream(archive),
            )
            .await;
        // A file the store could not give whole ends the archive early: that is the reason,
        // whatever the engine made of the cut archive.
        if let Some(error) = problem.take() {
            return Err(stage_failure(error));
        }
        match uploaded {
            Ok(()) => Ok(()),
            Err(error) if is_connection_error(&error) => Err(Err(self.unavailable(&error))),
            Err(error) => Err(Ok(TryExit {
                exit_code: None,
                failure: Some(FailureReason::Backend(format!(
                    "cannot stage the run's files into the container: {}",
                    engine_message(&error)
                ))),
            })),
        }
    }

    /// Reads the workspace of the exited container `container_id` into the store.
    pub(super) async fn capture_workspace(
        &self,
        docker: &Docker,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(WORKSPACE_DIR)
            .build();
        // The first chunk tells whether the container is there at all.
        let mut archive = Box::pin(docker.download_from_container(container_id, Some(options)));
        let first = match archive.try_next().await {
            Ok(first) => first,
            Err(error) if status_code(&error) == Some(404) => {
                return Err(CaptureFailure::Gone(format!(
                    "the try's container {container_id} is gone: {}",
                    engine_message(&error)
                )))
            }
            Err(error) if is_connection_error(&error) => {
                return Err(CaptureFailure::Unavailable(
                    self.unavailable(&error).to_string(),
                ))
            }
            Err(error) => {
                return Err(CaptureFailure::Capture(CaptureError::Source(format!(
                    "the engine did not give the workspace: {}",
                    engine_message(&error)
                ))))
            }
        };
        let rest = archive.map_err(|error| std::io::Error::other(engine_message(&error)));
        let chunks = futures_util::stream::iter(first.map(Ok)).chain(rest);
        let reader = tokio_util::io::StreamReader::new(chunks);
        stevedore_artifacts::workspace::capture_tar(store, run_id, reader, staged, limits)
            .await
            .map_err(CaptureFailure::Capture)
    }

    /// Whether this engine has the container `container_id`.
    pub async fn has_container(&self, container_id: &str) -> Result<bool, BackendError> {
        let docker = self.client()?;
        match docker.inspect_container(container_id, None).await {
            Ok(_) => Ok(true),
            Err(error) if status_code(&error) == Some(404) => Ok(false),
            Err(error) => Err(self.unavailable(&error)),
        }
    }
}
