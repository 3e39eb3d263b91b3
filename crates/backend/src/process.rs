//! The process backend: a try is a local subprocess, called exactly as a container's
//! entrypoint would be (the task's `command` plus the contract's arguments and environment).
//! It is for developing an integration before it has an image, and for tests of scheduling
//! semantics that need no engine.
//!
//! A try gets exactly what a container would: the contract's variables, its `env`, its
//! connections, and a minimal `PATH`, `HOME` (its own folder) and `LANG`. Nothing of the
//! scheduler's own environment reaches it (its secret key, its database URL, its Nomad
//! token): the environment is cleared first.
//!
//! A try is a process group led by `/bin/sh`, which runs the program with its output in files
//! and writes the program's exit status to a file when it ends. So a try does not depend on
//! the scheduler that started it: when that scheduler dies, the try runs on, and the next
//! scheduler re-attaches to it ([`Backend::adopt`]): it reads the output files from where the
//! store's record ends and takes the exit status from its file, or kills the whole group.
//! Each try's folder holds `try.json` (job, run, task, try, the leader's pid and its start
//! time, so a pid the kernel gave to another process is never taken for the try).
//!
//! Layout of the runtime folder (created owner-only, 0700):
//! ```text
//! <runtime>/tries/<job>-<task>-<run>-<try>/{try.json, stdout, stderr, exit, state.json, home/, workspace/}
//! ```
//! A try's `workspace/` starts with its run's upstream files (copied from the artifact
//! store, each checked) and what it leaves there is captured when it ends.
//!
//! Why one file of a little over 600 lines: launching, the `/bin/sh` wrapper, re-attaching
//! and stopping all read and write the folder layout above; split, each part would need the
//! others open beside it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use stevedore_domain::state::FailureReason;
use tokio::sync::mpsc;
use tracing::warn;

use crate::lines::LineSplitter;
use crate::*;

/// The `PATH` a try gets: the system's programs, nothing of the scheduler's own.
pub const TRY_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The `LANG` a try gets.
pub const TRY_LANG: &str = "C.UTF-8";

/// How soon a try's output files are read again when they had nothing new: at first, and
/// at most (the pause doubles while the try is quiet).
const POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(100);
/// The most read from an output file at once.
const READ_CHUNK: usize = 256 * 1024;

/// Runs the program (`$@`) with its output in files, and records its exit status: the
/// status goes to `exit.tmp` and is renamed to `exit`, so a reader never sees half of it.
const WRAPPER: &str =
    "\"$@\" >stdout 2>stderr </dev/null; status=$?; echo $status >exit.tmp && mv exit.tmp exit";

pub struct ProcessBackend {
    runtime_dir: PathBuf,
}

