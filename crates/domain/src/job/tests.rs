#[allow(unused_imports)]
use super::*;

const GOOD: &str = r#"
id: stripe_to_warehouse
description: Hourly Stripe charges into the warehouse
schedule: "0 * * * *"
timezone: Europe/Berlin
start_date: 2024-01-01T00:00:00
end_date: null
catchup: false
max_active_runs: 1
max_active_tasks: 16
params: {lookback_days: 1}
defaults:
  retries: 3
  retry_delay: 30s
  retry_exponential_backoff: true
  max_retry_delay: 10m
  timeout: 1h
  backend: docker
tasks:
  - id: extract
    image: localhost:5000/integrations/http-extract:1.4.2
    args: ["--since", "{{ data_interval_start }}", "--stream", "charges", "--days", "{{ params.lookback_days }}"]
    env: {PAGE_SIZE: 100}
    connections: [stripe]
    resources: {cpu: 0.5, memory: 256Mi}
    pool: stripe_api
    priority: 10
  - id: load
    image: localhost:5000/integrations/postgres-load:0.3.0
    depends_on: [extract]
    trigger_rule: all_success
    retries: 0
    args: ["--rows", "{{ outputs.extract.rows_file }}"]
"#;

fn errors(text: &str) -> Vec<String> {
    parse_job("jobs/bad.yaml", text)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn parses_the_design_example_with_defaults_merged() {
    let job = parse_job("jobs/stripe.yaml", GOOD).unwrap();
    assert_eq!(job.id, "stripe_to_warehouse");
    assert_eq!(job.timetable.timezone, Tz::Europe__Berlin);
    // Midnight in Berlin in winter is 23:00 UTC the day before.
    assert_eq!(
        job.timetable.start_date.unwrap().to_rfc3339(),
        "2023-12-31T23:00:00+00:00"
    );
    let extract = job.task("extract").unwrap();
    assert_eq!(extract.retry.retries, 3);
    assert_eq!(extract.retry.retry_delay, Duration::from_secs(30));
    assert_eq!(
        extract.retry.max_retry_delay,
        Some(Duration::from_secs(600))
    );
    assert_eq!(extract.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(extract.env["PAGE_SIZE"], "100");
    assert_eq!(extract.resources.memory_bytes, Some(256 << 20));
    assert_eq!(extract.pool, "stripe_api");
    let load = job.task("load").unwrap();
    assert_eq!(load.retry.retries, 0);
    assert_eq!(load.depends_on, vec!["extract"]);
    assert_eq!(
        job.leaves()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec!["load"]
    );
    assert_eq!(job.version.len(), 64);
}

/// Security review, finding 9: a param or an upstream output could choose the image
/// that receives the task's connections and registry credentials.
#[test]
fn a_param_or_an_output_chooses_the_image_only_from_the_allow_list() {
    let by_param =
        "id: a\nparams: {tag: \"1\"}\ntasks:\n  - id: t\n    image: \"evil/{{ params.tag }}\"\n";
    let found = errors(by_param);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("jobs/bad.yaml:5:"), "{found:?}");
    assert!(found[0].contains("image uses `params.tag`"), "{found:?}");
    assert!(found[0].contains("allowed_images"), "{found:?}");
    let by_output = "id: a\ntasks:\n  - id: up\n    image: x:1\n  - id: t\n    depends_on: [up]\n    image: \"{{ outputs.up.image }}\"\n";
    assert!(errors(by_output)[0].contains("image uses `outputs.up.image`"));
    // The run's own context may shape the image; the allow-list opens params.
    let context = "id: a\ntasks:\n  - id: t\n    image: \"x:{{ job_id }}\"\n";
    assert!(parse_job("a.yaml", context).is_ok());
    let allowed = "id: a\nparams: {tag: \"1\"}\nallowed_images: [stevedore/synth, \"localhost:5000/i/x\"]\ntasks:\n  - id: t\n    image: \"stevedore/synth:{{ params.tag }}\"\n";
    let job = parse_job("a.yaml", allowed).unwrap();
    assert_eq!(
        job.allowed_images,
        ["stevedore/synth", "localhost:5000/i/x"]
    );
    let tagged = "id: a\nallowed_images: [\"x:1\"]\ntasks:\n  - id: t\n    image: x:1\n";
    assert!(
        errors(tagged)[0].contains("without a tag"),
        "{:?}",
        errors(tagged)
    );
}

#[test]
fn read_only_rootfs_and_user_come_from_the_task_or_defaults() {
    let text = "id: a\ndefaults: {read_only_rootfs: true, user: 1000}\ntasks:\n  - id: t\n    image: x:1\n  - id: u\n    image: x:1\n    read_only_rootfs: false\n    user: \"nobody:nogroup\"\n";
    let job = parse_job("a.yaml", text).unwrap();
    let t = job.task("t").unwrap();
    assert!(t.read_only_rootfs);
    assert_eq!(t.user.as_deref(), Some("1000"));
    let u = job.task("u").unwrap();
    assert!(!u.read_only_rootfs);
    assert_eq!(u.user.as_deref(), Some("nobody:nogroup"));
    let bad = "id: a\ntasks:\n  - id: t\n    image: x:1\n    user: \"root; rm\"\n";
    assert!(
        errors(bad)[0].contains("user `root; rm`"),
        "{:?}",
        errors(bad)
    );
}

#[test]
fn unknown_keys_name_the_line() {
    let text = "id: a\ntasks:\n  - id: t\n    image: x:1\n    imgae: y\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("jobs/bad.yaml:5:"), "{errors:?}");
    assert!(errors[0].contains("imgae"), "{errors:?}");
}

#[test]
fn duplicate_ids_cycles_and_unknown_upstreams_are_rejected() {
    let duplicate = "id: a\ntasks:\n  - id: t\n    image: x:1\n  - id: t\n    image: x:1\n";
    assert_eq!(
        errors(duplicate),
        vec!["jobs/bad.yaml:5: task id `t` is used twice (first on line 3)"]
    );

    let cycle = "id: a\ntasks:\n  - id: x\n    image: i:1\n    depends_on: [y]\n  - id: y\n    image: i:1\n    depends_on: [x]\n";
    let cycle_errors = errors(cycle);
    assert!(
        cycle_errors[0].contains("tasks form a cycle: x → y → x"),
        "{cycle_errors:?}"
    );

    let unknown = "id: a\ntasks:\n  - id: x\n    image: i:1\n    depends_on:\n      - nope\n";
    assert_eq!(
        errors(unknown),
        vec!["jobs/bad.yaml:6: task `x` depends on `nope`, which is not a task of this job"]
    );
}

#[test]
fn bad_cron_duration_image_and_timezone_are_rejected_with_lines() {
    let text = "id: a\nschedule: \"0 0 * *\"\ntimezone: Mars/Olympus\ntasks:\n  - id: x\n    image: Not/Valid:1\n    retry_delay: 30\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[0].starts_with("jobs/bad.yaml:2: schedule `0 0 * *` has 4 fields"));
    assert!(errors[1].starts_with("jobs/bad.yaml:3: `Mars/Olympus` is not an IANA timezone"));
    assert!(errors[2].starts_with("jobs/bad.yaml:6: task `x`: `Not` in the image reference"));
    assert!(errors[3].starts_with("jobs/bad.yaml:7: task `x`: retry_delay `30` has no unit"));
}

#[test]
fn unknown_template_variables_are_load_errors() {
    let text = "id: a\nparams: {n: 1}\ntasks:\n  - id: x\n    image: i:1\n    args: [\"{{ data_interval_begin }}\"]\n  - id: y\n    image: i:1\n    args: [\"{{ params.m }}\", \"{{ outputs.z.k }}\"]\n  - id: z\n    image: i:1\n    depends_on: [y]\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("jobs/bad.yaml:6: task `x`: args:"));
    assert!(errors[1].contains("`params.m`, which the job's `params` does not declare"));
    assert!(errors[2].contains("outputs of `z`, which is not upstream of it"));
}

#[test]
fn yaml_syntax_errors_carry_a_line() {
    let errors = parse_job("f.yaml", "id: a\ntasks: [\n").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].line.is_some(), "{errors:?}");
    assert!(parse_job("f.yaml", "").unwrap_err()[0]
        .message
        .contains("empty"));
}

