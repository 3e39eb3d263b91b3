//! A try's workspace moved to and from the artifact store: **captured** when the try ends
//! (every regular file under it, each streamed into a blob) and **staged** before a try
//! starts (its run's upstream files put back at the same paths, each checked).
//!
//! Two forms, for the two ways a backend reaches a workspace:
//! - a tar archive (the Docker engine's archive API gives a container's folder as one and
//!   takes one to unpack into it): [`capture_tar`] reads one as a stream, [`stage_tar`]
//!   writes one as a stream; neither holds a file in memory;
//! - a folder on this machine (the process backend): [`capture_dir`], [`stage_dir`].
//!
//! A staged file keeps the modification time it had where it was written; a file found at
//! capture with the path, size and time of a file staged into the try is that file,
//! unchanged, and is not captured again. Links, devices and empty folders are not captured.

use std::path::{Component, Path};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{ArtifactError, ArtifactStore, Blob};

/// A file of a workspace: its path under it (`/`-separated, relative), size, sha256 and
/// modification time (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub modified: i64,
}

impl WorkspaceFile {
    pub fn blob(&self) -> Blob {
        Blob {
            sha256: self.sha256.clone(),
            size: self.size,
        }
    }
}

/// A file to stage, and the task whose try wrote it (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedFile {
    pub file: WorkspaceFile,
    pub task_id: String,
}

/// What one try may leave in its workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureLimits {
    /// The largest file (`max_artifact_size`).
    pub max_file_size: u64,
    /// The most files.
    pub max_files: usize,
}

impl CaptureLimits {
    /// Whether one more file, of `size` bytes, may be kept after `kept` others: the path is
    /// named when it may not.
    pub fn admit(&self, path: &str, size: u64, kept: usize) -> Result<(), CaptureError> {
        if size > self.max_file_size {
            return Err(CaptureError::TooLarge {
                path: path.to_owned(),
                size,
                limit: self.max_file_size,
            });
        }
        if kept >= self.max_files {
            return Err(CaptureError::TooMany {
                limit: self.max_files,
            });
        }
        Ok(())
    }
}

/// The most files one try's workspace may hold when it ends.
pub const MAX_FILES: usize = 10_000;

/// Why a try's files could not be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// A file over `max_artifact_size`: the try fails, naming it.
    TooLarge { path: String, size: u64, limit: u64 },
    /// More files than [`CaptureLimits::max_files`].
    TooMany { limit: usize },
    /// A path that cannot be a workspace's (absolute, `..`, not UTF-8).
    BadPath(String),
    /// The store did not take a file; the try's files are still where it ran, so the
    /// capture can be tried again.
    Store(ArtifactError),
    /// Reading the try's files where it ran failed.
    Source(String),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::TooLarge { path, size, limit } => write!(
                f,
                "output file `{path}` is {size} bytes, over max_artifact_size ({limit} bytes)"
            ),
            CaptureError::TooMany { limit } => write!(
                f,
                "the workspace holds more than {limit} files; at most {limit} are kept per try"
            ),
            CaptureError::BadPath(path) => {
                write!(f, "output file `{path}`: not a path Stevedore can keep")
            }
            CaptureError::Store(error) => write!(f, "cannot keep the try's files: {error}"),
            CaptureError::Source(message) => write!(f, "cannot read the try's files: {message}"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// Why a file could not be staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    pub path: String,
    pub task_id: String,
    pub error: ArtifactError,
}

impl StageError {
    /// Whether the store did not answer (the try can wait for it), rather than holding a
    /// missing or corrupt file (the try fails).
    pub fn is_unreachable(&self) -> bool {
        matches!(self.error, ArtifactError::Unreachable(_))
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.error {
            ArtifactError::Missing { .. } => "is missing from the artifact store".to_owned(),
            ArtifactError::Corrupt { .. } => format!("is corrupt: {}", self.error),
            other => format!("cannot be staged: {other}"),
        };
        write!(
            f,
            "input file `{}` (written by task `{}`) {what}",
            self.path, self.task_id
        )
    }
}

impl std::error::Error for StageError {}

