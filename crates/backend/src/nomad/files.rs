//! A try's files on Nomad, with no volume shared between clients: its inputs are fetched by
//! the Nomad client itself, through the task's `artifact` blocks, from URLs the artifact
//! store pre-signs (go-getter checks each one's sha256 before the task starts); the files
//! it left are read back through the client's allocation file system API (`/v1/client/fs/ls`
//! and `/v1/client/fs/cat`) before the try's job is purged. The workspace is the task
//! directory's `local/workspace`, bind-mounted at `/workspace` (a path inside the task
//! directory, which the docker driver mounts without `volumes.enabled`).

#[allow(unused_imports)]
use super::*;

use stevedore_artifacts::workspace::{capture_file, CaptureError};

/// The workspace, relative to the task directory.
pub(crate) const TASK_WORKSPACE: &str = "local/workspace";

/// How long a signed URL stays good after the placement timeout (the client fetches the
/// inputs once the try is placed, before the task starts).
const URL_SLACK: Duration = Duration::from_secs(600);

/// The most bytes of a directory listing read from Nomad.
const MAX_LISTING_BYTES: usize = 16 * 1024 * 1024;

/// A file system entry as Nomad lists it (`api.AllocFileInfo`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AllocFileInfo {
    name: String,
    is_dir: bool,
    size: u64,
    file_mode: String,
    mod_time: Option<chrono::DateTime<Utc>>,
}

impl NomadBackend {
    /// The `artifact` blocks that fetch the try's inputs into its workspace; `Err` holds
    /// the try's end (a reason) or a store that cannot answer for now.
    pub(crate) async fn input_artifacts(
        &self,
        run_id: &str,
        exchange: &WorkspaceExchange,
    ) -> Result<Vec<Value>, Result<FailureReason, BackendError>> {
        let lifetime = self.config.placement_timeout + URL_SLACK;
        let mut artifacts = Vec::with_capacity(exchange.inputs.len());
        for input in &exchange.inputs {
            let url = match exchange
                .store
                .signed_url(run_id, &input.file.blob(), lifetime)
                .await
            {
                Ok(url) => url,
                Err(error @ stevedore_artifacts::ArtifactError::Unreachable(_)) => {
                    return Err(Err(BackendError::Unavailable(error.to_string())))
                }
                Err(error) => {
                    return Err(Ok(FailureReason::Artifact(format!(
                        "input file `{}` (written by task `{}`): {error}",
                        input.file.path, input.task_id
                    ))))
                }
            };
            artifacts.push(json!({
                "GetterSource": url,
                // go-getter checks the file's sha256 and never unpacks it (`x.tar.gz` stays
                // a file, as its writer left it).
                "GetterOptions": {
                    "checksum": format!("sha256:{}", input.file.sha256),
                    "archive": "false",
                },
                "GetterMode": "file",
                "RelativeDest": format!("{TASK_WORKSPACE}/{}", input.file.path),
            }));
        }
        Ok(artifacts)
    }

    /// Reads the files the ended allocation left under its workspace into `store`, all but
    /// the inputs it was given and did not change (same path and size, written before the
    /// task started), and returns them.
    pub(crate) async fn capture_allocation(
        &self,
        allocation_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let unavailable =
            |error: ApiError| CaptureFailure::Unavailable(self.unavailable(error).to_string());
        let allocation = match self
            .get::<Allocation>(&format!("/v1/allocation/{}", segment(allocation_id)), &[])
            .await
        {
            Ok((allocation, _)) => allocation,
            Err(error) if error.is_not_found() => {
                return Err(CaptureFailure::Gone(format!(
                    "Nomad has no allocation {allocation_id} any more: its files are gone"
                )))
            }
            Err(error) => return Err(unavailable(error)),
        };
        let started = allocation
            .events()
            .iter()
            .find(|e| e.kind == "Started")
            .map(|e| e.time);
        let Some(started) = started else {
            // The task never started: it wrote nothing.
            return Ok(Vec::new());
        };
        let root = format!("{TASK}/{TASK_WORKSPACE}");
        let mut folders = vec![String::new()];
        let mut files = Vec::new();
        while let Some(folder) = folders.pop() {
            let path = if folder.is_empty() {
                root.clone()
            } else {
                format!("{root}/{folder}")
            };
            let listing = match self.list_folder(allocation_id, &path).await {
                Ok(listing) => listing,
                // No workspace folder: the task wrote nothing there.
                Err(error) if folder.is_empty() && is_missing_path(&error) => return Ok(Vec::new()),
                Err(error) => return Err(self.fs_failure(allocation_id, error)),
            };
            for entry in listing {
                let relative = if folder.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{folder}/{}", entry.name)
                };
                let Some(relative) = stevedore_artifacts::workspace::clean_path(&relative) else {
                    return Err(CaptureFailure::Capture(CaptureError::BadPath(relative)));
                };
                if entry.is_dir {
                    folders.push(relative);
                    continue;
                }
                // Regular files only (Go's `FileMode.String()`: `-rw-r--r--`); a link or a
                // device is not data to move.
                if !entry.file_mode.starts_with('-') {
                    continue;
                }
                let modified = entry.mod_time.unwrap_or_else(Utc::now);
                let nanos = modified.timestamp_nanos_opt().unwrap_or(i64::MAX);
                if nanos < started
                    && staged
                        .iter()
                        .any(|f| f.path == relative && f.size == entry.size)
                {
                    continue;
                }
                limits
                    .admit(&relative, entry.size, files.len())
                    .map_err(CaptureFailure::Capture)?;
                files.push((relative, entry.size, modified.timestamp()));
            }
        }
        files.sort();
        let mut captured = Vec::with_capacity(files.len());
        for (path, size, modified) in files {
            let response = self
                .send(self.request(
                    reqwest::Method::GET,
                    &format!("/v1/client/fs/cat/{}", segment(allocation_id)),
                    &[("path", format!("{root}/{path}"))],
                ))
                .await
                .map_err(|error| self.fs_failure(allocation_id, error))?;
            let body = response
                .bytes_stream()
                .map(|chunk| chunk.map_err(std::io::Error::other));
            let reader = tokio_util::io::StreamReader::new(body);
            let file = capture_file(store, run_id, &path, reader, size, modified, limits)
                .await
                .map_err(|error| match error {
                    // The stream from Nomad broke: the files are still on the client.
                    CaptureError::Source(message) => CaptureFailure::Unavailable(format!(
                        "reading the try's files from Nomad at {}: {message}",
                        self.config.address
                    )),
                    other => CaptureFailure::Capture(other),
                })?;
            captured.push(file);
        }
        Ok(captured)
    }

    async fn list_folder(
        &self,
        allocation_id: &str,
        path: &str,
    ) -> Result<Vec<AllocFileInfo>, ApiError> {
        let response = self
            .send(self.request(
                reqwest::Method::GET,
                &format!("/v1/client/fs/ls/{}", segment(allocation_id)),
                &[("path", path.to_owned())],
            ))
            .await?;
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::Unreachable(error_chain(&e)))?;
            if body.len() + chunk.len() > MAX_LISTING_BYTES {
                return Err(ApiError::Status(
                    500,
                    format!("the listing of {path} is over {MAX_LISTING_BYTES} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Status(500, format!("the listing of {path} is not Nomad's: {e}"))
        })
    }

    fn fs_failure(&self, allocation_id: &str, error: ApiError) -> CaptureFailure {
        match &error {
            ApiError::Status(403, _) => CaptureFailure::Capture(CaptureError::Source(format!(
                "{error} (the token needs the read-fs capability to read the try's files: deploy/nomad/stevedore-policy.hcl)"
            ))),
            ApiError::Status(404, body) if body.to_lowercase().contains("unknown allocation") || body.contains("alloc not found") => {
                CaptureFailure::Gone(format!(
                    "the client no longer has allocation {allocation_id}: its files are gone"
                ))
            }
            error if error.is_outage() || matches!(error, ApiError::Status(404, body) if body.contains("No path to node")) => {
                CaptureFailure::Unavailable(self.unavailable(error).to_string())
            }
            error => CaptureFailure::Capture(CaptureError::Source(format!(
                "reading allocation {allocation_id}'s files: {error}"
            ))),
        }
    }
}