#[test]
fn defaults_cannot_carry_ids_and_process_needs_a_command() {
    let text =
        "id: a\ndefaults:\n  id: nope\ntasks:\n  - id: x\n    image: i:1\n    backend: process\n";
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e.contains("defaults may not set")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("process backend needs a `command`")),
        "{errors:?}"
    );
}

/// Issue 15, item 7: Nomad refuses a task with less than 10 MB of memory when the try is
/// registered; the job file says so when it is read, naming the line.
#[test]
fn a_nomad_task_under_nomads_least_memory_is_refused_when_the_file_is_read() {
    let job = "id: tiny\ntasks:\n  - id: t\n    backend: nomad\n    image: stevedore/synth:0.1.0\n    resources: {memory: 8Mi}\n  - id: d\n    image: stevedore/synth:0.1.0\n    resources: {memory: 8Mi}\n";
    assert_eq!(
        errors(job),
        ["jobs/bad.yaml:6: task `t`: resources.memory `8Mi` is under Nomad's minimum of 10Mi"]
    );
    let enough = job.replace("8Mi}\n  - id: d", "10Mi}\n  - id: d");
    assert!(parse_job("jobs/tiny.yaml", &enough).is_ok());
}

/// `max_artifact_size`: a size, on a task or in `defaults`, 10 GiB when unset; a bad one is
/// named with its line.
#[test]
fn max_artifact_size_is_a_size_with_a_default() {
    let job = "id: files\ndefaults:\n  max_artifact_size: 2Gi\ntasks:\n  - id: a\n    image: stevedore/synth:0.1.0\n  - id: b\n    image: stevedore/synth:0.1.0\n    max_artifact_size: 512Mi\n";
    let parsed = parse_job("jobs/files.yaml", job).unwrap();
    assert_eq!(parsed.tasks[0].max_artifact_size, 2 << 30);
    assert_eq!(parsed.tasks[1].max_artifact_size, 512 << 20);
    let plain = parse_job(
        "jobs/files.yaml",
        "id: files\ntasks:\n  - id: a\n    image: stevedore/synth:0.1.0\n",
    )
    .unwrap();
    assert_eq!(plain.tasks[0].max_artifact_size, DEFAULT_MAX_ARTIFACT_SIZE);
    let bad = "id: files\ntasks:\n  - id: a\n    image: stevedore/synth:0.1.0\n    max_artifact_size: lots\n";
    assert_eq!(
        errors(bad),
        ["jobs/bad.yaml:5: task `a`: max_artifact_size `lots` is not a size such as 512Mi or 10Gi"]
    );
}

