//! A backend that plays scripted tries instead of starting anything, on the scheduler's
//! [`Clock`]: each try prints its lines, waits its duration *on that clock* and exits with
//! its code, or is killed on the way. With a [`ManualClock`](stevedore_domain::clock::ManualClock)
//! the scheduling rules (retries, sensors, pools, limits) are tested without Docker, without
//! processes and without waiting for real: a try "sleeping" three seconds ends the moment
//! the test moves the clock three seconds on.
//!
//! What a try plays is, in order: the [`Play`] scripted for its task
//! ([`ScriptedBackend::script`]), else the [synth integration's](../../images/synth) modes
//! read from its args (`sleep --seconds S`, `flaky --fail-until-try K`, `list --count N`,
//! `sensor --ready-on-try K`, `exit --code C`, `noop`), printing what synth prints, so a job
//! file written for synth runs here unchanged. With no args and no script a try succeeds at
//! once: the scheduling benchmark measures the scheduler alone that way.
//!
//! Never used to run real tasks: it cannot re-attach to a try after a restart (a stopping
//! scheduler kills its tries) and keeps no workspaces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stevedore_domain::clock::{Clock, SystemClock};
use tokio::sync::mpsc;

use crate::*;

/// How often a playing try looks at the clock (and so how soon after the clock passes its
/// end it exits).
const CLOCK_POLL: Duration = Duration::from_millis(2);

/// What one try does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Play {
    /// Lines printed at the start.
    pub first: Vec<(Stream, String)>,
    /// How long it runs, on the clock.
    pub duration: Duration,
    /// Lines printed once it has run `duration`.
    pub last: Vec<(Stream, String)>,
    pub exit_code: i64,
}

impl Play {
    /// A try that exits with `code` at once, printing nothing.
    pub fn exit(code: i64) -> Play {
        Play {
            exit_code: code,
            ..Play::default()
        }
    }

    /// Prints `text` on stdout at the start.
    pub fn stdout(mut self, text: impl Into<String>) -> Play {
        self.first.push((Stream::Stdout, text.into()));
        self
    }

    /// Prints `text` on stderr at the start.
    pub fn stderr(mut self, text: impl Into<String>) -> Play {
        self.first.push((Stream::Stderr, text.into()));
        self
    }

    /// Runs for `duration` on the clock before it exits.
    pub fn lasting(mut self, duration: Duration) -> Play {
        self.duration = duration;
        self
    }

    /// What the synth integration does with these args (see the module doc): the task's
    /// own, or the contract's whole `run --job ... -- ARGS` (whose ARGS are the task's).
    pub fn synth(args: &[String], try_number: u32) -> Play {
        let args = match args.iter().position(|a| a == "--") {
            Some(at) if args.first().map(String::as_str) == Some("run") => &args[at + 1..],
            _ => args,
        };
        let arg = |name: &str| {
            args.iter()
                .position(|a| a.strip_prefix("--") == Some(name))
                .and_then(|at| args.get(at + 1))
                .and_then(|value| value.parse::<u64>().ok())
        };
        let try_number = u64::from(try_number);
        match args.first().map(String::as_str).unwrap_or("noop") {
            "noop" => Play::exit(0),
            "list" => {
                let count = arg("count").unwrap_or(5);
                let flaky = arg("fail-first-try-at").unwrap_or(0);
                let accounts: Vec<serde_json::Value> = (1..=count)
                    .map(|i| serde_json::json!({"id": format!("acct_{i}"), "records": 10 * i, "fail_first_try": i == flaky}))
                    .collect();
                Play::exit(0).stdout(
                    serde_json::json!({"type": "output", "key": "accounts", "value": accounts})
                        .to_string(),
                )
            }
            "sleep" => {
                let seconds = arg("seconds").unwrap_or(1);
                let mut play = Play::exit(0)
                    .stdout(format!("sleeping {seconds}s"))
                    .lasting(Duration::from_secs(seconds));
                play.last.push((Stream::Stdout, "woke up".to_owned()));
                play
            }
            "flaky" => {
                let until = arg("fail-until-try").unwrap_or(2);
                if try_number < until {
                    Play::exit(1)
                        .stderr(format!(
                            "try {try_number} fails on purpose (succeeds from try {until})"
                        ))
                        .stdout(
                            serde_json::json!({"type": "log", "level": "error",
                                "message": format!("simulated failure on try {try_number}")})
                            .to_string(),
                        )
                } else {
                    Play::exit(0).stdout(format!("try {try_number} succeeds"))
                }
            }
            "sensor" => {
                let ready_on = arg("ready-on-try").unwrap_or(2);
                if try_number < ready_on {
                    Play::exit(75).stdout(format!(
                        "not ready on try {try_number} (ready on try {ready_on})"
                    ))
                } else {
                    Play::exit(0).stdout(format!("ready on try {try_number}"))
                }
            }
            "fail" => {
                let message = args
                    .iter()
                    .position(|a| a == "--message")
                    .and_then(|at| args.get(at + 1))
                    .cloned()
                    .unwrap_or_else(|| "failed on purpose".to_owned());
                let retryable = !args.iter().any(|a| a == "--not-retryable");
                Play::exit(if retryable { 1 } else { 78 }).stdout(
                    serde_json::json!({"type": "error", "message": message, "retryable": retryable})
                        .to_string(),
                )
            }
            "exit" => {
                let code = arg("code").unwrap_or(0);
                Play::exit(code as i64).stdout(format!("exiting with {code}"))
            }
            other => Play::exit(1).stderr(format!("unknown mode `{other}`")),
        }
    }
}

