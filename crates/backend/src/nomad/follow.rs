//! Following a try on Nomad: waiting for its placement, following its allocation with
//! blocking queries, and streaming its logs (framed, base64, resumed by byte offset).

#[allow(unused_imports)]
use super::*;
use cursor::{LogCursor, Take};

/// How long the rest of an ended allocation's log is asked for while Nomad cannot give it
/// (its client unreachable, no leader) before the try's log says it could not be read.
const REST_OF_LOG_PATIENCE: Duration = Duration::from_secs(30);

impl NomadBackend {
    /// Waits until Nomad places the job's allocation: `Ok(None)` when it is not placed within
    /// the placement timeout.
    pub(crate) async fn placed(
        &self,
        nomad_job: &str,
        kill: &mut KillReceiver,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<Option<Allocation>, Interrupted> {
        let deadline = tokio::time::Instant::now() + self.config.placement_timeout;
        let path = format!("/v1/job/{}/allocations", segment(nomad_job));
        let mut index = 0;
        let mut said_waiting = false;
        let mut listening = true;
        loop {
            let asked = kill.borrow().clone();
            if let Some(reason) = asked {
                return Err(Interrupted::Killed(reason));
            }
            let answer = tokio::select! {
                answer = self.watch::<Vec<Allocation>>(&path, index) => answer,
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                changed = kill.changed(), if listening => {
                    // Dropped: nobody will ask for a kill; keep waiting without the switch.
                    listening = changed.is_ok();
                    continue;
                }
            };
            let (allocations, next) = answer.map_err(Interrupted::Api)?;
            if let Some(allocation) = allocations.into_iter().max_by_key(|a| a.create_index) {
                return Ok(Some(allocation));
            }
            if !said_waiting {
                if let Some(problem) = self.placement_problem(nomad_job).await {
                    said_waiting = true;
                    let _ = events
                        .send(TryEvent::Note(format!(
                            "waiting for Nomad to place the try: {problem}"
                        )))
                        .await;
                }
            }
            index = next;
        }
    }

    /// Follows the allocation until it is terminal, deregistering the job when `kill` fires.
    /// Returns the last allocation read and the kill, if any.
    pub(crate) async fn follow_allocation(
        &self,
        mut allocation: Allocation,
        nomad_job: &str,
        kill: &mut KillReceiver,
        terminal: &watch::Sender<bool>,
        started: &std::sync::atomic::AtomicBool,
    ) -> Result<(Allocation, Option<StopReason>), ApiError> {
        let path = format!("/v1/allocation/{}", segment(&allocation.id));
        let mut index = 0;
        let mut killed: Option<StopReason> = kill.borrow().clone();
        let mut listening = true;
        if killed.is_some() {
            self.purge(nomad_job).await?;
        }
        while !allocation.is_terminal() {
            let answer = tokio::select! {
                answer = self.watch::<Allocation>(&path, index) => answer,
                changed = kill.changed(), if killed.is_none() && listening => {
                    if changed.is_err() {
                        listening = false;
                        continue;
                    }
                    let asked = kill.borrow().clone();
                    if let Some(reason) = asked {
                        killed = Some(reason);
                        self.purge(nomad_job).await?;
                    }
                    continue;
                }
            };
            let (read, next) = answer?;
            allocation = read;
            index = next;
        }
        // Nomad replaces a lost node's allocation, and a preempted one, whatever the
        // reschedule policy says (`scheduler/reconciler`): the job stops as soon as its one
        // allocation has ended, so no replacement runs beside Stevedore's own retry.
        if killed.is_none() {
            if let Err(error) = self.stop_job(nomad_job).await {
                warn!(nomad_job, error = %error, "could not stop the try's Nomad job after its allocation ended");
            }
        }
        let ran = allocation
            .events()
            .iter()
            .any(|event| event.kind == "Started");
        started.store(ran, std::sync::atomic::Ordering::SeqCst);
        let _ = terminal.send(true);
        Ok((allocation, killed))
    }

    /// Streams one of the task's logs as lines until the allocation is terminal and the log
    /// is read to its end. Resumes at the next byte after a broken connection, across Nomad's
    /// log rotation too ([`LogCursor`]), so no line is sent twice; what Nomad no longer has
    /// (rotated away, or garbage-collected with the allocation) is said in the try's log. The
    /// first `skip` lines (stored already) are not sent at all. `started`: the task started
    /// (set before `terminal` turns true).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn follow_log(
        &self,
        allocation_id: &str,
        stream: Stream,
        mut skip: u64,
        max_line_bytes: usize,
        mut terminal: watch::Receiver<bool>,
        started: &std::sync::atomic::AtomicBool,
        events: &mpsc::Sender<TryEvent>,
    ) -> Option<String> {
        let kind = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let path = format!("/v1/client/fs/logs/{}", segment(allocation_id));
        let mut cursor = LogCursor::default();
        let mut splitter = LineSplitter::new(max_line_bytes);
        let mut pending: Vec<TryEvent> = Vec::new();
        let mut failures = 0u32;
        let mut refused_since: Option<tokio::time::Instant> = None;
        let stored = skip;
        // The first `skip` lines are stored already.
        let keep = |stream, timestamp, text, dropped, skip: &mut u64| {
            if *skip > 0 {
                *skip -= 1;
                return None;
            }
            Some(TryEvent::Line {
                stream,
                timestamp,
                text,
                dropped,
            })
        };
        'connect: loop {
            // Once the allocation is terminal, read what is left without following: that
            // answer ends at the end of the log (a followed one never does).
            let follow = !*terminal.borrow();
            let request = self.request(
                reqwest::Method::GET,
                &path,
                &[
                    ("task", TASK.to_owned()),
                    ("type", kind.to_owned()),
                    ("origin", "start".to_owned()),
                    ("offset", cursor.connect().to_string()),
                    ("follow", follow.to_string()),
                ],
            );
            let response = match self.send(request).await {
                Ok(response) => response,
                // The token may not read logs: no retry mends that, and the lines are lost
                // to Stevedore. Said as the try's reason, never dropped in silence.
                Err(ApiError::Status(code @ (403 | 500), body))
                    if body.contains("Permission denied") =>
                {
                    warn!(
                        allocation_id,
                        kind, code, "Nomad will not stream the try's log to this token"
                    );
                    return Some(format!(
                        "Nomad refused to stream the try's {kind} ({code} Permission denied): the token needs the read-logs capability in the namespace"
                    ));
                }
                // The client garbage-collected the ended allocation (its `gc_max_allocs`, or
                // disk pressure) before the rest was read: said in the try's log.
                Err(ApiError::Status(404, body))
                    if !follow
                        && started.load(std::sync::atomic::Ordering::SeqCst)
                        && (body.contains("Unknown allocation")
                            || body.contains("not found on client")) =>
                {
                    warn!(
                        allocation_id,
                        kind, "Nomad collected the allocation before its log was read"
                    );
                    pending.push(TryEvent::Note(format!(
                        "Nomad no longer has the try's {kind} past byte {}: its client garbage-collected allocation {allocation_id} (what the task wrote after that, if anything, is lost)",
                        cursor.bytes_read()
                    )));
                    break 'connect;
                }
                Err(error) => {
                    // A client the servers have no connection to answers 404 `No path to
                    // node` (nomad/client_fs_endpoint.go): it may come back. Any other 404:
                    // the task has not started yet, or it never wrote this log (or, while
                    // following, the client has not received the allocation yet).
                    let transient = match &error {
                        ApiError::Status(404, body) => body.contains("No path to node"),
                        _ => true,
                    };
                    if !follow && !transient {
                        break 'connect;
                    }
                    if transient {
                        let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                        if !follow && since.elapsed() > REST_OF_LOG_PATIENCE {
                            warn!(allocation_id, kind, error = %error, "the rest of the log could not be read");
                            pending.push(TryEvent::Note(format!(
                                "could not read the try's {kind} past byte {} from Nomad for {}s: {error}",
                                cursor.bytes_read(),
                                REST_OF_LOG_PATIENCE.as_secs()
                            )));
                            break 'connect;
                        }
                        debug!(allocation_id, kind, error = %error, "log stream refused; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = terminal.changed() => {}
                    }
                    continue 'connect;
                }
            };
            refused_since = None;
            let mut body = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    changed = terminal.changed(), if follow => {
                        if changed.is_err() || *terminal.borrow() {
                            // Terminal: drop the followed stream, read the rest to its end.
                            continue 'connect;
                        }
                        continue;
                    }
                };
                let bytes = match chunk {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) => {
                        failures += 1;
                        debug!(allocation_id, kind, error = %error, "log stream broke; resuming");
                        if failures > 20 {
                            warn!(
                                allocation_id,
                                kind, "log stream keeps breaking; giving up on the rest"
                            );
                            break 'connect;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'connect;
                    }
                    None if follow => continue 'connect,
                    None => break 'connect,
                };
                buffer.extend_from_slice(&bytes);
                // Frames are JSON objects one after another; the last may be incomplete.
                let mut frames =
                    serde_json::Deserializer::from_slice(&buffer).into_iter::<StreamFrame>();
                let mut used = 0;
                let mut garbled = false;
                let mut reconnect = false;
                let now = Utc::now();
                while let Some(frame) = frames.next() {
                    let frame = match frame {
                        Ok(frame) => frame,
                        // The rest of this frame is still on its way.
                        Err(error) if error.is_eof() => break,
                        Err(error) => {
                            warn!(allocation_id, kind, error = %error, "a log frame is not JSON; reading again from the last whole frame");
                            garbled = true;
                            break;
                        }
                    };
                    used = frames.byte_offset();
                    if frame.file_event.as_deref() == Some("file truncated") {
                        warn!(allocation_id, kind, "the task's log was truncated");
                    }
                    let Some(data) = frame.data.filter(|d| !d.is_empty()) else {
                        continue; // a heartbeat, or a file event
                    };
                    let Ok(data) = base64::engine::general_purpose::STANDARD.decode(data) else {
                        warn!(allocation_id, kind, "a log frame's Data is not base64");
                        continue;
                    };
                    let name = frame.file.unwrap_or_default();
                    let file = cursor::file_index(&name).unwrap_or(0);
                    let data = match cursor.take(file, &name, frame.offset, data.len() as u64) {
                        Take::Seen => continue,
                        Take::Reconnect => {
                            reconnect = true;
                            break;
                        }
                        Take::Data { skip: seen, lost } => {
                            if let Some(lost) = lost {
                                // Never join the pieces either side of the gap into one line.
                                splitter.finish(&mut |stream, timestamp, text, dropped| {
                                    pending
                                        .extend(keep(stream, timestamp, text, dropped, &mut skip))
                                });
                                warn!(allocation_id, kind, file = %lost.from_file, "Nomad rotated part of the try's log away before it was read");
                                let note = if lost.start && stored > 0 {
                                    // The stored lines can no longer be counted off: some
                                    // may come again rather than any be dropped.
                                    skip = 0;
                                    format!("Nomad no longer has the start of the try's {kind} (its log files rotate): reading it again from {}, lines stored before may repeat", lost.from_file)
                                } else if lost.start {
                                    format!("Nomad no longer has the start of the try's {kind} (its log files rotate): the log begins at {}", lost.from_file)
                                } else {
                                    format!("Nomad no longer has part of the try's {kind} (its log files rotate, and were deleted before they were read): the log goes on from {}", lost.from_file)
                                };
                                pending.push(TryEvent::Note(note));
                            }
                            data.get(seen..).unwrap_or_default().to_vec()
                        }
                    };
                    failures = 0;
                    splitter.push(
                        stream,
                        now,
                        &data,
                        &mut |stream, timestamp, text, dropped| {
                            pending.extend(keep(stream, timestamp, text, dropped, &mut skip))
                        },
                    );
                }
                if !reconnect {
                    buffer.drain(..used);
                }
                for event in pending.drain(..) {
                    if events.send(event).await.is_err() {
                        return None;
                    }
                }
                if reconnect {
                    continue 'connect;
                }
                if garbled {
                    failures += 1;
                    if failures > 20 {
                        break 'connect;
                    }
                    continue 'connect;
                }
            }
        }
        splitter.finish(&mut |stream, timestamp, text, dropped| {
            pending.extend(keep(stream, timestamp, text, dropped, &mut skip))
        });
        for event in pending {
            let _ = events.send(event).await;
        }
        None
    }

    /// Follows a placed allocation to its end: its logs and its exit.
    pub(crate) async fn run_allocation(
        &self,
        allocation: Allocation,
        nomad_job: &str,
        skip: (u64, u64),
        max_line_bytes: usize,
        kill: &mut KillReceiver,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<TryExit, BackendError> {
        let (terminal_tx, terminal_rx) = watch::channel(allocation.is_terminal());
        let allocation_id = allocation.id.clone();
        let started = std::sync::atomic::AtomicBool::new(false);
        let (stdout, stderr, followed) = tokio::join!(
            self.follow_log(
                &allocation_id,
                Stream::Stdout,
                skip.0,
                max_line_bytes,
                terminal_rx.clone(),
                &started,
                events
            ),
            self.follow_log(
                &allocation_id,
                Stream::Stderr,
                skip.1,
                max_line_bytes,
                terminal_rx,
                &started,
                events
            ),
            async {
                let followed = self
                    .follow_allocation(allocation, nomad_job, kill, &terminal_tx, &started)
                    .await;
                // Let the log followers finish, whatever happened.
                let _ = terminal_tx.send(true);
                followed
            }
        );
        let (allocation, killed) = followed.map_err(|error| {
            BackendError::Disconnected(format!(
                "lost Nomad at {} while allocation {allocation_id} ran: {error}",
                self.config.address
            ))
        })?;
        let mut exit = exit_of(&allocation, killed);
        if let Some(refused) = stdout.or(stderr) {
            // The try's own failure, if it has one, stands; else the lost log is its reason.
            if exit.failure.is_none() {
                exit.failure = Some(FailureReason::Backend(refused));
            }
        }
        Ok(exit)
    }
}
