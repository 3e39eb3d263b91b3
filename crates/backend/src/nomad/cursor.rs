//! Where a followed log stands, in Nomad's terms.
//!
//! Nomad's logmon writes each task log as numbered files, `alloc/logs/<task>.<type>.<n>`,
//! starting the next once the current one is full and deleting the oldest beyond
//! `MaxFiles` (10 files of 10 MB by default, `client/logmon/logging/rotator.go`). The log
//! endpoint takes `origin=start&offset=N` as N bytes from the start of the *oldest file
//! still on disk* (`client/fs_endpoint.go`, `findClosest`), so a byte count kept since the
//! task began points too far once a file has been deleted. Every frame names its file and
//! where its data ends in it (`File`, `Offset`): the cursor keeps that, and the sizes of the
//! files read to their end, to ask for exactly the next byte after a reconnect, and to tell
//! when Nomad no longer has what comes next.

use std::collections::BTreeMap;

/// What to do with one data frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Take {
    /// Keep the frame's data after its first `skip` bytes (read already). With `lost`, Nomad
    /// no longer had what came before it: said in the try's log.
    Data { skip: usize, lost: Option<Lost> },
    /// Read already, all of it.
    Seen,
    /// This connection began at the wrong place: connect again from
    /// [`LogCursor::connect`].
    Reconnect,
}

/// What Nomad no longer had when the cursor asked for it.
#[derive(Debug, PartialEq)]
pub(crate) struct Lost {
    /// The file the log goes on from.
    pub(crate) from_file: String,
    /// Nothing had been read yet: the log's start is gone.
    pub(crate) start: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LogCursor {
    /// Files read to their end: index and size.
    finished: BTreeMap<u64, u64>,
    /// The file being read and how many of its bytes have been read.
    current: Option<(u64, u64)>,
    /// The oldest file Nomad is known to hold: offsets count from its start.
    oldest: u64,
    /// Ask from Nomad's oldest file next (offset 0), to learn which file that is.
    probe: bool,
    /// This connection asked from offset 0 to learn Nomad's oldest file.
    probing: bool,
    /// A probe has just named Nomad's oldest file: the next connection asks for the exact
    /// byte.
    probed: bool,
    /// The connection's first data frame is still to come.
    fresh: bool,
    /// Bytes taken so far.
    read: u64,
}

/// The index in a log file's name, `alloc/logs/task.stdout.7` → 7.
pub(crate) fn file_index(file: &str) -> Option<u64> {
    file.rsplit('.').next()?.parse().ok()
}

impl LogCursor {
    /// A new connection: the `offset` (with `origin=start`) to ask for. That is the first
    /// byte not read yet, counted from the start of the oldest file Nomad holds; once the
    /// log has gone past its first file, Nomad may have deleted files since, so the cursor
    /// first asks from offset 0 (a probe: its first frame names Nomad's oldest file), then
    /// for the exact byte. The connection's first frame is checked against where the cursor
    /// stands.
    pub(crate) fn connect(&mut self) -> u64 {
        self.fresh = true;
        let probed = std::mem::take(&mut self.probed);
        self.probing =
            !probed && matches!(self.current, Some((file, _)) if self.probe || file > self.oldest);
        match self.current {
            Some((file, read)) if !self.probing => {
                self.finished
                    .range(self.oldest..file)
                    .map(|(_, s)| s)
                    .sum::<u64>()
                    + read
            }
            _ => 0,
        }
    }

    /// Bytes taken so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// A data frame of `len` bytes from the file of index `file` (named `name`), ending at
    /// byte `end` of it.
    pub(crate) fn take(&mut self, file: u64, name: &str, end: u64, len: u64) -> Take {
        let start = end.saturating_sub(len);
        let fresh = std::mem::take(&mut self.fresh);
        let probing = fresh && self.probing;
        if probing {
            self.probe = false;
        }
        let Some((current, read)) = self.current else {
            // The first data: files before it were deleted before anything was read.
            self.oldest = file;
            self.advance(file, end, len);
            let lost = (file > 0 || start > 0).then(|| Lost {
                from_file: name.to_owned(),
                start: true,
            });
            return Take::Data { skip: 0, lost };
        };
        if probing {
            // Offset 0 lands at the start of the oldest file Nomad holds.
            self.oldest = file;
            if (file, start) < (current, read) {
                // The file being read is still there: ask for the exact byte now.
                self.probed = true;
                return Take::Reconnect;
            }
        }
        if (file, end) <= (current, read) {
            return Take::Seen;
        }
        if file == current && start <= read {
            self.advance(file, end, end - read);
            return Take::Data {
                skip: (read - start) as usize,
                lost: None,
            };
        }
        if file == current + 1 && start == 0 {
            // Nomad moves to the next file once the current one is read to its end.
            self.finished.insert(current, read);
            self.advance(file, end, len);
            return Take::Data {
                skip: 0,
                lost: None,
            };
        }
        if fresh && !probing {
            // The offset pointed too far: Nomad deleted files the count began at. Learn
            // which file is its oldest now, then ask again.
            self.probe = true;
            return Take::Reconnect;
        }
        // Nomad no longer has what came between: the rest of the current file, any file
        // after it, the start of this one.
        if file > current {
            self.finished.insert(current, read);
        }
        self.oldest = self.oldest.max(file);
        self.advance(file, end, len);
        Take::Data {
            skip: 0,
            lost: Some(Lost {
                from_file: name.to_owned(),
                start: false,
            }),
        }
    }