type Script = Arc<dyn Fn(&LaunchSpec) -> Play + Send + Sync>;

pub struct ScriptedBackend {
    name: &'static str,
    clock: Arc<dyn Clock>,
    /// By task id.
    scripts: Mutex<HashMap<String, Script>>,
    /// The tries playing now, by container id.
    playing: Mutex<HashMap<String, RunningTry>>,
    /// `Some(answer)` while it plays a backend that does not answer.
    down: Mutex<Option<String>>,
}

impl ScriptedBackend {
    /// A scripted backend standing in for the backend called `name` (say `process`), its
    /// tries' durations measured on `clock`.
    pub fn new(name: &'static str, clock: Arc<dyn Clock>) -> ScriptedBackend {
        ScriptedBackend {
            name,
            clock,
            scripts: Mutex::default(),
            playing: Mutex::default(),
            down: Mutex::default(),
        }
    }

    /// From now on it answers neither health checks nor launches, with `answer` (`Some`),
    /// or answers again (`None`): a Nomad cluster that is unreachable, a refused token.
    pub fn set_down(&self, answer: Option<&str>) {
        *self.down.lock().expect("poisoned") = answer.map(str::to_owned);
    }

    fn unavailable(&self) -> Result<(), BackendError> {
        match self.down.lock().expect("poisoned").clone() {
            Some(answer) => Err(BackendError::Unavailable(answer)),
            None => Ok(()),
        }
    }

    /// One whose every try (with no args) completes at once: exit 0, no output. For
    /// measuring the scheduler itself: what it costs to decide, launch and record a try when
    /// the work takes no time.
    pub fn instant(name: &'static str) -> ScriptedBackend {
        ScriptedBackend::new(name, Arc::new(SystemClock))
    }

    /// From now on the tries of `task_id` play what `script` says.
    pub fn script(
        &self,
        task_id: &str,
        script: impl Fn(&LaunchSpec) -> Play + Send + Sync + 'static,
    ) {
        self.scripts
            .lock()
            .expect("poisoned")
            .insert(task_id.to_owned(), Arc::new(script));
    }

    fn play_for(&self, spec: &LaunchSpec) -> Play {
        let script = self
            .scripts
            .lock()
            .expect("poisoned")
            .get(&spec.task_id)
            .cloned();
        match script {
            Some(script) => script(spec),
            None => Play::synth(&spec.args, spec.try_number),
        }
    }

    async fn print(&self, events: &mpsc::Sender<TryEvent>, lines: Vec<(Stream, String)>) {
        for (stream, text) in lines {
            let _ = events
                .send(TryEvent::Line {
                    stream,
                    timestamp: self.clock.now(),
                    text,
                    dropped: 0,
                })
                .await;
        }
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.unavailable()
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        self.unavailable()?;
        let play = self.play_for(&spec);
        let container_id = format!(
            "{}-{}-{}-{}",
            self.name, spec.run_id, spec.task_id, spec.try_number
        );
        let _ = events
            .send(TryEvent::Launched {
                container_id: container_id.clone(),
                image_digest: None,
            })
            .await;
        self.print(&events, play.first).await;
        let ends_at = self.clock.now() + play.duration;
        if self.clock.now() < ends_at {
            self.playing.lock().expect("poisoned").insert(
                container_id.clone(),
                RunningTry {
                    container_id: container_id.clone(),
                    job_id: spec.job_id.clone(),
                    run_id: spec.run_id.clone(),
                    task_id: spec.task_id.clone(),
                    try_number: spec.try_number,
                },
            );
        }
        let mut kill_open = true;
        let killed = loop {
            if let Some(reason) = kill.borrow().clone() {
                break Some(reason);
            }
            if self.clock.now() >= ends_at {
                break None;
            }
            tokio::select! {
                _ = tokio::time::sleep(CLOCK_POLL) => {}
                changed = kill.changed(), if kill_open => kill_open = changed.is_ok(),
            }
        };
        self.playing.lock().expect("poisoned").remove(&container_id);
        match killed {
            // Killed as SIGKILL kills a process.
            Some(reason) => Ok(TryExit {
                exit_code: Some(137),
                failure: Some(reason.as_failure()),
            }),
            None => {
                self.print(&events, play.last).await;
                Ok(TryExit {
                    exit_code: Some(play.exit_code),
                    failure: None,
                })
            }
        }
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        Ok(self
            .playing
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect())
    }

