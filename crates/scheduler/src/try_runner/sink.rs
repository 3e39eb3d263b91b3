//! The log sink: a try's kill switch, timeout timer and event channel, and the task that
//! turns its events into masked, size-limited log lines, outputs and pending state.

#[allow(unused_imports)]
use super::*;

impl TryRunner {
    /// Sets a try up to be followed: its kill switch (handed to `on_started`), a timer that
    /// kills it after `timeout`, and the task that stores its events.
    pub(super) fn open_event_pipe(
        &self,
        target: EventTarget,
        timeout: Option<Duration>,
        masker: Masker,
        on_started: impl FnOnce(KillSender),
    ) -> EventPipe {
        let (kill_tx, kill_rx) = kill_switch();
        let timeout_guard = timeout.map(|timeout| {
            let kill_tx = kill_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = kill_tx.send(Some(StopReason::Timeout));
            })
        });
        let protocol_kill = kill_tx.clone();
        on_started(kill_tx);
        let (events_tx, events_rx) = mpsc::channel(8192);
        let sink = tokio::spawn(consume_events(
            self.store.clone(),
            self.writes.clone(),
            target,
            events_rx,
            EventRules {
                masker,
                limits: self.limits,
                kill: protocol_kill,
            },
        ));
        EventPipe {
            kill_probe: kill_rx.clone(),
            kill_rx,
            timeout_guard,
            events_tx,
            sink,
        }
    }
}

/// Waits for a try (`exit`) while its events are stored (`sink`), then stops its timeout
/// timer. `Err` with the store's message when the store refused the records because another
/// scheduler took the run over: the try is then left to that scheduler (nothing is killed).
pub(super) async fn follow<T>(
    exit: impl std::future::Future<Output = T>,
    mut sink: tokio::task::JoinHandle<anyhow::Result<Recorded>>,
    timeout_guard: Option<tokio::task::JoinHandle<()>>,
) -> Result<(T, Recorded), String> {
    // Should the try's own task be aborted (its scheduler gave its work up), the sink and the
    // timer go with it: nothing of a given-up follower writes on (see `GroupCommit::barrier`).
    let _sink_guard = AbortOnDrop(sink.abort_handle());
    let _timer_guard = timeout_guard
        .as_ref()
        .map(|t| AbortOnDrop(t.abort_handle()));
    tokio::pin!(exit);
    let mut stored = None;
    let result = loop {
        tokio::select! {
            result = &mut exit => break result,
            ended = &mut sink, if stored.is_none() => stored = Some(ended),
        }
    };
    let stored = match stored {
        Some(ended) => ended,
        None => sink.await,
    };
    if let Some(guard) = timeout_guard {
        guard.abort();
    }
    let recorded = match stored {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(error)) => {
            if let Some(message) = fenced(&error) {
                return Err(message);
            }
            warn!(error = %error, "storing the try's logs failed");
            Recorded::default()
        }
        Err(error) => {
            warn!(error = %error, "log consumer panicked");
            Recorded::default()
        }
    };
    Ok((result, recorded))
}

/// A try being followed: see [`TryRunner::open_event_pipe`].
pub(super) struct EventPipe {
    pub(super) kill_rx: stevedore_backend::KillReceiver,
    /// Reads the kill switch after the try: the try may have ended by itself after its
    /// events broke the protocol's limits, before the kill reached it.
    pub(super) kill_probe: stevedore_backend::KillReceiver,
    pub(super) timeout_guard: Option<tokio::task::JoinHandle<()>>,
    pub(super) events_tx: mpsc::Sender<TryEvent>,
    pub(super) sink: tokio::task::JoinHandle<anyhow::Result<Recorded>>,
}

/// Where a try's events go.
pub(super) struct EventTarget {
    pub(super) run_id: String,
    pub(super) task_id: String,
    pub(super) try_id: i64,
    /// The seq of the first line to store (after the lines stored already).
    pub(super) first_seq: i64,
    pub(super) fence: Option<Fence>,
}

/// What a try's events are held to while they are stored.
pub(super) struct EventRules {
    /// Hides connection values in lines, messages, outputs and state.
    pub(super) masker: Masker,
    pub(super) limits: TryLimits,
    /// Stops the try when it breaks the protocol's limits.
    pub(super) kill: KillSender,
}

impl EventRules {
    /// Stops the try for breaking the protocol's limits (once; the first reason stands).
    pub(super) fn broke(&self, why: String) {
        warn!(reason = %why, "stopping a try that broke the protocol's limits");
        self.kill.send_if_modified(|reason| {
            if reason.is_some() {
                return false;
            }
            *reason = Some(StopReason::Protocol(why));
            true
        });
    }
}