#[test]
fn notify_rules_deadlines_and_run_timeouts_are_read_with_their_lines() {
    let job = parse_job(
        "j.yaml",
        "id: j\ndeadline: 2h\nrun_timeout: 3h\nrepeated_failure_after: 5\nnotify:\n  - {on: [failure, recovery], connection: ops}\ntasks:\n  - id: a\n    image: x:1\n",
    )
    .unwrap();
    assert_eq!(job.deadline, Some(Duration::from_secs(7200)));
    assert_eq!(job.run_timeout, Some(Duration::from_secs(10800)));
    assert_eq!(job.repeated_failure_after, 5);
    assert_eq!(
        job.notify,
        vec![NotifyRule {
            on: vec![NotifyEvent::Failure, NotifyEvent::Recovery],
            connection: "ops".into(),
            line: 6,
        }]
    );
    let plain = parse_job("j.yaml", "id: j\ntasks:\n  - id: a\n    image: x:1\n").unwrap();
    assert_eq!((plain.deadline, plain.run_timeout), (None, None));
    assert_eq!(plain.repeated_failure_after, 3);
    assert!(plain.notify.is_empty() && plain.tasks[0].notify.is_empty());
}

#[test]
fn bad_notify_rules_are_load_errors_naming_the_line() {
    let errors = errors(
        "id: j\ndeadline: soon\nrun_timeout: 0s\nnotify:\n  - on: [failed]\n    connection: ops\n  - {on: [], connection: Bad-Name}\ndefaults:\n  notify:\n    - {on: [recovery], connection: team}\ntasks:\n  - id: a\n    image: x:1\n    notify:\n      - {on: [success], connection: ops, channel: slack}\n",
    );
    let expected = [
        "jobs/bad.yaml:2: deadline `soon` is not a duration",
        "jobs/bad.yaml:3: run_timeout must be above 0",
        "jobs/bad.yaml:5: notify: `failed` is not an event",
        "jobs/bad.yaml:7: notify: `on` needs at least one event",
        "jobs/bad.yaml:7: notify: connection name `Bad-Name` may only hold a-z, 0-9 and _",
    ];
    // `channel` is no field of a rule: the YAML is refused before anything else.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("channel"), "{errors:?}");
    let errors = self::errors(
        "id: j\ndeadline: soon\nrun_timeout: 0s\nnotify:\n  - on: [failed]\n    connection: ops\n  - {on: [], connection: Bad-Name}\ndefaults:\n  notify:\n    - {on: [recovery], connection: team}\ntasks:\n  - id: a\n    image: x:1\n",
    );
    for expected in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected}: {errors:?}"
        );
    }
    assert!(
        errors.iter().any(|e| e
            .starts_with("jobs/bad.yaml:10: task `a`: notify: `recovery` is an event of the run")),
        "{errors:?}"
    );
}

