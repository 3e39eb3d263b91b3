//! Running an allocation's docker task as a real container, with `RestartPolicy` and
//! `ReschedulePolicy` honoured, and its task events.

#[allow(unused_imports)]
use super::*;

/// Changes an allocation and wakes the blocking queries.
pub(super) fn update(sim: &Sim, alloc_id: &str, change: impl FnOnce(&mut SimAlloc)) {
    {
        let mut state = sim.state.lock().unwrap();
        let Some(alloc) = state.allocs.get_mut(alloc_id) else {
            return;
        };
        change(alloc);
    }
    let index = sim.bump();
    if let Some(alloc) = sim.state.lock().unwrap().allocs.get_mut(alloc_id) {
        alloc.modify_index = index;
    }
}

pub(super) fn push_event(sim: &Sim, alloc_id: &str, value: Value) {
    // A lost node's client reports nothing more.
    update(sim, alloc_id, |alloc| {
        if !alloc.lost {
            alloc.events.push(value)
        }
    });
}

/// What running one container of the task ended with.
pub(super) enum Ran {
    Exited {
        code: i64,
        killed: bool,
    },
    DriverFailure,
    /// Failed before the driver could start it, in a way no restart mends (a config that
    /// does not evaluate): Nomad does not restart it.
    Unrecoverable,
    /// Stopped before its container started.
    NeverStarted,
}