/// Stores the try's events: log lines in batches, outputs and state as they come. Every
/// text is masked (the raw line, and the decoded message, output and state), every stored
/// line cut to `max_line_bytes`, and an output or state over `max_output_bytes`, a
/// protocol message cut short, or more than `max_outputs` outputs stop the try.
pub(super) async fn consume_events(
    store: Arc<dyn Store>,
    writes: GroupCommit,
    target: EventTarget,
    mut events: mpsc::Receiver<TryEvent>,
    rules: EventRules,
) -> anyhow::Result<Recorded> {
    let masker = &rules.masker;
    let limits = rules.limits;
    let mut outputs_seen: std::collections::HashSet<String> = Default::default();
    let mut broken = false;
    let EventTarget {
        run_id,
        task_id,
        try_id,
        first_seq,
        fence,
    } = target;
    let fence = fence.as_ref();
    let store = store.as_ref();
    let mut recorded = Recorded::default();
    // Grown as lines come: most tries print a few lines, and a batch's full size would be
    // a third of a megabyte for each of them.
    let mut batch: Vec<LogLine> = Vec::new();
    let mut seq: i64 = first_seq;
    let mut flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                append(&writes, &batch, fence).await?;
                batch.clear();
                continue;
            }
        };
        let Some(event) = event else { break };
        if batch.is_empty() {
            flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
        }
        match event {
            TryEvent::Launched {
                container_id,
                image_digest,
            } => {
                // Lines before this one are Stevedore's own (the pull); from here on they
                // are the container's. Queued now and answered later: the lines and the
                // end that follow are queued after it.
                recorded.container_write = Some(ContainerWrite {
                    answer: writes.queue_try_container(
                        try_id,
                        &container_id,
                        image_digest.as_deref(),
                        seq,
                        fence,
                    ),
                    try_id,
                    container_id: container_id.clone(),
                    image_digest,
                    log_seq: seq,
                });
                recorded.container_id = Some(container_id);
                recorded.launched_at = Some(chrono::Utc::now());
            }
            TryEvent::Note(text) => {
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: LogStream::Protocol,
                    timestamp: chrono::Utc::now(),
                    text: masker.mask(&format!("info: {text}")),
                });
                seq += 1;
            }
            TryEvent::Pulling { image, status } => {
                debug!(image, status, "pulling");
                // The pull is part of the try: its steps go to the try's log.
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: LogStream::Protocol,
                    timestamp: chrono::Utc::now(),
                    text: masker.mask(&format!("info: pulling {image}: {status}")),
                });
                seq += 1;
            }
            TryEvent::Line {
                stream,
                timestamp,
                text,
                dropped,
            } => {
                let read = read_line(stream == Stream::Stdout, &text, dropped, masker, &limits);
                if let Some(problem) = read.problem {
                    if !broken {
                        broken = true;
                        rules.broke(problem);
                    }
                }
                match read.message {
                    // After a broken limit nothing more is published.
                    Some(Message::Output { .. } | Message::State { .. }) if broken => {}
                    Some(Message::Output { key, value }) => {
                        if !outputs_seen.contains(&key) && outputs_seen.len() >= limits.max_outputs
                        {
                            broken = true;
                            rules.broke(format!(
                                "the try published more than {} outputs (max_outputs)",
                                limits.max_outputs
                            ));
                        } else {
                            persist("storing an output", || {
                                store.put_output(&run_id, &task_id, &key, &value)
                            })
                            .await?;
                            outputs_seen.insert(key);
                        }
                    }
                    Some(Message::State { value }) => {
                        persist("storing the try's state", || {
                            store.set_pending_state(try_id, &value)
                        })
                        .await?
                    }
                    Some(Message::Error { message, retryable }) => {
                        recorded.error =
                            Some(stevedore_domain::state::ReportedError { message, retryable })
                    }
                    // A metric's last value, for the store at the try's end: a bounded
                    // number of names, each of bounded length, finite values only.
                    Some(Message::Metric { name, value }) if !broken && value.is_finite() => {
                        let fits = name.len() <= MAX_METRIC_NAME
                            && (recorded.metrics.contains_key(&name)
                                || recorded.metrics.len() < MAX_METRICS);
                        if fits {
                            recorded.metrics.insert(name, value);
                        }
                    }
                    _ => {}
                }
                batch.push(LogLine {
                    try_id,
                    seq,
                    stream: match stream {
                        _ if read.is_log => LogStream::Protocol,
                        Stream::Stdout => LogStream::Stdout,
                        Stream::Stderr => LogStream::Stderr,
                    },
                    timestamp,
                    text: read.text,
                });
                seq += 1;
                if batch.len() >= LOG_BATCH {
                    append(&writes, &batch, fence).await?;
                    batch.clear();
                }
            }
        }
    }
    append(&writes, &batch, fence).await?;
    Ok(recorded)
}

/// The most metric names one try reports (more are logged, not kept as metrics).
pub(super) const MAX_METRICS: usize = 50;
/// The longest metric name kept.
const MAX_METRIC_NAME: usize = 100;

/// Aborts a task when dropped (a finished task is left as it is).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