const MAPPED: &str = r#"
id: per_account
params: {regions: [eu, us]}
tasks:
  - id: list_accounts
    image: i:1
  - id: extract
    image: i:1
    depends_on: [list_accounts]
    for_each: "{{ outputs.list_accounts.accounts }}"
    max_active: 2
    args: ["--account", "{{ item.id }}", "--part", "{{ map_index }}"]
  - id: per_region
    image: i:1
    for_each: "{{ params.regions }}"
    env: {REGION: "{{ item }}"}
  - id: fixed
    image: i:1
    for_each: [a, b, c]
  - id: load
    image: i:1
    depends_on: [extract]
    args: ["{{ outputs.extract.rows }}"]
"#;

#[test]
fn mapped_tasks_read_their_list_and_instances_carry_their_key() {
    use crate::mapping::ForEach;
    let job = parse_job("jobs/mapped.yaml", MAPPED).unwrap();
    let extract = job.task("extract").unwrap();
    assert_eq!(
        extract.for_each,
        Some(ForEach::Variable(Variable::Output {
            task: "list_accounts".into(),
            key: "accounts".into()
        }))
    );
    assert_eq!(extract.max_active, Some(2));
    assert_eq!(
        job.task("per_region").unwrap().for_each,
        Some(ForEach::Variable(Variable::Param("regions".into())))
    );
    assert!(matches!(
        &job.task("fixed").unwrap().for_each,
        Some(ForEach::Literal(items)) if items.len() == 3
    ));
    let instance = job.instance("extract[3]").unwrap();
    assert_eq!(
        (instance.id.as_str(), instance.map_index),
        ("extract[3]", Some(3))
    );
    assert_eq!(instance.task_id(), "extract");
    assert_eq!(job.task_of("extract[3]").unwrap().id, "extract");
    assert!(
        job.instance("load[1]").is_none(),
        "an unmapped task has no instances"
    );
}

#[test]
fn mapping_mistakes_are_load_errors_naming_the_line() {
    let mistakes = errors(
        "id: bad\ndefaults:\n  for_each: [1]\ntasks:\n  - id: a\n    image: i:1\n    max_active: 2\n    args: [\"{{ item }}\"]\n  - id: b\n    image: i:1\n    for_each: \"{{ outputs.c.list }}\"\n  - id: c\n    image: i:1\n    for_each: \"x {{ params.p }}\"\n  - id: d\n    image: i:1\n    for_each: {a: 1}\n  - id: e\n    image: i:1\n    for_each: [1]\n    max_active: 0\n",
    );
    let expected = [
        "jobs/bad.yaml:3: defaults may not set `for_each`, `max_active` or `produces`",
        "jobs/bad.yaml:7: task `a`: max_active applies to a mapped task",
        "jobs/bad.yaml:8: task `a`: args uses `item`, which only a mapped task",
        "jobs/bad.yaml:11: task `b`: for_each uses outputs of `c`, which is not upstream of it",
        "jobs/bad.yaml:14: task `c`: for_each `x {{ params.p }}` is not one output or param",
        "jobs/bad.yaml:17: task `d`: for_each is neither a list nor a template",
        "jobs/bad.yaml:21: task `e`: max_active must be at least 1",
    ];
    for want in expected {
        assert!(
            mistakes.iter().any(|m| m.starts_with(want)),
            "missing `{want}` in {mistakes:#?}"
        );
    }
}