/// Runs an allocation's task as containers on the local engine, as a Nomad client with the
/// docker driver would, honouring the group's restart policy; then frees its resources and
/// places what was waiting, and reschedules a failed allocation per the reschedule policy.
pub(super) async fn run_alloc(sim: Arc<Sim>, alloc_id: String, job: Value) {
    let group = &job["TaskGroups"][0];
    let task = &group["Tasks"][0];
    let restart = &group["RestartPolicy"];
    // Nomad's batch default: 3 attempts in 24 h, 15 s apart, mode fail.
    let (mut attempts_left, delay) = if restart.is_null() {
        (3u64, Duration::from_secs(15))
    } else {
        (
            restart["Attempts"].as_u64().unwrap_or(0),
            Duration::from_nanos(restart["Delay"].as_u64().unwrap_or(0)),
        )
    };
    push_event(
        &sim,
        &alloc_id,
        event("Task Setup", "Building Task Directory", Value::Null),
    );
    let failing_hook = sim.failing_hook.lock().unwrap().clone();
    // The artifact hook: the task's artifacts fetched into its directory before it starts;
    // its failure is its own event (`TaskArtifactDownloadFailed`), not `Task hook failed`.
    let mut artifacts_failed = false;
    if failing_hook.is_none() {
        if let Err(error) = fetch_artifacts(&sim, &alloc_id, task).await {
            push_event(
                &sim,
                &alloc_id,
                event(
                    "Failed Artifact Download",
                    &error,
                    json!({"download_error": error, "fails_task": "true"}),
                ),
            );
            artifacts_failed = true;
        }
    }
    let (logs, stop) = {
        let state = sim.state.lock().unwrap();
        let alloc = &state.allocs[&alloc_id];
        (alloc.logs.clone(), alloc.stop.clone())
    };
    let outcome = loop {
        let ran = match &failing_hook {
            _ if artifacts_failed => Ran::DriverFailure,
            // task_runner_hooks.go, emitHookError: "<hook>: <error>" as the event's message.
            Some((hook, error)) => {
                push_event(
                    &sim,
                    &alloc_id,
                    event(
                        "Task hook failed",
                        &format!("{hook}: {error}"),
                        json!({"message": format!("{hook}: {error}")}),
                    ),
                );
                Ran::DriverFailure
            }
            None => run_container(&sim, &alloc_id, &job, task, &logs, &stop).await,
        };
        let failed = match &ran {
            Ran::Exited { code, killed, .. } => *code != 0 && !killed,
            Ran::DriverFailure => true,
            Ran::Unrecoverable => false,
            Ran::NeverStarted => false,
        };
        let stopping = sim.state.lock().unwrap().allocs[&alloc_id].stopping;
        if failed && !stopping && attempts_left > 0 {
            attempts_left -= 1;
            push_event(
                &sim,
                &alloc_id,
                event(
                    "Restarting",
                    &format!("Task restarting in {delay:?}"),
                    json!({"restart_reason": "Restart within policy", "start_delay": delay.as_nanos().to_string()}),
                ),
            );
            update(&sim, &alloc_id, |a| a.restarts += 1);
            tokio::time::sleep(delay).await;
            continue;
        }
        break ran;
    };
    let failed = match &outcome {
        Ran::Exited { code, killed, .. } => *code != 0 && !killed,
        Ran::DriverFailure | Ran::Unrecoverable => true,
        Ran::NeverStarted => false,
    };
    if failed {
        // client/allocrunner/taskrunner/restarts/restarts.go: ReasonUnrecoverableErrror.
        let reason = if matches!(outcome, Ran::Unrecoverable) {
            "Error was unrecoverable"
        } else {
            "Exceeded allowed attempts 0 in interval 24h0m0s and mode is \"fail\""
        };
        push_event(
            &sim,
            &alloc_id,
            event(
                "Not Restarting",
                reason,
                json!({"fails_task": "true", "restart_reason": reason}),
            ),
        );
    }
    let killed = matches!(
        outcome,
        Ran::Exited { killed: true, .. } | Ran::NeverStarted
    );
    let (lost, evicted) = {
        let state = sim.state.lock().unwrap();
        let alloc = &state.allocs[&alloc_id];
        (alloc.lost, alloc.evicted.is_some())
    };
    if lost {
        update(&sim, &alloc_id, |alloc| {
            // What the servers record once the node misses its heartbeats: the client
            // itself never reports the end.
            alloc.client_status = "lost".to_owned();
            alloc.client_description = "alloc is lost since its node is down".to_owned();
            alloc.desired_status = "stop".to_owned();
        });
    }
    if lost {
        free_and_replace(sim, alloc_id).await;
        return;
    }
    update(&sim, &alloc_id, |alloc| {
        alloc.task_state = "dead".to_owned();
        alloc.failed = failed;
        alloc.finished_at = Some(now_rfc3339());
        alloc.client_status = if failed { "failed" } else { "complete" }.to_owned();
        alloc.client_description = if failed {
            "Failed tasks".to_owned()
        } else {
            "All tasks have completed".to_owned()
        };
        if killed && alloc.evicted.is_none() {
            alloc.desired_status = "stop".to_owned();
        }
    });
    if evicted {
        free_and_replace(sim, alloc_id).await;
        return;
    }
    // Free the node and place what waits; reschedule a failed allocation if allowed.
    let (waiting, reschedule) = {
        let mut state = sim.state.lock().unwrap();
        let (cpu, memory, ns, job_id) = {
            let alloc = &state.allocs[&alloc_id];
            (
                alloc.cpu,
                alloc.memory,
                alloc.namespace.clone(),
                alloc.job_id.clone(),
            )
        };
        let node = state.allocs[&alloc_id].node;
        state.used[node].0 -= cpu;
        state.used[node].1 -= memory;
        let mut reschedule = None;
        if failed {
            if let Some(job) = state.jobs.get_mut(&(ns.clone(), job_id.clone())) {
                if !job.stopped && job.reschedules_left > 0 {
                    job.reschedules_left -= 1;
                    reschedule = Some((ns, job_id));
                }
            }
        }
        (state.blocked.clone(), reschedule)
    };
    if let Some((ns, job_id)) = reschedule {
        evaluate(&sim, &ns, &job_id, &uuid(), "alloc-failure");
    }
    for (ns, job_id) in waiting {
        evaluate(&sim, &ns, &job_id, &uuid(), "queued-allocs");
    }
}

