//! Log chunks to lines. The engine sends chunks, not lines: a long line arrives in pieces
//! (each with its own timestamp prefix when timestamps are on) and a final line may lack its
//! newline. [`LineSplitter`] keeps the unfinished part of each stream until it is complete.
//!
//! A line is never buffered whole: the splitter keeps at most `max_line_bytes` of it and
//! counts the rest, so a 300 MB line without a newline costs `max_line_bytes` of memory and
//! arrives as its first `max_line_bytes` bytes with the number of bytes dropped.

use chrono::{DateTime, Utc};

use crate::Stream;

/// Receives each line: its stream, the time of its first piece, its text (at most the
/// splitter's `max_line_bytes`, lossily decoded) and how many bytes of it were dropped.
pub type Emit<'a> = dyn FnMut(Stream, DateTime<Utc>, String, u64) + 'a;

pub struct LineSplitter {
    stdout: Partial,
    stderr: Partial,
    max_line_bytes: usize,
}

#[derive(Default)]
struct Partial {
    text: Vec<u8>,
    timestamp: Option<DateTime<Utc>>,
    /// Bytes of the current line beyond `max_line_bytes`, not kept.
    dropped: u64,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(crate::DEFAULT_MAX_LINE_BYTES)
    }
}

/// Splits `2024-01-01T00:00:00.123456789Z rest` into its timestamp and the rest.
pub fn split_timestamp(chunk: &[u8]) -> (Option<DateTime<Utc>>, &[u8]) {
    let Some(space) = chunk.iter().take(40).position(|b| *b == b' ') else {
        return (None, chunk);
    };
    let Ok(prefix) = std::str::from_utf8(&chunk[..space]) else {
        return (None, chunk);
    };
    match DateTime::parse_from_rfc3339(prefix) {
        Ok(time) => (Some(time.with_timezone(&Utc)), &chunk[space + 1..]),
        Err(_) => (None, chunk),
    }
}

impl LineSplitter {
    /// A splitter that keeps at most `max_line_bytes` of each line (at least 1).
    pub fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter {
            stdout: Partial::default(),
            stderr: Partial::default(),
            max_line_bytes: max_line_bytes.max(1),
        }
    }

    /// Feeds one chunk (timestamp prefix already split off) and calls `emit` for each line
    /// it completes. Lines keep the timestamp of their first piece.
    pub fn push(
        &mut self,
        stream: Stream,
        timestamp: DateTime<Utc>,
        chunk: &[u8],
        emit: &mut Emit<'_>,
    ) {
        let max = self.max_line_bytes;
        let partial = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let started = partial.timestamp.take().unwrap_or(timestamp);
            partial.keep(&rest[..newline], max);
            let (text, dropped) = partial.take_line();
            emit(stream, started, text, dropped);
            rest = &rest[newline + 1..];
        }
        if !rest.is_empty() {
            partial.timestamp.get_or_insert(timestamp);
            partial.keep(rest, max);
        }
    }

    /// Emits what is left of each stream (output that did not end with a newline).
    pub fn finish(&mut self, emit: &mut Emit<'_>) {
        for (stream, partial) in [
            (Stream::Stdout, &mut self.stdout),
            (Stream::Stderr, &mut self.stderr),
        ] {
            if let Some(timestamp) = partial.timestamp.take() {
                let (text, dropped) = partial.take_line();
                emit(stream, timestamp, text, dropped);
            }
        }
    }
}

impl Partial {
    /// Appends what fits under `max` bytes; counts the rest as dropped.
    fn keep(&mut self, piece: &[u8], max: usize) {
        let room = max.saturating_sub(self.text.len()).min(piece.len());
        self.text.extend_from_slice(&piece[..room]);
        self.dropped += (piece.len() - room) as u64;
    }

    fn take_line(&mut self) -> (String, u64) {
        // A `\r` before the newline is not part of the line, even when the rest was cut.
        if self.dropped == 0 && self.text.last() == Some(&b'\r') {
            self.text.pop();
        }
        let line = String::from_utf8_lossy(&self.text).into_owned();
        self.text.clear();
        (line, std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn collect(chunks: &[(Stream, &str)]) -> Vec<(Stream, String)> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        let now = Utc.timestamp_opt(0, 0).unwrap();
        for (stream, chunk) in chunks {
            splitter.push(*stream, now, chunk.as_bytes(), &mut |s, _, text, _| {
                lines.push((s, text))
            });
        }
        splitter.finish(&mut |s, _, text, _| lines.push((s, text)));
        lines
    }

    /// Security review, finding 3: a 300 MB line without a newline was buffered whole.
    #[test]
    fn a_huge_line_keeps_only_its_first_bytes_and_counts_the_rest() {
        let mut splitter = LineSplitter::new(1024);
        let now = Utc.timestamp_opt(0, 0).unwrap();
        let mut lines = Vec::new();
        let piece = vec![b'x'; 64 * 1024];
        // 64 MiB of one line, in pieces, then a short line.
        for _ in 0..1024 {
            splitter.push(Stream::Stdout, now, &piece, &mut |_, _, text, dropped| {
                lines.push((text, dropped))
            });
            assert!(
                splitter.stdout.text.len() <= 1024,
                "never more than the cap kept"
            );
        }
        splitter.push(
            Stream::Stdout,
            now,
            b"tail\nnext\n",
            &mut |_, _, text, dropped| lines.push((text, dropped)),
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0.len(), 1024);
        assert_eq!(lines[0].1, 64 * 1024 * 1024 + 4 - 1024);
        assert_eq!(lines[1], ("next".to_owned(), 0));
    }

    #[test]
    fn joins_pieces_per_stream_and_flushes_the_last_line() {
        let lines = collect(&[
            (Stream::Stdout, "hel"),
            (Stream::Stderr, "err 1\n"),
            (Stream::Stdout, "lo\nwor"),
            (Stream::Stdout, "ld"),
        ]);
        assert_eq!(
            lines,
            vec![
                (Stream::Stderr, "err 1".to_owned()),
                (Stream::Stdout, "hello".to_owned()),
                (Stream::Stdout, "world".to_owned()),
            ]
        );
    }

    #[test]
    fn keeps_empty_lines_and_strips_carriage_returns() {
        let lines = collect(&[(Stream::Stdout, "a\r\n\nb\n")]);
        let texts: Vec<_> = lines.into_iter().map(|(_, t)| t).collect();
        assert_eq!(texts, vec!["a", "", "b"]);
    }

    #[test]
    fn splits_the_engine_timestamp() {
        let (time, rest) = split_timestamp(b"2024-01-01T00:00:00.123456789Z hello world");
        assert_eq!(time.unwrap().timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(rest, b"hello world");
        let (time, rest) = split_timestamp(b"no timestamp here");
        assert_eq!((time, rest), (None, &b"no timestamp here"[..]));
    }
}
