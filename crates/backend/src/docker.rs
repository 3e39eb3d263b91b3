//! The Docker backend: one container per try, through the engine's HTTP API (bollard).
//!
//! The API version is pinned to 1.41 (Docker 20.10), which every engine since accepts, so
//! no negotiation round-trip is needed and an engine that is down at start-up does not
//! leave the client on a wrong version.

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

/// The files of a TLS connection to an engine, as the docker CLI keeps them in
/// `DOCKER_CERT_PATH`: the CA that signed the engine's certificate, and the client's own
/// certificate and key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir` (the docker CLI's layout).
    pub fn in_dir(dir: impl AsRef<std::path::Path>) -> TlsFiles {
        let dir = dir.as_ref();
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// The first file that cannot be read, named.
    fn check(&self) -> Result<(), String> {
        for (what, path) in [
            ("CA certificate", &self.ca),
            ("client certificate", &self.cert),
            ("client key", &self.key),
        ] {
            if let Err(error) = std::fs::metadata(path) {
                return Err(format!("the TLS {what} {}: {error}", path.display()));
            }
        }
        Ok(())
    }
}

impl DockerBackend {
    /// A client for `DOCKER_HOST` (`unix://` or `tcp://`), or the local socket; over TLS when
    /// `DOCKER_TLS_VERIFY` is set, with the files in `DOCKER_CERT_PATH` (default
    /// `~/.docker`), as the docker CLI does. Connecting is lazy: an unreachable engine shows
    /// up in [`Backend::health`], not here. Tests and tools use this; the scheduler is given
    /// its settings through [`DockerBackend::from_settings`].
    pub fn from_env() -> Result<DockerBackend, BackendError> {
        DockerBackend::from_settings(&|name| std::env::var(name).ok())
    }

