//! Each allocation's directory on its node (`<node>/<alloc>/task/local`, ...), the artifact
//! hook that fetches a task's `artifact` blocks into it (go-getter's `file` mode with its
//! `checksum` and `archive` options), and the client's file system API over it
//! (`/v1/client/fs/ls` and `/v1/client/fs/cat`, `client/allocdir/alloc_dir.go`).

#[allow(unused_imports)]
use super::*;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The allocation's directory on its node.
pub(super) fn alloc_dir(sim: &Sim, alloc_id: &str) -> std::path::PathBuf {
    let node = sim.state.lock().unwrap().allocs[alloc_id].node;
    sim.nodes[node].dir.join(alloc_id)
}

/// The task's directory, with its `local/` (writable by any user, as the client makes it).
pub(super) fn task_dir(sim: &Sim, alloc_id: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let task = sim.state.lock().unwrap().allocs[alloc_id].task.clone();
    let dir = alloc_dir(sim, alloc_id).join(task);
    let local = dir.join("local");
    std::fs::create_dir_all(&local).expect("the task directory");
    let _ = std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o777));
    dir
}

/// Fetches the task's artifacts into its directory, as the artifact hook does before the
/// task starts; the error is the hook's (`failed to download artifact "SRC": WHY`).
pub(super) async fn fetch_artifacts(
    sim: &Arc<Sim>,
    alloc_id: &str,
    task: &Value,
) -> Result<(), String> {
    let artifacts = task["Artifacts"].as_array().cloned().unwrap_or_default();
    if artifacts.is_empty() {
        return Ok(());
    }
    push_event(
        sim,
        alloc_id,
        event(
            "Downloading Artifacts",
            "Client is downloading artifacts",
            Value::Null,
        ),
    );
    let dir = task_dir(sim, alloc_id);
    let http = reqwest::Client::new();
    for artifact in artifacts {
        let source = artifact["GetterSource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        fetch_one(&http, &dir, &artifact)
            .await
            .map_err(|why| format!("failed to download artifact {source:?}: {why}"))?;
    }
    Ok(())
}

async fn fetch_one(
    http: &reqwest::Client,
    task_dir: &std::path::Path,
    artifact: &Value,
) -> Result<(), String> {
    let source = artifact["GetterSource"].as_str().unwrap_or_default();
    let mut url = reqwest::Url::parse(source)
        .map_err(|e| format!("failed to parse source URL {source:?}: {e}"))?;
    // getter/util.go `getURL`: the options become query parameters (`url.Values.Encode`
    // sorts them); go-getter takes `checksum` and `archive` back out before fetching.
    let mut query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    for (key, value) in artifact["GetterOptions"].as_object().into_iter().flatten() {
        query.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
    }
    let checksum = query.remove("checksum");
    let archive = query.remove("archive");
    if query.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(query.iter());
    }
    if artifact["GetterMode"] != "file" {
        return Err("the simulator fetches artifacts in file mode only".to_owned());
    }
    if archive.as_deref() != Some("false") {
        return Err("the simulator does not unpack archives (set archive=false)".to_owned());
    }
    let relative = artifact["RelativeDest"].as_str().unwrap_or("local/");
    if relative.starts_with('/') || relative.split('/').any(|p| p == "..") {
        return Err("artifact destination path escapes alloc directory".to_owned());
    }
    let dest = task_dir.join(relative);
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| e.to_string())?;
    }
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("bad response code: {}", response.status().as_u16()));
    }
    let mut file = tokio::fs::File::create(&dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    drop(file);
    if let Some(checksum) = checksum {
        let (kind, expected) = checksum.split_once(':').unwrap_or(("", &checksum));
        if kind != "sha256" {
            return Err(format!("unsupported checksum type: {kind}"));
        }
        let got = hex::encode(hasher.finalize());
        if got != expected {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(format!(
                "Checksums did not match for {}.\nExpected: {expected}\nGot: {got}",
                dest.display()
            ));
        }
    }
    Ok(())
}

/// The allocation's folder for a request, or Nomad's answer when there is none.
fn resolve(
    sim: &Sim,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<std::path::PathBuf, Response> {
    let known = {
        let state = sim.state.lock().unwrap();
        state.allocs.get(id).map(|alloc| !alloc.collected)
    };
    if known != Some(true) {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("Unknown allocation {id:?}"),
        ));
    }
    if sim.client_away.load(std::sync::atomic::Ordering::SeqCst) {
        let node = sim.state.lock().unwrap().allocs[id].node;
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("No path to node {}", sim.nodes[node].id),
        ));
    }
    let path = params
        .get("path")
        .cloned()
        .unwrap_or_else(|| "/".to_owned());
    if path.split('/').any(|part| part == "..") {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Path escapes the alloc directory",
        ));
    }
    Ok(alloc_dir(sim, id).join(path.trim_start_matches('/')))
}

/// `GET /v1/client/fs/ls/:alloc?path=P`: the entries of a folder (`api.AllocFileInfo`).
pub(super) async fn list_files(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let folder = match resolve(&sim, &id, &params) {
        Ok(folder) => folder,
        Err(response) => return response,
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) => {
            let status = if e.kind() == std::io::ErrorKind::NotFound {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return error(
                status,
                &format!("open {}: no such file or directory", folder.display()),
            );
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let kind = if meta.is_dir() {
            'd'
        } else if meta.is_file() {
            '-'
        } else {
            'L'
        };
        let modified: chrono::DateTime<chrono::Utc> = meta
            .modified()
            .map(Into::into)
            .unwrap_or_else(|_| chrono::Utc::now());
        files.push(json!({
            "Name": entry.file_name().to_string_lossy(),
            "IsDir": meta.is_dir(),
            "Size": meta.len(),
            "FileMode": format!("{kind}rw-r--r--"),
            "ModTime": modified.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "ContentType": "",
        }));
    }
    Json(Value::Array(files)).into_response()
}

/// `GET /v1/client/fs/cat/:alloc?path=P`: the file's bytes, streamed.
pub(super) async fn cat_file(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let path = match resolve(&sim, &id, &params) {
        Ok(path) => path,
        Err(response) => return response,
    };
    match tokio::fs::File::open(&path).await {
        Ok(file) => Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            &format!("open {}: no such file or directory", path.display()),
        ),
    }
}
