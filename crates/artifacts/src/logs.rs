//! Archived logs: a try's lines, once it has ended, moved from the store's rows to the
//! artifact store, and read back from there as if they were rows.
//!
//! **Format.** JSON lines (`{"seq":0,"stream":"stdout","timestamp":"…Z","text":"…"}`, the
//! timestamp to the microsecond, as stored) compressed with zstd in independent frames of
//! about [`FRAME_RAW_BYTES`] or [`FRAME_LINES`] lines, each with zstd's content checksum.
//! Concatenated frames are one valid zstd stream, so `zstd -dc 42.jsonl.zst` prints the
//! whole log. The store keeps each frame's first and last `seq`, offset and sizes
//! ([`LogArchiveRecord::frames`]), so a page of lines costs one ranged read of the frames
//! that hold it, never the whole log.
//!
//! **Archiving** ([`archive`]): the try's rows are read a page at a time and written as
//! frames to a temporary file, which is uploaded, read back and checked (its sha256, and
//! every line's `seq` in order), and only then recorded in the store; its rows are then
//! deleted a batch at a time, so no long write holds the store. An upload or check that
//! fails records nothing and deletes nothing: the rows stay and the next round tries again.
//!
//! **Reading** ([`Logs`]): a try with an archive is read from it, any other from the rows.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stevedore_store::{
    LogArchiveRecord, LogFrame, LogLine, LogPage, LogReader, LogStream, LogToArchive, Store,
    StoreError, LOG_PAGE_BYTES, MAX_LINE_READ,
};

use crate::{ArtifactError, ArtifactStore, Blob};

/// A frame is closed once its JSON lines reach this size…
pub const FRAME_RAW_BYTES: usize = 1024 * 1024;
/// …or this many lines.
pub const FRAME_LINES: usize = 10_000;
/// zstd's level: its default, fast to write and about 10x on log text.
const LEVEL: i32 = 3;
/// Rows read from the store at a time while archiving.
const READ_PAGE: u32 = 10_000;
/// Rows deleted in one statement once a log is archived.
pub const DELETE_BATCH: u32 = 10_000;
/// The most a frame may claim to hold once decompressed: a damaged record cannot make a
/// reader allocate more (a frame holds about 1 MiB, plus at most one line of 1 MiB).
const MAX_FRAME_RAW: u64 = 64 * 1024 * 1024;

/// One line as an archive holds it.
#[derive(Serialize, Deserialize)]
struct ArchivedLine {
    seq: i64,
    stream: String,
    timestamp: String,
    text: String,
}

impl ArchivedLine {
    fn of(line: &LogLine) -> ArchivedLine {
        ArchivedLine {
            seq: line.seq,
            stream: line.stream.as_str().to_owned(),
            timestamp: line.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
            text: line.text.clone(),
        }
    }

    fn into_line(self, try_id: i64) -> Result<LogLine, String> {
        let stream = match self.stream.as_str() {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            "log" => LogStream::Protocol,
            other => return Err(format!("line {}: unknown stream `{other}`", self.seq)),
        };
        let timestamp = DateTime::parse_from_rfc3339(&self.timestamp)
            .map_err(|e| format!("line {}: timestamp: {e}", self.seq))?
            .with_timezone(&Utc);
        Ok(LogLine {
            try_id,
            seq: self.seq,
            stream,
            timestamp,
            text: self.text,
        })
    }
}

/// Writes lines as frames to a file, keeping the frame index.
struct FrameWriter {
    file: std::fs::File,
    /// Of every byte written to `file`: the archive's name.
    hasher: Sha256,
    raw: Vec<u8>,
    frame_lines: usize,
    first_seq: i64,
    last_seq: i64,
    offset: u64,
    frames: Vec<LogFrame>,
    lines: u64,
    raw_bytes: u64,
}

impl FrameWriter {
    fn new(file: std::fs::File) -> FrameWriter {
        FrameWriter {
            file,
            hasher: Sha256::new(),
            raw: Vec::with_capacity(FRAME_RAW_BYTES + 4096),
            frame_lines: 0,
            first_seq: 0,
            last_seq: 0,
            offset: 0,
            frames: Vec::new(),
            lines: 0,
            raw_bytes: 0,
        }
    }

