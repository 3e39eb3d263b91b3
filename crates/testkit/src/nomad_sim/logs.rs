//! A task's files and its framed log stream (`{}` heartbeats, base64 `Data`, byte
//! `Offset`s, a followed stream that never ends).

#[allow(unused_imports)]
use super::*;

pub(super) async fn remove(docker: &Docker, container: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(container, Some(options)).await;
}

/// Copies a rendered template to `dest` (relative to the task's root). With `into_local`
/// (a read-only root filesystem) it goes into the `/local` volume, as Nomad's bind mount of
/// the task directory stays writable: the engine copies into a read-only container only
/// inside a volume.
pub(super) async fn upload(
    docker: &Docker,
    container: &str,
    dest: &str,
    text: &str,
    into_local: bool,
) -> Result<(), String> {
    let (root, dest) = match dest.strip_prefix("local/") {
        Some(inside) if into_local => ("/local", inside),
        _ => ("/", dest),
    };
    let mut archive = tar::Builder::new(Vec::new());
    if let Some((dir, _)) = dest.rsplit_once('/') {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header
            .set_path(format!("{dir}/"))
            .map_err(|e| e.to_string())?;
        header.set_mode(0o777);
        header.set_size(0);
        header.set_cksum();
        archive
            .append(&header, std::io::empty())
            .map_err(|e| e.to_string())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_path(dest).map_err(|e| e.to_string())?;
    header.set_mode(0o644);
    header.set_size(text.len() as u64);
    header.set_cksum();
    archive
        .append(&header, text.as_bytes())
        .map_err(|e| e.to_string())?;
    let bytes = archive.into_inner().map_err(|e| e.to_string())?;
    let options = UploadToContainerOptionsBuilder::default()
        .path(root)
        .build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

/// `GET /v1/client/fs/logs/:alloc`: frames of the task's log files from `offset` (from the
/// start of the oldest file still there), heartbeats while nothing is written, and with
/// `follow=true` no end.
pub(super) async fn logs(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let Some(task) = params.get("task") else {
        return error(StatusCode::BAD_REQUEST, "must include task name");
    };
    let kind = params.get("type").map(String::as_str).unwrap_or_default();
    let which = match kind {
        "stdout" => 0,
        "stderr" => 1,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "must include a log type of stdout or stderr",
            )
        }
    };
    let follow = params.get("follow").is_some_and(|f| f == "true");
    if params.get("plain").is_some_and(|p| p == "true") {
        return error(
            StatusCode::BAD_REQUEST,
            "the simulator serves framed logs only",
        );
    }
    let origin_end = params.get("origin").is_some_and(|o| o == "end");
    let offset: u64 = params
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    if sim.client_away.load(std::sync::atomic::Ordering::SeqCst) {
        // `structs.ErrNoNodeConn`, coded 404.
        return error(StatusCode::NOT_FOUND, "No path to node");
    }
    let log = {
        let state = sim.state.lock().unwrap();
        let Some(alloc) = state.allocs.get(&id).filter(|alloc| !alloc.collected) else {
            // `structs.NewErrUnknownAllocation`, coded 404 by the client's log handler.
            return error(
                StatusCode::NOT_FOUND,
                &format!("Unknown allocation \"{id}\""),
            );
        };
        if &alloc.task != task {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown task name {task:?}"),
            );
        }
        if alloc.started_at.is_none() {
            return error(
                StatusCode::NOT_FOUND,
                &format!("task {task:?} not started yet. No logs available"),
            );
        }
        alloc.logs[which].clone()
    };
    let Some(files) = log.list() else {
        // client/fs_endpoint.go notFoundErr
        return error(
            StatusCode::NOT_FOUND,
            &format!("log entry for task {task:?} and log type {kind:?} not found"),
        );
    };
    // `logsImpl`: `origin=start` counts from the oldest file still there, `end` back from
    // the newest; without `follow` the stream ends with the file newest when asked.
    let (at, start) = if origin_end {
        find_closest(&files, u64::MAX, -(offset as i64))
    } else {
        find_closest(&files, 0, offset as i64)
    }
    .expect("a log has a file");
    let last = files.last().map(|f| f.index).unwrap_or_default();
    let reading = files[at].clone();
    let prefix = format!("alloc/logs/{task}.{kind}");
    let cuts = sim.clone();
    let break_after = sim
        .break_logs_after
        .load(std::sync::atomic::Ordering::SeqCst);
    // State: the log, the file being read, where the next frame starts, data frames sent,
    // broken mid-frame.
    let frames = futures_util::stream::unfold(
        (log, reading, start, 0usize, false),
        move |(log, mut reading, mut position, mut sent, broken)| {
            let prefix = prefix.clone();
            let cuts = cuts.clone();
            async move {
                if broken {
                    // Pending a moment first, so the server flushes what went before (a
                    // stream that fails at once loses the response's head with it).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let cut =
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated cut");
                    return Some((Err(cut), (log, reading, position, sent, true)));
                }
                loop {
                    if cuts.outage.load(std::sync::atomic::Ordering::SeqCst)
                        || cuts.client_away.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        let cut = std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "no cluster leader",
                        );
                        return Some((Err(cut), (log, reading, position, sent, true)));
                    }
                    let watched = log.clone();
                    let grew = watched.grew.notified();
                    let chunk = {
                        let data = reading.data.lock().unwrap();
                        let end = (position as usize + 64 * 1024).min(data.len());
                        data[(position as usize).min(end)..end].to_vec()
                    };
                    if !chunk.is_empty() {
                        position += chunk.len() as u64;
                        // Offset: where the frame's data ends in its file (client/lib/streamframer).
                        let frame = json!({
                            "Offset": position,
                            "Data": base64::engine::general_purpose::STANDARD.encode(&chunk),
                            "File": format!("{prefix}.{}", reading.index),
                        });
                        let mut bytes = serde_json::to_vec(&frame).unwrap();
                        bytes.push(b'\n');
                        if break_after > 0 && sent == break_after {
                            cuts.cut_logs
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            bytes.truncate(bytes.len() / 2);
                            return Some((Ok(bytes), (log, reading, position, sent, true)));
                        }
                        sent += 1;
                        return Some((
                            Ok::<_, std::io::Error>(bytes),
                            (log, reading, position, sent, false),
                        ));
                    }
                    // At the end of this file: on to the next one still there, if there is
                    // one (a file with a successor is complete). Nomad lists the files again
                    // and takes the first from the next index on: one deleted meanwhile is
                    // skipped.
                    let files = log.list().unwrap_or_default();
                    let newer = files.iter().any(|f| f.index > reading.index);
                    if newer && (follow || reading.index < last) {
                        if let Some((at, _)) = find_closest(&files, reading.index + 1, 0) {
                            reading = files[at].clone();
                            position = 0;
                            continue;
                        }
                    }
                    if !follow {
                        return None;
                    }
                    // The framer beats every `streamHeartbeatRate`, 1 s, when it has sent
                    // nothing (client/fs_endpoint.go).
                    if tokio::time::timeout(Duration::from_secs(1), grew)
                        .await
                        .is_err()
                    {
                        cuts.heartbeats
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return Some((Ok(b"{}\n".to_vec()), (log, reading, position, sent, false)));
                    }
                }
            }
        },
    );
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Body::from_stream(frames))
        .unwrap()
}