/// A relative, `/`-separated path with no `.`, `..` or empty parts, or `None`.
pub fn clean_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn unchanged(staged: &[WorkspaceFile], path: &str, size: u64, modified: i64) -> bool {
    staged
        .iter()
        .any(|f| f.path == path && f.size == size && f.modified == modified)
}

/// Stores one file read from `source` (a file of a workspace that was listed as `size`
/// bytes), for the tar and folder captures and for a backend that reads a try's files one
/// by one (Nomad's file system API): the size read must be the size listed.
pub async fn capture_file(
    store: &ArtifactStore,
    run_id: &str,
    path: &str,
    source: impl AsyncRead + Unpin,
    size: u64,
    modified: i64,
    limits: &CaptureLimits,
) -> Result<WorkspaceFile, CaptureError> {
    let blob = store
        .put(run_id, source, limits.max_file_size)
        .await
        .map_err(|error| match error {
            ArtifactError::TooLarge { limit, size } => CaptureError::TooLarge {
                path: path.to_owned(),
                size,
                limit,
            },
            ArtifactError::Source(message) => CaptureError::Source(format!("`{path}`: {message}")),
            other => CaptureError::Store(other),
        })?;
    if blob.size != size {
        return Err(CaptureError::Source(format!(
            "`{path}`: {} bytes read where {size} were announced (the file changed or the archive ended early)",
            blob.size
        )));
    }
    Ok(WorkspaceFile {
        path: path.to_owned(),
        size,
        sha256: blob.sha256,
        modified,
    })
}

/// Reads a tar archive of a workspace (its first path component is the workspace folder
/// itself, as the Docker engine's archive API gives it) and stores every regular file in
/// it, but those of `staged` unchanged. Returns the stored files, by path.
pub async fn capture_tar(
    store: &ArtifactStore,
    run_id: &str,
    archive: impl AsyncRead + Unpin,
    staged: &[WorkspaceFile],
    limits: &CaptureLimits,
) -> Result<Vec<WorkspaceFile>, CaptureError> {
    let mut archive = archive;
    let source = |e: std::io::Error| CaptureError::Source(e.to_string());
    let mut files = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax: Vec<(String, String)> = Vec::new();
    loop {
        let mut block = [0u8; 512];
        match read_block(&mut archive, &mut block).await.map_err(source)? {
            false => break,
            true if block.iter().all(|&b| b == 0) => break,
            true => {}
        }
        let header = tar::Header::from_byte_slice(&block);
        let pax_size = pax
            .iter()
            .find(|(k, _)| k == "size")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let size = match pax_size {
            Some(size) => size,
            None => header
                .entry_size()
                .map_err(|e| CaptureError::Source(format!("a bad tar header: {e}")))?,
        };
        let padding = (512 - size % 512) % 512;
        let kind = header.entry_type();
        if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
            // Metadata of the next entry: small, read whole (bounded).
            if size > 1024 * 1024 {
                return Err(CaptureError::Source(format!(
                    "a tar metadata entry of {size} bytes"
                )));
            }
            let mut data = vec![0u8; size as usize];
            archive.read_exact(&mut data).await.map_err(source)?;
            skip(&mut archive, padding).await.map_err(source)?;
            if kind.is_gnu_longname() {
                while data.last() == Some(&0) {
                    data.pop();
                }
                long_name = Some(data);
            } else {
                pax = parse_pax(&data);
            }
            continue;
        }
        let name = match long_name.take() {
            Some(name) => name,
            None => match pax.iter().find(|(k, _)| k == "path") {
                Some((_, path)) => path.clone().into_bytes(),
                None => header.path_bytes().into_owned(),
            },
        };
        let modified = pax
            .iter()
            .find(|(k, _)| k == "mtime")
            .and_then(|(_, v)| v.split('.').next()?.parse::<i64>().ok())
            .or_else(|| header.mtime().ok().map(|t| t as i64))
            .unwrap_or(0);
        pax.clear();
        let regular = kind.is_file() || kind.is_contiguous();
        if !regular {
            skip(&mut archive, size + padding).await.map_err(source)?;
            continue;
        }
        let name = String::from_utf8(name)
            .map_err(|e| CaptureError::BadPath(String::from_utf8_lossy(e.as_bytes()).into()))?;
        // Without the workspace folder's own name.
        let inner = name
            .trim_start_matches("./")
            .split_once('/')
            .map_or("", |(_, inner)| inner);
        let path = clean_path(inner).ok_or_else(|| CaptureError::BadPath(name.clone()))?;
        if unchanged(staged, &path, size, modified) {
            skip(&mut archive, size + padding).await.map_err(source)?;
            continue;
        }
        limits.admit(&path, size, files.len())?;
        let file = capture_file(
            store,
            run_id,
            &path,
            (&mut archive).take(size),
            size,
            modified,
            limits,
        )
        .await?;
        skip(&mut archive, padding).await.map_err(source)?;
        files.push(file);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|later, earlier| later.path == earlier.path);
    Ok(files)
}

