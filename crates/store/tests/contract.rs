//! The Store contract: every implementation must pass these tests. Instantiate the suite
//! with `store_contract_suite!(module_name, async { store })`.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use stevedore_domain::notify::NotifyEvent;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};
use stevedore_store::*;

fn new_run(job_id: &str, day: u32, trigger: RunTrigger) -> NewRun {
    let start = Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).unwrap();
    NewRun {
        job_id: job_id.to_owned(),
        job_version: "v1".to_owned(),
        trigger,
        logical_date: start,
        data_interval: DataInterval {
            start,
            end: start + chrono::TimeDelta::days(1),
        },
        params: json!({"n": 1}),
        task_ids: vec!["extract".to_owned(), "load".to_owned()],
        full_refresh: Vec::new(),
    }
}

/// How a try that exited 0 ends.
fn succeeded(try_id: i64) -> TryFinish {
    TryFinish {
        try_id,
        state: TryState::Success,
        ended_at: Utc::now(),
        exit_code: Some(0),
        failure_reason: None,
        task_state: TaskState::Success,
        next_try_at: None,
        notifications: Vec::new(),
        produces: Vec::new(),
        metrics: Vec::new(),
    }
}

pub async fn jobs_keep_every_version(store: &dyn Store) {
    store
        .upsert_job("demo", "v1", "jobs/demo.yaml", "id: demo")
        .await
        .unwrap();
    store
        .upsert_job("demo", "v2", "jobs/demo.yaml", "id: demo # edited")
        .await
        .unwrap();
    let jobs = store.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].current_version, "v2");
    assert_eq!(store.job_source("demo", "v1").await.unwrap(), "id: demo");
    store.set_paused("demo", true).await.unwrap();
    assert!(store.list_jobs().await.unwrap()[0].paused);
    assert!(matches!(
        store.set_paused("nope", true).await,
        Err(StoreError::NotFound(_))
    ));
    // A job recorded paused in one write; recording it again only changes its paused state.
    store
        .record_job_paused("quiet", "q1", "jobs/quiet.yaml", "id: quiet", true)
        .await
        .unwrap();
    let quiet = store
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.job_id == "quiet")
        .unwrap();
    assert!(quiet.paused);
    assert_eq!(quiet.current_version, "q1");
    assert_eq!(store.job_source("quiet", "q1").await.unwrap(), "id: quiet");
    store
        .record_job_paused("quiet", "q1", "jobs/quiet.yaml", "id: quiet", false)
        .await
        .unwrap();
    assert!(!store
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .any(|j| j.job_id == "quiet" && j.paused));
}

