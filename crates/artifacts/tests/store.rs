//! The artifact store against a real folder and a real S3-compatible server (moto's server
//! mode, `stevedore_testkit::S3Server`): files go in streamed and come back whole, a corrupt,
//! missing or over-size blob is refused naming it, an unreachable store is said naming the
//! store and never its credentials.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use stevedore_artifacts::*;
use stevedore_testkit::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

/// `len` bytes of a fixed pseudo-random sequence (so a multipart upload carries distinct
/// parts).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn s3_settings(server: &S3Server, prefix: &str) -> StoreSettings {
    StoreSettings {
        url: format!("s3://{}/{prefix}", server.bucket),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
    }
}

fn file_settings(dir: &std::path::Path) -> StoreSettings {
    StoreSettings {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    }
}

async fn read_back(
    store: &ArtifactStore,
    run: &str,
    blob: &Blob,
) -> Result<Vec<u8>, ArtifactError> {
    let mut out = Vec::new();
    store.copy_to(run, blob, &mut out).await?;
    Ok(out)
}

async fn round_trip(store: &ArtifactStore) {
    // Over object_store's 10 MiB buffer: a multipart upload.
    let big = data(23 * 1024 * 1024 + 17, 1);
    let blob = store.put("run-1", &big[..], u64::MAX).await.unwrap();
    assert_eq!(
        blob,
        Blob {
            sha256: sha256(&big),
            size: big.len() as u64
        }
    );
    assert_eq!(read_back(store, "run-1", &blob).await.unwrap(), big);
    let small = b"records,42\n".to_vec();
    let again = store.put("run-1", &small[..], u64::MAX).await.unwrap();
    let twice = store.put("run-1", &small[..], u64::MAX).await.unwrap();
    assert_eq!(again, twice, "the same content is the same blob");
    let empty = store.put("run-1", &b""[..], u64::MAX).await.unwrap();
    assert_eq!(empty.size, 0);
    assert_eq!(
        read_back(store, "run-1", &empty).await.unwrap(),
        Vec::<u8>::new()
    );
    let mut listed = store.blobs("run-1").await.unwrap();
    let mut expected = vec![blob.clone(), again.clone(), empty.clone()];
    listed.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    expected.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    assert_eq!(listed, expected, "uploads leave nothing behind");
    // Another run's blobs are its own.
    assert!(store.blobs("run-2").await.unwrap().is_empty());
    let missing = read_back(store, "run-2", &blob).await.unwrap_err();
    assert_eq!(
        missing,
        ArtifactError::Missing {
            sha256: blob.sha256.clone()
        }
    );
    assert!(missing.to_string().contains(&blob.sha256), "{missing}");
    assert_eq!(store.remove_run("run-1").await.unwrap(), 3);
    assert!(store.blobs("run-1").await.unwrap().is_empty());

    // Several runs' files and archived logs at once, as `db clean` removes them (the logs
    // by the names the store recorded); the runs not named keep theirs.
    let mut logs = Vec::new();
    for (n, run) in ["run-a", "run-b", "run-c"].into_iter().enumerate() {
        for seed in 0..3 {
            store
                .put(run, &data(100, 10 * n as u64 + seed)[..], u64::MAX)
                .await
                .unwrap();
        }
        for try_id in 1..=2 {
            let bytes = data(50, try_id as u64);
            let written = Blob {
                sha256: sha256(&bytes),
                size: bytes.len() as u64,
            };
            let blob = store
                .put_log(run, try_id, &bytes[..], &written)
                .await
                .unwrap();
            assert_eq!(blob, written);
            logs.push((run.to_owned(), try_id, blob));
        }
    }
    let objects = |runs: &[&str]| stevedore_store::RunObjects {
        with_files: runs.iter().map(|run| run.to_string()).collect(),
        archived_logs: logs
            .iter()
            .filter(|(run, _, _)| runs.contains(&run.as_str()))
            .map(|(run, try_id, blob)| (run.clone(), *try_id, blob.sha256.clone()))
            .collect(),
    };
    assert_eq!(
        store
            .remove_run_objects(&objects(&["run-a", "run-b"]))
            .await
            .unwrap(),
        2 * (3 + 2)
    );
    assert!(store.blobs("run-a").await.unwrap().is_empty());
    assert!(store.blobs("run-b").await.unwrap().is_empty());
    assert_eq!(store.blobs("run-c").await.unwrap().len(), 3);
    for (run, try_id, blob) in &logs {
        let read = store.log_range(run, *try_id, blob, 0..10).await;
        if run == "run-c" {
            assert_eq!(read.unwrap().len(), 10, "{run} keeps its archived logs");
        } else {
            assert_eq!(
                read.unwrap_err(),
                ArtifactError::Missing {
                    sha256: blob.sha256.clone()
                },
                "{run}'s archived log went"
            );
        }
    }
    // Bytes other than the archive's name says are refused, and nothing is left of them.
    let said = Blob {
        sha256: sha256(b"other"),
        size: 5,
    };
    let refused = store
        .put_log("run-c", 9, &b"bytes"[..], &said)
        .await
        .unwrap_err();
    assert!(matches!(refused, ArtifactError::Source(_)), "{refused:?}");
    assert!(matches!(
        store.log_range("run-c", 9, &said, 0..5).await,
        Err(ArtifactError::Missing { .. })
    ));
    // Again: nothing is left to list, and a log already gone is no error.
    store
        .remove_run_objects(&objects(&["run-a", "run-b"]))
        .await
        .unwrap();
    assert_eq!(store.remove_run("run-c").await.unwrap(), 3);
}

