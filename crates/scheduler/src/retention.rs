//! Removing ended runs: `stevedore db clean` (Airflow's `airflow db clean`) and the
//! `retention` the scheduler applies once a day.
//!
//! Runs go a batch at a time ([`BATCH`] runs): their files and archived logs from the
//! artifact store first (the archived logs by the names the store recorded, the files of
//! runs that have some by listing their prefix; deleted in bulk), then their rows
//! ([`Store::delete_runs`]: [`RUNS_A_TRANSACTION`] runs a transaction, log lines before
//! them in batches), so no statement holds the store's writer for long and a scheduling
//! pass always gets in between. What cannot be removed (an artifact store that does not
//! answer) stops the clean with nothing of that batch's rows removed; the next clean takes
//! it again. After each batch the clean pauses as long as the batch took, so a scheduler
//! beside it keeps most of its throughput (docs/benchmarks.md, section 11). Never removed:
//! a run that has not ended, a job's latest scheduled run (the next interval follows it),
//! the committed state, the job versions runs still use.

use std::time::Duration;

use chrono::{DateTime, Utc};
use stevedore_artifacts::ArtifactStore;
use stevedore_domain::retention::Retention;
use stevedore_store::{CleanFilter, Cleaned, Store, StoreError};

/// Runs removed between two looks at what is left.
pub const BATCH: u32 = 100;
/// Runs whose rows go in one transaction.
pub const RUNS_A_TRANSACTION: usize = 10;

/// What a clean did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// The runs found (all removed unless dry).
    pub runs_found: u64,
    pub cleaned: Cleaned,
    /// Objects deleted from the artifact store: runs' files and archived logs.
    pub objects: u64,
    pub job_versions: u64,
    pub size_before: u64,
    pub size_after: u64,
    /// Whether freed space went back to the file system (SQLite with incremental
    /// auto-vacuum); otherwise the database reuses it.
    pub space_given_back: bool,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{runs} runs from {first}: their files could not be deleted from the artifact store, so their rows were kept: {reason}")]
    Artifacts {
        runs: usize,
        first: String,
        reason: String,
    },
}

/// The runs `filter` selects, removed unless `dry_run` (see the module doc). `progress` is
/// told after each batch.
pub async fn clean(
    store: &dyn Store,
    artifacts: Option<&ArtifactStore>,
    filter: &CleanFilter,
    dry_run: bool,
    mut progress: impl FnMut(&CleanReport),
) -> Result<CleanReport, CleanError> {
    let started = std::time::Instant::now();
    let mut report = CleanReport {
        size_before: store.size_bytes().await?,
        ..Default::default()
    };
    if dry_run {
        report.runs_found = store.runs_to_clean(filter, u32::MAX).await?.len() as u64;
        report.size_after = report.size_before;
        report.took = started.elapsed();
        return Ok(report);
    }
    // Each batch starts where the previous one stopped: a run it kept (cleared
    // meanwhile, say) is not read again, and no batch reads more than about a batch of
    // the store's runs.
    let mut filter = filter.clone();
    loop {
        let batch_started = std::time::Instant::now();
        let runs = store.runs_to_clean(&filter, BATCH).await?;
        let Some(last) = runs.last() else {
            break;
        };
        filter.after = Some(last.into());
        report.runs_found += runs.len() as u64;
        // The batch's objects, then its rows: runs whose files could not be deleted keep
        // their rows, and the next clean takes them again.
        let run_ids: Vec<String> = runs.iter().map(|run| run.run_id.clone()).collect();
        remove_objects(store, artifacts, &run_ids, &mut report).await?;
        for chunk in run_ids.chunks(RUNS_A_TRANSACTION) {
            // A transaction a few runs: the scheduler's writes get in between, and the
            // clean asks for the writer a tenth as often as with one run each (on SQLite,
            // a busy scheduler leaves it few turns).
            report.cleaned.add(&store.delete_runs(chunk).await?);
        }
        progress(&report);
        // A pause between batches as long as the batch took: the clean has at most half
        // of the store's writer (and of the machine), the scheduler the rest.
        tokio::time::sleep(batch_started.elapsed().max(Duration::from_millis(5))).await;
    }
    report.job_versions = store.delete_unused_job_versions().await?;
    report.space_given_back = store.reclaim_space().await?;
    report.size_after = store.size_bytes().await?;
    report.took = started.elapsed();
    Ok(report)
}

async fn remove_objects(
    store: &dyn Store,
    artifacts: Option<&ArtifactStore>,
    run_ids: &[String],
    report: &mut CleanReport,
) -> Result<(), CleanError> {
    let Some(artifacts) = artifacts else {
        return Ok(());
    };
    let objects = store.run_objects(run_ids).await?;
    report.objects += artifacts
        .remove_run_objects(&objects)
        .await
        .map_err(|error| CleanError::Artifacts {
            runs: run_ids.len(),
            first: run_ids.first().cloned().unwrap_or_default(),
            reason: error.to_string(),
        })?;
    Ok(())
}

/// The filter a retention makes at `now`; `None` keeps everything.
pub fn filter_of(retention: Retention, now: DateTime<Utc>) -> Option<CleanFilter> {
    match retention {
        Retention::Forever => None,
        Retention::Age(age) => Some(CleanFilter {
            ended_before: now.checked_sub_signed(chrono::TimeDelta::from_std(age).ok()?),
            ..Default::default()
        }),
        Retention::Runs(keep) => Some(CleanFilter {
            keep_last: Some(keep),
            ..Default::default()
        }),
    }
}
