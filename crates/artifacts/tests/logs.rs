//! Archived logs against a real SQLite store and a real folder and S3-compatible server
//! (moto): an archived log reads back page by page exactly as its rows did (seq, stream,
//! text to the last character, timestamps to the microsecond), from any position, and its
//! rows are gone; a store that does not answer leaves the rows as they were, and the log is
//! archived once it answers again.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::json;
use stevedore_artifacts::logs::{archive, Logs, FRAME_LINES};
use stevedore_artifacts::{ArtifactStore, StoreSettings};
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunTrigger, TaskState, TryState};
use stevedore_store::*;
use stevedore_testkit::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

/// Lines in the test log: three frames and a part.
const LINES: i64 = 3 * FRAME_LINES as i64 + 1234;

async fn store_with_an_ended_try(dir: &std::path::Path) -> (Arc<dyn Store>, TryRecord) {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.join("stevedore.db")).await.unwrap());
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let run = store
        .create_run(NewRun {
            job_id: "demo".into(),
            job_version: "v1".into(),
            trigger: RunTrigger::Manual,
            logical_date: start,
            data_interval: DataInterval {
                start,
                end: start + chrono::TimeDelta::days(1),
            },
            params: json!({}),
            task_ids: vec!["extract".into()],
            full_refresh: Vec::new(),
        })
        .await
        .unwrap();
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract".into(),
        try_number: 1,
    };
    let attempt = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let lines: Vec<LogLine> = (0..LINES)
        .map(|seq| LogLine {
            try_id: attempt.try_id,
            seq,
            stream: match seq % 3 {
                0 => LogStream::Stdout,
                1 => LogStream::Stderr,
                _ => LogStream::Protocol,
            },
            timestamp: Utc
                .timestamp_micros(1_765_000_000_000_000 + seq * 37)
                .unwrap(),
            text: match seq {
                5 => "x".repeat(200_000),
                7 => "quotes \" backslash \\ tab \t unicode é 漢字 🚢 {\"json\": true}".into(),
                8 => String::new(),
                _ => format!("line {seq} of the extract"),
            },
        })
        .collect();
    for chunk in lines.chunks(5000) {
        store.append_logs(chunk).await.unwrap();
    }
    store
        .finish_try(&TryFinish {
            try_id: attempt.try_id,
            state: TryState::Success,
            ended_at: Utc::now(),
            exit_code: Some(0),
            failure_reason: None,
            task_state: TaskState::Success,
            next_try_at: None,
            notifications: Vec::new(),
            produces: Vec::new(),
            metrics: Vec::new(),
        })
        .await
        .unwrap();
    let attempt = store.tries(&run.run_id, "extract").await.unwrap().remove(0);
    (store, attempt)
}

/// Pages from several places, as the API and the UI ask for them: from the start in pages
/// of 1, 7 and 1000, from inside and at the edges of frames, the last page.
async fn pages(reader: &dyn LogReader, try_id: i64) -> Vec<LogPage> {
    let mut pages = Vec::new();
    for (after, limit) in [
        (None, 1),
        (None, 7),
        (None, 1000),
        (Some(4), 3),
        (Some(FRAME_LINES as i64 - 3), 10),
        (Some(FRAME_LINES as i64 - 1), 5),
        (Some(2 * FRAME_LINES as i64 + 17), 20_000),
        (Some(LINES - 6), 1000),
        (Some(LINES - 1), 1000),
        (Some(LINES + 10), 1000),
    ] {
        pages.push(reader.log_page(try_id, after, limit).await.unwrap());
    }
    // Every line, a page after another.
    let mut after = None;
    let mut all = LogPage::default();
    loop {
        let page = reader.log_page(try_id, after, 4000).await.unwrap();
        let Some(last) = page.lines.last() else { break };
        after = Some(last.seq);
        all.lines.extend(page.lines);
    }
    pages.push(all);
    pages
}