/// A lost or evicted allocation's resources go back to the node, and its job gets a
/// replacement whatever its reschedule policy says (`scheduler/reconciler`: lost and
/// preempted allocations are replaced), once a scheduler worker has processed the
/// evaluation (half a second here), unless the job is stopped by then.
async fn free_and_replace(sim: Arc<Sim>, alloc_id: String) {
    let (ns, job_id) = {
        let mut state = sim.state.lock().unwrap();
        let (cpu, memory, ns, job_id) = {
            let alloc = &state.allocs[&alloc_id];
            (
                alloc.cpu,
                alloc.memory,
                alloc.namespace.clone(),
                alloc.job_id.clone(),
            )
        };
        let node = state.allocs[&alloc_id].node;
        state.used[node].0 -= cpu;
        state.used[node].1 -= memory;
        (ns, job_id)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    evaluate(&sim, &ns, &job_id, &uuid(), "node-update");
}

pub(super) async fn run_container(
    sim: &Arc<Sim>,
    alloc_id: &str,
    job: &Value,
    task: &Value,
    logs: &[Arc<Log>; 2],
    stop: &Arc<Notify>,
) -> Ran {
    let docker = &sim.docker;
    if sim.state.lock().unwrap().allocs[alloc_id].stopping {
        push_event(
            sim,
            alloc_id,
            event("Killed", "Task successfully killed", Value::Null),
        );
        return Ran::NeverStarted;
    }
    let job_id = job["ID"].as_str().unwrap_or_default();
    let task_name = task["Name"].as_str().unwrap_or_default();
    // The client's variables: the task's NOMAD_* environment and its env, and the node's.
    let mut nomad_env: Vec<(String, String)> = vec![
        ("NOMAD_ALLOC_ID".to_owned(), alloc_id.to_owned()),
        ("NOMAD_JOB_ID".to_owned(), job_id.to_owned()),
        ("NOMAD_TASK_NAME".to_owned(), task_name.to_owned()),
        ("NOMAD_ALLOC_DIR".to_owned(), "/alloc".to_owned()),
        ("NOMAD_TASK_DIR".to_owned(), "/local".to_owned()),
        ("NOMAD_DC".to_owned(), DATACENTER.to_owned()),
    ];
    let mut vars: HashMap<String, String> = nomad_env.iter().cloned().collect();
    for (k, v) in task["Env"].as_object().into_iter().flatten() {
        vars.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
    }
    let node = &sim.nodes[sim.state.lock().unwrap().allocs[alloc_id].node];
    vars.insert("node.unique.name".to_owned(), node.name.clone());
    vars.insert("node.datacenter".to_owned(), DATACENTER.to_owned());
    vars.insert("attr.kernel.name".to_owned(), "linux".to_owned());
    let config = match hcl::evaluate(&task["Config"], &vars) {
        Ok(config) => config,
        Err(message) => {
            // task_runner.go: TaskFailedValidation, SetValidationError.
            push_event(
                sim,
                alloc_id,
                event(
                    "Failed Validation",
                    &message,
                    json!({"validation_error": message}),
                ),
            );
            return Ran::Unrecoverable;
        }
    };
    let config = &config;
    let image = config["image"].as_str().unwrap_or_default().to_owned();
    let fail = |message: String| {
        push_event(
            sim,
            alloc_id,
            event(
                "Driver Failure",
                &message,
                json!({"driver_error": message, "fails_task": "true"}),
            ),
        );
        Ran::DriverFailure
    };
    // The docker driver pulls an image the node does not have, and every time with
    // force_pull or when its tag is `latest` (said or implied): `drivers/docker/driver.go`
    // (`createImage`) inspects the node's images only for another tag.
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image.clone(), "latest".to_owned()),
    };
    let latest = tag == "latest" && !image.contains('@');
    let present = docker.inspect_image(&image).await.is_ok();
    if !present || latest || config["force_pull"].as_bool() == Some(true) {
        push_event(
            sim,
            alloc_id,
            event(
                "Driver",
                &format!("Downloading image"),
                json!({"image": image}),
            ),
        );
        let options = CreateImageOptionsBuilder::default()
            .from_image(&name)
            .tag(&tag)
            .build();
        let auth = &config["auth"];
        let credentials = (!auth.is_null()).then(|| bollard::auth::DockerCredentials {
            username: auth["username"].as_str().map(str::to_owned),
            password: auth["password"].as_str().map(str::to_owned),
            serveraddress: auth["server_address"].as_str().map(str::to_owned),
            ..Default::default()
        });
        let mut pull = docker.create_image(Some(options), None, credentials);
        while let Some(step) = pull.next().await {
            if let Err(error) = step {
                let text = match &error {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code,
                        message,
                    } => format!("API error ({status_code}): {message}"),
                    other => other.to_string(),
                };
                // drivers/docker/driver.go: "Failed to pull `%s`: %s"
                return fail(format!("Failed to pull `{image}`: {text}"));
            }
        }
    }
    let mut env: Vec<String> = task["Env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                hcl::replace_env(v.as_str().unwrap_or_default(), &vars)
            )
        })
        .collect();
    env.extend(nomad_env.drain(..).map(|(k, v)| format!("{k}={v}")));
    let mut labels: HashMap<String, String> = HashMap::new();
    for map in config["labels"].as_array().into_iter().flatten() {
        for (k, v) in map.as_object().into_iter().flatten() {
            labels.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    labels.insert(SIM_LABEL.to_owned(), sim.instance.clone());
    labels.insert(
        "com.hashicorp.nomad.alloc_id".to_owned(),
        alloc_id.to_owned(),
    );
    let mut mounts = Vec::new();
    let mut tmpfs = HashMap::new();
    let read_only = config["readonly_rootfs"].as_bool().unwrap_or(false);
    if read_only {
        // Nomad bind-mounts the task's local/ folder, which stays writable.
        mounts.push(Mount {
            typ: Some(MountType::VOLUME),
            target: Some("/local".to_owned()),
            ..Default::default()
        });
    }
    for mount in config["mount"].as_array().into_iter().flatten() {
        if mount["type"] == "tmpfs" {
            let size = mount["tmpfs_options"]["size"].as_u64().unwrap_or(0);
            tmpfs.insert(
                mount["target"].as_str().unwrap_or_default().to_owned(),
                format!("rw,size={size}"),
            );
            continue;
        }
        if mount["type"] != "volume" {
            return fail(format!("mount type {:?} is not simulated", mount["type"]));
        }
        let source = mount["source"].as_str().unwrap_or_default().to_owned();
        {
            let mut state = sim.state.lock().unwrap();
            if !state.volumes.contains(&source) {
                state.volumes.push(source.clone());
            }
        }
        mounts.push(Mount {
            typ: Some(MountType::VOLUME),
            source: Some(source),
            target: mount["target"].as_str().map(str::to_owned),
            read_only: mount["readonly"].as_bool(),
            ..Default::default()
        });
    }
    // The docker driver's `volumes`: without `volumes.enabled`, only paths inside the task
    // directory (relative ones are relative to it), created when missing as the engine
    // does for a bind.
    let task_dir = task_dir(sim, alloc_id);
    let mut binds = Vec::new();
    for volume in config["volumes"].as_array().into_iter().flatten() {
        let text = volume.as_str().unwrap_or_default();
        let Some((source, target)) = text.split_once(':') else {
            return fail(format!("invalid docker volume {text:?}"));
        };
        if source.starts_with('/') || source.split('/').any(|part| part == "..") {
            return fail(format!(
                "volumes are not enabled; cannot mount host path: {text:?}"
            ));
        }
        let host = task_dir.join(source);
        if let Err(error) = std::fs::create_dir_all(&host) {
            return fail(format!("cannot create {}: {error}", host.display()));
        }
        binds.push(format!("{}:{target}", host.display()));
    }
    let (cpu, memory) = task_resources(task);
    let name = format!(
        "{}-{alloc_id}-{}",
        task["Name"].as_str().unwrap_or("task"),
        sim.state
            .lock()
            .unwrap()
            .runs
            .get(job_id)
            .copied()
            .unwrap_or(0)
    );
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint: config["entrypoint"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }),
        cmd: config["args"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }),
        env: Some(env),
        labels: Some(labels),
        user: task["User"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned),
        host_config: Some(HostConfig {
            memory: Some((memory * 1024 * 1024) as i64),
            cpu_shares: Some(cpu as i64),
            mounts: Some(mounts),
            binds: (!binds.is_empty()).then_some(binds),
            readonly_rootfs: Some(read_only),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            pids_limit: config["pids_limit"].as_i64(),
            ..Default::default()
        }),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let created = match docker.create_container(Some(options), body).await {
        Ok(created) => created,
        Err(error) => return fail(format!("failed to create container: {error}")),
    };
    let container = created.id;
    // Templates render into the task directory; `local/` is mounted at /local.
    for template in task["Templates"].as_array().into_iter().flatten() {
        let text = template["EmbeddedTmpl"].as_str().unwrap_or_default();
        let left = template["LeftDelim"].as_str().unwrap_or("{{");
        if text.contains(left) {
            remove(docker, &container).await;
            let message = format!(
                "Template failed: {:?}: the simulator does not render template actions",
                template["DestPath"]
            );
            return fail(message);
        }
        let dest = template["DestPath"].as_str().unwrap_or_default();
        if let Err(error) = upload(docker, &container, dest, text, read_only).await {
            remove(docker, &container).await;
            return fail(format!("Template failed: {error}"));
        }
    }
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .logs(false)
        .build();
    let mut output = match docker.attach_container(&container, Some(attach)).await {
        Ok(attached) => attached.output,
        Err(error) => {
            remove(docker, &container).await;
            return fail(format!("failed to attach: {error}"));
        }
    };
    if let Err(error) = docker.start_container(&container, None).await {
        remove(docker, &container).await;
        return fail(format!("failed to start container {container}: {error}"));
    }
    *sim.state
        .lock()
        .unwrap()
        .runs
        .entry(job_id.to_owned())
        .or_default() += 1;
    for log in logs {
        log.create();
    }
    update(sim, alloc_id, |alloc| {
        alloc.task_state = "running".to_owned();
        alloc.client_status = "running".to_owned();
        alloc.client_description = "Tasks are running".to_owned();
        alloc.started_at.get_or_insert_with(now_rfc3339);
        alloc
            .events
            .push(event("Started", "Task started by client", Value::Null));
    });
    let pump = {
        let logs = logs.clone();
        async move {
            while let Some(Ok(chunk)) = output.next().await {
                match chunk {
                    bollard::container::LogOutput::StdOut { message } => logs[0].append(&message),
                    bollard::container::LogOutput::StdErr { message } => logs[1].append(&message),
                    _ => {}
                }
            }
        }
    };
    let kill_signal = task["KillSignal"].as_str().unwrap_or("SIGINT").to_owned();
    let kill_timeout = Duration::from_nanos(task["KillTimeout"].as_u64().unwrap_or(5_000_000_000));
    let waiter = async {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = docker.wait_container(&container, Some(options));
        let mut killed = false;
        // A stop asked before this waiter existed left a permit (`notify_one`).
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                result = wait.next() => {
                    let code = match result {
                        Some(Ok(response)) => response.status_code,
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                        _ => -1,
                    };
                    return (code, killed);
                }
                _ = &mut stopped, if !killed => {
                    killed = true;
                    push_event(sim, alloc_id, event("Killing", &format!("Sent interrupt. Waiting {kill_timeout:?} before force killing"), json!({"kill_timeout": kill_timeout.as_nanos().to_string()})));
                    let signal = KillContainerOptionsBuilder::default().signal(&kill_signal).build();
                    let _ = docker.kill_container(&container, Some(signal)).await;
                    let docker = docker.clone();
                    let container = container.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(kill_timeout).await;
                        let signal = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                        let _ = docker.kill_container(&container, Some(signal)).await;
                    });
                }
            }
        }
    };
    let ((code, killed), ()) = tokio::join!(waiter, pump);
    let oom = docker
        .inspect_container(&container, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    let signal = if code > 128 { code - 128 } else { 0 };
    let message = if oom {
        format!("Exit Code: {code}, Exit Message: \"OOM Killed\"")
    } else {
        format!("Exit Code: {code}")
    };
    push_event(
        sim,
        alloc_id,
        event(
            "Terminated",
            &message,
            json!({
                "exit_code": code.to_string(), "signal": signal.to_string(), "oom_killed": oom.to_string(),
                "exit_message": if oom { "OOM Killed" } else { "" },
            }),
        ),
    );
    if killed {
        push_event(
            sim,
            alloc_id,
            event("Killed", "Task successfully killed", Value::Null),
        );
    }
    remove(docker, &container).await;
    Ran::Exited { code, killed }
}