#[test]
fn asset_schedules_and_produces_are_read() {
    use crate::assets::{AssetMode, AssetTrigger};
    let job = parse_job(
        "jobs/models.yaml",
        "id: models\nschedule: {assets: [warehouse.charges, warehouse.refunds], mode: any}\ntasks:\n  - id: run\n    image: i:1\n    produces: [marts.revenue]\n",
    )
    .unwrap();
    assert_eq!(
        job.asset_trigger,
        Some(AssetTrigger {
            assets: vec!["warehouse.charges".into(), "warehouse.refunds".into()],
            mode: AssetMode::Any,
            line: 2
        })
    );
    assert_eq!(job.task("run").unwrap().produces, ["marts.revenue"]);
    assert_eq!(job.timetable.schedule, crate::schedule::Schedule::Manual);
    let after = parse_job(
        "jobs/report.yaml",
        "id: report\nschedule: {after: [load, models]}\ntasks:\n  - id: t\n    image: i:1\n",
    )
    .unwrap();
    let trigger = after.asset_trigger.unwrap();
    assert_eq!(trigger.assets, ["job:load", "job:models"]);
    assert_eq!(trigger.mode, AssetMode::All);
}

#[test]
fn bad_asset_schedules_are_load_errors_naming_the_line() {
    let mistakes = errors(
        "id: bad\nschedule: {assets: [\"has space\"], mode: some}\ntasks:\n  - id: t\n    image: i:1\n    produces: [\"job:x\"]\n",
    );
    for want in [
        "jobs/bad.yaml:2: schedule: asset name `has space` may only hold",
        "jobs/bad.yaml:2: schedule: mode \"some\" is neither all nor any",
        "jobs/bad.yaml:6: task `t`: produces: asset name `job:x`",
    ] {
        assert!(
            mistakes.iter().any(|m| m.starts_with(want)),
            "missing `{want}` in {mistakes:#?}"
        );
    }
    let both =
        errors("id: bad\nschedule: {assets: [a], after: [b]}\ntasks:\n  - id: t\n    image: i:1\n");
    assert!(both[0].contains("either `assets` or `after`"), "{both:?}");
}

#[test]
fn events_blocks_are_read_with_defaults_and_checked() {
    let job = parse_job(
        "jobs/clicks.yaml",
        "id: clicks\nevents: {max_batch: 500, max_wait: 30s, secret_connection: vendor}\ntasks:\n  - id: t\n    image: i:1\n",
    )
    .unwrap();
    let events = job.events.unwrap();
    assert_eq!(
        (events.max_batch, events.max_wait, events.max_body),
        (500, Duration::from_secs(30), DEFAULT_MAX_BODY)
    );
    assert_eq!(events.secret_connection.as_deref(), Some("vendor"));
    let defaults = parse_job(
        "jobs/d.yaml",
        "id: d\nevents: {}\ntasks:\n  - id: t\n    image: i:1\n",
    )
    .unwrap()
    .events
    .unwrap();
    assert_eq!(
        (defaults.max_batch, defaults.max_wait),
        (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT)
    );
    let mistakes = errors(
        "id: bad\nevents:\n  max_batch: 0\n  max_wait: 0s\n  max_body: 1Ti\n  bogus: 1\ntasks:\n  - id: t\n    image: i:1\n",
    );
    assert!(
        mistakes.iter().any(|m| m.contains("bogus")),
        "{mistakes:#?}"
    );
    let mistakes = errors(
        "id: bad\nevents:\n  max_batch: 0\n  max_wait: 0s\n  max_body: 128Gi\ntasks:\n  - id: t\n    image: i:1\n",
    );
    for want in [
        "jobs/bad.yaml:3: events: max_batch must be between 1 and 100000",
        "jobs/bad.yaml:4: events: max_wait must be above 0",
        "jobs/bad.yaml:5: events: max_body must be between 1 byte and 64Mi",
    ] {
        assert!(
            mistakes.iter().any(|m| m.starts_with(want)),
            "missing `{want}` in {mistakes:#?}"
        );
    }
}

#[test]
fn a_job_s_retention_is_a_duration_a_count_or_never_and_a_bad_one_names_its_line() {
    use crate::retention::Retention;
    let job = parse_job(
        "r.yaml",
        "id: r\nretention: 30d\ntasks:\n  - id: a\n    image: x:1\n",
    )
    .unwrap();
    assert_eq!(
        job.retention,
        Some(Retention::Age(Duration::from_secs(30 * 86_400)))
    );
    let job = parse_job(
        "r.yaml",
        "id: r\nretention: 100 runs\ntasks:\n  - id: a\n    image: x:1\n",
    )
    .unwrap();
    assert_eq!(job.retention, Some(Retention::Runs(100)));
    let errors = errors("id: r\ntasks:\n  - id: a\n    image: x:1\nretention: lots\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("jobs/bad.yaml:5: retention: `lots` is not a retention"),
        "{errors:?}"
    );
}