    fn advance(&mut self, file: u64, end: u64, taken: u64) {
        self.current = Some((file, end));
        self.read += taken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> String {
        format!("alloc/logs/task.stdout.{n}")
    }

    fn take(cursor: &mut LogCursor, file: u64, end: u64, len: u64) -> Take {
        cursor.take(file, &name(file), end, len)
    }

    fn data(skip: usize) -> Take {
        Take::Data { skip, lost: None }
    }

    #[test]
    fn a_log_in_one_file_resumes_at_the_next_byte() {
        let mut cursor = LogCursor::default();
        assert_eq!(cursor.connect(), 0);
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        assert_eq!(cursor.connect(), 100);
        assert_eq!(take(&mut cursor, 0, 130, 30), data(0));
        assert_eq!(cursor.bytes_read(), 130);
    }

    #[test]
    fn a_log_across_files_probes_for_the_oldest_then_resumes_at_the_next_byte() {
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        assert_eq!(take(&mut cursor, 1, 40, 40), data(0));
        // Past the first file: Nomad may have deleted it. Ask from offset 0 first.
        assert_eq!(cursor.connect(), 0);
        assert_eq!(take(&mut cursor, 0, 64, 64), Take::Reconnect);
        assert_eq!(cursor.connect(), 140, "file 0 is still there");
        assert_eq!(take(&mut cursor, 1, 70, 30), data(0));
        assert_eq!(cursor.bytes_read(), 170);
    }

    #[test]
    fn an_overlapping_frame_gives_only_its_new_bytes() {
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        assert_eq!(take(&mut cursor, 0, 120, 50), data(30));
        assert_eq!(take(&mut cursor, 0, 110, 10), Take::Seen);
    }

    #[test]
    fn after_a_rotation_the_cursor_counts_from_nomads_oldest_file() {
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        assert_eq!(take(&mut cursor, 1, 100, 100), data(0));
        assert_eq!(take(&mut cursor, 2, 30, 30), data(0));
        // Nomad deleted file 0: the probe lands at the start of file 1.
        assert_eq!(cursor.connect(), 0);
        assert_eq!(take(&mut cursor, 1, 64, 64), Take::Reconnect);
        assert_eq!(cursor.connect(), 130, "file 1 and 30 bytes of file 2");
        assert_eq!(take(&mut cursor, 2, 100, 70), data(0));
        assert_eq!(cursor.bytes_read(), 300);
    }

    #[test]
    fn an_offset_that_points_too_far_is_caught_by_the_frame_it_lands_on() {
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        // Nomad deleted file 0 and more meanwhile; offset 100 lands in file 3.
        assert_eq!(cursor.connect(), 100);
        assert_eq!(take(&mut cursor, 3, 150, 50), Take::Reconnect);
        assert_eq!(cursor.connect(), 0, "probes the oldest file");
        assert_eq!(
            take(&mut cursor, 3, 100, 100),
            Take::Data {
                skip: 0,
                lost: Some(Lost {
                    from_file: name(3),
                    start: false
                })
            }
        );
        assert_eq!(cursor.connect(), 100, "counted from file 3 now");
    }

    #[test]
    fn a_log_whose_start_is_gone_says_so() {
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(
            take(&mut cursor, 4, 100, 100),
            Take::Data {
                skip: 0,
                lost: Some(Lost {
                    from_file: name(4),
                    start: true
                })
            }
        );
    }

    #[test]
    fn a_gap_inside_one_stream_is_said_lost() {
        // Nomad's own stream jumps when the next file was deleted before it got there.
        let mut cursor = LogCursor::default();
        cursor.connect();
        assert_eq!(take(&mut cursor, 0, 100, 100), data(0));
        assert!(matches!(
            take(&mut cursor, 2, 100, 100),
            Take::Data { lost: Some(_), .. }
        ));
    }

    #[test]
    fn file_indexes_come_from_the_name() {
        assert_eq!(file_index("alloc/logs/task.stdout.12"), Some(12));
        assert_eq!(file_index("alloc/logs/task.stdout"), None);
    }
}