/// Nomad's answer for a path the allocation does not have (`os.Stat`'s error through the
/// client: "no such file or directory").
fn is_missing_path(error: &ApiError) -> bool {
    matches!(error, ApiError::Status(_, body) if body.contains("no such file or directory"))
}

/// The try's end when the client could not fetch an input: a reason naming the file and
/// the task that wrote it, without the signed URL (a credential while it lives).
pub(crate) fn artifact_failure(exit: TryExit, inputs: &[StagedFile]) -> TryExit {
    let Some(FailureReason::Backend(reason)) = &exit.failure else {
        return exit;
    };
    if !reason.contains("Failed Artifact Download") {
        return exit;
    }
    let input = inputs
        .iter()
        .find(|input| reason.contains(&input.file.sha256) || reason.contains(&input.file.path));
    // What went wrong, after the quoted URL: `failed to download artifact "URL": WHY`.
    let why = reason
        .rsplit_once("\": ")
        .map(|(_, why)| why.to_owned())
        .unwrap_or_else(|| "the download failed".to_owned());
    let failure = match input {
        Some(input) => format!(
            "input file `{}` (written by task `{}`) could not be fetched by the Nomad client: {why}",
            input.file.path, input.task_id
        ),
        None => format!("an input file could not be fetched by the Nomad client: {why}"),
    };
    TryExit {
        exit_code: None,
        failure: Some(FailureReason::Artifact(failure)),
    }
}

/// `text` with every URL's query string (where a signature is) replaced by `?…`.
pub(crate) fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_url = false;
    let mut in_query = false;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() || c == '"' || c == '\'' {
            in_url = false;
            in_query = false;
        } else if !in_url && text[at..].starts_with("://") {
            in_url = true;
        } else if in_url && c == '?' && !in_query {
            in_query = true;
            out.push_str("?…");
            continue;
        }
        if !in_query {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_url_is_never_in_a_reason() {
        let text = r#"failed to download artifact "http://127.0.0.1:9/b/runs/r/blobs/ab12?X-Amz-Signature=dead&X-Amz-Credential=k": bad response code: 404"#;
        assert_eq!(
            redact_urls(text),
            r#"failed to download artifact "http://127.0.0.1:9/b/runs/r/blobs/ab12?…": bad response code: 404"#
        );
        let inputs = vec![StagedFile {
            file: WorkspaceFile {
                path: "out/records.jsonl".into(),
                size: 3,
                sha256: "ab12".into(),
                modified: 0,
            },
            task_id: "extract".into(),
        }];
        let exit = artifact_failure(
            TryExit {
                exit_code: None,
                failure: Some(FailureReason::Backend(format!(
                    "Nomad: Failed Artifact Download: {}",
                    redact_urls(text)
                ))),
            },
            &inputs,
        );
        assert_eq!(
            exit.failure,
            Some(FailureReason::Artifact(
                "input file `out/records.jsonl` (written by task `extract`) could not be fetched by the Nomad client: bad response code: 404".into()
            ))
        );
    }
}
