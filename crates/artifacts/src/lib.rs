//! The artifact store (`stevedore-artifacts`): where the files a try writes under its
//! workspace are kept, so its run's downstream tries get them wherever they run.
//!
//! One abstraction over Apache Arrow's `object_store` crate: a folder (`file:///srv/x`, the
//! embedded default beside the SQLite store) or any S3-compatible service
//! (`s3://bucket/prefix`, with an endpoint, a region, path-style addressing and credentials
//! from the settings or the environment). Blobs are content-addressed per run:
//! `<prefix>/runs/<run>/blobs/<sha256>`. A blob is written by streaming it (multipart above
//! 8 MiB) while hashing it, to an upload name first and then renamed to its digest, so a
//! reader never sees half a blob; it is read back as a stream that checks its size and
//! sha256 at the end. Nothing is ever held whole in memory.
//!
//! Credentials are never part of what [`ArtifactStore`] shows (`Display`, `Debug`, errors).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

mod error;
pub mod logs;
pub mod workspace;
pub use error::ArtifactError;

pub use workspace::{CaptureError, CaptureLimits, StageError, StagedFile, WorkspaceFile};

/// The part size of a multipart upload (S3's least is 5 MiB).
const UPLOAD_PART: usize = 8 * 1024 * 1024;

/// How much of a blob is read from its source at a time.
const CHUNK: usize = 256 * 1024;
/// Prefixes listed at once when several runs' files are removed.
const LIST_CONCURRENCY: usize = 8;

/// A stored blob: its sha256 (hex) and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

/// Where the store is and how to reach it: `artifact_store` and the S3 settings.
#[derive(Clone, Default)]
pub struct StoreSettings {
    /// `file:///path` or `s3://bucket[/prefix]`.
    pub url: String,
    /// An S3-compatible service's endpoint (`http://127.0.0.1:9000`); AWS's when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible services want.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "***"))
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// The artifact store of one Stevedore installation.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL, for messages (it holds no credentials).
    url: String,
    /// An S3 store's own client, which pre-signs URLs for a reader without credentials.
    signer: Option<Arc<object_store::aws::AmazonS3>>,
    /// For a folder store: links `stevedore server` serves, signed with a key it shares.
    links: Option<Arc<Links>>,
}

/// Signed links to blobs, served by `stevedore server` at `base` (its `public_url`):
/// `{base}/api/v1/artifact-links/{run}/{sha256}?size=N&expires=T&signature=HMAC`, where
/// the HMAC-SHA256 under `key` covers the run, digest, size and expiry.
struct Links {
    base: String,
    key: [u8; 32],
}

/// Why a signed link is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Not signed with this installation's key (or altered).
    BadSignature,
    /// Past its expiry.
    Expired,
    /// This store gives no links.
    NoLinks,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkError::BadSignature => "the link's signature is not valid",
            LinkError::Expired => "the link has expired",
            LinkError::NoLinks => "this server signs no artifact links (a folder artifact_store with public_url and a secret key)",
        })
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn link_message(run_id: &str, blob: &Blob, expires: i64) -> Vec<u8> {
    format!(
        "stevedore-artifact-link\n{run_id}\n{}\n{}\n{expires}",
        blob.sha256, blob.size
    )
    .into_bytes()
}

/// `text` as one URL path segment (percent-encoding all but unreserved characters).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactStore({})", self.url)
    }
}