#[tokio::test]
async fn a_file_goes_into_a_folder_store_and_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&file_settings(&dir.path().join("artifacts"))).unwrap();
    store.check().await.unwrap();
    round_trip(&store).await;
}

#[tokio::test]
async fn a_file_goes_into_an_s3_store_and_comes_back_whole() {
    let server = S3Server::start();
    let store = ArtifactStore::open(&s3_settings(&server, "stevedore")).unwrap();
    store.check().await.unwrap();
    assert_eq!(store.to_string(), "s3://stevedore-test/stevedore");
    round_trip(&store).await;
}

#[tokio::test]
async fn a_corrupt_blob_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&file_settings(dir.path())).unwrap();
    let original = data(300_000, 2);
    let blob = store.put("run", &original[..], u64::MAX).await.unwrap();
    let file = dir.path().join("runs/run/blobs").join(&blob.sha256);
    // The same size, one byte changed.
    let mut changed = original.clone();
    changed[150_000] ^= 0xff;
    std::fs::write(&file, &changed).unwrap();
    let error = read_back(&store, "run", &blob).await.unwrap_err();
    assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(&format!("sha256:{} is corrupt", blob.sha256)),
        "{error}"
    );
    // Cut short, and grown.
    std::fs::write(&file, &original[..1000]).unwrap();
    let error = read_back(&store, "run", &blob).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("1000 bytes read where 300000 were stored"),
        "{error}"
    );
    let mut grown = original.clone();
    grown.extend_from_slice(b"more");
    std::fs::write(&file, &grown).unwrap();
    assert!(matches!(
        read_back(&store, "run", &blob).await,
        Err(ArtifactError::Corrupt { .. })
    ));
    // The stream gives the good chunks and ends with the error: nothing passes unchecked.
    std::fs::write(&file, &changed).unwrap();
    let stream = store.get("run", &blob).await.unwrap();
    let items: Vec<_> = stream.collect().await;
    assert!(matches!(
        items.last(),
        Some(Err(ArtifactError::Corrupt { .. }))
    ));
}

#[tokio::test]
async fn an_over_size_file_is_refused_and_nothing_of_it_is_kept() {
    let server = S3Server::start();
    for store in [
        ArtifactStore::open(&s3_settings(&server, "limits")).unwrap(),
        ArtifactStore::open(&file_settings(
            tempfile::tempdir().unwrap().keep().as_path(),
        ))
        .unwrap(),
    ] {
        let error = store
            .put("run", &data(5000, 3)[..], 4096)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ArtifactError::TooLarge { limit: 4096, .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("over max_artifact_size: more than 4096 bytes"),
            "{error}"
        );
        assert!(store.blobs("run").await.unwrap().is_empty());
        assert_eq!(
            store.remove_run("run").await.unwrap(),
            0,
            "no upload left behind"
        );
        let kept = store.put("run", &data(4096, 3)[..], 4096).await.unwrap();
        assert_eq!(kept.size, 4096);
    }
}

#[tokio::test]
async fn an_unreachable_s3_store_is_said_naming_it_and_never_its_credentials() {
    let mut server = S3Server::start();
    let settings = s3_settings(&server, "away");
    let store = ArtifactStore::open(&settings).unwrap();
    let blob = store.put("run", &b"kept"[..], u64::MAX).await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let error = store
        .put("run", &b"while away"[..], u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(error, ArtifactError::Unreachable(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("artifact store s3://stevedore-test/away"),
        "{text}"
    );
    assert!(
        !text.contains(S3_SECRET_KEY) && !text.contains(S3_ACCESS_KEY),
        "{text}"
    );
    assert!(store.check().await.is_err());
    assert!(matches!(
        read_back(&store, "run", &blob).await,
        Err(ArtifactError::Unreachable(_))
    ));
    println!(
        "an unreachable store failed a put after {:?}",
        started.elapsed()
    );
    assert!(!format!("{settings:?}").contains(S3_SECRET_KEY));
    server.restart();
    store.check().await.unwrap();
    store.put("run", &b"back"[..], u64::MAX).await.unwrap();
}

#[test]
fn a_bad_store_url_is_refused_naming_it() {
    for (url, says) in [
        ("ftp://host/x", "`ftp:` is not a store Stevedore knows"),
        ("s3:///prefix", "names no bucket"),
        ("not a url", "artifact_store `not a url`"),
    ] {
        let error = ArtifactStore::open(&StoreSettings {
            url: url.into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains(says), "{url}: {error}");
    }
}