/// What `try.json` records of a running try.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Marker {
    job_id: String,
    run_id: String,
    task_id: String,
    try_number: u32,
    /// The process group's leader (the wrapper shell).
    pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat`), when known.
    started: Option<u64>,
}

impl Marker {
    fn container_id(&self) -> String {
        format!("process:{}", self.pid)
    }

    /// Whether the try's process group leader still runs (and is the same process).
    fn is_alive(&self) -> bool {
        process_alive(self.pid, self.started)
    }
}

impl ProcessBackend {
    /// Tries keep their folders under `runtime_dir` (created 0700 when missing).
    pub fn new(runtime_dir: impl Into<PathBuf>) -> ProcessBackend {
        ProcessBackend {
            runtime_dir: runtime_dir.into(),
        }
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    fn try_dir(&self, job_id: &str, task_id: &str, run_id: &str, try_number: u32) -> PathBuf {
        self.runtime_dir
            .join("tries")
            .join(format!("{job_id}-{task_id}-{run_id}-{try_number}"))
    }

    /// Every try folder with its marker.
    fn markers(&self) -> Vec<(PathBuf, Marker)> {
        let Ok(entries) = std::fs::read_dir(self.runtime_dir.join("tries")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let dir = entry.path();
                let marker = read_marker(&dir)?;
                Some((dir, marker))
            })
            .collect()
    }

    /// The folder of the try whose container id is `process:<pid>`.
    fn find(&self, container_id: &str) -> Option<(PathBuf, Marker)> {
        let pid: u32 = container_id.strip_prefix("process:")?.parse().ok()?;
        self.markers().into_iter().find(|(_, m)| m.pid == pid)
    }
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(dir.join("try.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Creates `path` and its missing parents readable by the owner only.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The start time of process `pid` in clock ticks after boot, and whether it is a zombie
/// (ended, not yet reaped), from `/proc/<pid>/stat`.
fn process_stat(pid: u32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3 of stat, starttime field 22.
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    let started = fields.get(19)?.parse().ok()?;
    Some((started, zombie))
}

/// Whether `pid` runs and, when `started` is known, is the process that started then.
fn process_alive(pid: u32, started: Option<u64>) -> bool {
    if pid == 0 {
        return false;
    }
    match (process_stat(pid), started) {
        (Some((_, true)), _) => false,
        (Some((now, false)), Some(then)) => now == then,
        (Some((_, false)), None) => true,
        // On Linux every process has a /proc entry: this one is gone.
        (None, _) if Path::new("/proc/self/stat").exists() => false,
        // SAFETY: signal 0 only checks that the process exists.
        (None, _) => unsafe { libc::kill(pid as libc::pid_t, 0) == 0 },
    }
}

/// Kills the try's whole process group: a shell script's children go with it.
fn kill_group(pid: u32) {
    if pid == 0 {
        return;
    }
    // SAFETY: killpg only sends a signal; an exited group yields ESRCH, which is ignored.
    unsafe {
        libc::killpg(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// The exit of the leader this scheduler started; never, for an adopted one.
async fn wait_for(
    child: &mut Option<tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// The exit status the wrapper recorded, once the program has ended.
fn recorded_exit(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join("exit"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a try's output files as lines and sends them, until told the try has ended and
/// both files are read to their end.
struct OutputFiles {
    files: [(Stream, PathBuf, u64); 2],
    splitter: LineSplitter,
    /// Lines of each stream not to send (the store holds them already).
    skip: (u64, u64),
}

impl OutputFiles {
    fn new(dir: &Path, skip: (u64, u64), max_line_bytes: usize) -> OutputFiles {
        OutputFiles {
            files: [
                (Stream::Stdout, dir.join("stdout"), 0),
                (Stream::Stderr, dir.join("stderr"), 0),
            ],
            splitter: LineSplitter::new(max_line_bytes),
            skip,
        }
    }

    /// Reads what the files hold beyond what was read; sends the lines it completes.
    /// `Ok(true)` when anything was read; `Err` when nobody listens any more.
    async fn read_new(&mut self, events: &mpsc::Sender<TryEvent>) -> Result<bool, ()> {
        let mut any = false;
        let mut pending = Vec::new();
        for index in 0..2 {
            let (stream, path, offset) = &mut self.files[index];
            let stream = *stream;
            let chunk = match read_from(path, *offset) {
                Ok(chunk) => chunk,
                Err(error) => {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        warn!(path = %path.display(), error = %error, "reading a try's output failed");
                    }
                    continue;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            any = true;
            *offset += chunk.len() as u64;
            let skip = &mut self.skip;
            self.splitter.push(
                stream,
                Utc::now(),
                &chunk,
                &mut |stream, timestamp, text, dropped| {
                    pending.extend(line_event(skip, stream, timestamp, text, dropped))
                },
            );
        }
        for event in pending {
            events.send(event).await.map_err(|_| ())?;
        }
        Ok(any)
    }

    /// Reads both files to their end and sends the last lines.
    async fn finish(&mut self, events: &mpsc::Sender<TryEvent>) {
        while let Ok(true) = self.read_new(events).await {}
        let mut pending = Vec::new();
        let skip = &mut self.skip;
        self.splitter
            .finish(&mut |stream, timestamp, text, dropped| {
                pending.extend(line_event(skip, stream, timestamp, text, dropped))
            });
        for event in pending {
            let _ = events.send(event).await;
        }
    }
}

fn line_event(
    skip: &mut (u64, u64),
    stream: Stream,
    timestamp: chrono::DateTime<Utc>,
    text: String,
    dropped: u64,
) -> Option<TryEvent> {
    let skipping = match stream {
        Stream::Stdout => &mut skip.0,
        Stream::Stderr => &mut skip.1,
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
}

/// At most [`READ_CHUNK`] bytes of `path` from `offset`.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = Vec::new();
    file.take(READ_CHUNK as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// The environment of a try: exactly the spec's (contract, `env`, connections) and the
/// minimal `PATH`, `HOME` and `LANG` (the spec's own win, as in an image).
fn try_environment(spec: &LaunchSpec, home: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), TRY_PATH.to_owned()),
        ("HOME".to_owned(), home.display().to_string()),
        ("LANG".to_owned(), TRY_LANG.to_owned()),
    ]);
    env.extend(spec.env.clone());
    env
}

impl ProcessBackend {
    /// Follows the try in `dir` led by `marker` until it ends: its output from the files,
    /// its exit from the wrapper's record. `child` is the leader when this scheduler
    /// started it (so it is reaped here).
    async fn follow(
        &self,
        dir: &Path,
        marker: &Marker,
        mut child: Option<tokio::process::Child>,
        mut output: OutputFiles,
        events: &mpsc::Sender<TryEvent>,
        kill: &mut KillReceiver,
    ) -> Result<(Option<i64>, Option<StopReason>), String> {
        let mut killed: Option<StopReason> = kill.borrow().clone();
        if killed.is_some() {
            kill_group(marker.pid);
        }
        let mut kill_open = true;
        let mut idle = POLL;
        let leader_status = loop {
            let Ok(read) = output.read_new(events).await else {
                // Nobody stores the lines any more: the scheduler is stopping. The try runs
                // on, for the next scheduler.
                return Err("the try's events are no longer read".to_owned());
            };
            // Output keeps coming: read on at once. Quiet: wait longer each time.
            let pause = if read {
                idle = POLL;
                Duration::ZERO
            } else {
                idle = (idle * 2).min(MAX_POLL);
                idle
            };
            if child.is_none() && !marker.is_alive() {
                break None;
            }
            tokio::select! {
                status = wait_for(&mut child) => match status {
                    Ok(status) => break Some(status),
                    Err(error) => return Err(format!("lost track of process {}: {error}", marker.pid)),
                },
                _ = tokio::time::sleep(pause) => {}
                changed = kill.changed(), if killed.is_none() && kill_open => {
                    if changed.is_err() {
                        // Nobody can ask for a kill any more; just wait for the exit.
                        kill_open = false;
                        continue;
                    }
                    killed = kill.borrow().clone();
                    if killed.is_some() {
                        kill_group(marker.pid);
                    }
                }
            }
        };
        // The program's children may still hold the files; the group is gone once the
        // leader is, unless a child left it. Read what is there.
        output.finish(events).await;
        let exit_code = recorded_exit(dir).or_else(|| {
            // The leader was killed (or died) before it could record the program's status.
            use std::os::unix::process::ExitStatusExt;
            match leader_status {
                Some(status) => status
                    .code()
                    .map(i64::from)
                    .or_else(|| status.signal().map(|s| 128 + i64::from(s))),
                None => killed.as_ref().map(|_| 128 + i64::from(libc::SIGKILL)),
            }
        });
        Ok((exit_code, killed))
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn health(&self) -> Result<(), BackendError> {
        create_private_dir(&self.runtime_dir).map_err(|error| {
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
        let Some(program) = spec.command.as_ref().filter(|c| !c.is_empty()) else {
            return failed(FailureReason::Backend(
                "the process backend needs the task's `command`".to_owned(),
            ));
        };
        self.health().await?;
        let dir = self.try_dir(&spec.job_id, &spec.task_id, &spec.run_id, spec.try_number);
        // A folder left by an earlier launch of this very try (that never started) goes.
        let _ = std::fs::remove_dir_all(&dir);
        let home = dir.join("home");
        let workspace = dir.join("workspace");
        for folder in [&home, &workspace] {
            if let Err(error) = create_private_dir(folder) {
                return failed(FailureReason::Backend(format!(
                    "cannot create {}: {error}",
                    folder.display()
                )));
            }
        }
        if let Some(exchange) = &spec.workspace {
            if let Err(error) = stevedore_artifacts::workspace::stage_dir(
                &exchange.store,
                &spec.run_id,
                &workspace,
                &exchange.inputs,
            )
            .await
            {
                let _ = std::fs::remove_dir_all(&dir);
                return stage_failure(error);
            }
        }
        let mut env = try_environment(&spec, &home);
        env.insert(
            "STEVEDORE_WORKSPACE".to_owned(),
            workspace.display().to_string(),
        );
        if let Some(state) = &spec.state {
            let path = dir.join("state.json");
            if let Err(error) = std::fs::write(&path, state) {
                return failed(FailureReason::Backend(format!(
                    "cannot write the state file: {error}"
                )));
            }
            // The contract's path is the container's; here the file lives in the try's folder.
            env.insert(
                "STEVEDORE_STATE_FILE".to_owned(),
                path.display().to_string(),
            );
        }
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("stevedore-try")
            .args(program)
            .args(&spec.args)
            .env_clear()
            .envs(&env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: killed as one, and not stopped with the scheduler's
            // (Ctrl-C in a terminal): the try outlives its scheduler, for the next one.
            .process_group(0)
            .kill_on_drop(false);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return failed(FailureReason::Backend(format!(
                    "cannot start `{}`: {error}",
                    program[0]
                )));
            }
        };
        let pid = child.id().unwrap_or_default();
        let marker = Marker {
            job_id: spec.job_id.clone(),
            run_id: spec.run_id.clone(),
            task_id: spec.task_id.clone(),
            try_number: spec.try_number,
            pid,
            started: process_stat(pid).map(|(started, _)| started),
        };
        if let Err(error) = write_marker(&dir, &marker) {
            kill_group(pid);
            return failed(FailureReason::Backend(format!(
                "cannot record the try in {}: {error}",
                dir.display()
            )));
        }
        let _ = events
            .send(TryEvent::Launched {
                container_id: marker.container_id(),
                image_digest: None,
            })
            .await;
        let output = OutputFiles::new(&dir, (0, 0), spec.max_line_bytes);
        let followed = self
            .follow(&dir, &marker, Some(child), output, &events, &mut kill)
            .await;
        let (exit_code, killed) = match followed {
            Ok(ended) => ended,
            Err(message) => return Err(BackendError::Disconnected(message)),
        };
        if !spec.keep_exited {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(TryExit {
            exit_code,
            failure: killed.map(|reason| reason.as_failure()),
        })
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
        let dir = self.try_dir(
            &adoption.job_id,
            &adoption.task_id,
            &adoption.run_id,
            adoption.try_number,
        );
        let Some(marker) = read_marker(&dir) else {
            // Never started (or removed): nothing of it runs.
            return Ok(Adopted::Missing);
        };
        let _ = events
            .send(TryEvent::Launched {
                container_id: marker.container_id(),
                image_digest: None,
            })
            .await;
        let output = OutputFiles::new(
            &dir,
            (adoption.stored_stdout, adoption.stored_stderr),
            adoption.max_line_bytes,
        );
        let (exit_code, killed) = self
            .follow(&dir, &marker, None, output, &events, &mut kill)
            .await
            .map_err(BackendError::Disconnected)?;
        if exit_code.is_none() {
            return Ok(Adopted::Lost(format!(
                "its process {} ended without recording an exit status (killed outside Stevedore, or the machine restarted)",
                marker.pid
            )));
        }
        Ok(Adopted::Exit(TryExit {
            exit_code,
            failure: killed.map(|reason| reason.as_failure()),
        }))
    }

    async fn discard(&self, container_id: &str) -> Result<(), BackendError> {
        if let Some((dir, marker)) = self.find(container_id) {
            if !marker.is_alive() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        Ok(())
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        Ok(self
            .markers()
            .into_iter()
            .filter(|(_, marker)| marker.is_alive())
            .map(|(_, marker)| RunningTry {
                container_id: marker.container_id(),
                job_id: marker.job_id,
                run_id: marker.run_id,
                task_id: marker.task_id,
                try_number: marker.try_number,
            })
            .collect())
    }

    async fn capture(
        &self,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let Some((dir, _)) = self.find(container_id) else {
            return Err(CaptureFailure::Gone(format!(
                "the try's folder ({container_id}) is gone"
            )));
        };
        stevedore_artifacts::workspace::capture_dir(
            store,
            run_id,
            &dir.join("workspace"),
            staged,
            limits,
        )
        .await
        .map_err(CaptureFailure::Capture)
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        if let Some((dir, marker)) = self.find(container_id) {
            if marker.is_alive() {
                kill_group(marker.pid);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

fn write_marker(dir: &Path, marker: &Marker) -> std::io::Result<()> {
    let text = serde_json::to_string(marker).map_err(std::io::Error::other)?;
    let temporary = dir.join("try.json.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(temporary, dir.join("try.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_with_its_start_time_and_a_wrong_one_is_not() {
        let pid = std::process::id();
        let (started, zombie) = process_stat(pid).expect("/proc on Linux");
        assert!(!zombie);
        assert!(process_alive(pid, Some(started)));
        assert!(!process_alive(pid, Some(started + 1)), "a reused pid");
        assert!(!process_alive(0, None));
    }
}