impl fmt::Display for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl ArtifactStore {
    /// Opens the store `settings.url` names; an error names what is wrong with it. A folder
    /// is created when missing.
    pub fn open(settings: &StoreSettings) -> Result<ArtifactStore, ArtifactError> {
        let url = settings.url.trim();
        let bad = |why: String| ArtifactError::Config(format!("artifact_store `{url}`: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let folder = parsed
                    .to_file_path()
                    .map_err(|()| bad("not a folder path".to_owned()))?;
                if !folder.exists() {
                    // The owner's only: it holds the data the runs moved.
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&folder)
                        .map_err(|e| bad(format!("cannot create {}: {e}", folder.display())))?;
                }
                let store = LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| bad(e.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(ArtifactStore {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    url: url.to_owned(),
                    signer: None,
                    links: None,
                })
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("names no bucket (s3://bucket/prefix)".to_owned()))?;
                // A store that does not answer fails the call within about half a minute
                // (object_store's default waits up to 3 minutes).
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(30),
                    ..Default::default()
                };
                let client = object_store::ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5));
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!settings.path_style)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &settings.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &settings.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &settings.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = Arc::new(builder.build().map_err(|e| bad(e.to_string()))?);
                let prefix = parsed.path().trim_matches('/');
                Ok(ArtifactStore {
                    signer: Some(store.clone()),
                    links: None,
                    store,
                    prefix: Path::parse(prefix).map_err(|e| bad(e.to_string()))?,
                    url: format!("s3://{bucket}/{prefix}")
                        .trim_end_matches('/')
                        .to_owned(),
                })
            }
            other => Err(bad(format!(
                "`{other}:` is not a store Stevedore knows (file:// or s3://)"
            ))),
        }
    }

    fn run_path(&self, run_id: &str) -> Path {
        self.prefix.child("runs").child(run_id)
    }

    fn blob_path(&self, run_id: &str, sha256: &str) -> Path {
        self.run_path(run_id).child("blobs").child(sha256)
    }

    fn failed(&self, what: &str, error: object_store::Error) -> ArtifactError {
        ArtifactError::Unreachable(format!("artifact store {}: {what}: {error}", self.url))
    }

    /// Whether the store answers: lists (at most) one object of the prefix.
    pub async fn check(&self) -> Result<(), ArtifactError> {
        let mut listed = self.store.list(Some(&self.prefix));
        match listed.next().await {
            Some(Err(error)) => Err(self.failed("cannot list", error)),
            _ => Ok(()),
        }
    }

    /// Streams `source` into a blob of `run_id`, hashing it on the way: at most `limit`
    /// bytes, else [`ArtifactError::TooLarge`] (and nothing is kept).
    pub async fn put(
        &self,
        run_id: &str,
        source: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<Blob, ArtifactError> {
        self.put_object(run_id, source, limit, |sha256| {
            self.blob_path(run_id, sha256)
        })
        .await
    }

    /// The object of a try's archived log: `<prefix>/logs/<run>/<try>-<sha256>.jsonl.zst`, apart
    /// from the run's blobs (which `artifact_retention` removes; an archived log is kept as
    /// long as its run).
    /// Named by its content too: two schedulers archiving one try at once never overwrite
    /// the object the other one checked and recorded.
    fn log_path(&self, run_id: &str, try_id: i64, sha256: &str) -> Path {
        self.prefix
            .child("logs")
            .child(run_id)
            .child(format!("{try_id}-{sha256}.jsonl.zst"))
    }

    /// Streams `source`, whose size and sha256 are `blob`'s (the archive was written and
    /// hashed first), straight to the archived log's name of try `try_id` of `run_id`: one
    /// `PUT` (a multipart upload over 8 MiB), nothing to rename. A name made of the
    /// content is never half-written: a single `PUT` or a multipart upload appears whole
    /// or not at all, and two schedulers writing it write the same bytes. Bytes that turn
    /// out other than `blob` are refused, and nothing of them is kept.
    pub async fn put_log(
        &self,
        run_id: &str,
        try_id: i64,
        source: impl AsyncRead + Unpin,
        blob: &Blob,
    ) -> Result<Blob, ArtifactError> {
        let path = self.log_path(run_id, try_id, &blob.sha256);
        let mut writer = self.writer(path);
        let (sha256, size) = self.stream_into(&mut writer, source, blob.size).await?;
        if sha256 != blob.sha256 || size != blob.size {
            let _ = writer.abort().await;
            return Err(ArtifactError::Source(format!(
                "the archive changed while it was uploaded: {size} bytes with sha256 {sha256}, not {} with {}",
                blob.size, blob.sha256
            )));
        }
        writer.shutdown().await.map_err(|e| self.cannot_write(e))?;
        Ok(Blob { sha256, size })
    }

    /// Bytes `range` of a try's archived log `blob` (a frame of it), without reading the
    /// rest.
    pub async fn log_range(
        &self,
        run_id: &str,
        try_id: i64,
        blob: &Blob,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ArtifactError> {
        let path = self.log_path(run_id, try_id, &blob.sha256);
        match self.store.get_range(&path, range).await {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => Err(ArtifactError::Missing {
                sha256: blob.sha256.clone(),
            }),
            Err(error) => Err(self.failed("cannot read an archived log", error)),
        }
    }

    /// A try's whole archived log as a stream that ends with an error when the stored
    /// bytes are not `blob`'s (size or sha256), as [`ArtifactStore::get`].
    pub async fn get_log(
        &self,
        run_id: &str,
        try_id: i64,
        blob: &Blob,
    ) -> Result<impl Stream<Item = Result<Bytes, ArtifactError>> + Send + 'static, ArtifactError>
    {
        self.get_object(self.log_path(run_id, try_id, &blob.sha256), blob)
            .await
    }

    /// A buffered upload to `path`: parts of 8 MiB, at most two in flight, so a file moves
    /// with about 24 MiB of buffers whatever its size (object_store's default, 8 parts of
    /// 10 MiB, would hold 80).
    fn writer(&self, path: Path) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::with_capacity(self.store.clone(), path, UPLOAD_PART)
            .with_max_concurrency(2)
    }

    fn cannot_write(&self, error: std::io::Error) -> ArtifactError {
        ArtifactError::Unreachable(format!(
            "artifact store {}: cannot write: {error}",
            self.url
        ))
    }

    /// Streams `source` into `writer`, hashing it on the way: its sha256 and size. More
    /// than `limit` bytes, or an error, abandons the upload (a multipart upload begun is
    /// aborted) and says why.
    async fn stream_into(
        &self,
        writer: &mut object_store::buffered::BufWriter,
        mut source: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<(String, u64), ArtifactError> {
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; CHUNK];
        let written: Result<(), ArtifactError> = async {
            loop {
                let n = source
                    .read(&mut buffer)
                    .await
                    .map_err(|e| ArtifactError::Source(e.to_string()))?;
                if n == 0 {
                    return Ok(());
                }
                size += n as u64;
                if size > limit {
                    return Err(ArtifactError::TooLarge { limit, size });
                }
                hasher.update(&buffer[..n]);
                writer
                    .write_all(&buffer[..n])
                    .await
                    .map_err(|e| self.cannot_write(e))?;
            }
        }
        .await;
        if let Err(error) = written {
            let _ = writer.abort().await;
            return Err(error);
        }
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// Streams `source` to an upload name, then renames it to `destination(sha256)`.
    async fn put_object(
        &self,
        run_id: &str,
        source: impl AsyncRead + Unpin,
        limit: u64,
        destination: impl Fn(&str) -> Path,
    ) -> Result<Blob, ArtifactError> {
        let upload = self.run_path(run_id).child("uploads").child(upload_name());
        let mut writer = self.writer(upload.clone());
        let streamed = self.stream_into(&mut writer, source, limit).await;
        let (sha256, size) = match streamed {
            Ok(streamed) => streamed,
            Err(error) => {
                let _ = self.store.delete(&upload).await;
                return Err(error);
            }
        };
        if let Err(error) = writer.shutdown().await {
            let _ = self.store.delete(&upload).await;
            return Err(self.cannot_write(error));
        }
        let blob = destination(&sha256);
        // The same content twice is the same blob: the rename replaces it with itself.
        if let Err(error) = self.store.rename(&upload, &blob).await {
            let _ = self.store.delete(&upload).await;
            return Err(self.failed("cannot store a blob", error));
        }
        Ok(Blob { sha256, size })
    }

    /// Reads a blob back as a stream of chunks that ends with an error when the stored
    /// bytes are not `blob`'s (size or sha256): a caller that copies it somewhere must not
    /// use the copy until the stream ended without one.
    pub async fn get(
        &self,
        run_id: &str,
        blob: &Blob,
    ) -> Result<impl Stream<Item = Result<Bytes, ArtifactError>> + Send + 'static, ArtifactError>
    {
        self.get_object(self.blob_path(run_id, &blob.sha256), blob)
            .await
    }

    async fn get_object(
        &self,
        path: Path,
        blob: &Blob,
    ) -> Result<impl Stream<Item = Result<Bytes, ArtifactError>> + Send + 'static, ArtifactError>
    {
        let answer = match self.store.get(&path).await {
            Ok(answer) => answer,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::Missing {
                    sha256: blob.sha256.clone(),
                })
            }
            Err(error) => return Err(self.failed("cannot read a blob", error)),
        };
        let url = self.url.clone();
        let chunks = answer
            .into_stream()
            .map(move |chunk| {
                chunk.map(Some).map_err(|e| {
                    ArtifactError::Unreachable(format!("artifact store {url}: reading a blob: {e}"))
                })
            })
            // The end, so the check runs after the last chunk.
            .chain(futures_util::stream::once(futures_util::future::ready(Ok(
                None,
            ))));
        Ok(checked(chunks, blob.clone()))
    }

    /// Copies a blob into `dest`, then checks it: the size and sha256 must be `blob`'s.
    pub async fn copy_to(
        &self,
        run_id: &str,
        blob: &Blob,
        dest: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<(), ArtifactError> {
        let stream = self.get(run_id, blob).await?;
        futures_util::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            dest.write_all(&chunk?)
                .await
                .map_err(|e| ArtifactError::Source(e.to_string()))?;
        }
        dest.flush()
            .await
            .map_err(|e| ArtifactError::Source(e.to_string()))
    }

    /// A folder store gives out links `stevedore server` serves at `public_url` (`base`),
    /// signed with `key` (which the server holds too).
    pub fn with_links(mut self, base: &str, key: [u8; 32]) -> ArtifactStore {
        if self.signer.is_none() {
            self.links = Some(Arc::new(Links {
                base: base.trim_end_matches('/').to_owned(),
                key,
            }));
        }
        self
    }

    /// A URL from which a reader without the store's credentials (a Nomad client's
    /// artifact fetcher) can `GET` the blob for `expires_in`: pre-signed by S3 (SigV4 query
    /// parameters), or for a folder store a link `stevedore server` serves
    /// ([`ArtifactStore::with_links`]); a folder store without links has none to give
    /// ([`ArtifactError::Config`]).
    pub async fn signed_url(
        &self,
        run_id: &str,
        blob: &Blob,
        expires_in: std::time::Duration,
    ) -> Result<String, ArtifactError> {
        use object_store::signer::Signer;
        if let Some(links) = &self.links {
            let expires = unix_now() + expires_in.as_secs() as i64;
            let signature = hex::encode(hmac_sha256(
                &links.key,
                &link_message(run_id, blob, expires),
            ));
            return Ok(format!(
                "{}/api/v1/artifact-links/{}/{}?size={}&expires={expires}&signature={signature}",
                links.base,
                path_segment(run_id),
                blob.sha256,
                blob.size
            ));
        }
        let Some(signer) = &self.signer else {
            return Err(ArtifactError::Config(format!(
                "artifact store {}: a folder store hands out signed URLs only through `stevedore server` (set public_url and the secret key), or use an s3:// store",
                self.url
            )));
        };
        signer
            .signed_url(
                http::Method::GET,
                &self.blob_path(run_id, &blob.sha256),
                expires_in,
            )
            .await
            .map(|url| url.to_string())
            .map_err(|e| self.failed("cannot sign a URL", e))
    }

    /// Whether [`ArtifactStore::signed_url`] can give URLs.
    pub fn signs_urls(&self) -> bool {
        self.signer.is_some() || self.links.is_some()
    }

    /// Checks a link [`ArtifactStore::signed_url`] gave (its signature, in constant time,
    /// and its expiry): the blob it names.
    pub fn check_link(
        &self,
        run_id: &str,
        blob: &Blob,
        expires: i64,
        signature: &str,
    ) -> Result<(), LinkError> {
        let links = self.links.as_ref().ok_or(LinkError::NoLinks)?;
        let expected = hex::encode(hmac_sha256(
            &links.key,
            &link_message(run_id, blob, expires),
        ));
        let same = expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(LinkError::BadSignature);
        }
        if unix_now() > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    /// Deletes every blob of `run_id`; returns how many there were.
    pub async fn remove_run(&self, run_id: &str) -> Result<u64, ArtifactError> {
        self.remove_all(self.run_path(run_id)).await
    }

    /// Deletes the objects of some runs as the store knows them (`db clean`): each archived
    /// log by its name, and the files of the runs that have some by listing their prefix (a
    /// few at a time); everything in bulk (S3's `DeleteObjects`, 1,000 keys a request).
    /// Returns how many objects there were. An error leaves some of them in place; deleting
    /// again finishes the job.
    pub async fn remove_run_objects(
        &self,
        objects: &stevedore_store::RunObjects,
    ) -> Result<u64, ArtifactError> {
        let prefixes: Vec<Path> = objects
            .with_files
            .iter()
            .map(|run_id| self.run_path(run_id))
            .collect();
        let listed: Vec<Vec<Path>> = futures_util::stream::iter(prefixes)
            .map(|prefix| self.list_all(prefix))
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        let mut paths: Vec<Path> = listed.into_iter().flatten().collect();
        paths.extend(
            objects
                .archived_logs
                .iter()
                .map(|(run_id, try_id, sha256)| self.log_path(run_id, *try_id, sha256)),
        );
        self.delete_all(paths).await
    }

    /// Deletes every object under `prefix`; returns how many there were.
    async fn remove_all(&self, prefix: Path) -> Result<u64, ArtifactError> {
        let paths = self.list_all(prefix).await?;
        self.delete_all(paths).await
    }

    async fn list_all(&self, prefix: Path) -> Result<Vec<Path>, ArtifactError> {
        self.store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.failed("cannot list objects to delete", e))
    }

    /// Deletes `paths` in bulk (an object already gone counts as deleted).
    async fn delete_all(&self, paths: Vec<Path>) -> Result<u64, ArtifactError> {
        let count = paths.len() as u64;
        if count == 0 {
            return Ok(0);
        }
        let locations = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(self.failed("cannot delete an object", error)),
            }
        }
        Ok(count)
    }

    /// The blobs a run has: digest and size, for listing and tests.
    pub async fn blobs(&self, run_id: &str) -> Result<Vec<Blob>, ArtifactError> {
        let prefix = self.run_path(run_id).child("blobs");
        let mut blobs: Vec<Blob> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| Blob {
                sha256: meta.location.filename().unwrap_or_default().to_owned(),
                size: meta.size,
            })
            .try_collect()
            .await
            .map_err(|e| self.failed("cannot list a run's blobs", e))?;
        blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(blobs)
    }
}