async fn archived_log_reads_as_its_rows(settings: StoreSettings, dir: &std::path::Path) {
    let (store, attempt) = store_with_an_ended_try(dir).await;
    let artifacts = ArtifactStore::open(&settings).unwrap();
    let logs = Logs::new(store.clone(), Some(artifacts.clone()));
    let before = pages(&logs, attempt.try_id).await;
    assert_eq!(before.last().unwrap().lines.len() as i64, LINES);
    let last_before = logs.last_log_seq(attempt.try_id).await.unwrap();

    let due = store
        .logs_to_archive(Utc::now() + chrono::TimeDelta::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    let done = archive(store.as_ref(), &artifacts, &due[0], Utc::now())
        .await
        .unwrap();
    assert_eq!(done.lines, LINES as u64);
    assert!(done.raw_bytes > 5 * done.bytes, "compressed: {done:?}");

    // The rows are gone; the archive answers the same pages.
    assert!(store
        .logs(attempt.try_id, None, 10)
        .await
        .unwrap()
        .is_empty());
    let record = store.log_archive(attempt.try_id).await.unwrap().unwrap();
    assert_eq!(record.lines, LINES as u64);
    assert_eq!(record.frames.len(), 4);
    let after = pages(&logs, attempt.try_id).await;
    assert_eq!(after.len(), before.len());
    for (index, (archived, stored)) in after.iter().zip(&before).enumerate() {
        assert!(archived == stored, "page {index} differs");
    }
    assert_eq!(
        logs.last_log_seq(attempt.try_id).await.unwrap(),
        last_before
    );
    assert!(store
        .logs_to_archive(Utc::now() + chrono::TimeDelta::seconds(1), 10)
        .await
        .unwrap()
        .is_empty());
    // Without an artifact store to read from, a reader says so rather than showing nothing.
    let blind = Logs::new(store.clone(), None);
    let error = blind.log_page(attempt.try_id, None, 10).await.unwrap_err();
    assert!(error.to_string().contains("archived"), "{error}");
}

#[tokio::test]
async fn an_archived_log_in_a_folder_reads_as_its_rows_did() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        url: format!("file://{}", dir.path().join("artifacts").display()),
        ..Default::default()
    };
    archived_log_reads_as_its_rows(settings, dir.path()).await;
}

fn s3_settings(server: &S3Server) -> StoreSettings {
    StoreSettings {
        url: format!("s3://{}/installation", server.bucket),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    }
}

#[tokio::test]
async fn an_archived_log_in_s3_reads_as_its_rows_did() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    archived_log_reads_as_its_rows(s3_settings(&server), dir.path()).await;
}

#[tokio::test]
async fn a_log_whose_archive_cannot_be_written_keeps_its_rows_until_it_can() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, attempt) = store_with_an_ended_try(dir.path()).await;
    let artifacts = ArtifactStore::open(&s3_settings(&server)).unwrap();
    let rows = store.logs(attempt.try_id, None, 100_000).await.unwrap();
    server.stop();
    let due = store
        .logs_to_archive(Utc::now() + chrono::TimeDelta::seconds(1), 10)
        .await
        .unwrap();
    let error = archive(store.as_ref(), &artifacts, &due[0], Utc::now())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("artifact store"),
        "the error names the store: {error}"
    );
    assert!(
        !error.to_string().contains(S3_SECRET_KEY),
        "and never its secret"
    );
    assert_eq!(store.log_archive(attempt.try_id).await.unwrap(), None);
    assert_eq!(
        store.logs(attempt.try_id, None, 100_000).await.unwrap(),
        rows,
        "every row kept"
    );
    // Listed again, and archived once the store answers.
    server.restart();
    let due = store
        .logs_to_archive(Utc::now() + chrono::TimeDelta::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert!(!due[0].archived);
    archive(store.as_ref(), &artifacts, &due[0], Utc::now())
        .await
        .unwrap();
    let logs = Logs::new(store.clone(), Some(artifacts));
    let read = logs.log_page(attempt.try_id, None, 100_000).await.unwrap();
    assert_eq!(read.lines, rows);
}