/// Fills `block`; `false` at the end of the archive (nothing more to read).
async fn read_block(
    archive: &mut (impl AsyncRead + Unpin),
    block: &mut [u8; 512],
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < block.len() {
        let n = archive.read(&mut block[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the archive ended inside a header",
            ));
        }
        filled += n;
    }
    Ok(true)
}

async fn skip(archive: &mut (impl AsyncRead + Unpin), bytes: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut archive.take(bytes), &mut tokio::io::sink()).await?;
    if copied != bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the archive ended inside an entry",
        ));
    }
    Ok(())
}

/// PAX records: `LEN KEY=VALUE\n` each.
fn parse_pax(mut data: &[u8]) -> Vec<(String, String)> {
    let mut records = Vec::new();
    while let Some(space) = data.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space || len > data.len() {
            break;
        }
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            if let (Ok(key), Ok(value)) = (
                std::str::from_utf8(&record[..eq]),
                std::str::from_utf8(&record[eq + 1..]),
            ) {
                records.push((key.to_owned(), value.to_owned()));
            }
        }
        data = &data[len..];
    }
    records
}

/// The first problem a staging stream met, for the caller to report once the upload it
/// fed has failed or ended.
#[derive(Clone, Default)]
pub struct StageProblem(Arc<Mutex<Option<StageError>>>);

impl StageProblem {
    pub fn take(&self) -> Option<StageError> {
        self.0.lock().expect("poisoned").take()
    }

    fn set(&self, error: StageError) {
        let mut slot = self.0.lock().expect("poisoned");
        if slot.is_none() {
            *slot = Some(error);
        }
    }
}

/// A tar archive of `files` (each at its path, with its modification time), read from the
/// store as it is sent: a stream for the Docker engine to unpack into the workspace. A file
/// missing from the store, or whose bytes are not its sha256, ends the stream with an error,
/// and [`StageProblem`] says which file it was.
pub fn stage_tar(
    store: ArtifactStore,
    run_id: String,
    files: Vec<StagedFile>,
) -> (
    impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    StageProblem,
) {
    let problem = StageProblem::default();
    let seen = problem.clone();
    let entries = futures_util::stream::iter(files).map(move |staged| {
        let store = store.clone();
        let run_id = run_id.clone();
        let problem = seen.clone();
        let header = tar_header(&staged.file);
        let padding = ((512 - staged.file.size % 512) % 512) as usize;
        let body = futures_util::stream::once(async move {
            let (path, task_id) = (staged.file.path.clone(), staged.task_id.clone());
            let failed = move |error: ArtifactError| StageError {
                path: path.clone(),
                task_id: task_id.clone(),
                error,
            };
            match store.get(&run_id, &staged.file.blob()).await {
                Ok(chunks) => chunks
                    .map(move |chunk| {
                        chunk.map_err(|error| {
                            let message = error.to_string();
                            problem.set(failed(error));
                            std::io::Error::other(message)
                        })
                    })
                    .boxed(),
                Err(error) => {
                    let message = error.to_string();
                    problem.set(failed(error));
                    futures_util::stream::once(async move { Err(std::io::Error::other(message)) })
                        .boxed()
                }
            }
        })
        .flatten();
        futures_util::stream::once(async move { header })
            .chain(body)
            .chain(futures_util::stream::once(async move {
                Ok(Bytes::from(vec![0u8; padding]))
            }))
    });
    let archive = entries.flatten().chain(futures_util::stream::once(async {
        Ok(Bytes::from(vec![0u8; 1024]))
    }));
    (archive, problem)
}