    async fn remove(&self, _container_id: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_domain::clock::ManualClock;

    fn spec(task_id: &str, args: &[&str], try_number: u32) -> LaunchSpec {
        LaunchSpec {
            job_id: "job".into(),
            run_id: "run".into(),
            task_id: task_id.into(),
            try_number,
            image: String::new(),
            pull_policy: PullPolicy::IfNotPresent,
            command: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Default::default(),
            resources: Default::default(),
            state: None,
            registry_auth: None,
            placement: Default::default(),
            labels: Default::default(),
            keep_exited: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            isolation: Default::default(),
            workspace: None,
        }
    }

    fn texts(events: &mut mpsc::Receiver<TryEvent>) -> Vec<String> {
        let mut texts = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let TryEvent::Line { text, .. } = event {
                texts.push(text);
            }
        }
        texts
    }

    #[tokio::test]
    async fn a_sleeping_try_ends_when_the_clock_has_moved_its_duration() {
        let clock = Arc::new(ManualClock::starting_at(chrono::Utc::now()));
        let backend = Arc::new(ScriptedBackend::new("process", clock.clone()));
        let (tx, mut rx) = mpsc::channel(16);
        let (_kill_tx, kill) = kill_switch();
        let playing = tokio::spawn({
            let backend = backend.clone();
            async move {
                backend
                    .execute(spec("t", &["sleep", "--seconds", "3"], 1), tx, kill)
                    .await
            }
        });
        // However long we wait for real, it runs on while the clock stands still.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!playing.is_finished());
        assert_eq!(backend.list_running().await.unwrap().len(), 1);
        clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!playing.is_finished());
        clock.advance(Duration::from_secs(1));
        let exit = playing.await.unwrap().unwrap();
        assert_eq!(
            exit,
            TryExit {
                exit_code: Some(0),
                failure: None
            }
        );
        assert_eq!(texts(&mut rx), ["sleeping 3s", "woke up"]);
        assert!(backend.list_running().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_killed_try_exits_137_with_the_reason() {
        let clock = Arc::new(ManualClock::starting_at(chrono::Utc::now()));
        let backend = ScriptedBackend::new("process", clock);
        let (tx, _rx) = mpsc::channel(16);
        let (kill_tx, kill) = kill_switch();
        let killer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            kill_tx.send(Some(StopReason::Cancelled)).unwrap();
        };
        let (exit, ()) = tokio::join!(
            backend.execute(spec("t", &["sleep", "--seconds", "60"], 1), tx, kill),
            killer
        );
        let exit = exit.unwrap();
        assert_eq!(exit.exit_code, Some(137));
        assert_eq!(exit.failure, Some(StopReason::Cancelled.as_failure()));
    }

    #[tokio::test]
    async fn a_script_replaces_the_synth_modes_for_its_task() {
        let backend = ScriptedBackend::instant("process");
        backend.script("gate", |spec| {
            Play::exit(spec.try_number as i64 + 40).stdout("scripted")
        });
        let (tx, mut rx) = mpsc::channel(16);
        let (_kill_tx, kill) = kill_switch();
        let exit = backend
            .execute(spec("gate", &["noop"], 2), tx, kill)
            .await
            .unwrap();
        assert_eq!(exit.exit_code, Some(42));
        assert_eq!(texts(&mut rx), ["scripted"]);
        let (tx, mut rx) = mpsc::channel(16);
        let (_kill_tx, kill) = kill_switch();
        let exit = backend
            .execute(
                spec(
                    "other",
                    &["run", "--try", "1", "--", "sensor", "--ready-on-try", "3"],
                    1,
                ),
                tx,
                kill,
            )
            .await
            .unwrap();
        assert_eq!(exit.exit_code, Some(75));
        assert_eq!(texts(&mut rx), ["not ready on try 1 (ready on try 3)"]);
    }
}
