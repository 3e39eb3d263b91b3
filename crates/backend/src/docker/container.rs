//! The try's container: its body (command, environment, mounts, limits, isolation,
//! labels), the state file uploaded into it, killed, listed, removed.

#[allow(unused_imports)]
use super::*;

impl DockerBackend {
    pub(super) fn container_body(&self, spec: &LaunchSpec, image: &str) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_JOB.to_owned(), spec.job_id.clone()),
            (LABEL_RUN.to_owned(), spec.run_id.clone()),
            (LABEL_TASK.to_owned(), spec.task_id.clone()),
            (LABEL_TRY.to_owned(), spec.try_number.to_string()),
        ]);
        let isolation = &spec.isolation;
        // The try's own workspace: an anonymous volume, removed with the container, so files
        // can be staged into it even when the image is read-only (the engine copies into a
        // read-only container only inside a volume).
        let mut mounts = vec![bollard::models::Mount {
            typ: Some(bollard::models::MountType::VOLUME),
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
    pub(super) async fn upload_state(
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

    pub(super) async fn remove_quietly(&self, docker: &Docker, container_id: &str) {
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
    pub(super) async fn out_of_memory(
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

    pub(super) async fn kill_container(&self, docker: &Docker, container_id: &str) {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        if let Err(error) = docker.kill_container(container_id, Some(options)).await {
            debug!(container_id, error = %error, "kill failed (the container may have exited)");
        }
    }
}