/// The header block(s) of one file: a GNU long-name entry first for a path of over 100
/// bytes.
fn tar_header(file: &WorkspaceFile) -> Result<Bytes, std::io::Error> {
    let mut out = Vec::with_capacity(1024);
    let name = file.path.as_bytes();
    let mut header = tar::Header::new_gnu();
    if name.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().div_ceil(512) * 512, 0);
        header.as_mut_bytes()[..100].copy_from_slice(&name[..100]);
    } else {
        header.set_path(&file.path)?;
    }
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(file.size);
    header.set_mtime(file.modified.max(0) as u64);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    Ok(Bytes::from(out))
}

/// Stores every regular file under `dir` (links are not followed), but those of `staged`
/// unchanged. Returns the stored files, by path.
pub async fn capture_dir(
    store: &ArtifactStore,
    run_id: &str,
    dir: &Path,
    staged: &[WorkspaceFile],
    limits: &CaptureLimits,
) -> Result<Vec<WorkspaceFile>, CaptureError> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let mut entries = match tokio::fs::read_dir(&folder).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && folder == dir => {
                return Ok(Vec::new())
            }
            Err(error) => {
                return Err(CaptureError::Source(format!(
                    "{}: {error}",
                    folder.display()
                )))
            }
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| CaptureError::Source(format!("{}: {e}", folder.display())))?
        {
            let kind = entry
                .file_type()
                .await
                .map_err(|e| CaptureError::Source(e.to_string()))?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    let mut files = Vec::new();
    for full in found {
        let relative = full.strip_prefix(dir).unwrap_or(&full);
        let shown = relative.to_string_lossy().into_owned();
        let path = relative
            .to_str()
            .and_then(clean_path)
            .ok_or_else(|| CaptureError::BadPath(shown.clone()))?;
        let file = tokio::fs::File::open(&full)
            .await
            .map_err(|e| CaptureError::Source(format!("`{path}`: {e}")))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| CaptureError::Source(format!("`{path}`: {e}")))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let size = meta.len();
        if unchanged(staged, &path, size, modified) {
            continue;
        }
        limits.admit(&path, size, files.len())?;
        files.push(capture_file(store, run_id, &path, file, size, modified, limits).await?);
    }
    Ok(files)
}

/// Puts `files` under `dir`, each checked against its sha256 before it is given its name (a
/// file that fails the check is not left behind), with its modification time.
pub async fn stage_dir(
    store: &ArtifactStore,
    run_id: &str,
    dir: &Path,
    files: &[StagedFile],
) -> Result<(), StageError> {
    for staged in files {
        let failed = |error: ArtifactError| StageError {
            path: staged.file.path.clone(),
            task_id: staged.task_id.clone(),
            error,
        };
        let local = |e: std::io::Error| failed(ArtifactError::Source(e.to_string()));
        let path = clean_path(&staged.file.path)
            .ok_or_else(|| failed(ArtifactError::Source("not a relative path".to_owned())))?;
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(local)?;
        }
        let part = target.with_extension("stevedore-part");
        let mut out = tokio::fs::File::create(&part).await.map_err(local)?;
        if let Err(error) = store.copy_to(run_id, &staged.file.blob(), &mut out).await {
            drop(out);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(failed(error));
        }
        let out = out.into_std().await;
        let time = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(staged.file.modified.max(0) as u64);
        out.set_modified(time).map_err(local)?;
        drop(out);
        tokio::fs::rename(&part, &target).await.map_err(local)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_kept_relative_and_clean() {
        assert_eq!(clean_path("a/./b.txt").as_deref(), Some("a/b.txt"));
        assert_eq!(clean_path("./x").as_deref(), Some("x"));
        assert_eq!(clean_path("../x"), None);
        assert_eq!(clean_path("/etc/passwd"), None);
        assert_eq!(clean_path("a/../../b"), None);
        assert_eq!(clean_path(""), None);
    }

    #[test]
    fn pax_records_are_read() {
        let data = b"30 mtime=1700000000.123456789\n20 path=a/long/name\n";
        assert_eq!(
            parse_pax(data),
            [
                ("mtime".to_owned(), "1700000000.123456789".to_owned()),
                ("path".to_owned(), "a/long/name".to_owned())
            ]
        );
    }
}
