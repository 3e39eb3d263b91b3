//! The Docker backend: one container per try, through the engine's HTTP API (bollard).
//!
//! The API version is pinned to 1.41 (Docker 20.10), which every engine since accepts, so
//! no negotiation round-trip is needed and an engine that is down at start-up does not
//! leave the client on a wrong version.
//!
//! This file holds the backend's trait implementation (launch, re-attach, list, remove); its
//! parts are beside it: `connect.rs` (endpoint, TLS), `image.rs` (resolve, pull),
//! `container.rs` (container body, state file, kill, list), `workspace.rs` (the try's files
//! staged in and captured out through the archive API) and `output.rs` (streams into lines,
//! the exit).

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use chrono::Utc;
use futures_util::StreamExt;
use stevedore_domain::image::ImageRef;
use stevedore_domain::job::PullPolicy;
use stevedore_domain::state::FailureReason;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::lines::LineSplitter;
use crate::*;

mod connect;
mod container;
mod image;
mod output;
mod workspace;

pub use connect::TlsFiles;
use output::Output;

const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

pub struct DockerBackend {
    endpoint: String,
    /// The client certificate and the CA a `tcp://` endpoint is reached with (TLS, the
    /// engine verifying the client as `dockerd --tlsverify` does).
    tls: Option<TlsFiles>,
    /// Made on first use: bollard refuses to build a client for a socket that does not
    /// exist yet, and an engine that starts after the scheduler must still be picked up.
    client: std::sync::Mutex<Option<Docker>>,
}

/// Why an image could not be made ready.
enum ImageProblem {
    Unavailable(String),
    Image(String),
}

fn is_connection_error(error: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        error,
        E::IOError { .. }
            | E::HyperResponseError { .. }
            | E::HttpClientError { .. }
            | E::HyperLegacyError { .. }
            | E::SocketNotFoundError(_)
            | E::RequestTimeoutError
    )
}

/// The credentials sent with a pull: the connection's, for the image's registry (or the one
/// the connection names); empty ones otherwise, as some engines refuse a missing auth header.
pub fn registry_credentials(
    image: &ImageRef,
    auth: Option<&RegistryAuth>,
) -> bollard::auth::DockerCredentials {
    match auth {
        Some(auth) => bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: auth.server.clone().or_else(|| image.registry.clone()),
            ..Default::default()
        },
        None => bollard::auth::DockerCredentials::default(),
    }
}