    fn push(&mut self, line: &LogLine) -> std::io::Result<()> {
        if self.frame_lines == 0 {
            self.first_seq = line.seq;
        }
        serde_json::to_writer(&mut self.raw, &ArchivedLine::of(line))?;
        self.raw.push(b'\n');
        self.frame_lines += 1;
        self.last_seq = line.seq;
        self.lines += 1;
        if self.raw.len() >= FRAME_RAW_BYTES || self.frame_lines >= FRAME_LINES {
            self.close_frame()?;
        }
        Ok(())
    }

    fn close_frame(&mut self) -> std::io::Result<()> {
        if self.frame_lines == 0 {
            return Ok(());
        }
        let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
        compressor.include_checksum(true)?;
        let compressed = compressor.compress(&self.raw)?;
        self.file.write_all(&compressed)?;
        self.hasher.update(&compressed);
        self.frames.push(LogFrame {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            offset: self.offset,
            length: compressed.len() as u64,
            raw_length: self.raw.len() as u64,
        });
        self.offset += compressed.len() as u64;
        self.raw_bytes += self.raw.len() as u64;
        self.raw.clear();
        self.frame_lines = 0;
        Ok(())
    }
}

/// The lines of one frame, decompressed and parsed (at most `raw_length` bytes are ever
/// allocated for it).
fn read_frame(frame: &LogFrame, bytes: &[u8], try_id: i64) -> Result<Vec<LogLine>, String> {
    if frame.raw_length > MAX_FRAME_RAW {
        return Err(format!(
            "a frame claims {} bytes, over the {MAX_FRAME_RAW} a frame may hold",
            frame.raw_length
        ));
    }
    let raw = zstd::bulk::decompress(bytes, frame.raw_length as usize)
        .map_err(|e| format!("a frame at byte {} does not decompress: {e}", frame.offset))?;
    raw.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice::<ArchivedLine>(line)
                .map_err(|e| {
                    format!(
                        "a line of the frame at byte {} is not JSON: {e}",
                        frame.offset
                    )
                })
                .and_then(|archived| archived.into_line(try_id))
        })
        .collect()
}

/// Why a try's log was not archived: nothing was recorded or deleted.
#[derive(Debug)]
pub enum ArchiveError {
    Store(StoreError),
    Artifacts(ArtifactError),
    /// The archive read back was not what was written.
    Check(String),
    Io(std::io::Error),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Store(e) => write!(f, "{e}"),
            ArchiveError::Artifacts(e) => write!(f, "{e}"),
            ArchiveError::Check(why) => write!(f, "the archive read back is not the log: {why}"),
            ArchiveError::Io(e) => write!(f, "writing the archive to a temporary file: {e}"),
        }
    }
}

impl std::error::Error for ArchiveError {}

impl From<StoreError> for ArchiveError {
    fn from(error: StoreError) -> Self {
        ArchiveError::Store(error)
    }
}

impl From<ArtifactError> for ArchiveError {
    fn from(error: ArtifactError) -> Self {
        ArchiveError::Artifacts(error)
    }
}

impl From<std::io::Error> for ArchiveError {
    fn from(error: std::io::Error) -> Self {
        ArchiveError::Io(error)
    }
}

/// What archiving one try did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Archived {
    pub lines: u64,
    /// The archive's size in the artifact store (compressed).
    pub bytes: u64,
    /// The size of its JSON lines.
    pub raw_bytes: u64,
}

/// Archives the log of `try_` (see the module doc) and deletes its rows. A try whose
/// archive was recorded before only has its remaining rows deleted; a try with no lines
/// is marked archived with nothing written.
pub async fn archive(
    store: &dyn Store,
    artifacts: &ArtifactStore,
    try_: &LogToArchive,
    now: DateTime<Utc>,
) -> Result<Archived, ArchiveError> {
    let mut archived = Archived::default();
    if !try_.archived {
        if let Some(record) = write_archive(store, artifacts, try_, now).await? {
            archived = Archived {
                lines: record.lines,
                bytes: record.size,
                raw_bytes: record.raw_bytes,
            };
            store.record_log_archive(&record).await?;
        }
    }
    while !store
        .delete_archived_rows(try_.try_id, DELETE_BATCH)
        .await?
    {}
    Ok(archived)
}

