//! Log chunks to lines. The engine sends chunks, not lines: a long line arrives in pieces
//! (each with its own timestamp prefix when timestamps are on) and a final line may lack its
//! newline. [`LineSplitter`] keeps the unfinished part of each stream until it is complete.

use chrono::{DateTime, Utc};

use crate::Stream;

#[derive(Default)]
pub struct LineSplitter {
    stdout: Partial,
    stderr: Partial,
}

#[derive(Default)]
struct Partial {
    text: Vec<u8>,
    timestamp: Option<DateTime<Utc>>,
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
    /// Feeds one chunk (timestamp prefix already split off) and calls `emit` for each line
    /// it completes. Lines keep the timestamp of their first piece.
    pub fn push(
        &mut self,
        stream: Stream,
        timestamp: DateTime<Utc>,
        chunk: &[u8],
        emit: &mut dyn FnMut(Stream, DateTime<Utc>, String),
    ) {
        let partial = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let started = partial.timestamp.take().unwrap_or(timestamp);
            partial.text.extend_from_slice(&rest[..newline]);
            emit(stream, started, take_line(&mut partial.text));
            rest = &rest[newline + 1..];
        }
        if !rest.is_empty() {
            partial.timestamp.get_or_insert(timestamp);
            partial.text.extend_from_slice(rest);
        }
    }

    /// Emits what is left of each stream (output that did not end with a newline).
    pub fn finish(&mut self, emit: &mut dyn FnMut(Stream, DateTime<Utc>, String)) {
        for (stream, partial) in [
            (Stream::Stdout, &mut self.stdout),
            (Stream::Stderr, &mut self.stderr),
        ] {
            if let Some(timestamp) = partial.timestamp.take() {
                emit(stream, timestamp, take_line(&mut partial.text));
            }
        }
    }
}

fn take_line(buffer: &mut Vec<u8>) -> String {
    if buffer.last() == Some(&b'\r') {
        buffer.pop();
    }
    let line = String::from_utf8_lossy(buffer).into_owned();
    buffer.clear();
    line
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
            splitter.push(*stream, now, chunk.as_bytes(), &mut |s, _, text| {
                lines.push((s, text))
            });
        }
        splitter.finish(&mut |s, _, text| lines.push((s, text)));
        lines
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