    /// The same from `setting(name)`: the value of the variable `name` (`DOCKER_HOST`,
    /// `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`, `HOME`) as the caller resolved it.
    pub fn from_settings(
        setting: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DockerBackend, BackendError> {
        let set = |name: &str| setting(name).filter(|value| !value.is_empty());
        let endpoint = set("DOCKER_HOST").unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        let verify = set("DOCKER_TLS_VERIFY").filter(|value| value != "0");
        let tls = verify.map(|_| {
            let dir = set("DOCKER_CERT_PATH")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(set("HOME").unwrap_or_default()).join(".docker")
                });
            TlsFiles::in_dir(dir)
        });
        DockerBackend::connect_with(&endpoint, tls)
    }

    pub fn connect(endpoint: &str) -> Result<DockerBackend, BackendError> {
        DockerBackend::connect_with(endpoint, None)
    }

    /// A client for `endpoint`, over TLS with `tls` (a `tcp://` endpoint only).
    pub fn connect_with(
        endpoint: &str,
        tls: Option<TlsFiles>,
    ) -> Result<DockerBackend, BackendError> {
        if !(endpoint.starts_with("unix://")
            || endpoint.starts_with("tcp://")
            || endpoint.starts_with("http://"))
        {
            return Err(BackendError::Unavailable(format!(
                "DOCKER_HOST `{endpoint}` is not a unix:// or tcp:// address"
            )));
        }
        if tls.is_some() && !endpoint.starts_with("tcp://") {
            return Err(BackendError::Unavailable(format!(
                "Docker endpoint `{endpoint}`: TLS needs a tcp:// address"
            )));
        }
        Ok(DockerBackend {
            endpoint: endpoint.to_owned(),
            tls,
            client: std::sync::Mutex::new(None),
        })
    }

    /// The engine client, made now if it was not yet.
    pub fn client(&self) -> Result<Docker, BackendError> {
        let mut client = self.client.lock().expect("poisoned");
        if let Some(docker) = client.as_ref() {
            return Ok(docker.clone());
        }
        let timeout = 120;
        let docker = match (&self.tls, self.endpoint.strip_prefix("unix://")) {
            (Some(tls), _) => {
                tls.check().map_err(|problem| {
                    BackendError::Unavailable(format!(
                        "cannot reach the Docker engine at {}: {problem}",
                        self.endpoint
                    ))
                })?;
                Docker::connect_with_ssl(
                    &self.endpoint,
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    timeout,
                    &API_VERSION,
                )
            }
            (None, Some(path)) => Docker::connect_with_unix(path, timeout, &API_VERSION),
            (None, None) => Docker::connect_with_http(&self.endpoint, timeout, &API_VERSION),
        }
        .map_err(|error| self.unavailable(&error))?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn unavailable(&self, error: &bollard::errors::Error) -> BackendError {
        BackendError::Unavailable(format!(
            "cannot reach the Docker engine at {}: {error}",
            self.endpoint
        ))
    }

    /// Makes the image present per the pull policy; returns its digest (registry digest
    /// when it has one, else the local image id).
    async fn resolve_image(
        &self,
        docker: &Docker,
        image: &ImageRef,
        policy: PullPolicy,
        auth: Option<&RegistryAuth>,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<String, ImageProblem> {
        let reference = image.to_string();
        let present = match docker.inspect_image(&reference).await {
            Ok(inspect) => Some(inspect),
            Err(error) if status_code(&error) == Some(404) => None,
            Err(error) if is_connection_error(&error) => {
                return Err(ImageProblem::Unavailable(
                    self.unavailable(&error).to_string(),
                ))
            }
            Err(error) => {
                return Err(ImageProblem::Image(format!(
                    "cannot inspect image `{reference}`: {}",
                    engine_message(&error)
                )))
            }
        };
        let must_pull = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => present.is_none(),
            PullPolicy::Never => false,
        };
        let inspect = if must_pull {
            self.pull(docker, image, auth, events).await?;
            docker.inspect_image(&reference).await.map_err(|error| {
                ImageProblem::Image(format!(
                    "image `{reference}` is missing after its pull: {}",
                    engine_message(&error)
                ))
            })?
        } else {
            present.ok_or_else(|| {
                ImageProblem::Image(format!(
                    "image `{reference}` is not present and its pull_policy is never"
                ))
            })?
        };
        if let Some(digest) = &image.digest {
            return Ok(digest.clone());
        }
        let name = image.name();
        let repo_digest = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find_map(|entry| {
                let (repo, digest) = entry.split_once('@')?;
                (repo == name).then(|| digest.to_owned())
            });
        Ok(repo_digest.or(inspect.id).unwrap_or_default())
    }

    async fn pull(
        &self,
        docker: &Docker,
        image: &ImageRef,
        auth: Option<&RegistryAuth>,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<(), ImageProblem> {
        let reference = image.to_string();
        let tag = image
            .digest
            .clone()
            .unwrap_or_else(|| image.tag_or_latest().to_owned());
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image.name())
            .tag(&tag)
            .build();
        let credentials = Some(registry_credentials(image, auth));
        let mut stream = docker.create_image(Some(options), None, credentials);
        let mut last_status = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let Some(status) = info.status else {
                        continue;
                    };
                    // One event per step of each layer, not per byte of progress.
                    let status = match info.id {
                        Some(layer) if !status.contains(&layer) => format!("{layer}: {status}"),
                        _ => status,
                    };
                    if status != last_status {
                        last_status = status.clone();
                        let _ = events
                            .send(TryEvent::Pulling {
                                image: reference.clone(),
                                status,
                            })
                            .await;
                    }
                }
                Err(error) if is_connection_error(&error) => {
                    return Err(ImageProblem::Unavailable(
                        self.unavailable(&error).to_string(),
                    ))
                }
                Err(error) => {
                    return Err(ImageProblem::Image(format!(
                        "cannot pull image `{reference}`: {}",
                        engine_message(&error)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Creates the run's workspace volume (a no-op when it exists).
    async fn ensure_workspace(
        &self,
        docker: &Docker,
        spec: &LaunchSpec,
    ) -> Result<(), bollard::errors::Error> {
        let request = bollard::models::VolumeCreateRequest {
            name: Some(workspace_volume(&spec.run_id)),
            labels: Some(HashMap::from([
                (LABEL_JOB.to_owned(), spec.job_id.clone()),
                (LABEL_RUN.to_owned(), spec.run_id.clone()),
            ])),
            ..Default::default()
        };
        docker.create_volume(request).await.map(|_| ())
    }

    fn container_body(&self, spec: &LaunchSpec, image: &str) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_JOB.to_owned(), spec.job_id.clone()),
            (LABEL_RUN.to_owned(), spec.run_id.clone()),
            (LABEL_TASK.to_owned(), spec.task_id.clone()),
            (LABEL_TRY.to_owned(), spec.try_number.to_string()),
        ]);
        let isolation = &spec.isolation;
        let mut mounts = vec![bollard::models::Mount {
            typ: Some(bollard::models::MountType::VOLUME),
            source: Some(workspace_volume(&spec.run_id)),
            target: Some(WORKSPACE_DIR.to_owned()),
            ..Default::default()
        }];
        if isolation.read_only_rootfs && spec.state.is_some() {
            // The state file is copied in before the container starts; the engine copies
            // into a read-only container only inside a volume: an anonymous one, removed
            // with the container.
            mounts.push(bollard::models::Mount {
                typ: Some(bollard::models::MountType::VOLUME),
                target: Some(STATE_DIR.to_owned()),
                ..Default::default()
            });
        }
        let host_config = HostConfig {
            nano_cpus: spec.resources.cpu.map(|cpu| (cpu * 1e9) as i64),
            memory: spec.resources.memory_bytes.map(|bytes| bytes as i64),
            // Without swap beyond the limit: a memory limit that swaps is no limit.
            memory_swap: spec.resources.memory_bytes.map(|bytes| bytes as i64),
            pids_limit: isolation.pids_limit,
            readonly_rootfs: Some(isolation.read_only_rootfs),
            // A read-only image still gets a small private /tmp.
            tmpfs: isolation.read_only_rootfs.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,noexec,nosuid,size=64m".to_owned())])
            }),
            // Least privilege: no Linux capabilities, no privilege escalation.
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            mounts: Some(mounts),
            auto_remove: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: spec.command.clone(),
            cmd: Some(spec.args.clone()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(std::iter::once(format!(
                        "STEVEDORE_WORKSPACE={WORKSPACE_DIR}"
                    )))
                    .collect(),
            ),
            labels: Some(labels),
            host_config: Some(host_config),
            user: spec.isolation.user.clone(),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        }
    }

    /// Copies the state file into the created container. With `into_volume`, the state
    /// folder is a volume of its own (a read-only container: the engine copies into one
    /// only inside a volume), so only the file is copied, into that folder.
    async fn upload_state(
        &self,
        docker: &Docker,
        container_id: &str,
        state: &str,
        into_volume: bool,
    ) -> Result<(), bollard::errors::Error> {
        let io = |e: std::io::Error| bollard::errors::Error::IOError { err: e };
        let mut archive = tar::Builder::new(Vec::new());
        let prefix = if into_volume {
            ""
        } else {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_path("stevedore/").map_err(io)?;
            header.set_mode(0o777);
            header.set_size(0);
            header.set_cksum();
            archive.append(&header, std::io::empty()).map_err(io)?;
            "stevedore/"
        };
        let mut header = tar::Header::new_gnu();
        header.set_path(format!("{prefix}state.json")).map_err(io)?;
        header.set_mode(0o666);
        header.set_size(state.len() as u64);
        header.set_cksum();
        archive.append(&header, state.as_bytes()).map_err(io)?;
        let bytes = archive.into_inner().map_err(io)?;
        let path = if into_volume { STATE_DIR } else { "/" };
        let options = UploadToContainerOptionsBuilder::default()
            .path(path)
            .build();
        docker
            .upload_to_container(
                container_id,
                Some(options),
                bollard::body_full(bytes.into()),
            )
            .await
    }

    async fn remove_quietly(&self, docker: &Docker, container_id: &str) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(error) = docker.remove_container(container_id, Some(options)).await {
            if status_code(&error) != Some(404) {
                warn!(container_id, error = %error, "could not remove container");
            }
        }
    }

    /// Forwards a container's output to `events` as lines until its streams close.
    ///
    /// - [`Output::Attached`]: the attached streams of a container this backend started;
    ///   lines are stamped when they arrive. Attaching (rather than following the log
    ///   driver) is lossless whatever the engine's log rotation, and a slow reader slows the
    ///   container down instead of dropping its lines.
    /// - [`Output::Logged`]: the engine's log of an adopted container, from its first line,
    ///   stamped by the engine; the first lines of each stream, which the store holds
    ///   already, are skipped.
    ///
    /// When the stream breaks, a partial last line is not sent: it is read again, whole,
    /// from the engine's log when the scheduler re-attaches.
    async fn forward_output(
        &self,
        container_id: &str,
        mut output: std::pin::Pin<
            Box<
                dyn futures_util::Stream<
                        Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                    > + Send
                    + '_,
            >,
        >,
        kind: Output,
        max_line_bytes: usize,
        events: &mpsc::Sender<TryEvent>,
    ) {
        let mut splitter = LineSplitter::new(max_line_bytes);
        let mut pending: Vec<TryEvent> = Vec::new();
        let (mut skip_stdout, mut skip_stderr) = match kind {
            Output::Attached => (0, 0),
            Output::Logged { skip } => skip,
        };
        let mut keep = |stream: Stream, timestamp, text, dropped| {
            let skipping = match stream {
                Stream::Stdout => &mut skip_stdout,
                Stream::Stderr => &mut skip_stderr,
            };
            if *skipping > 0 {
                *skipping -= 1;
                return None;
            }
            Some(TryEvent::Line {
                stream,
                timestamp,
                text,
                dropped,
            })
        };
        while let Some(item) = output.next().await {
            let (stream, message) = match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => (Stream::Stdout, message),
                Ok(bollard::container::LogOutput::StdErr { message }) => (Stream::Stderr, message),
                Ok(_) => continue,
                Err(error) => {
                    warn!(container_id, error = %error, "output stream ended early");
                    return;
                }
            };
            // With `timestamps`, each logged message (a line, or a part of a long one) starts
            // with the engine's RFC 3339 timestamp and a space.
            let (timestamp, text) = match kind {
                Output::Attached => (Utc::now(), &message[..]),
                Output::Logged { .. } => split_timestamp(&message),
            };
            splitter.push(
                stream,
                timestamp,
                text,
                &mut |stream, timestamp, text, dropped| {
                    pending.extend(keep(stream, timestamp, text, dropped))
                },
            );
            for event in pending.drain(..) {
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
        splitter.finish(&mut |stream, timestamp, text, dropped| {
            pending.extend(keep(stream, timestamp, text, dropped))
        });
        for event in pending.drain(..) {
            let _ = events.send(event).await;
        }
    }

    /// Waits for the container to stop, killing it if `kill` fires first. `Err` when the
    /// engine stopped answering before the container did.
    async fn wait_exit(
        &self,
        docker: &Docker,
        container_id: &str,
        kill: &mut KillReceiver,
    ) -> Result<(Option<i64>, Option<FailureReason>), BackendError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = Box::pin(docker.wait_container(container_id, Some(options)));
        let mut killed: Option<StopReason> = kill.borrow().clone();
        if killed.is_some() {
            self.kill_container(docker, container_id).await;
        }
        loop {
            tokio::select! {
                result = wait.next() => {
                    let code = match result {
                        Some(Ok(response)) => Some(response.status_code),
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
                        Some(Err(error)) if is_connection_error(&error) => {
                            warn!(container_id, error = %error, "lost the connection to the engine while the container ran");
                            return Err(BackendError::Disconnected(format!(
                                "lost the connection to the Docker engine at {} while container {container_id} ran: {error}",
                                self.endpoint
                            )));
                        }
                        Some(Err(error)) => {
                            warn!(container_id, error = %error, "waiting for container failed");
                            return Ok((None, Some(FailureReason::Backend(format!("lost track of container: {}", engine_message(&error))))));
                        }
                        None => None,
                    };
                    return Ok((code, killed.map(|reason| reason.as_failure())));
                }
                changed = kill.changed(), if killed.is_none() => {
                    if changed.is_err() {
                        // The scheduler dropped its side: nobody will ask for a kill.
                        killed = None;
                        continue;
                    }
                    killed = kill.borrow().clone();
                    if killed.is_some() {
                        self.kill_container(docker, container_id).await;
                    }
                }
            }
        }
    }

    /// The containers of tries on this engine, by their labels: every one, or only those
    /// running.
    pub async fn containers(&self, running_only: bool) -> Result<Vec<RunningTry>, BackendError> {
        let docker = self.client()?;
        let mut filters = HashMap::from([("label", vec![LABEL_RUN])]);
        if running_only {
            filters.insert("status", vec!["running"]);
        }
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.unavailable(&e))?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels?;
                Some(RunningTry {
                    container_id: container.id?,
                    job_id: labels.get(LABEL_JOB)?.clone(),
                    run_id: labels.get(LABEL_RUN)?.clone(),
                    task_id: labels.get(LABEL_TASK)?.clone(),
                    try_number: labels.get(LABEL_TRY)?.parse().ok()?,
                })
            })
            .collect())
    }

    /// Whether this engine has the container of the try (`Err` when it does not answer).
    pub async fn has_try(&self, adoption: &Adoption) -> Result<bool, BackendError> {
        let docker = self.client()?;
        let name = container_name(
            &adoption.job_id,
            &adoption.task_id,
            &adoption.run_id,
            adoption.try_number,
        );
        match docker.inspect_container(&name, None).await {
            Ok(_) => Ok(true),
            Err(error) if status_code(&error) == Some(404) => Ok(false),
            Err(error) => Err(self.unavailable(&error)),
        }
    }

    /// Only a killed container (137) can have been killed for memory: say so when it was.
    async fn out_of_memory(
        &self,
        docker: &Docker,
        container_id: &str,
        exit_code: Option<i64>,
        failure: Option<FailureReason>,
    ) -> Option<FailureReason> {
        if failure.is_none() && exit_code == Some(137) {
            if let Ok(inspect) = docker.inspect_container(container_id, None).await {
                if inspect.state.and_then(|state| state.oom_killed) == Some(true) {
                    return Some(FailureReason::Backend(
                        "killed by the kernel: out of memory".to_owned(),
                    ));
                }
            }
        }
        failure
    }

    async fn kill_container(&self, docker: &Docker, container_id: &str) {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        if let Err(error) = docker.kill_container(container_id, Some(options)).await {
            debug!(container_id, error = %error, "kill failed (the container may have exited)");
        }
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

        if let Err(error) = self.ensure_workspace(docker, &spec).await {
            if is_connection_error(&error) {
                return Err(self.unavailable(&error));
            }
            return failed(FailureReason::Backend(format!(
                "cannot create the run's workspace: {}",
                engine_message(&error)
            )));
        }
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
        let (_, waited) = tokio::join!(
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
        let (_, waited) = tokio::join!(
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

    async fn workspaces(&self) -> Result<Vec<String>, BackendError> {
        let docker = self.client()?;
        let filters = HashMap::from([("label", vec![LABEL_RUN])]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.unavailable(&e))?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.labels.get(LABEL_RUN).cloned())
            .collect())
    }

    async fn remove_workspace(&self, run_id: &str) -> Result<(), BackendError> {
        let docker = self.client()?;
        match docker
            .remove_volume(
                &workspace_volume(run_id),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if status_code(&error) == Some(404) => Ok(()),
            Err(error) if is_connection_error(&error) => Err(self.unavailable(&error)),
            // In use (a try still runs) or refused: try again at the next sweep.
            Err(error) => {
                debug!(run_id, error = %error, "workspace not removed yet");
                Ok(())
            }
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        self.remove_quietly(&self.client()?, container_id).await;
        Ok(())
    }
}

/// Where a container's output comes from (see `DockerBackend::forward_output`).
#[derive(Clone, Copy)]
enum Output {
    Attached,
    /// The engine's log; `skip`: stdout and stderr lines to leave out.
    Logged {
        skip: (u64, u64),
    },
}

/// A try's container name: derived from the try itself, so the engine refuses a second
/// container of the same try whoever asks.
pub fn container_name(job_id: &str, task_id: &str, run_id: &str, try_number: u32) -> String {
    format!("stevedore-{job_id}-{task_id}-{run_id}-{try_number}")
}

/// The engine's timestamp at the start of a logged message, and the rest.
fn split_timestamp(message: &[u8]) -> (chrono::DateTime<Utc>, &[u8]) {
    if let Some(space) = message.iter().take(40).position(|b| *b == b' ') {
        if let Some(timestamp) = std::str::from_utf8(&message[..space])
            .ok()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        {
            return (timestamp.with_timezone(&Utc), &message[space + 1..]);
        }
    }
    (Utc::now(), message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_messages_lose_their_timestamp() {
        let (at, text) = super::split_timestamp(b"2026-11-23T07:30:01.123456789Z line 1\n");
        assert_eq!(text, b"line 1\n");
        assert_eq!(at.timestamp_subsec_nanos(), 123_456_789);
        let (_, text) = super::split_timestamp(b"no timestamp here");
        assert_eq!(text, b"no timestamp here");
    }
}

/// The volume holding a run's workspace.
fn workspace_volume(run_id: &str) -> String {
    format!("stevedore-run-{run_id}")
}
