//! Jobs that run when assets are updated, through a real scheduler on a real SQLite store,
//! tries played by scripted backends on a manual clock ([`Harness::scripted`]): a task that
//! `produces` an asset triggers its consumers once per successful producing run, a consumer
//! of two assets waits for both, `schedule: {after: [JOB]}` follows a job's successful runs,
//! and a failure updates nothing.

use std::time::Duration;

use stevedore_backend::scripted::Play;
use stevedore_domain::state::{RunState, RunTrigger};
use stevedore_store::RunFilter;
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

fn process_task(id: &str, extra: &str) -> String {
    format!("  - id: {id}\n    backend: process\n    command: [synth]\n    args: [noop]\n{extra}")
}

async fn runs_of(harness: &Harness, job_id: &str) -> Vec<stevedore_store::RunRecord> {
    let mut runs = harness
        .store
        .list_runs(&RunFilter {
            job_id: Some(job_id.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    runs.reverse();
    runs
}

/// Waits for every run of `job_id` to end, and returns them, oldest first.
async fn settled(harness: &Harness, job_id: &str) -> Vec<stevedore_store::RunRecord> {
    // Passes enough for a due run to be made and end.
    harness.pass_time(Duration::from_secs(5)).await;
    for run in runs_of(harness, job_id).await {
        harness.wait_run(&run.run_id, MINUTE).await;
    }
    runs_of(harness, job_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_trigger_each_consumer_once_per_producing_run() {
    let charges = format!(
        "id: charges\ntasks:\n{}",
        process_task("load", "    produces: [warehouse.charges]\n")
    );
    let refunds = format!(
        "id: refunds\ntasks:\n{}",
        process_task("load", "    produces: [warehouse.refunds]\n")
    );
    let models = format!(
        "id: models\nschedule: {{assets: [warehouse.charges]}}\ntasks:\n  - id: run\n    backend: process\n    command: [synth]\n    args: [\"{{{{ triggering_asset_events }}}}\"]\n"
    );
    let both = format!(
        "id: both\nschedule: {{assets: [warehouse.charges, warehouse.refunds]}}\ntasks:\n{}",
        process_task("run", "")
    );
    let either = format!(
        "id: either\nschedule: {{assets: [warehouse.charges, warehouse.refunds], mode: any}}\ntasks:\n{}",
        process_task("run", "")
    );
    let after = format!(
        "id: report\nschedule: {{after: [charges]}}\ntasks:\n{}",
        process_task("run", "")
    );
    let harness = Harness::scripted(&[
        ("charges.yaml", &charges),
        ("refunds.yaml", &refunds),
        ("models.yaml", &models),
        ("both.yaml", &both),
        ("either.yaml", &either),
        ("report.yaml", &after),
    ])
    .await;
    harness.script("run", |spec| {
        Play::exit(0).stdout(spec.args.last().cloned().unwrap_or_default())
    });
    // The consumers are seen before anything is produced.
    harness.pass_time(Duration::from_secs(2)).await;

    // Two producing runs, one after the other: a consumer run after each.
    for round in 1..=2 {
        let run = harness.trigger("charges").await;
        assert_eq!(
            harness.wait_run(&run.run_id, MINUTE).await.state,
            RunState::Success
        );
        for job in ["models", "report", "either"] {
            let runs = settled(&harness, job).await;
            assert_eq!(runs.len(), round, "{job} after charges run {round}");
            assert!(runs
                .iter()
                .all(|r| r.trigger == RunTrigger::Asset && r.state == RunState::Success));
        }
        assert!(
            runs_of(&harness, "both").await.is_empty(),
            "both waits for refunds too"
        );
    }
    // The run's params say what triggered it, and so does the template.
    let models_runs = runs_of(&harness, "models").await;
    let events = &models_runs[1].params["triggering_asset_events"];
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["asset"], "warehouse.charges");
    assert_eq!(events[0]["job_id"], "charges");
    assert_eq!(events[0]["task_id"], "load");
    let attempt = &harness.tries(&models_runs[1].run_id, "run").await[0];
    let printed = &harness.log_lines(attempt).await[0].1;
    let printed: serde_json::Value = serde_json::from_str(printed).unwrap();
    assert_eq!(&printed, events);

    // The second asset: `both` runs once, with the updates of both since it was seen.
    let run = harness.trigger("refunds").await;
    harness.wait_run(&run.run_id, MINUTE).await;
    let both_runs = settled(&harness, "both").await;
    assert_eq!(both_runs.len(), 1);
    let events = both_runs[0].params["triggering_asset_events"]
        .as_array()
        .unwrap()
        .clone();
    let assets: Vec<&str> = events
        .iter()
        .map(|e| e["asset"].as_str().unwrap())
        .collect();
    assert_eq!(
        assets,
        [
            "warehouse.charges",
            "warehouse.charges",
            "warehouse.refunds"
        ]
    );
    assert_eq!(
        settled(&harness, "either").await.len(),
        3,
        "any: refunds alone"
    );
    assert_eq!(
        settled(&harness, "models").await.len(),
        2,
        "not a models asset"
    );

    // A producing run that fails updates nothing.
    harness.script("load", |_| Play::exit(1).stderr("the warehouse is down"));
    let run = harness.trigger("charges").await;
    assert_eq!(
        harness.wait_run(&run.run_id, MINUTE).await.state,
        RunState::Failed
    );
    assert_eq!(settled(&harness, "models").await.len(), 2);
    assert_eq!(settled(&harness, "report").await.len(), 2);

    // What `assets list` and the API show: producers, consumers, the last update.
    let listed = stevedore_ops::assets::list(harness.store.as_ref(), &harness.jobs_dir())
        .await
        .unwrap();
    let charges = listed
        .iter()
        .find(|a| a.name == "warehouse.charges")
        .unwrap();
    assert_eq!(charges.producers, ["charges.load"]);
    assert_eq!(charges.consumers, ["both", "either", "models"]);
    let last = charges.last_update.as_ref().unwrap();
    assert_eq!(
        (last.job_id.as_str(), last.task_id.as_deref()),
        ("charges", Some("load"))
    );
    let job = listed.iter().find(|a| a.name == "job:charges").unwrap();
    assert_eq!(
        (job.producers.clone(), job.consumers.clone()),
        (vec!["charges".to_owned()], vec!["report".to_owned()])
    );
    let shown = stevedore_ops::assets::show(
        harness.store.as_ref(),
        &harness.jobs_dir(),
        "warehouse.charges",
        10,
    )
    .await
    .unwrap();
    assert_eq!(shown.updates.len(), 2, "two successful producing runs");
    assert!(
        stevedore_ops::assets::show(harness.store.as_ref(), &harness.jobs_dir(), "nope", 10)
            .await
            .is_err()
    );
    harness.stop().await;
}