/// Writes, uploads and checks the archive of a try's rows; `None` when it has none.
async fn write_archive(
    store: &dyn Store,
    artifacts: &ArtifactStore,
    try_: &LogToArchive,
    now: DateTime<Utc>,
) -> Result<Option<LogArchiveRecord>, ArchiveError> {
    let file = tempfile::tempfile()?;
    let mut writer = FrameWriter::new(file);
    let mut after = None;
    loop {
        let page = store.log_page(try_.try_id, after, READ_PAGE).await?;
        let Some(last) = page.lines.last() else { break };
        after = Some(last.seq);
        // Writing a frame compresses it: off the async threads.
        writer = tokio::task::spawn_blocking(move || -> std::io::Result<FrameWriter> {
            for line in &page.lines {
                writer.push(line)?;
            }
            Ok(writer)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    writer = tokio::task::spawn_blocking(move || -> std::io::Result<FrameWriter> {
        writer.close_frame()?;
        writer.file.flush()?;
        writer.file.seek(SeekFrom::Start(0))?;
        Ok(writer)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    if writer.lines == 0 {
        return Ok(None);
    }
    let file = tokio::fs::File::from_std(writer.file.try_clone()?);
    let written = Blob {
        sha256: hex::encode(writer.hasher.clone().finalize()),
        size: writer.offset,
    };
    let blob = artifacts
        .put_log(&try_.run_id, try_.try_id, file, &written)
        .await?;
    check(artifacts, try_, &blob, &writer.frames, writer.lines).await?;
    Ok(Some(LogArchiveRecord {
        try_id: try_.try_id,
        run_id: try_.run_id.clone(),
        size: blob.size,
        sha256: blob.sha256,
        lines: writer.lines,
        raw_bytes: writer.raw_bytes,
        frames: writer.frames,
        archived_at: now,
    }))
}

/// Reads the uploaded archive back whole (its size and sha256 checked by the store) and
/// checks that its frames hold `lines` lines in `seq` order, as the index says.
async fn check(
    artifacts: &ArtifactStore,
    try_: &LogToArchive,
    blob: &Blob,
    frames: &[LogFrame],
    lines: u64,
) -> Result<(), ArchiveError> {
    let stream = artifacts.get_log(&try_.run_id, try_.try_id, blob).await?;
    futures_util::pin_mut!(stream);
    let mut buffer: Vec<u8> = Vec::new();
    let mut consumed: u64 = 0;
    let mut next = 0usize;
    let mut counted: u64 = 0;
    let mut previous: Option<i64> = None;
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
        // Each whole frame in the buffer is checked and dropped: at most a frame and a
        // chunk are held.
        while let Some(frame) = frames.get(next) {
            let start = (frame.offset - consumed) as usize;
            let end = start + frame.length as usize;
            if buffer.len() < end {
                break;
            }
            let read =
                read_frame(frame, &buffer[start..end], try_.try_id).map_err(ArchiveError::Check)?;
            for line in &read {
                if previous.is_some_and(|p| line.seq <= p) {
                    return Err(ArchiveError::Check(format!(
                        "line {} follows line {}",
                        line.seq,
                        previous.unwrap_or_default()
                    )));
                }
                previous = Some(line.seq);
            }
            if read.first().map(|l| l.seq) != Some(frame.first_seq)
                || read.last().map(|l| l.seq) != Some(frame.last_seq)
            {
                return Err(ArchiveError::Check(format!(
                    "the frame at byte {} does not hold lines {} to {}",
                    frame.offset, frame.first_seq, frame.last_seq
                )));
            }
            counted += read.len() as u64;
            buffer.drain(..end);
            consumed += end as u64;
            next += 1;
        }
    }
    if next != frames.len() || counted != lines || !buffer.is_empty() {
        return Err(ArchiveError::Check(format!(
            "{counted} lines in {next} frames read back, {lines} lines in {} frames written",
            frames.len()
        )));
    }
    Ok(())
}

/// A try's log wherever it is (see the module doc): the store's rows, or its archive in
/// the artifact store. Without an artifact store, rows only.
#[derive(Clone)]
pub struct Logs {
    store: Arc<dyn Store>,
    artifacts: Option<ArtifactStore>,
}

impl Logs {
    pub fn new(store: Arc<dyn Store>, artifacts: Option<ArtifactStore>) -> Logs {
        Logs { store, artifacts }
    }

    fn unavailable(error: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("archived log: {error}"))
    }

    async fn archived_page(
        &self,
        archive: &LogArchiveRecord,
        after: Option<i64>,
        limit: u32,
    ) -> Result<LogPage, StoreError> {
        let artifacts = self.artifacts.as_ref().ok_or_else(|| {
            Self::unavailable(format!(
                "try {}'s log is archived, and no artifact store is configured here to read it from",
                archive.try_id
            ))
        })?;
        let after = after.unwrap_or(-1);
        let blob = Blob {
            sha256: archive.sha256.clone(),
            size: archive.size,
        };
        let mut page = LogPage::default();
        let mut bytes = 0usize;
        let first = archive.frames.partition_point(|f| f.last_seq <= after);
        for frame in &archive.frames[first..] {
            let compressed = artifacts
                .log_range(
                    &archive.run_id,
                    archive.try_id,
                    &blob,
                    frame.offset..frame.offset + frame.length,
                )
                .await
                .map_err(Self::unavailable)?;
            let frame = *frame;
            let try_id = archive.try_id;
            let lines =
                tokio::task::spawn_blocking(move || read_frame(&frame, &compressed, try_id))
                    .await
                    .map_err(Self::unavailable)?
                    .map_err(|why| {
                        StoreError::Corrupt(format!("try {try_id}'s archived log: {why}"))
                    })?;
            for mut line in lines.into_iter().filter(|l| l.seq > after) {
                if line.text.chars().count() > MAX_LINE_READ {
                    line.text = line.text.chars().take(MAX_LINE_READ).collect();
                }
                bytes += line.text.len();
                page.lines.push(line);
                if page.lines.len() >= limit as usize {
                    return Ok(page);
                }
                if bytes >= LOG_PAGE_BYTES {
                    page.cut = true;
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }
}

#[async_trait]
impl LogReader for Logs {
    async fn log_page(
        &self,
        try_id: i64,
        after: Option<i64>,
        limit: u32,
    ) -> Result<LogPage, StoreError> {
        match self.store.log_archive(try_id).await? {
            Some(archive) => self.archived_page(&archive, after, limit).await,
            None => self.store.log_page(try_id, after, limit).await,
        }
    }

    async fn last_log_seq(&self, try_id: i64) -> Result<Option<i64>, StoreError> {
        match self.store.log_archive(try_id).await? {
            Some(archive) => Ok(archive.frames.last().map(|f| f.last_seq)),
            None => self.store.last_log_seq(try_id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: i64, text: &str) -> LogLine {
        LogLine {
            try_id: 7,
            seq,
            stream: if seq % 3 == 0 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            timestamp: DateTime::from_timestamp_micros(1_765_000_000_123_456 + seq).unwrap(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn frames_hold_every_line_as_it_was_and_concatenate_into_one_stream() {
        let mut writer = FrameWriter::new(tempfile::tempfile().unwrap());
        let lines: Vec<LogLine> = (0..25_000)
            .map(|seq| match seq % 1000 {
                0 => line(seq, &format!("{seq} é \"quoted\" \t tab \\ {{}}")),
                _ => line(seq, &seq.to_string()),
            })
            .collect();
        for l in &lines {
            writer.push(l).unwrap();
        }
        writer.close_frame().unwrap();
        assert_eq!(writer.frames.len(), 3, "{:?}", writer.frames);
        assert_eq!(writer.frames[1].first_seq, 10_000);
        assert_eq!(writer.frames[2].last_seq, 24_999);
        writer.file.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut writer.file, &mut all).unwrap();
        let mut read = Vec::new();
        for frame in &writer.frames {
            let bytes = &all[frame.offset as usize..(frame.offset + frame.length) as usize];
            read.extend(read_frame(frame, bytes, 7).unwrap());
        }
        assert_eq!(read, lines);
        // The whole object is one zstd stream of JSON lines.
        let text = zstd::stream::decode_all(&all[..]).unwrap();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 25_000);
        assert!(text.len() as u64 > 5 * all.len() as u64, "compressed");
    }

    #[test]
    fn a_damaged_frame_is_refused() {
        let mut writer = FrameWriter::new(tempfile::tempfile().unwrap());
        writer.push(&line(0, "hello")).unwrap();
        writer.close_frame().unwrap();
        writer.file.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut writer.file, &mut all).unwrap();
        let middle = all.len() / 2;
        all[middle] ^= 0xff;
        assert!(read_frame(&writer.frames[0], &all, 7).is_err());
    }
}