pub async fn scheduled_runs_are_unique_per_logical_date(store: &dyn Store) {
    let run = store
        .create_run(new_run("demo", 1, RunTrigger::Scheduled))
        .await
        .unwrap();
    assert_eq!(run.state, RunState::Queued);
    let instances = store.task_instances(&run.run_id).await.unwrap();
    let ids: Vec<_> = instances.iter().map(|ti| ti.task_id.as_str()).collect();
    assert_eq!(ids, vec!["extract", "load"]);
    assert!(instances
        .iter()
        .all(|ti| ti.state == TaskState::None && ti.try_number == 0));
    let again = store
        .create_run(new_run("demo", 1, RunTrigger::Scheduled))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // Manual runs may share a logical date.
    store
        .create_run(new_run("demo", 1, RunTrigger::Manual))
        .await
        .unwrap();
    store
        .create_run(new_run("demo", 1, RunTrigger::Manual))
        .await
        .unwrap();
    store
        .create_run(new_run("demo", 3, RunTrigger::Backfill))
        .await
        .unwrap();
    // A backfill does not move the schedule ...
    let last = store
        .last_scheduled_interval("demo")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last.start,
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
    );
    // ... but holds its logical date like a scheduled run.
    let taken = store
        .create_run(new_run("demo", 3, RunTrigger::Scheduled))
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let third = Utc.with_ymd_and_hms(2024, 1, 3, 0, 0, 0).unwrap();
    let before_third = store.previous_run("demo", third).await.unwrap().unwrap();
    assert_eq!(
        before_third.logical_date,
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
    );
    assert!(store
        .previous_run("demo", before_third.logical_date)
        .await
        .unwrap()
        .is_none());

    store
        .move_to_version(
            &run.run_id,
            "v2",
            &["load".to_owned()],
            &["publish".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(store.get_run(&run.run_id).await.unwrap().job_version, "v2");
    let states: Vec<(String, TaskState)> = store
        .task_instances(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| (ti.task_id, ti.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("extract".into(), TaskState::None),
            ("load".into(), TaskState::Removed),
            ("publish".into(), TaskState::None)
        ]
    );
}

pub async fn runs_are_found_by_prefix_and_listed_newest_first(store: &dyn Store) {
    let first = store
        .create_run(new_run("a", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let second = store
        .create_run(new_run("b", 2, RunTrigger::Manual))
        .await
        .unwrap();
    assert_eq!(
        store.find_run(&second.run_id).await.unwrap().run_id,
        second.run_id
    );
    assert_eq!(
        store.find_run(&first.run_id[..30]).await.unwrap().run_id,
        first.run_id
    );
    assert!(matches!(
        store.find_run("zzz").await,
        Err(StoreError::NotFound(_))
    ));
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![second.run_id.clone(), first.run_id.clone()]
    );
    let only_a = store
        .list_runs(&RunFilter {
            job_id: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_a.len(), 1);
    store
        .set_run_state(&first.run_id, RunState::Running, Utc::now())
        .await
        .unwrap();
    store
        .set_run_state(&first.run_id, RunState::Success, Utc::now())
        .await
        .unwrap();
    let done = store.get_run(&first.run_id).await.unwrap();
    assert_eq!(done.state, RunState::Success);
    assert!(done.started_at.is_some() && done.ended_at.is_some());
    let running = store
        .list_runs(&RunFilter {
            states: vec![RunState::Queued],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
}

pub async fn tries_record_results_and_commit_state_only_on_success(store: &dyn Store) {
    let run = store
        .create_run(new_run("demo", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let key = |n| TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract".into(),
        try_number: n,
    };
    let first = store
        .start_try(&key(1), "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    store
        .set_try_container(first.try_id, "c1", Some("sha256:abc"))
        .await
        .unwrap();
    store
        .put_output(&run.run_id, "extract", "rows", &json!(5))
        .await
        .unwrap();
    store
        .set_pending_state(first.try_id, &json!({"cursor": 1}))
        .await
        .unwrap();
    assert_eq!(store.running_tries().await.unwrap().len(), 1);
    store
        .finish_try(&TryFinish {
            try_id: first.try_id,
            state: TryState::Failed,
            ended_at: Utc::now(),
            exit_code: Some(3),
            failure_reason: Some("exit_code: 3".into()),
            task_state: TaskState::UpForRetry,
            next_try_at: Some(Utc::now()),
            notifications: Vec::new(),
            produces: Vec::new(),
            metrics: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        None
    );
    let ti = &store.task_instances(&run.run_id).await.unwrap()[0];
    assert_eq!((ti.state, ti.try_number), (TaskState::UpForRetry, 1));
    assert!(ti.next_try_at.is_some());

    let second = store
        .start_try(&key(2), "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    assert!(
        store.outputs(&run.run_id).await.unwrap().is_empty(),
        "a new try starts without old outputs"
    );
    assert!(matches!(
        store
            .start_try(&key(2), "docker", "synth:1", Utc::now())
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .put_output(&run.run_id, "extract", "rows", &json!(7))
        .await
        .unwrap();
    store
        .set_pending_state(second.try_id, &json!({"cursor": 2}))
        .await
        .unwrap();
    store.finish_try(&succeeded(second.try_id)).await.unwrap();
    // Committed for the job only once the run has succeeded.
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        None
    );
    store
        .set_run_state(&run.run_id, RunState::Success, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        Some(json!({"cursor": 2}))
    );

    // A failed run's state is dropped.
    let failed = store
        .create_run(new_run("demo", 2, RunTrigger::Manual))
        .await
        .unwrap();
    let key = TryKey {
        run_id: failed.run_id.clone(),
        task_id: "extract".into(),
        try_number: 1,
    };
    let attempt = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    store
        .set_pending_state(attempt.try_id, &json!({"cursor": 3}))
        .await
        .unwrap();
    store.finish_try(&succeeded(attempt.try_id)).await.unwrap();
    store
        .set_run_state(&failed.run_id, RunState::Failed, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        Some(json!({"cursor": 2}))
    );
    assert_eq!(
        store.outputs(&run.run_id).await.unwrap(),
        vec![("extract".into(), "rows".into(), json!(7))]
    );
    let tries = store.tries(&run.run_id, "extract").await.unwrap();
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].exit_code, Some(3));
    assert_eq!(tries[0].image_digest.as_deref(), Some("sha256:abc"));
    assert_eq!(tries[1].state, TryState::Success);
    assert!(store.running_tries().await.unwrap().is_empty());
}

pub async fn log_lines_keep_their_order_and_streams(store: &dyn Store) {
    let run = store
        .create_run(new_run("demo", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "load".into(),
        try_number: 1,
    };
    let attempt = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let lines: Vec<LogLine> = (0..2500)
        .map(|seq| LogLine {
            try_id: attempt.try_id,
            seq,
            stream: if seq % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            },
            timestamp: Utc.timestamp_micros(1_700_000_000_000_000 + seq).unwrap(),
            text: format!("line {seq}"),
        })
        .collect();
    store.append_logs(&lines[..1200]).await.unwrap();
    store.append_logs(&lines[1200..]).await.unwrap();
    let page = store.logs(attempt.try_id, None, 10).await.unwrap();
    assert_eq!(page, lines[..10].to_vec());
    let rest = store.logs(attempt.try_id, Some(9), 5000).await.unwrap();
    assert_eq!(rest.len(), 2490);
    assert_eq!(rest.last().unwrap(), lines.last().unwrap());
    assert_eq!(
        store.last_log_seq(attempt.try_id).await.unwrap(),
        Some(2499)
    );
    assert_eq!(store.last_log_seq(attempt.try_id + 1).await.unwrap(), None);
}

/// A try's log once archived: listed for archiving only once it has ended before the
/// cutoff, listed again (as archived) until its rows are all deleted a batch at a time,
/// its archive record read back as written; a running try is never listed.
pub async fn archived_logs_are_listed_recorded_and_their_rows_deleted_in_batches(
    store: &dyn Store,
) {
    let run = store
        .create_run(new_run("demo", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let start = |task: &str| TryKey {
        run_id: run.run_id.clone(),
        task_id: task.into(),
        try_number: 1,
    };
    let ended = store
        .start_try(&start("extract"), "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let running = store
        .start_try(&start("load"), "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let lines = |try_id: i64, count: i64| -> Vec<LogLine> {
        (0..count)
            .map(|seq| LogLine {
                try_id,
                seq,
                stream: LogStream::Stdout,
                timestamp: Utc.timestamp_micros(1_700_000_000_000_000 + seq).unwrap(),
                text: format!("line {seq}"),
            })
            .collect()
    };
    store.append_logs(&lines(ended.try_id, 25)).await.unwrap();
    store.append_logs(&lines(running.try_id, 5)).await.unwrap();
    let totals = |rows, archived_lines, archived_bytes| LogTotals {
        rows,
        archived_lines,
        archived_bytes,
    };
    assert_eq!(store.log_totals().await.unwrap(), totals(30, 0, 0));
    let finished = succeeded(ended.try_id);
    store.finish_try(&finished).await.unwrap();
    let before_end = finished.ended_at - chrono::TimeDelta::seconds(1);
    assert!(store
        .logs_to_archive(before_end, 10)
        .await
        .unwrap()
        .is_empty());
    let after_end = finished.ended_at + chrono::TimeDelta::seconds(1);
    assert_eq!(
        store.logs_to_archive(after_end, 10).await.unwrap(),
        vec![LogToArchive {
            try_id: ended.try_id,
            run_id: run.run_id.clone(),
            archived: false
        }]
    );
    assert_eq!(store.log_archive(ended.try_id).await.unwrap(), None);
    let record = LogArchiveRecord {
        try_id: ended.try_id,
        run_id: run.run_id.clone(),
        size: 321,
        sha256: "ab".repeat(32),
        lines: 25,
        raw_bytes: 2000,
        frames: vec![
            LogFrame {
                first_seq: 0,
                last_seq: 9,
                offset: 0,
                length: 100,
                raw_length: 800,
            },
            LogFrame {
                first_seq: 10,
                last_seq: 24,
                offset: 100,
                length: 221,
                raw_length: 1200,
            },
        ],
        archived_at: Utc.timestamp_micros(1_700_000_000_123_456).unwrap(),
    };
    store.record_log_archive(&record).await.unwrap();
    assert_eq!(
        store.log_archive(ended.try_id).await.unwrap(),
        Some(record.clone())
    );
    // Recorded again (another scheduler's): the first record stands.
    store
        .record_log_archive(&LogArchiveRecord {
            sha256: "cd".repeat(32),
            ..record.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.log_archive(ended.try_id).await.unwrap(), Some(record));
    // Archived, its rows not yet deleted: both counts hold it for a while.
    assert_eq!(store.log_totals().await.unwrap(), totals(30, 25, 321));
    assert_eq!(
        store.logs_to_archive(after_end, 10).await.unwrap(),
        vec![LogToArchive {
            try_id: ended.try_id,
            run_id: run.run_id.clone(),
            archived: true
        }]
    );
    let mut batches = Vec::new();
    loop {
        let done = store.delete_archived_rows(ended.try_id, 10).await.unwrap();
        batches.push(store.logs(ended.try_id, None, 100).await.unwrap().len());
        if done {
            break;
        }
    }
    assert_eq!(batches, vec![15, 5, 0, 0]);
    assert_eq!(
        store.log_totals().await.unwrap(),
        totals(5, 25, 321),
        "the archived try's lines are counted once, as archived"
    );
    assert!(store
        .logs_to_archive(after_end, 10)
        .await
        .unwrap()
        .is_empty());
    // The running try's lines are untouched.
    assert_eq!(
        store.logs(running.try_id, None, 100).await.unwrap().len(),
        5
    );
}

/// `db clean` and the retention: only ended runs, never a job's latest scheduled run, by
/// age, count and job; deleting a run takes its tries, lines and outputs and leaves a
/// running run, the committed state and the job versions still used.
pub async fn runs_are_cleaned_by_age_count_and_job_and_never_what_is_still_needed(
    store: &dyn Store,
) {
    store
        .upsert_job("demo", "v0", "jobs/demo.yaml", "id: demo # v0")
        .await
        .unwrap();
    store
        .upsert_job("demo", "v1", "jobs/demo.yaml", "id: demo")
        .await
        .unwrap();
    let at = |hour: u32| Utc.with_ymd_and_hms(2024, 2, 1, hour, 0, 0).unwrap();
    let ended = |trigger: RunTrigger, day: u32, job: &'static str, state: RunState, hour: u32| async move {
        let run = store.create_run(new_run(job, day, trigger)).await.unwrap();
        store
            .set_run_state(&run.run_id, RunState::Running, at(hour))
            .await
            .unwrap();
        store
            .set_run_state(&run.run_id, state, at(hour))
            .await
            .unwrap();
        run.run_id
    };
    // The oldest run left a try with lines, an output and a committed state.
    let oldest = store
        .create_run(new_run("demo", 1, RunTrigger::Scheduled))
        .await
        .unwrap()
        .run_id;
    store
        .set_run_state(&oldest, RunState::Running, at(1))
        .await
        .unwrap();
    let attempt = store
        .start_try(
            &TryKey {
                run_id: oldest.clone(),
                task_id: "extract".into(),
                try_number: 1,
            },
            "docker",
            "synth:1",
            at(1),
        )
        .await
        .unwrap();
    let lines: Vec<LogLine> = (0..25_000)
        .map(|seq| LogLine {
            try_id: attempt.try_id,
            seq,
            stream: LogStream::Stdout,
            timestamp: at(1),
            text: format!("line {seq}"),
        })
        .collect();
    store.append_logs(&lines).await.unwrap();
    store
        .record_artifacts(
            attempt.try_id,
            &[CapturedFile {
                path: "records.jsonl".into(),
                size: 10,
                sha256: "aa".repeat(32),
                modified: 1_700_000_000,
            }],
        )
        .await
        .unwrap();
    store
        .put_output(&oldest, "extract", "rows", &json!(3))
        .await
        .unwrap();
    store
        .set_pending_state(attempt.try_id, &json!({"cursor": 9}))
        .await
        .unwrap();
    store.finish_try(&succeeded(attempt.try_id)).await.unwrap();
    store
        .set_run_state(&oldest, RunState::Success, at(1))
        .await
        .unwrap();
    let manual = ended(RunTrigger::Manual, 2, "demo", RunState::Failed, 2).await;
    let latest_scheduled = ended(RunTrigger::Scheduled, 3, "demo", RunState::Success, 3).await;
    let other = ended(RunTrigger::Scheduled, 1, "other", RunState::Success, 4).await;
    let running = store
        .create_run(new_run("demo", 4, RunTrigger::Manual))
        .await
        .unwrap()
        .run_id;
    store
        .set_run_state(&running, RunState::Running, at(5))
        .await
        .unwrap();
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        Some(json!({"cursor": 9}))
    );
    let ids = |runs: Vec<RunToClean>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    let all = CleanFilter::default();
    // Every ended run but each job's latest scheduled one; the running one never.
    assert_eq!(
        ids(store.runs_to_clean(&all, 100).await.unwrap()),
        vec![oldest.clone(), manual.clone()]
    );
    let first = store.runs_to_clean(&all, 1).await.unwrap();
    assert_eq!(ids(first.clone()), vec![oldest.clone()]);
    // The next batch starts after the last one found, and the one after that finds none.
    let next = CleanFilter {
        after: Some((&first[0]).into()),
        ..Default::default()
    };
    let second = store.runs_to_clean(&next, 100).await.unwrap();
    assert_eq!(ids(second.clone()), vec![manual.clone()]);
    let past_the_end = CleanFilter {
        after: Some((&second[0]).into()),
        ..Default::default()
    };
    assert!(store
        .runs_to_clean(&past_the_end, 100)
        .await
        .unwrap()
        .is_empty());
    let before = CleanFilter {
        ended_before: Some(at(2)),
        ..Default::default()
    };
    assert_eq!(
        ids(store.runs_to_clean(&before, 100).await.unwrap()),
        vec![oldest.clone()]
    );
    let keep_two = CleanFilter {
        keep_last: Some(2),
        ..Default::default()
    };
    assert_eq!(
        ids(store.runs_to_clean(&keep_two, 100).await.unwrap()),
        vec![oldest.clone()]
    );
    let keep_one = CleanFilter {
        keep_last: Some(1),
        ..Default::default()
    };
    assert_eq!(
        ids(store.runs_to_clean(&keep_one, 100).await.unwrap()),
        vec![oldest.clone(), manual.clone()]
    );
    let other_job = CleanFilter {
        job_id: Some("other".into()),
        ..Default::default()
    };
    assert!(store
        .runs_to_clean(&other_job, 100)
        .await
        .unwrap()
        .is_empty());
    let not_demo = CleanFilter {
        except_jobs: vec!["demo".into()],
        ..Default::default()
    };
    assert!(store
        .runs_to_clean(&not_demo, 100)
        .await
        .unwrap()
        .is_empty());

    // What db clean deletes from the artifact store first: the runs with files, and
    // every archived log by its name.
    store
        .record_log_archive(&LogArchiveRecord {
            try_id: attempt.try_id,
            run_id: oldest.clone(),
            size: 10,
            sha256: "bb".repeat(32),
            lines: 25_000,
            raw_bytes: 100,
            frames: Vec::new(),
            archived_at: at(2),
        })
        .await
        .unwrap();
    let both = [oldest.clone(), manual.clone(), running.clone()];
    assert_eq!(
        store.run_objects(&both).await.unwrap(),
        RunObjects {
            with_files: vec![oldest.clone()],
            archived_logs: vec![(oldest.clone(), attempt.try_id, "bb".repeat(32))],
        }
    );
    let cleaned = store
        .delete_runs(&[oldest.clone(), running.clone()])
        .await
        .unwrap();
    assert_eq!(
        cleaned,
        Cleaned {
            runs: 1,
            task_instances: 2,
            tries: 1,
            log_lines: 25_000,
            notifications: 0
        }
    );
    assert!(store.get_run(&oldest).await.is_err());
    assert_eq!(
        store.run_objects(&both).await.unwrap(),
        RunObjects::default()
    );
    assert!(store
        .logs(attempt.try_id, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.outputs(&oldest).await.unwrap().is_empty());
    assert_eq!(
        store.get_run(&running).await.unwrap().state,
        RunState::Running
    );
    // The committed state, and where it came from, stay.
    assert_eq!(
        store.committed_state("demo", "extract").await.unwrap(),
        Some(json!({"cursor": 9}))
    );
    assert_eq!(
        store
            .state_history("demo", "extract", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // v0 is used by no run and is not current: it goes; v1 stays.
    assert_eq!(store.delete_unused_job_versions().await.unwrap(), 1);
    assert!(store.job_source("demo", "v0").await.is_err());
    assert_eq!(store.job_source("demo", "v1").await.unwrap(), "id: demo");
    assert_eq!(
        ids(store.runs_to_clean(&all, 100).await.unwrap()),
        vec![manual.clone()]
    );
    let _ = (latest_scheduled, other);
    assert!(store.size_bytes().await.unwrap() > 0);
}

/// What tries report (`metric` messages) is kept per try and per task (the last value,
/// the total of successful tries); try durations and scheduled runs' lags fill the job's
/// histograms, once per end.
pub async fn metrics_are_kept_per_try_and_task_and_histograms_count_each_end(store: &dyn Store) {
    let run = store
        .create_run(new_run("demo", 1, RunTrigger::Scheduled))
        .await
        .unwrap();
    store
        .set_run_state(&run.run_id, RunState::Running, Utc::now())
        .await
        .unwrap();
    let key = |try_number| TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract".into(),
        try_number,
    };
    let started = Utc::now() - chrono::TimeDelta::seconds(20);
    // Ready 7 s before it started.
    store
        .set_task_states(
            &[(run.run_id.clone(), "extract".into(), TaskState::Scheduled)],
            started - chrono::TimeDelta::seconds(7),
        )
        .await
        .unwrap();
    let first = store
        .start_try(&key(1), "docker", "synth:1", started)
        .await
        .unwrap();
    store
        .finish_try(&TryFinish {
            state: TryState::Failed,
            task_state: TaskState::UpForRetry,
            metrics: vec![("records".into(), 40.0)],
            ..succeeded(first.try_id)
        })
        .await
        .unwrap();
    let second = store
        .start_try(&key(2), "docker", "synth:1", started)
        .await
        .unwrap();
    store
        .finish_try(&TryFinish {
            metrics: vec![("records".into(), 100.0), ("requests".into(), 3.0)],
            ..succeeded(second.try_id)
        })
        .await
        .unwrap();
    let metrics = store.task_metrics().await.unwrap();
    let records = metrics.iter().find(|m| m.name == "records").unwrap();
    assert_eq!(
        (
            records.job_id.as_str(),
            records.task_id.as_str(),
            records.last_value,
            records.total
        ),
        ("demo", "extract", 100.0, 100.0),
        "the failed try's 40 is not counted"
    );
    assert_eq!(metrics.len(), 2);
    let per_run = store.run_metrics(&run.run_id).await.unwrap();
    assert_eq!(per_run.len(), 3);
    assert_eq!((per_run[0].try_id, per_run[0].value), (first.try_id, 40.0));
    store
        .set_run_state(&run.run_id, RunState::Success, Utc::now())
        .await
        .unwrap();
    let histograms = store.job_histograms().await.unwrap();
    let durations = histograms
        .iter()
        .find(|h| h.name == "try_duration_seconds")
        .unwrap();
    assert_eq!(durations.count, 2);
    assert!((durations.sum - 40.0).abs() < 2.0, "{durations:?}");
    assert_eq!(durations.buckets[bucket_of(20.0) as usize], 2);
    let waits = histograms
        .iter()
        .find(|h| h.name == "queue_wait_seconds")
        .unwrap();
    assert_eq!(
        waits.count, 1,
        "the second try was never made ready: {waits:?}"
    );
    assert!((waits.sum - 7.0).abs() < 0.01, "{waits:?}");
    let lag = histograms
        .iter()
        .find(|h| h.name == "run_lag_seconds")
        .unwrap();
    assert_eq!(lag.count, 1);
    // A run already ended is not observed again.
    store
        .set_run_state(&run.run_id, RunState::Success, Utc::now())
        .await
        .unwrap();
    let again = store.job_histograms().await.unwrap();
    assert_eq!(
        again
            .iter()
            .find(|h| h.name == "run_lag_seconds")
            .unwrap()
            .count,
        1
    );
}

pub async fn pools_start_with_default_and_can_be_resized(store: &dyn Store) {
    let pools = store.list_pools().await.unwrap();
    assert_eq!(
        pools,
        vec![PoolRecord {
            name: "default".into(),
            slots: 128,
            description: "The pool of tasks that name none".into()
        }]
    );
    let api = PoolRecord {
        name: "stripe_api".into(),
        slots: 2,
        description: "rate budget".into(),
    };
    store.set_pool(&api).await.unwrap();
    store
        .set_pool(&PoolRecord {
            slots: 3,
            ..api.clone()
        })
        .await
        .unwrap();
    let pools = store.list_pools().await.unwrap();
    assert_eq!(pools[1].slots, 3);
    store.delete_pool("stripe_api").await.unwrap();
    assert!(matches!(
        store.delete_pool("stripe_api").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_pool("default").await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn connections_keep_only_sealed_values(store: &dyn Store) {
    let connection = ConnectionRecord {
        name: "stripe".into(),
        description: "Stripe API".into(),
        keys: vec!["STRIPE_TOKEN".into()],
        sealed: vec![1, 2, 3, 4],
    };
    store.put_connection(&connection).await.unwrap();
    assert_eq!(store.get_connection("stripe").await.unwrap(), connection);
    store
        .put_connection(&ConnectionRecord {
            sealed: vec![9],
            ..connection.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.list_connections().await.unwrap()[0].sealed, vec![9]);
    store.delete_connection("stripe").await.unwrap();
    assert!(matches!(
        store.get_connection("stripe").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_connection("stripe").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn tokens_are_found_by_hash_until_revoked(store: &dyn Store) {
    use stevedore_domain::role::Role;
    let ci = store
        .create_token("ci", Role::Operator, "hash-ci")
        .await
        .unwrap();
    assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Operator));
    assert!(matches!(
        store.create_token("ci", Role::Admin, "hash-other").await,
        Err(StoreError::Conflict(_))
    ));
    store
        .create_token("grafana", Role::Viewer, "hash-grafana")
        .await
        .unwrap();
    let found = store.token_by_hash("hash-ci").await.unwrap().unwrap();
    assert_eq!(found, ci);
    assert_eq!(store.token_by_hash("hash-nope").await.unwrap(), None);

    let used = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    store.touch_token(ci.id, used).await.unwrap();
    let found = store.token_by_hash("hash-ci").await.unwrap().unwrap();
    assert_eq!(found.last_used_at, Some(used));

    store.revoke_token("ci").await.unwrap();
    assert_eq!(store.token_by_hash("hash-ci").await.unwrap(), None);
    assert!(matches!(
        store.revoke_token("ci").await,
        Err(StoreError::NotFound(_))
    ));
    // A session lives while its token does, until it expires.
    let grafana = store.token_by_hash("hash-grafana").await.unwrap().unwrap();
    let session = SessionRecord {
        id_hash: "session-1".into(),
        token: grafana.clone(),
        csrf: "csrf-1".into(),
        expires_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
    };
    store.create_session(&session).await.unwrap();
    let now = Utc.with_ymd_and_hms(2029, 1, 1, 0, 0, 0).unwrap();
    let found = store.session("session-1", now).await.unwrap().unwrap();
    assert_eq!(
        (found.token.name.as_str(), found.csrf.as_str()),
        ("grafana", "csrf-1")
    );
    let later = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(store.session("session-1", later).await.unwrap(), None);
    store.delete_session("session-1").await.unwrap();
    assert_eq!(store.session("session-1", now).await.unwrap(), None);

    // The name is free again; the revoked token stays listed.
    store
        .create_token("ci", Role::Admin, "hash-ci-2")
        .await
        .unwrap();
    let listed: Vec<(String, bool)> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.revoked_at.is_some()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("ci".to_owned(), true),
            ("grafana".to_owned(), false),
            ("ci".to_owned(), false)
        ]
    );
}

pub async fn run_lists_page_newest_first_and_states_are_counted(store: &dyn Store) {
    let mut created = Vec::new();
    for day in 1..=7 {
        created.push(
            store
                .create_run(new_run("paged", day, RunTrigger::Manual))
                .await
                .unwrap()
                .run_id,
        );
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_runs(&RunFilter {
                job_id: Some("paged".into()),
                limit: Some(3),
                before: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.run_id.clone());
        seen.extend(page.into_iter().map(|r| r.run_id));
    }
    assert_eq!(seen, created, "every run once, newest first");

    store
        .set_run_state(&created[0], RunState::Running, Utc::now())
        .await
        .unwrap();
    // Every task instance of the active runs a scheduler holds, in one read, each run's in
    // task order.
    store
        .register_scheduler("only", "host", 1, Utc::now())
        .await
        .unwrap();
    let held = store
        .claim_runs("only", Utc::now() - chrono::TimeDelta::seconds(10))
        .await
        .unwrap();
    assert_eq!(held.len(), 7);
    let runs: Vec<String> = store
        .held_runs("only")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    let mut oldest_first = created.clone();
    oldest_first.sort();
    assert_eq!(runs, oldest_first);
    let active = store.held_task_instances("only").await.unwrap();
    let per_run = new_run("x", 1, RunTrigger::Manual).task_ids;
    assert_eq!(active.len(), 7 * per_run.len());
    let first: Vec<&str> = active
        .iter()
        .filter(|ti| ti.run_id == created[0])
        .map(|ti| ti.task_id.as_str())
        .collect();
    assert_eq!(
        first,
        per_run.iter().map(String::as_str).collect::<Vec<_>>()
    );
    store
        .set_run_state(&created[1], RunState::Success, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.held_task_instances("only").await.unwrap().len(),
        6 * per_run.len()
    );
    assert_eq!(
        store.active_elsewhere("only").await.unwrap(),
        ActiveElsewhere::default()
    );
    store
        .set_run_state(&created[1], RunState::Queued, Utc::now())
        .await
        .unwrap();
    let counts = store.state_counts().await.unwrap();
    assert_eq!(
        counts.runs,
        vec![(RunState::Queued, 6), (RunState::Running, 1)]
    );
    let instances: i64 = counts.task_instances.iter().map(|(_, n)| n).sum();
    assert_eq!(
        instances,
        7 * new_run("x", 1, RunTrigger::Manual).task_ids.len() as i64
    );
}

/// Schedulers claim disjoint fair shares of the active runs; a claim fences out the writes
/// of the scheduler that held the run before; deregistering hands claims back.
pub async fn claims_are_exclusive_fair_and_fenced(store: &dyn Store) {
    let t0 = Utc::now();
    for id in ["a", "b", "c"] {
        store.register_scheduler(id, "host", 1, t0).await.unwrap();
    }
    let mut run_ids = Vec::new();
    for day in 1..=9 {
        let run = store
            .create_run(new_run("x", day, RunTrigger::Scheduled))
            .await
            .unwrap();
        run_ids.push(run.run_id);
    }
    let live_after = t0 - chrono::TimeDelta::seconds(10);
    // Three schedulers claiming at once get three disjoint shares of three runs.
    let (a, b, c) = tokio::join!(
        store.claim_runs("a", live_after),
        store.claim_runs("b", live_after),
        store.claim_runs("c", live_after)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!((a.len(), b.len(), c.len()), (3, 3, 3));
    let mut all: Vec<&String> = a.iter().chain(&b).chain(&c).map(|f| &f.run_id).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "a run was claimed twice");
    assert!(a.iter().all(|f| f.token == 1));
    // Claiming again returns what is held and takes nothing more.
    assert_eq!(store.claim_runs("a", live_after).await.unwrap(), a);

    // Only the holder of a run's claim starts its tries.
    let own = &a[0];
    let key = |run_id: &str| TryKey {
        run_id: run_id.to_owned(),
        task_id: "extract".to_owned(),
        try_number: 1,
    };
    let started = store
        .start_try_fenced(
            &key(&own.run_id),
            "docker",
            "synth:1",
            Utc::now(),
            Some(own),
        )
        .await
        .unwrap();
    // What `a` runs counts against the limits the others share, and nothing of their own.
    let seen_by_b = store.active_elsewhere("b").await.unwrap();
    assert_eq!(
        seen_by_b.task_instances,
        vec![("x".to_owned(), "v1".to_owned(), "extract".to_owned(), 1)]
    );
    assert_eq!(seen_by_b.running_runs, vec![]);
    assert_eq!(
        store.active_elsewhere("a").await.unwrap(),
        ActiveElsewhere::default()
    );
    store
        .set_run_state(&own.run_id, RunState::Running, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.active_elsewhere("c").await.unwrap().running_runs,
        vec![("x".to_owned(), 1)]
    );
    assert_eq!(store.held_runs("b").await.unwrap().len(), 3);
    let stale = Fence {
        run_id: b[0].run_id.clone(),
        token: b[0].token - 1,
    };
    assert!(matches!(
        store
            .start_try_fenced(
                &key(&stale.run_id),
                "docker",
                "synth:1",
                Utc::now(),
                Some(&stale)
            )
            .await,
        Err(StoreError::Fenced(_))
    ));

    // `b` and `c` stop heartbeating; `a` keeps on and takes their runs over.
    let t1 = t0 + chrono::TimeDelta::seconds(30);
    store.heartbeat("a", t1).await.unwrap();
    let taken = store
        .claim_runs("a", t1 - chrono::TimeDelta::seconds(10))
        .await
        .unwrap();
    assert_eq!(taken.len(), 9);
    let old_b = b[0].clone();
    let new_b = taken.iter().find(|f| f.run_id == old_b.run_id).unwrap();
    assert_eq!(new_b.token, old_b.token + 1);
    // `b` wakes up: every write it had in flight for that run is refused.
    let b_try = store
        .start_try_fenced(
            &key(&old_b.run_id),
            "docker",
            "synth:1",
            Utc::now(),
            Some(new_b),
        )
        .await
        .unwrap();
    let line = LogLine {
        try_id: b_try.try_id,
        seq: 0,
        stream: LogStream::Stdout,
        timestamp: Utc::now(),
        text: "late".to_owned(),
    };
    assert!(matches!(
        store
            .append_logs_fenced(&[line.clone()], Some(&old_b))
            .await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store
            .finish_try_fenced(&succeeded(b_try.try_id), Some(&old_b))
            .await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store
            .set_try_container_fenced(b_try.try_id, "c", None, 0, Some(&old_b))
            .await,
        Err(StoreError::Fenced(_))
    ));
    store
        .append_logs_fenced(&[line], Some(new_b))
        .await
        .unwrap();
    assert_eq!(store.logs(b_try.try_id, None, 10).await.unwrap().len(), 1);
    store
        .finish_try_fenced(&succeeded(started.try_id), Some(own))
        .await
        .unwrap();

    let schedulers = store.list_schedulers().await.unwrap();
    assert_eq!(schedulers[0].id, "a");
    assert_eq!(schedulers[0].runs, 9);
    assert!(matches!(
        store.heartbeat("nobody", t1).await,
        Err(StoreError::NotFound(_))
    ));
    // Deregistering hands the claims back, fenced: a new claim starts from a higher token.
    store.deregister_scheduler("a").await.unwrap();
    assert!(matches!(
        store.append_logs_fenced(&[], Some(own)).await,
        Ok(())
    ));
    assert!(matches!(
        store
            .start_try_fenced(
                &key(&own.run_id),
                "docker",
                "synth:1",
                Utc::now(),
                Some(&taken[0])
            )
            .await,
        Err(StoreError::Fenced(_)) | Err(StoreError::Conflict(_))
    ));
    store.register_scheduler("d", "host", 2, t1).await.unwrap();
    let d = store.claim_runs("d", t1).await.unwrap();
    assert_eq!(d.len(), 9);
    assert!(d.iter().all(|f| f.token >= 3));
    assert!(store
        .list_schedulers()
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != "a"));
}

/// A try's stored container lines per stream: the pull lines before its container are not
/// the container's; protocol messages count as stdout.
pub async fn stored_lines_count_container_lines_per_stream(store: &dyn Store) {
    let run = store
        .create_run(new_run("x", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract".to_owned(),
        try_number: 1,
    };
    let attempt = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.stored_lines(attempt.try_id).await.unwrap(),
        StoredLines::default()
    );
    let line = |seq: i64, stream: LogStream| LogLine {
        try_id: attempt.try_id,
        seq,
        stream,
        timestamp: Utc::now(),
        text: format!("line {seq}"),
    };
    store
        .append_logs(&[line(0, LogStream::Protocol), line(1, LogStream::Protocol)])
        .await
        .unwrap();
    // No container yet: none of its lines.
    assert_eq!(
        store.stored_lines(attempt.try_id).await.unwrap(),
        StoredLines {
            stdout: 0,
            stderr: 0,
            next_seq: 2
        }
    );
    store
        .set_try_container_fenced(attempt.try_id, "c1", Some("sha256:abc"), 2, None)
        .await
        .unwrap();
    store
        .append_logs(&[
            line(2, LogStream::Stdout),
            line(3, LogStream::Protocol),
            line(4, LogStream::Stderr),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.stored_lines(attempt.try_id).await.unwrap(),
        StoredLines {
            stdout: 2,
            stderr: 1,
            next_seq: 5
        }
    );
}

/// Operating state: every commit is kept in a task's history (a run's, an operator's set and
/// clear), and a run's full refresh starts the tasks it names without their committed state.
pub async fn state_history_keeps_every_commit_and_a_full_refresh_starts_without_state(
    store: &dyn Store,
) {
    let t0 = Utc::now();
    let run = store
        .create_run(new_run("ops", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let key = |run_id: &str, task: &str| TryKey {
        run_id: run_id.to_owned(),
        task_id: task.to_owned(),
        try_number: 1,
    };
    for (task, cursor) in [("extract", 1), ("load", 10)] {
        let attempt = store
            .start_try(&key(&run.run_id, task), "docker", "synth:1", t0)
            .await
            .unwrap();
        store
            .set_pending_state(attempt.try_id, &json!({"cursor": cursor}))
            .await
            .unwrap();
        store.finish_try(&succeeded(attempt.try_id)).await.unwrap();
    }
    store
        .set_run_state(&run.run_id, RunState::Success, t0)
        .await
        .unwrap();
    let history = store.state_history("ops", "extract", 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].action.as_str(),
            history[0].run_id.as_deref(),
            history[0].value.clone()
        ),
        ("run", Some(run.run_id.as_str()), Some(json!({"cursor": 1})))
    );

    let set = store
        .set_committed_state("ops", "extract", Some(&json!({"cursor": 0})), "ops-team")
        .await
        .unwrap();
    assert_eq!(
        (set.action.as_str(), set.actor.as_deref()),
        ("set", Some("ops-team"))
    );
    assert_eq!(
        store.committed_state("ops", "extract").await.unwrap(),
        Some(json!({"cursor": 0}))
    );
    store
        .set_committed_state("ops", "extract", None, "ops-team")
        .await
        .unwrap();
    assert_eq!(store.committed_state("ops", "extract").await.unwrap(), None);
    let history = store.state_history("ops", "extract", 10).await.unwrap();
    let actions: Vec<(&str, Option<Value>)> = history
        .iter()
        .map(|e| (e.action.as_str(), e.value.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            ("clear", None),
            ("set", Some(json!({"cursor": 0}))),
            ("run", Some(json!({"cursor": 1}))),
        ]
    );
    assert!(history.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(
        store
            .state_history("ops", "extract", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // Another task's history is its own.
    assert_eq!(
        store.state_history("ops", "load", 10).await.unwrap().len(),
        1
    );

    // A full refresh of `extract`: its try starts without state, `load`'s with its own.
    store
        .set_committed_state("ops", "extract", Some(&json!({"cursor": 5})), "ops-team")
        .await
        .unwrap();
    let mut refreshing = new_run("ops", 2, RunTrigger::Manual);
    refreshing.full_refresh = vec!["extract".to_owned()];
    let refreshing = store.create_run(refreshing).await.unwrap();
    assert_eq!(refreshing.full_refresh, ["extract"]);
    assert_eq!(
        store
            .get_run(&refreshing.run_id)
            .await
            .unwrap()
            .full_refresh,
        ["extract"]
    );
    let results = store
        .write_tries(&[
            FencedWrite {
                write: TryWrite::Start {
                    key: key(&refreshing.run_id, "extract"),
                    backend: "docker".to_owned(),
                    image_ref: "synth:1".to_owned(),
                    at: t0,
                },
                fence: None,
            },
            FencedWrite {
                write: TryWrite::Start {
                    key: key(&refreshing.run_id, "load"),
                    backend: "docker".to_owned(),
                    image_ref: "synth:1".to_owned(),
                    at: t0,
                },
                fence: None,
            },
        ])
        .await;
    let states: Vec<Option<Value>> = results
        .iter()
        .map(|result| match result {
            Ok(TryWritten::Started {
                committed_state, ..
            }) => committed_state.clone(),
            other => panic!("not started: {other:?}"),
        })
        .collect();
    assert_eq!(states, [None, Some(json!({"cursor": 10}))]);
    // A run without a full refresh has none.
    assert!(store
        .get_run(&run.run_id)
        .await
        .unwrap()
        .full_refresh
        .is_empty());
}

/// Many tries' writes in one transaction (the scheduler's group commit): each gets the result
/// it would have had alone, and a write that fails does not take the others with it.
pub async fn a_group_of_try_writes_keeps_each_result(store: &dyn Store) {
    let t0 = Utc::now();
    store.register_scheduler("a", "host", 1, t0).await.unwrap();
    let mut runs = Vec::new();
    for day in 1..=3 {
        let run = store
            .create_run(new_run("grouped", day, RunTrigger::Scheduled))
            .await
            .unwrap();
        runs.push(run.run_id);
    }
    let fences = store
        .claim_runs("a", t0 - chrono::TimeDelta::seconds(10))
        .await
        .unwrap();
    let fence_of = |run_id: &str| fences.iter().find(|f| f.run_id == run_id).cloned();
    let key = |run: usize, task: &str, number: u32| TryKey {
        run_id: runs[run].clone(),
        task_id: task.to_owned(),
        try_number: number,
    };
    let start = |key: TryKey, fence: Option<Fence>| FencedWrite {
        write: TryWrite::Start {
            key,
            backend: "docker".to_owned(),
            image_ref: "synth:1".to_owned(),
            at: t0,
        },
        fence,
    };
    // A committed state from an earlier run: a try's start hands it over.
    let earlier = store
        .start_try(&key(0, "load", 1), "docker", "synth:1", t0)
        .await
        .unwrap();
    store
        .set_pending_state(earlier.try_id, &json!({"cursor": 41}))
        .await
        .unwrap();
    store.finish_try(&succeeded(earlier.try_id)).await.unwrap();
    store
        .set_run_states(&[(runs[0].clone(), RunState::Success)], t0)
        .await
        .unwrap();

    let stale = Fence {
        run_id: runs[2].clone(),
        token: fence_of(&runs[2]).unwrap().token - 1,
    };
    let results = store
        .write_tries(&[
            start(key(1, "extract", 1), fence_of(&runs[1])),
            start(key(1, "load", 1), fence_of(&runs[1])),
            start(key(0, "load", 1), None),
            start(key(2, "extract", 1), Some(stale.clone())),
            FencedWrite {
                write: TryWrite::Finish(succeeded(999_999)),
                fence: None,
            },
        ])
        .await;
    assert_eq!(results.len(), 5);
    let started = |result: &Result<TryWritten>| match result {
        Ok(TryWritten::Started {
            record,
            committed_state,
        }) => (record.clone(), committed_state.clone()),
        other => panic!("not started: {other:?}"),
    };
    let (extract, extract_state) = started(&results[0]);
    let (load, load_state) = started(&results[1]);
    assert_eq!(
        (extract.task_id.as_str(), extract.try_number),
        ("extract", 1)
    );
    assert_eq!(extract_state, None);
    assert_eq!(load_state, Some(json!({"cursor": 41})));
    assert_ne!(extract.try_id, load.try_id);
    assert!(
        matches!(results[2], Err(StoreError::Conflict(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(StoreError::Fenced(_))),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(StoreError::NotFound(_))),
        "{:?}",
        results[4]
    );
    let instances = store.task_instances(&runs[1]).await.unwrap();
    assert!(instances
        .iter()
        .all(|ti| ti.state == TaskState::Running && ti.try_number == 1));
    assert_eq!(store.tries(&runs[2], "extract").await.unwrap(), vec![]);

    // Containers, lines and ends together; a line stored twice fails its own write only.
    let line = |try_id: i64, seq: i64| LogLine {
        try_id,
        seq,
        stream: LogStream::Stdout,
        timestamp: t0,
        text: format!("line {seq} of {try_id}"),
    };
    store.append_logs(&[line(load.try_id, 0)]).await.unwrap();
    store
        .set_pending_state(extract.try_id, &json!({"cursor": 7}))
        .await
        .unwrap();
    let own = fence_of(&runs[1]);
    let results = store
        .write_tries(&[
            FencedWrite {
                write: TryWrite::Container {
                    try_id: extract.try_id,
                    container_id: "c-extract".to_owned(),
                    image_digest: Some("sha256:e".to_owned()),
                    log_seq: 0,
                },
                fence: own.clone(),
            },
            FencedWrite {
                write: TryWrite::Logs(vec![line(extract.try_id, 0), line(extract.try_id, 1)]),
                fence: own.clone(),
            },
            FencedWrite {
                write: TryWrite::Logs(vec![line(load.try_id, 0)]),
                fence: own.clone(),
            },
            FencedWrite {
                write: TryWrite::Finish(succeeded(extract.try_id)),
                fence: own.clone(),
            },
            FencedWrite {
                write: TryWrite::Finish(TryFinish {
                    try_id: load.try_id,
                    state: TryState::Failed,
                    ended_at: t0,
                    exit_code: Some(2),
                    failure_reason: Some("exit_code: 2".to_owned()),
                    task_state: TaskState::UpForRetry,
                    next_try_at: Some(t0),
                    notifications: Vec::new(),
                    produces: Vec::new(),
                    metrics: Vec::new(),
                }),
                fence: own,
            },
        ])
        .await;
    assert!(matches!(results[0], Ok(TryWritten::Done)));
    assert!(matches!(results[1], Ok(TryWritten::Done)));
    assert!(results[2].is_err(), "a line stored twice: {:?}", results[2]);
    assert!(matches!(results[3], Ok(TryWritten::Done)));
    assert!(matches!(results[4], Ok(TryWritten::Done)));
    let texts: Vec<String> = store
        .logs(extract.try_id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(
        texts,
        [
            format!("line 0 of {}", extract.try_id),
            format!("line 1 of {}", extract.try_id)
        ]
    );
    assert_eq!(store.logs(load.try_id, None, 10).await.unwrap().len(), 1);
    let tries = store.tries(&runs[1], "extract").await.unwrap();
    assert_eq!(tries[0].container_id.as_deref(), Some("c-extract"));
    assert_eq!(tries[0].image_digest.as_deref(), Some("sha256:e"));
    assert_eq!(tries[0].state, TryState::Success);
    let load_try = &store.tries(&runs[1], "load").await.unwrap()[0];
    assert_eq!(
        (load_try.state, load_try.exit_code),
        (TryState::Failed, Some(2))
    );
    let instances = store.task_instances(&runs[1]).await.unwrap();
    let state_of = |task: &str| {
        instances
            .iter()
            .find(|ti| ti.task_id == task)
            .map(|ti| (ti.state, ti.next_try_at.is_some(), ti.ended_at.is_some()))
            .unwrap()
    };
    assert_eq!(state_of("extract"), (TaskState::Success, false, true));
    assert_eq!(state_of("load"), (TaskState::UpForRetry, true, false));

    // Several task instances and runs change in one write each; a task instance's last
    // change holds.
    store
        .set_task_states(
            &[
                (runs[2].clone(), "extract".to_owned(), TaskState::Scheduled),
                (runs[2].clone(), "load".to_owned(), TaskState::Scheduled),
                (runs[2].clone(), "extract".to_owned(), TaskState::Queued),
                (runs[1].clone(), "load".to_owned(), TaskState::Failed),
            ],
            t0,
        )
        .await
        .unwrap();
    let runs = &runs;
    let states = |run: usize| async move {
        store
            .task_instances(&runs[run])
            .await
            .unwrap()
            .into_iter()
            .map(|ti| ti.state)
            .collect::<Vec<_>>()
    };
    assert_eq!(states(2).await, [TaskState::Queued, TaskState::Scheduled]);
    assert_eq!(states(1).await, [TaskState::Success, TaskState::Failed]);
    store
        .set_run_states(
            &[
                (runs[1].clone(), RunState::Success),
                (runs[2].clone(), RunState::Running),
            ],
            t0,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_run(&runs[1]).await.unwrap().state,
        RunState::Success
    );
    let running = store.get_run(&runs[2]).await.unwrap();
    assert_eq!(running.state, RunState::Running);
    assert!(running.started_at.is_some() && running.ended_at.is_none());
    // The succeeded run's published state is committed.
    assert_eq!(
        store.committed_state("grouped", "extract").await.unwrap(),
        Some(json!({"cursor": 7}))
    );
}

pub async fn artifacts_are_recorded_per_try_and_listed_per_run(store: &dyn Store) {
    let run = store
        .create_run(new_run("files", 1, RunTrigger::Manual))
        .await
        .unwrap();
    let other = store
        .create_run(new_run("files", 2, RunTrigger::Manual))
        .await
        .unwrap();
    let start = |run_id: &str, task: &str, n| {
        let key = TryKey {
            run_id: run_id.to_owned(),
            task_id: task.into(),
            try_number: n,
        };
        async move {
            store
                .start_try(&key, "docker", "synth:1", Utc::now())
                .await
                .unwrap()
        }
    };
    let file = |path: &str, size, sha: &str| CapturedFile {
        path: path.into(),
        size,
        sha256: sha.into(),
        modified: 1_700_000_000 + size as i64 % 1000,
    };
    let load = start(&run.run_id, "load", 1).await;
    let extract_1 = start(&run.run_id, "extract", 1).await;
    let extract_2 = start(&run.run_id, "extract", 2).await;
    let elsewhere = start(&other.run_id, "extract", 1).await;
    store
        .record_artifacts(extract_1.try_id, &[file("records.jsonl", 10, "aa")])
        .await
        .unwrap();
    // 5 GiB: sizes are 64-bit.
    let big = 5 * 1024 * 1024 * 1024u64;
    store
        .record_artifacts(
            extract_2.try_id,
            &[
                file("records.jsonl", big, "bb"),
                file("out/part-1.csv", 3, "cc"),
            ],
        )
        .await
        .unwrap();
    store
        .record_artifacts(load.try_id, &[file("loaded.txt", 0, "dd")])
        .await
        .unwrap();
    store
        .record_artifacts(elsewhere.try_id, &[file("records.jsonl", 1, "ee")])
        .await
        .unwrap();
    // Recorded again for the same try: the new size and digest.
    store
        .record_artifacts(extract_2.try_id, &[file("out/part-1.csv", 4, "cd")])
        .await
        .unwrap();
    let listed: Vec<(String, u32, String, u64, String)> = store
        .run_artifacts(&run.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            assert_eq!(a.run_id, run.run_id);
            assert_eq!(a.modified, 1_700_000_000 + a.size as i64 % 1000);
            (a.task_id, a.try_number, a.path, a.size, a.sha256)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("extract".into(), 1, "records.jsonl".into(), 10, "aa".into()),
            ("extract".into(), 2, "out/part-1.csv".into(), 4, "cd".into()),
            (
                "extract".into(),
                2,
                "records.jsonl".into(),
                big,
                "bb".into()
            ),
            ("load".into(), 1, "loaded.txt".into(), 0, "dd".into()),
        ]
    );
    assert!(matches!(
        store.record_artifacts(987_654, &[file("x", 1, "ff")]).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.delete_run_artifacts(&run.run_id).await.unwrap(), 4);
    assert!(store.run_artifacts(&run.run_id).await.unwrap().is_empty());
    assert_eq!(store.run_artifacts(&other.run_id).await.unwrap().len(), 1);
}

/// A notification of `event` about `run` to `connection`, made now.
fn notification(
    run: &RunRecord,
    what: &str,
    event: NotifyEvent,
    connection: &str,
) -> NewNotification {
    NewNotification::new(
        what,
        event,
        connection,
        (&run.job_id, &run.job_version),
        &run.run_id,
        None,
        "failed",
        Some("task `load` failed".into()),
        run.logical_date,
        Utc::now(),
    )
}

/// Issue 17: events enter the outbox with the state change that makes them, once each:
/// a run's end only if that write ended it, a try's end with the try, a missed deadline once.
pub async fn notifications_are_written_with_their_state_change_once(store: &dyn Store) {
    let run = store
        .create_run(new_run("alerts", 1, RunTrigger::Scheduled))
        .await
        .unwrap();
    store
        .set_run_state(&run.run_id, RunState::Running, Utc::now())
        .await
        .unwrap();
    // A try's end carries its task instance's events.
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract".into(),
        try_number: 1,
    };
    let started = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let mut retry = notification(
        &run,
        &format!("try:{}", started.try_id),
        NotifyEvent::Retry,
        "ops",
    );
    retry.task_id = Some("extract".into());
    retry.try_number = Some(1);
    let finish = TryFinish {
        try_id: started.try_id,
        state: TryState::Failed,
        ended_at: Utc::now(),
        exit_code: Some(1),
        failure_reason: Some("exit_code: 1".into()),
        task_state: TaskState::UpForRetry,
        next_try_at: Some(Utc::now()),
        notifications: vec![retry.clone()],
        produces: Vec::new(),
        metrics: Vec::new(),
    };
    store.finish_try(&finish).await.unwrap();
    // Written again (a write retried after its answer was lost): kept once.
    let mut again = finish.clone();
    again.notifications[0].occurred_at = Utc::now();
    store.finish_try(&again).await.unwrap();
    // A deadline is missed once.
    let deadline = notification(
        &run,
        &format!("run:{}:deadline", run.run_id),
        NotifyEvent::DeadlineMissed,
        "ops",
    );
    assert!(store
        .mark_deadline_missed(&run.run_id, &[deadline.clone()], Utc::now())
        .await
        .unwrap());
    assert!(!store
        .mark_deadline_missed(&run.run_id, &[deadline], Utc::now())
        .await
        .unwrap());
    assert!(store
        .get_run(&run.run_id)
        .await
        .unwrap()
        .deadline_missed_at
        .is_some());
    // A run's end, written by two writers: the second finds it ended and adds nothing.
    let failure = notification(
        &run,
        &format!("run:{}:end", run.run_id),
        NotifyEvent::Failure,
        "ops",
    );
    store
        .set_run_states_notifying(
            &[(run.run_id.clone(), RunState::Failed)],
            &[failure.clone()],
            Utc::now(),
        )
        .await
        .unwrap();
    let mut late = notification(
        &run,
        &format!("run:{}:end-2", run.run_id),
        NotifyEvent::Failure,
        "ops",
    );
    late.reason = Some("a second writer".into());
    store
        .set_run_states_notifying(
            &[(run.run_id.clone(), RunState::Failed)],
            &[late],
            Utc::now(),
        )
        .await
        .unwrap();
    let listed = store
        .list_notifications(&NotificationFilter {
            run_id: Some(run.run_id.clone()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let events: Vec<(NotifyEvent, &str)> =
        listed.iter().map(|n| (n.event, n.id.as_str())).collect();
    assert_eq!(
        events,
        [
            (NotifyEvent::Failure, failure.id.as_str()),
            (NotifyEvent::DeadlineMissed, listed[1].id.as_str()),
            (NotifyEvent::Retry, retry.id.as_str()),
        ],
        "newest first"
    );
    let retry_record = &listed[2];
    assert_eq!(retry_record.task_id.as_deref(), Some("extract"));
    assert_eq!(retry_record.try_number, Some(1));
    assert_eq!(retry_record.status, NotificationStatus::Pending);
    assert_eq!(retry_record.attempts, 0);
    assert_eq!(
        store.find_notification(&retry.id[..13]).await.unwrap().seq,
        retry_record.seq
    );
    // The same job filter, and nothing of other jobs.
    let of_job = store
        .list_notifications(&NotificationFilter {
            job_id: Some("alerts".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_job.len(), 2);
    let outcomes = store.job_outcomes("alerts", 10).await.unwrap();
    assert_eq!(outcomes, [(run.run_id.clone(), RunState::Failed)]);
}

/// Issue 17: delivery claims take each run's events to a connection in order (the next
/// waits for the one before to be delivered or given up), skip live claims, and record every
/// attempt; a failed delivery is due again at its retry time and can be retried by hand.
pub async fn notifications_are_claimed_in_order_and_their_attempts_recorded(store: &dyn Store) {
    let run = store
        .create_run(new_run("outbox", 2, RunTrigger::Scheduled))
        .await
        .unwrap();
    let other = store
        .create_run(new_run("outbox", 3, RunTrigger::Scheduled))
        .await
        .unwrap();
    let first = notification(&run, "a", NotifyEvent::Retry, "ops");
    let second = notification(&run, "b", NotifyEvent::Failure, "ops");
    let elsewhere = notification(&run, "c", NotifyEvent::Failure, "team");
    let other_run = notification(&other, "d", NotifyEvent::Failure, "ops");
    assert!(store
        .mark_deadline_missed(
            &run.run_id,
            &[first.clone(), second.clone(), elsewhere.clone()],
            Utc::now()
        )
        .await
        .unwrap());
    assert!(store
        .mark_deadline_missed(&other.run_id, &[other_run.clone()], Utc::now())
        .await
        .unwrap());
    let now = Utc::now() + chrono::TimeDelta::seconds(1);
    let until = now + chrono::TimeDelta::seconds(30);
    let claimed = store
        .claim_notifications("s1", now, until, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|n| n.id.as_str()).collect();
    // `second` waits behind `first` (same run, same connection).
    assert_eq!(
        ids,
        [
            first.id.as_str(),
            elsewhere.id.as_str(),
            other_run.id.as_str()
        ]
    );
    // Claimed: another scheduler gets none of them, nor `second`.
    assert!(store
        .claim_notifications("s2", now, until, 10)
        .await
        .unwrap()
        .is_empty());
    // The first attempt fails and is due again later; `second` still waits.
    let failed = NotificationAttempt {
        attempt: 0,
        at: now,
        channel: Some("webhook".into()),
        ok: false,
        status_code: Some(503),
        error: Some("receiver answered 503".into()),
        duration_ms: 12,
    };
    let retry_at = now + chrono::TimeDelta::seconds(60);
    store
        .record_delivery(claimed[0].seq, &failed, DeliveryOutcome::RetryAt(retry_at))
        .await
        .unwrap();
    assert!(store
        .claim_notifications("s2", now, until, 10)
        .await
        .unwrap()
        .is_empty());
    let later = retry_at + chrono::TimeDelta::seconds(1);
    let again = store
        .claim_notifications("s2", later, later + chrono::TimeDelta::seconds(30), 10)
        .await
        .unwrap();
    // The other claims ran out by then: they come back too, in order.
    let ids: Vec<&str> = again.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            first.id.as_str(),
            elsewhere.id.as_str(),
            other_run.id.as_str()
        ]
    );
    let delivered = NotificationAttempt {
        ok: true,
        status_code: Some(200),
        error: None,
        ..failed.clone()
    };
    store
        .record_delivery(again[0].seq, &delivered, DeliveryOutcome::Delivered)
        .await
        .unwrap();
    store
        .record_delivery(again[1].seq, &failed, DeliveryOutcome::GiveUp)
        .await
        .unwrap();
    // Now `second` is the head of its run and connection.
    let next = store
        .claim_notifications("s2", later, later + chrono::TimeDelta::seconds(30), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = next.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str()]);
    let first_record = store.find_notification(&first.id).await.unwrap();
    assert_eq!(first_record.status, NotificationStatus::Delivered);
    assert_eq!(first_record.attempts, 2);
    assert_eq!(first_record.channel.as_deref(), Some("webhook"));
    assert!(first_record.delivered_at.is_some());
    let attempts = store.notification_attempts(first_record.seq).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.ok, a.status_code))
            .collect::<Vec<_>>(),
        [(1, false, Some(503)), (2, true, Some(200))]
    );
    assert_eq!(attempts[0].error.as_deref(), Some("receiver answered 503"));
    // The failed ones: given up, and pending after a failed attempt.
    let failing = store
        .list_notifications(&NotificationFilter {
            failed: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failing.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        [elsewhere.id.as_str()]
    );
    let gave_up = &failing[0];
    assert_eq!(gave_up.status, NotificationStatus::Failed);
    assert_eq!(gave_up.last_status_code, Some(503));
    store.retry_notification(gave_up.seq, later).await.unwrap();
    let retried = store.find_notification(&gave_up.id).await.unwrap();
    assert_eq!(retried.status, NotificationStatus::Pending);
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!(
        counts,
        [
            ("webhook".to_owned(), false, 2),
            ("webhook".to_owned(), true, 1)
        ]
    );
}

/// Issue 17: a task instance waiting for its backend keeps when it began waiting; given up
/// on, it gets a failed try with the backend's answer and its task state, once.
pub async fn a_waiting_task_instance_is_given_up_on_once(store: &dyn Store) {
    let run = store
        .create_run(new_run("waits", 4, RunTrigger::Scheduled))
        .await
        .unwrap();
    let since = Utc.with_ymd_and_hms(2024, 2, 1, 0, 0, 0).unwrap();
    store
        .set_task_state(&run.run_id, "extract", TaskState::Scheduled, Utc::now())
        .await
        .unwrap();
    let waiting = |at| {
        Some(Waiting {
            since: at,
            reason: "cannot reach Nomad".into(),
        })
    };
    store
        .set_waiting(&[(run.run_id.clone(), "extract".into(), waiting(since))])
        .await
        .unwrap();
    store
        .set_waiting(&[(
            run.run_id.clone(),
            "extract".into(),
            waiting(since + chrono::TimeDelta::hours(1)),
        )])
        .await
        .unwrap();
    let ti = &store.task_instances(&run.run_id).await.unwrap()[0];
    assert_eq!(ti.waiting, waiting(since), "the wait keeps its start");
    let give_up = GiveUp {
        key: TryKey {
            run_id: run.run_id.clone(),
            task_id: "extract".into(),
            try_number: 1,
        },
        backend: "nomad".into(),
        image_ref: "synth:1".into(),
        reason: "backend: cannot reach Nomad (waited 10m)".into(),
        task_state: TaskState::Failed,
        next_try_at: None,
        at: Utc::now(),
        notifications: vec![notification(&run, "stuck", NotifyEvent::Stuck, "ops")],
    };
    assert!(store.give_up_waiting(&give_up).await.unwrap());
    assert!(!store.give_up_waiting(&give_up).await.unwrap(), "once");
    let ti = &store.task_instances(&run.run_id).await.unwrap()[0];
    assert_eq!(
        (ti.state, ti.try_number, ti.waiting.clone()),
        (TaskState::Failed, 1, None)
    );
    let tries = store.tries(&run.run_id, "extract").await.unwrap();
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].state, TryState::Failed);
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("backend: cannot reach Nomad (waited 10m)")
    );
    let listed = store
        .list_notifications(&NotificationFilter {
            run_id: Some(run.run_id.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event, NotifyEvent::Stuck);
    // A try that starts ends the wait.
    store
        .set_waiting(&[(run.run_id.clone(), "load".into(), waiting(since))])
        .await
        .unwrap();
    store
        .set_waiting(&[(run.run_id.clone(), "load".into(), None)])
        .await
        .unwrap();
    assert_eq!(
        store.task_instances(&run.run_id).await.unwrap()[1].waiting,
        None
    );
}

pub async fn a_mapped_task_expands_clears_and_expands_again(store: &dyn Store) {
    let run = store
        .create_run(new_run("mapped", 5, RunTrigger::Manual))
        .await
        .unwrap();
    async fn states(store: &dyn Store, run_id: &str) -> Vec<(String, TaskState)> {
        let mut states: Vec<(String, TaskState)> = store
            .task_instances(run_id)
            .await
            .unwrap()
            .into_iter()
            .map(|ti| (ti.task_id, ti.state))
            .collect();
        states.sort();
        states
    }
    // Expanded from `none` too: the pass that scheduled it may not have written it yet.
    let items = [json!({"id": "a"}), json!("b"), json!(3)];
    assert!(store
        .expand_task(&run.run_id, "extract", &items)
        .await
        .unwrap());
    assert!(
        !store
            .expand_task(&run.run_id, "extract", &items)
            .await
            .unwrap(),
        "once"
    );
    assert_eq!(
        states(store, &run.run_id).await,
        [
            ("extract[0]".into(), TaskState::Scheduled),
            ("extract[1]".into(), TaskState::Scheduled),
            ("extract[2]".into(), TaskState::Scheduled),
            ("load".into(), TaskState::None),
        ]
    );
    let keys = ["extract[0]".to_owned(), "extract[2]".into(), "load".into()];
    let items = store.map_items(&run.run_id, &keys).await.unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items["extract[0]"], json!({"id": "a"}));
    assert_eq!(items["extract[2]"], json!(3));

    // A task's outputs are its own and its instances', not another task's.
    for (key, value) in [("extract[1]", 20), ("extract[0]", 10), ("load", 30)] {
        store
            .put_output(&run.run_id, key, "rows", &json!(value))
            .await
            .unwrap();
    }
    let outputs = store.task_outputs(&run.run_id, "extract").await.unwrap();
    assert_eq!(
        outputs,
        [
            ("extract[0]".into(), "rows".into(), json!(10)),
            ("extract[1]".into(), "rows".into(), json!(20)),
        ]
    );

    // A try of instance 2, then the whole task cleared: its instances are removed and the
    // task waits to be expanded again; a shorter list reuses the first instances.
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "extract[2]".into(),
        try_number: 1,
    };
    let started = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    store.finish_try(&succeeded(started.try_id)).await.unwrap();
    let done: Vec<(String, String, TaskState)> = (0..3)
        .map(|i| {
            (
                run.run_id.clone(),
                format!("extract[{i}]"),
                TaskState::Success,
            )
        })
        .collect();
    store.set_task_states(&done, Utc::now()).await.unwrap();
    store
        .clear_task_instances(&run.run_id, &["extract".into()])
        .await
        .unwrap();
    assert_eq!(
        states(store, &run.run_id).await,
        [
            ("extract".into(), TaskState::None),
            ("extract[0]".into(), TaskState::Removed),
            ("extract[1]".into(), TaskState::Removed),
            ("extract[2]".into(), TaskState::Removed),
            ("load".into(), TaskState::None),
        ]
    );
    assert!(store
        .expand_task(&run.run_id, "extract", &[json!("x"), json!("y")])
        .await
        .unwrap());
    assert_eq!(
        states(store, &run.run_id).await,
        [
            ("extract[0]".into(), TaskState::Scheduled),
            ("extract[1]".into(), TaskState::Scheduled),
            ("extract[2]".into(), TaskState::Removed),
            ("load".into(), TaskState::None),
        ]
    );
    assert_eq!(
        store
            .map_items(&run.run_id, &["extract[1]".into()])
            .await
            .unwrap()["extract[1]"],
        json!("y")
    );
    // An instance cleared alone goes back to `none` and keeps its tries.
    store
        .clear_task_instances(&run.run_id, &["extract[2]".into()])
        .await
        .unwrap();
    let instances = store.task_instances(&run.run_id).await.unwrap();
    let third = instances
        .iter()
        .find(|ti| ti.task_id == "extract[2]")
        .unwrap();
    assert_eq!((third.state, third.try_number), (TaskState::None, 1));

    // A task whose list cannot be made fails before any container, with its reason.
    let failed = GiveUp {
        key: TryKey {
            run_id: run.run_id.clone(),
            task_id: "load".into(),
            try_number: 1,
        },
        backend: "docker".into(),
        image_ref: "synth:1".into(),
        reason: "for_each: `params.ids` is not a JSON list (it is a number)".into(),
        task_state: TaskState::Failed,
        next_try_at: None,
        at: Utc::now(),
        notifications: Vec::new(),
    };
    assert!(store.fail_before_start(&failed).await.unwrap());
    assert!(!store.fail_before_start(&failed).await.unwrap(), "once");
    let tries = store.tries(&run.run_id, "load").await.unwrap();
    assert_eq!(
        (tries.len(), tries[0].failure_reason.as_deref()),
        (
            1,
            Some("for_each: `params.ids` is not a JSON list (it is a number)")
        )
    );
}

pub async fn asset_updates_trigger_a_run_once_and_a_new_consumer_reads_from_now(store: &dyn Store) {
    use stevedore_domain::assets::{AssetMode, AssetTrigger};
    // An update before the consumer was first seen does not count for it.
    let early = store
        .create_run(new_run("producer", 6, RunTrigger::Manual))
        .await
        .unwrap();
    store
        .set_run_states(&[(early.run_id.clone(), RunState::Success)], Utc::now())
        .await
        .unwrap();
    let trigger = AssetTrigger {
        assets: vec!["job:producer".into(), "warehouse.charges".into()],
        mode: AssetMode::All,
        line: 2,
    };
    let consumer = |day| new_run("consumer", day, RunTrigger::Asset);
    assert!(store
        .trigger_asset_run(&trigger, consumer(7))
        .await
        .unwrap()
        .is_none());

    // A run that succeeds updates `job:producer` once, however often its end is written; a
    // try that succeeds updates what its task produces.
    let run = store
        .create_run(new_run("producer", 8, RunTrigger::Manual))
        .await
        .unwrap();
    for _ in 0..2 {
        store
            .set_run_states(&[(run.run_id.clone(), RunState::Success)], Utc::now())
            .await
            .unwrap();
    }
    assert!(
        store
            .trigger_asset_run(&trigger, consumer(9))
            .await
            .unwrap()
            .is_none(),
        "all: the charges were not updated yet"
    );
    let key = TryKey {
        run_id: run.run_id.clone(),
        task_id: "load".into(),
        try_number: 1,
    };
    let started = store
        .start_try(&key, "docker", "synth:1", Utc::now())
        .await
        .unwrap();
    let mut finish = succeeded(started.try_id);
    finish.produces = vec!["warehouse.charges".into()];
    store.finish_try(&finish).await.unwrap();
    let events = store.asset_events(Some("job:producer"), 10).await.unwrap();
    assert_eq!(
        events.len(),
        2,
        "the early run's and this run's: {events:?}"
    );

    let made = store
        .trigger_asset_run(&trigger, consumer(10))
        .await
        .unwrap()
        .expect("both assets updated");
    assert_eq!(made.trigger, RunTrigger::Asset);
    let triggering = made.params["triggering_asset_events"].as_array().unwrap();
    let assets: Vec<&str> = triggering
        .iter()
        .map(|e| e["asset"].as_str().unwrap())
        .collect();
    assert_eq!(assets, ["job:producer", "warehouse.charges"]);
    assert_eq!(triggering[1]["task_id"], "load");
    assert_eq!(made.params["n"], 1, "the job's own params stay");
    assert!(
        store
            .trigger_asset_run(&trigger, consumer(11))
            .await
            .unwrap()
            .is_none(),
        "each update triggers one run"
    );
    let latest = store.asset_events(None, 10).await.unwrap();
    let names: Vec<&str> = latest.iter().map(|e| e.asset.as_str()).collect();
    assert_eq!(names, ["job:producer", "warehouse.charges"]);
}

/// Runs that ended at the same instant are found in the order of their ids, so a clean's
/// batches (each after the previous one's last run) take every one of them once, however
/// the batches cut them.
pub async fn runs_ending_together_are_found_once_across_batches(store: &dyn Store) {
    store
        .upsert_job("tied", "v1", "jobs/tied.yaml", "id: tied")
        .await
        .unwrap();
    let end = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap();
    let mut made = Vec::new();
    for day in 1..=5 {
        let run_id = store
            .create_run(new_run("tied", day, RunTrigger::Manual))
            .await
            .unwrap()
            .run_id;
        store
            .set_run_state(&run_id, RunState::Running, end)
            .await
            .unwrap();
        store
            .set_run_state(&run_id, RunState::Success, end)
            .await
            .unwrap();
        made.push(run_id);
    }
    // In the order the store sorts ids (PostgreSQL's collation may not be byte order).
    let in_one_batch: Vec<String> = store
        .runs_to_clean(&CleanFilter::default(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|run| run.run_id)
        .collect();
    made.sort();
    let mut sorted_found = in_one_batch.clone();
    sorted_found.sort();
    assert_eq!(sorted_found, made);
    let mut filter = CleanFilter::default();
    let mut found = Vec::new();
    loop {
        let batch = store.runs_to_clean(&filter, 2).await.unwrap();
        let Some(last) = batch.last() else { break };
        filter.after = Some(last.into());
        found.extend(batch.into_iter().map(|run| run.run_id));
    }
    assert_eq!(found, in_one_batch);
}

#[macro_export]
macro_rules! store_contract_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            macro_rules! case {
                ($test:ident) => {
                    #[tokio::test]
                    async fn $test() {
                        let (store, _guard) = $make.await;
                        super::$test(&store).await;
                    }
                };
            }
            case!(jobs_keep_every_version);
            case!(scheduled_runs_are_unique_per_logical_date);
            case!(runs_are_found_by_prefix_and_listed_newest_first);
            case!(tries_record_results_and_commit_state_only_on_success);
            case!(log_lines_keep_their_order_and_streams);
            case!(metrics_are_kept_per_try_and_task_and_histograms_count_each_end);
            case!(runs_are_cleaned_by_age_count_and_job_and_never_what_is_still_needed);
            case!(runs_ending_together_are_found_once_across_batches);
            case!(archived_logs_are_listed_recorded_and_their_rows_deleted_in_batches);
            case!(pools_start_with_default_and_can_be_resized);
            case!(connections_keep_only_sealed_values);
            case!(tokens_are_found_by_hash_until_revoked);
            case!(run_lists_page_newest_first_and_states_are_counted);
            case!(claims_are_exclusive_fair_and_fenced);
            case!(stored_lines_count_container_lines_per_stream);
            case!(a_group_of_try_writes_keeps_each_result);
            case!(artifacts_are_recorded_per_try_and_listed_per_run);
            case!(notifications_are_written_with_their_state_change_once);
            case!(notifications_are_claimed_in_order_and_their_attempts_recorded);
            case!(a_waiting_task_instance_is_given_up_on_once);
            case!(state_history_keeps_every_commit_and_a_full_refresh_starts_without_state);
            case!(a_mapped_task_expands_clears_and_expands_again);
            case!(asset_updates_trigger_a_run_once_and_a_new_consumer_reads_from_now);
        }
    };
}

async fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("stevedore.db"))
        .await
        .unwrap();
    (store, dir)
}

store_contract_suite!(sqlite, sqlite_store());

/// Security review, finding 10: a new SQLite store was created 0644, so every local user
/// could read its log lines, sealed connections and token hashes.
#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (store, dir) = sqlite_store().await;
    // A write makes SQLite create the WAL and its index.
    store
        .create_token("t", stevedore_domain::role::Role::Viewer, "hash")
        .await
        .unwrap();
    SqliteStore::lock_scheduler(dir.path().join("stevedore.db")).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} is {mode:o}: others can read it",
            entry.path().display()
        );
        seen += 1;
    }
    assert!(
        seen >= 3,
        "the store file, its WAL and the lock: {seen} files"
    );
}

/// Issue 20's benchmark found it: `db clean` beside a working scheduler on SQLite. A
/// run's delete read before it wrote, in a deferred transaction, and failed with `database
/// is locked` (not waited for) whenever the scheduler wrote in between; giving the space
/// back chased the pages the scheduler kept freeing. Two stores on one file, as two
/// processes: one writes without pause while the other deletes 200 runs and gives the
/// space back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_beside_a_writing_scheduler_neither_fails_nor_waits_forever() {
    let (cleaner, dir) = sqlite_store().await;
    let writer = SqliteStore::open(dir.path().join("stevedore.db"))
        .await
        .unwrap();
    let mut old = Vec::new();
    for day in 0..200 {
        let run = cleaner
            .create_run(new_run("demo", 1 + day % 28, RunTrigger::Manual))
            .await
            .unwrap();
        cleaner
            .set_run_state(&run.run_id, RunState::Success, Utc::now())
            .await
            .unwrap();
        old.push(run.run_id);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut writes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let run = writer
                    .create_run(new_run("busy", 1 + writes % 28, RunTrigger::Manual))
                    .await
                    .unwrap();
                writer
                    .set_run_state(&run.run_id, RunState::Running, Utc::now())
                    .await
                    .unwrap();
                writes += 1;
            }
            writes
        })
    };
    let cleaning = async {
        let mut removed = 0;
        for run_id in &old {
            removed += cleaner
                .delete_runs(std::slice::from_ref(run_id))
                .await
                .unwrap()
                .runs;
        }
        assert!(cleaner.reclaim_space().await.unwrap());
        removed
    };
    let removed = tokio::time::timeout(std::time::Duration::from_secs(60), cleaning)
        .await
        .expect("the clean ended");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writing.await.unwrap();
    assert_eq!(removed, 200);
    assert!(writes > 0);
}

/// A store on a throwaway PostgreSQL server (`stevedore_testkit::Postgres`, 127.0.0.1 only).
async fn postgres_store() -> (PostgresStore, stevedore_testkit::Postgres) {
    let server = stevedore_testkit::Postgres::start_local();
    let store = PostgresStore::open(&server.url()).await.unwrap();
    (store, server)
}

store_contract_suite!(postgres, postgres_store());

/// Issue 14: sqlx runs the PostgreSQL migrations now. A database that Stevedore migrated
/// before (its records in `schema_migrations`) is taken up where it was: nothing runs again,
/// nothing is lost, and sqlx's records hold the same versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_before_sqlx_ran_the_migrations_is_taken_up_where_it_was() {
    let server = stevedore_testkit::Postgres::start_local();
    let url = server.url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    // What the earlier migration runner left behind: the three migrations applied, and
    // recorded in its own table.
    for sql in [
        include_str!("../migrations/postgres/0001_init.sql"),
        include_str!("../migrations/postgres/0002_claims.sql"),
        include_str!("../migrations/postgres/0003_scheduling_indexes.sql"),
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL); \
         INSERT INTO schema_migrations VALUES (1, '2026-11-01T00:00:00Z'), (2, '2026-11-01T00:00:00Z'), (3, '2026-11-01T00:00:00Z'); \
         INSERT INTO pools (name, slots, description, updated_at) VALUES ('kept', 3, 'made before', '2026-11-01T00:00:00Z')",
    ] {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    }
    let store = PostgresStore::open(&url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    // The three carried over, and the newer ones run after them: every migration there is.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        })
        .count() as i64;
    assert!(migrations >= 10, "{migrations} migrations");
    assert_eq!(versions, (1..=migrations).collect::<Vec<i64>>());
    let old: Option<String> = sqlx::query_scalar("SELECT to_regclass('schema_migrations')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old, None, "the old records are carried over once");
    let pools = store.list_pools().await.unwrap();
    assert!(
        pools.iter().any(|p| p.name == "kept" && p.slots == 3),
        "{pools:?}"
    );
    // Opened again, on sqlx's records alone: nothing to do, nothing lost.
    let again = PostgresStore::open(&url).await.unwrap();
    assert_eq!(again.list_pools().await.unwrap().len(), pools.len());
}
