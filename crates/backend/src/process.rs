//! The process backend: a try is a local subprocess, called exactly as a container's
//! entrypoint would be (the task's `command` plus the contract's arguments and environment).
//! It is for developing an integration before it has an image, and for tests of scheduling
//! semantics that need no engine.
//!
//! Bookkeeping mirrors container labels: each running try has a marker file in the runtime
//! folder naming its job, run, task, try and process id, so a restarted scheduler finds it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Value};
use stevedore_domain::state::FailureReason;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tracing::warn;

use crate::*;

pub struct ProcessBackend {
    runtime_dir: PathBuf,
}

impl ProcessBackend {
    /// Tries keep their working folders and markers under `runtime_dir`.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> ProcessBackend {
        ProcessBackend {
            runtime_dir: runtime_dir.into(),
        }
    }

    /// `STEVEDORE_PROCESS_DIR`, or `stevedore-process` in the system's temporary folder.
    pub fn from_env() -> ProcessBackend {
        let dir = std::env::var_os("STEVEDORE_PROCESS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("stevedore-process"));
        ProcessBackend::new(dir)
    }

    fn workspace(&self, run_id: &str) -> PathBuf {
        self.runtime_dir.join("workspaces").join(run_id)
    }

    fn marker(&self, id: &str) -> PathBuf {
        self.runtime_dir.join(format!("{id}.json"))
    }
}

/// Sends every line of `reader` as a [`TryEvent::Line`] of `stream`.
async fn forward_lines(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    events: mpsc::Sender<TryEvent>,
) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) => return,
            Ok(_) => {
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                }
                if buffer.last() == Some(&b'\r') {
                    buffer.pop();
                }
                let text = String::from_utf8_lossy(&buffer).into_owned();
                if events
                    .send(TryEvent::Line {
                        stream,
                        timestamp: Utc::now(),
                        text,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                warn!(error = %error, "reading a process's output failed");
                return;
            }
        }
    }
}

/// Kills the try's whole process group: a shell script's children go with it.
fn kill_group(pid: u32) {
    // SAFETY: killpg only sends a signal; an exited group yields ESRCH, which is ignored.
    unsafe {
        libc::killpg(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn is_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn health(&self) -> Result<(), BackendError> {
        std::fs::create_dir_all(&self.runtime_dir).map_err(|error| {
            BackendError::Unavailable(format!(
                "cannot use {}: {error}",
                self.runtime_dir.display()
            ))
        })
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        let failed = |reason| {
            Ok(TryExit {
                exit_code: None,
                failure: Some(reason),
            })
        };
        let Some((program, program_args)) = spec.command.as_ref().and_then(|c| c.split_first())
        else {
            return failed(FailureReason::Backend(
                "the process backend needs the task's `command`".to_owned(),
            ));
        };
        self.health().await?;
        let id = format!(
            "{}-{}-{}-{}",
            spec.job_id, spec.task_id, spec.run_id, spec.try_number
        );
        let workdir = self.runtime_dir.join(&id);
        if let Err(error) = std::fs::create_dir_all(&workdir) {
            return failed(FailureReason::Backend(format!(
                "cannot create {}: {error}",
                workdir.display()
            )));
        }
        let mut env = spec.env.clone();
        let workspace = self.workspace(&spec.run_id);
        if let Err(error) = std::fs::create_dir_all(&workspace) {
            return failed(FailureReason::Backend(format!(
                "cannot create the run's workspace {}: {error}",
                workspace.display()
            )));
        }
        env.insert(
            "STEVEDORE_WORKSPACE".to_owned(),
            workspace.display().to_string(),
        );
        if let Some(state) = &spec.state {
            let path = workdir.join("state.json");
            if let Err(error) = std::fs::write(&path, state) {
                return failed(FailureReason::Backend(format!(
                    "cannot write the state file: {error}"
                )));
            }
            // The contract's path is the container's; here the file lives in the workdir.
            env.insert(
                "STEVEDORE_STATE_FILE".to_owned(),
                path.display().to_string(),
            );
        }
        let mut command = tokio::process::Command::new(program);
        command
            .args(program_args)
            .args(&spec.args)
            .envs(&env)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&workdir);
                return failed(FailureReason::Backend(format!(
                    "cannot start `{program}`: {error}"
                )));
            }
        };
        let pid = child.id().unwrap_or_default();
        let container_id = format!("process:{pid}");
        let labels = json!({
            LABEL_JOB: spec.job_id, LABEL_RUN: spec.run_id, LABEL_TASK: spec.task_id,
            LABEL_TRY: spec.try_number.to_string(), "pid": pid,
        });
        let _ = std::fs::write(self.marker(&id), labels.to_string());
        let _ = events
            .send(TryEvent::Launched {
                container_id,
                image_digest: None,
            })
            .await;

        let stdout = child
            .stdout
            .take()
            .map(|out| tokio::spawn(forward_lines(out, Stream::Stdout, events.clone())));
        let stderr = child
            .stderr
            .take()
            .map(|err| tokio::spawn(forward_lines(err, Stream::Stderr, events.clone())));
        let mut killed: Option<KillReason> = kill.borrow().clone();
        if killed.is_some() {
            kill_group(pid);
        }
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                changed = kill.changed(), if killed.is_none() => {
                    if changed.is_err() {
                        killed = None;
                        // Nobody can ask for a kill any more; just wait for the exit.
                        break child.wait().await;
                    }
                    killed = kill.borrow().clone();
                    if killed.is_some() {
                        kill_group(pid);
                    }
                }
            }
        };
        // The output pipes close when the process (and any child holding them) is gone.
        for reader in [stdout, stderr].into_iter().flatten() {
            let _ = reader.await;
        }
        let _ = std::fs::remove_file(self.marker(&id));
        let _ = std::fs::remove_dir_all(&workdir);
        let exit_code = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status
                    .code()
                    .map(i64::from)
                    .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
            }
            Err(error) => {
                return failed(FailureReason::Backend(format!(
                    "lost track of process {pid}: {error}"
                )))
            }
        };
        Ok(TryExit {
            exit_code,
            failure: killed.map(|reason| reason.as_failure()),
        })
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        let Ok(entries) = std::fs::read_dir(&self.runtime_dir) else {
            return Ok(Vec::new());
        };
        let mut running = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(labels) = std::fs::read_to_string(&path)
                .map(|t| serde_json::from_str::<HashMap<String, Value>>(&t))
            else {
                continue;
            };
            let Ok(labels) = labels else { continue };
            let text = |key: &str| labels.get(key).and_then(Value::as_str).map(str::to_owned);
            let pid = labels.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
            if pid == 0 || !is_alive(pid) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let (Some(job_id), Some(run_id), Some(task_id), Some(try_number)) = (
                text(LABEL_JOB),
                text(LABEL_RUN),
                text(LABEL_TASK),
                text(LABEL_TRY).and_then(|t| t.parse().ok()),
            ) {
                running.push(RunningTry {
                    container_id: format!("process:{pid}"),
                    job_id,
                    run_id,
                    task_id,
                    try_number,
                });
            }
        }
        Ok(running)
    }

    async fn workspaces(&self) -> Result<Vec<String>, BackendError> {
        let Ok(entries) = std::fs::read_dir(self.runtime_dir.join("workspaces")) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect())
    }

    async fn remove_workspace(&self, run_id: &str) -> Result<(), BackendError> {
        let _ = std::fs::remove_dir_all(self.workspace(run_id));
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        if let Some(pid) = container_id
            .strip_prefix("process:")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if pid > 0 && is_alive(pid) {
                kill_group(pid);
            }
        }
        Ok(())
    }
}
