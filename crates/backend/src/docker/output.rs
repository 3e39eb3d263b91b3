//! The try's output: the attached streams (or the engine's log, when re-attaching) split
//! into lines and sent as events, and the wait for the container's exit.

#[allow(unused_imports)]
use super::*;

impl DockerBackend {
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
    /// from the engine's log when the scheduler re-attaches. Returns whether the stream
    /// reached its end (`false`: it broke, and lines may be missing).
    pub(super) async fn forward_output(
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
    ) -> bool {
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
                    return false;
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
                    return true;
                }
            }
        }
        splitter.finish(&mut |stream, timestamp, text, dropped| {
            pending.extend(keep(stream, timestamp, text, dropped))
        });
        for event in pending.drain(..) {
            let _ = events.send(event).await;
        }
        true
    }

    /// Waits for the container to stop, killing it if `kill` fires first. `Err` when the
    /// engine stopped answering before the container did.
    pub(super) async fn wait_exit(
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
}

/// Where a container's output comes from (see `DockerBackend::forward_output`).
#[derive(Clone, Copy)]
pub(super) enum Output {
    Attached,
    /// The engine's log; `skip`: stdout and stderr lines to leave out.
    Logged {
        skip: (u64, u64),
    },
}

/// The engine's timestamp at the start of a logged message, and the rest.
pub(super) fn split_timestamp(message: &[u8]) -> (chrono::DateTime<Utc>, &[u8]) {
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