/// Passes the chunks on (`None`: the end) and checks them against `expected`: the stream's
/// last item is an error when they were not the blob's size and sha256 (found as soon as
/// there are too many bytes). The last chunk is held back until the check has passed, so a
/// reader of a damaged blob never receives all of its bytes, only an error after part of
/// them.
fn checked(
    chunks: impl Stream<Item = Result<Option<Bytes>, ArtifactError>> + Send + 'static,
    expected: Blob,
) -> impl Stream<Item = Result<Bytes, ArtifactError>> + Send + 'static {
    let state = (Box::pin(chunks), Some(Sha256::new()), 0u64, None::<Bytes>);
    futures_util::stream::unfold(
        state,
        move |(mut chunks, mut hasher, mut size, mut held)| {
            let expected = expected.clone();
            async move {
                let corrupt = |size| ArtifactError::Corrupt {
                    sha256: expected.sha256.clone(),
                    size,
                    expected_size: expected.size,
                };
                loop {
                    let Some(hashing) = hasher.as_mut() else {
                        // Checked and ended: the chunk held back, if any, goes last.
                        return held
                            .take()
                            .map(|last| (Ok(last), (chunks, None, size, None)));
                    };
                    match chunks.next().await? {
                        Ok(Some(bytes)) => {
                            size += bytes.len() as u64;
                            if size > expected.size {
                                return Some((Err(corrupt(size)), (chunks, None, size, None)));
                            }
                            hashing.update(&bytes);
                            if let Some(previous) = held.replace(bytes) {
                                return Some((Ok(previous), (chunks, hasher, size, held)));
                            }
                        }
                        Ok(None) => {
                            let digest = hex::encode(hasher.take()?.finalize());
                            if size != expected.size || digest != expected.sha256 {
                                return Some((Err(corrupt(size)), (chunks, None, size, None)));
                            }
                        }
                        Err(error) => return Some((Err(error), (chunks, None, size, None))),
                    }
                }
            }
        },
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn upload_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}-{}", hasher.finish(), std::process::id())
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 has a 4-byte key; HMAC pads keys to the block, so a 32-byte
        // key of "Jefe" and zeros is the same key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_link_holds_only_as_signed_and_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&StoreSettings {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap();
        assert!(!store.signs_urls());
        let store = store.with_links("http://10.0.0.5:8080/", [7; 32]);
        let blob = Blob {
            sha256: "ab".repeat(32),
            size: 12,
        };
        let url = store
            .signed_url(
                "manual__2026-12-01T10:00:00+00:00",
                &blob,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(
            url.starts_with("http://10.0.0.5:8080/api/v1/artifact-links/manual__2026-12-01T10%3A00%3A00%2B00%3A00/abab"),
            "{url}"
        );
        let query: std::collections::HashMap<String, String> = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let expires: i64 = query["expires"].parse().unwrap();
        let run = "manual__2026-12-01T10:00:00+00:00";
        assert_eq!(
            store.check_link(run, &blob, expires, &query["signature"]),
            Ok(())
        );
        let bigger = Blob {
            size: 13,
            ..blob.clone()
        };
        assert_eq!(
            store.check_link(run, &bigger, expires, &query["signature"]),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            store.check_link("other", &blob, expires, &query["signature"]),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            store.check_link(run, &blob, expires + 1, &query["signature"]),
            Err(LinkError::BadSignature)
        );
        let old = unix_now() - 5;
        let signature = hex::encode(hmac_sha256(&[7; 32], &link_message(run, &blob, old)));
        assert_eq!(
            store.check_link(run, &blob, old, &signature),
            Err(LinkError::Expired)
        );
    }
}