fn status_code(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn engine_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn health(&self) -> Result<(), BackendError> {
        let docker = self.client()?;
        docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|error| self.unavailable(&error))
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        let docker = &self.client()?;
        let timer = std::time::Instant::now();
        let failed = |reason| {
            Ok(TryExit {
                exit_code: None,
                failure: Some(reason),
            })
        };
        let image = match ImageRef::parse(&spec.image) {
            Ok(image) => image,
            Err(message) => return failed(FailureReason::Image(message)),
        };
        let digest = match self
            .resolve_image(
                docker,
                &image,
                spec.pull_policy,
                spec.registry_auth.as_ref(),
                &events,
            )
            .await
        {
            Ok(digest) => digest,
            Err(ImageProblem::Unavailable(message)) => {
                return Err(BackendError::Unavailable(message))
            }
            Err(ImageProblem::Image(message)) => return failed(FailureReason::Image(message)),
        };

        let name = container_name(&spec.job_id, &spec.task_id, &spec.run_id, spec.try_number);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let phase = |name: &str| debug!(container = %spec.task_id, phase = name, elapsed_ms = timer.elapsed().as_millis() as u64, "try phase");
        phase("image resolved");
        let created = match docker
            .create_container(
                Some(options),
                self.container_body(&spec, &image.to_string()),
            )
            .await
        {
            Ok(created) => created,
            Err(error) if is_connection_error(&error) => return Err(self.unavailable(&error)),
            Err(error) if status_code(&error) == Some(409) => {
                // The name is the try's own: a container of this very try exists, so another
                // scheduler launched it. The engine refused a duplicate; leave that one be.
                return failed(FailureReason::Backend(format!(
                    "a container of this try (`{name}`) exists already: another scheduler launched it; it is left alone"
                )));
            }
            Err(error) => {
                return failed(FailureReason::Backend(format!(
                    "cannot create container: {}",
                    engine_message(&error)
                )))
            }
        };
        let container_id = created.id;
        let _ = events
            .send(TryEvent::Launched {
                container_id: container_id.clone(),
                image_digest: Some(digest),
            })
            .await;

        if let Some(workspace) = spec.workspace.as_ref().filter(|w| !w.inputs.is_empty()) {
            if let Err(problem) = self
                .stage_inputs(docker, &container_id, &spec.run_id, workspace)
                .await
            {
                self.remove_quietly(docker, &container_id).await;
                return problem;
            }
            phase("staged");
        }
        if let Some(state) = &spec.state {
            if let Err(error) = self
                .upload_state(
                    docker,
                    &container_id,
                    state,
                    spec.isolation.read_only_rootfs,
                )
                .await
            {
                self.remove_quietly(docker, &container_id).await;
                return failed(FailureReason::Backend(format!(
                    "cannot write the state file: {}",
                    engine_message(&error)
                )));
            }
        }
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        phase("created");
        let output = match docker.attach_container(&container_id, Some(attach)).await {
            Ok(attached) => attached.output,
            Err(error) => {
                self.remove_quietly(docker, &container_id).await;
                if is_connection_error(&error) {
                    return Err(self.unavailable(&error));
                }
                return failed(FailureReason::Backend(format!(
                    "cannot attach to container: {}",
                    engine_message(&error)
                )));
            }
        };
        phase("attached");
        if let Err(error) = docker.start_container(&container_id, None).await {
            self.remove_quietly(docker, &container_id).await;
            return failed(FailureReason::Backend(format!(
                "cannot start container: {}",
                engine_message(&error)
            )));
        }

        phase("started");
        let (whole, waited) = tokio::join!(
            self.forward_output(
                &container_id,
                output,
                Output::Attached,
                spec.max_line_bytes,
                &events
            ),
            self.wait_exit(docker, &container_id, &mut kill)
        );
        let (exit_code, failure) = waited?;
        if !whole {
            // The engine went away after the exit was read but before all the output was: the
            // try's end is left for re-attaching, which reads the rest from the engine's log.
            return Err(BackendError::Disconnected(format!(
                "the output of container {container_id} broke off before its end"
            )));
        }

        phase("exited");
        let failure = self
            .out_of_memory(docker, &container_id, exit_code, failure)
            .await;
        if !spec.keep_exited {
            self.remove_quietly(docker, &container_id).await;
            phase("removed");
        }
        Ok(TryExit { exit_code, failure })
    }

    fn can_adopt(&self) -> bool {
        true
    }

    async fn adopt(
        &self,
        adoption: &Adoption,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<Adopted, BackendError> {
        let docker = &self.client()?;
        let name = container_name(
            &adoption.job_id,
            &adoption.task_id,
            &adoption.run_id,
            adoption.try_number,
        );
        let inspect = match docker.inspect_container(&name, None).await {
            Ok(inspect) => inspect,
            Err(error) if status_code(&error) == Some(404) => return Ok(Adopted::Missing),
            Err(error) if is_connection_error(&error) => return Err(self.unavailable(&error)),
            Err(error) => {
                return Ok(Adopted::Exit(TryExit {
                    exit_code: None,
                    failure: Some(FailureReason::Backend(format!(
                        "cannot inspect container `{name}`: {}",
                        engine_message(&error)
                    ))),
                }))
            }
        };
        let container_id = inspect.id.clone().unwrap_or(name);
        let status = inspect.state.as_ref().and_then(|state| state.status);
        if status == Some(bollard::models::ContainerStateStatusEnum::CREATED) {
            // Removed by the caller once the try is recorded as interrupted: see `NotStarted`.
            return Ok(Adopted::NotStarted {
                left: Some(container_id),
            });
        }
        let _ = events
            .send(TryEvent::Launched {
                container_id: container_id.clone(),
                image_digest: None,
            })
            .await;
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .build();
        let output = Box::pin(docker.logs(&container_id, Some(options)));
        let skip = (adoption.stored_stdout, adoption.stored_stderr);
        let (whole, waited) = tokio::join!(
            self.forward_output(
                &container_id,
                output,
                Output::Logged { skip },
                adoption.max_line_bytes,
                &events
            ),
            self.wait_exit(docker, &container_id, &mut kill)
        );
        let (exit_code, failure) = waited?;
        if !whole {
            // The engine went away after the exit was read but before all the output was: the
            // try's end is left for re-attaching, which reads the rest from the engine's log.
            return Err(BackendError::Disconnected(format!(
                "the output of container {container_id} broke off before its end"
            )));
        }
        let failure = self
            .out_of_memory(docker, &container_id, exit_code, failure)
            .await;
        Ok(Adopted::Exit(TryExit { exit_code, failure }))
    }

    async fn discard(&self, container_id: &str) -> Result<(), BackendError> {
        self.remove_quietly(&self.client()?, container_id).await;
        Ok(())
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        self.containers(false).await
    }

    async fn capture(
        &self,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let docker = self
            .client()
            .map_err(|e| CaptureFailure::Unavailable(e.to_string()))?;
        self.capture_workspace(&docker, container_id, run_id, store, staged, limits)
            .await
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        self.remove_quietly(&self.client()?, container_id).await;
        Ok(())
    }
}

/// A try's container name: derived from the try itself, so the engine refuses a second
/// container of the same try whoever asks.
pub fn container_name(job_id: &str, task_id: &str, run_id: &str, try_number: u32) -> String {
    format!(
        "stevedore-{job_id}-{}-{run_id}-{try_number}",
        stevedore_domain::mapping::name_part(task_id)
    )
}
