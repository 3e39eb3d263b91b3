//! The web UI over real HTTP: login and sessions, CSRF, roles, escaping of everything a user
//! can write, and the forms that change things. (The browser tests in tests/browser drive
//! the same pages in a real Chromium.)

use serde_json::json;
use stevedore_domain::state::TryState;

mod common;
use common::*;

const XSS_JOB: &str = "id: probe\ndescription: \"<script>alert('description')</script> & <b>bold</b>\"\nparams: {note: \"<img src=x onerror=alert(1)>\", count: 3, flag: true}\ntasks:\n  - id: shout\n    image: stevedore/synth:0.1.0\n";

#[test]
fn pages_need_a_session_and_a_token_opens_one() {
    let server = Server::start();
    let page = server.browse("GET", "/jobs/etl?tab=graph", None, &[]);
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/login?next=%2Fjobs%2Fetl%3Ftab%3Dgraph")
    );
    let wrong = server.browse("POST", "/login", None, &[("token", "stv_nope")]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.html.contains("unknown or revoked"));
    // A login never sends the browser off-site.
    let page = server.browse(
        "POST",
        "/login",
        None,
        &[("token", &server.viewer), ("next", "//evil.example/x")],
    );
    assert_eq!(page.location.as_deref(), Some("/jobs"));

    let cookie = server.login(&server.viewer);
    let jobs = server.browse("GET", "/jobs", Some(&cookie), &[]);
    assert_eq!(jobs.status, 200);
    assert!(jobs.html.contains("href=\"/jobs/etl\""), "{}", jobs.html);
    assert!(jobs.html.contains("viewer (viewer)"));
    // The session also reads the API (the live log uses it), but changes nothing there.
    let api = server.browse("GET", "/api/v1/runs", Some(&cookie), &[]);
    assert_eq!(api.status, 200);
    let post = server.browse("POST", "/api/v1/jobs/etl/pause", Some(&cookie), &[]);
    assert_eq!(post.status, 401);

    // Logging out ends the session; so does revoking its token.
    let csrf = csrf_of(&jobs.html);
    let out = server.browse("POST", "/logout", Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(out.location.as_deref(), Some("/login"));
    assert_eq!(
        server.browse("GET", "/jobs", Some(&cookie), &[]).status,
        303
    );
    let cookie = server.login(&server.operator);
    server
        .runtime
        .block_on(server.store.revoke_token("operator"))
        .unwrap();
    assert_eq!(
        server.browse("GET", "/jobs", Some(&cookie), &[]).status,
        303
    );
}

/// Security review, finding 8: `next=/<TAB>/evil.example` passed the check (it does not
/// start with `//`), and a browser, which drops tabs from URLs, went to evil.example.
#[test]
fn a_login_never_redirects_off_site_whatever_next_hides() {
    let server = Server::start();
    for next in [
        "/\t/evil.example/x",
        "/\n/evil.example",
        "/\r\n/evil.example",
        "/\\evil.example",
        "/.//evil.example",
        "/./\t/evil.example",
        "//evil.example",
        "///evil.example",
        "https://evil.example/",
        "/\u{0}/evil.example",
        "javascript:alert(1)",
        " /evil",
    ] {
        let page = server.browse(
            "POST",
            "/login",
            None,
            &[("token", &server.viewer), ("next", next)],
        );
        assert_eq!(page.status, 303, "{next:?}");
        let location = page.location.unwrap_or_default();
        assert!(
            location.starts_with('/') && !location.starts_with("//") && !location.contains("evil"),
            "next={next:?} redirected to {location:?}"
        );
    }
    // A path of this site, with its query, is where the login goes.
    let page = server.browse(
        "POST",
        "/login",
        None,
        &[("token", &server.viewer), ("next", "/jobs/etl?tab=graph")],
    );
    assert_eq!(page.location.as_deref(), Some("/jobs/etl?tab=graph"));
}

#[test]
fn forms_need_the_sessions_csrf_token_and_the_role() {
    let server = Server::start();
    let operator = server.login(&server.operator);
    let page = server.browse("GET", "/jobs/etl?tab=trigger", Some(&operator), &[]);
    let csrf = csrf_of(&page.html);
    assert!(page.html.contains("Trigger run"));

    let forged = server.browse(
        "POST",
        "/jobs/etl/trigger",
        Some(&operator),
        &[("csrf", "0".repeat(64).as_str())],
    );
    assert_eq!(forged.status, 403);
    assert!(forged.html.contains("CSRF"));
    let missing = server.browse(
        "POST",
        "/jobs/etl/pause",
        Some(&operator),
        &[("paused", "true")],
    );
    assert_eq!(missing.status, 403);

    // The form's values are typed like the params' defaults.
    let triggered = server.browse(
        "POST",
        "/jobs/etl/trigger",
        Some(&operator),
        &[
            ("csrf", &csrf),
            ("param.records", "7"),
            ("param.mode", "delta"),
        ],
    );
    assert_eq!(triggered.status, 303, "{}", triggered.html);
    let runs = server.get("/api/v1/runs", &server.viewer);
    assert_eq!(
        runs.body["items"][0]["params"],
        json!({"records": 7, "mode": "delta"})
    );
    let location = triggered.location.unwrap();
    assert!(location.starts_with("/jobs/etl?run="), "{location}");
    let bad = server.browse(
        "POST",
        "/jobs/etl/trigger",
        Some(&operator),
        &[("csrf", &csrf), ("param.records", "many")],
    );
    let back = bad.location.unwrap();
    assert!(
        back.contains("tab=trigger&error=param%20%60records%60"),
        "{back}"
    );

    // A viewer sees no operator buttons, and cannot post them either.
    let viewer = server.login(&server.viewer);
    let page = server.browse("GET", "/jobs/etl?tab=trigger", Some(&viewer), &[]);
    assert!(!page.html.contains("Trigger run"));
    assert!(page.html.contains("cannot trigger runs"));
    let csrf = csrf_of(&page.html);
    let refused = server.browse(
        "POST",
        "/jobs/etl/trigger",
        Some(&viewer),
        &[("csrf", &csrf)],
    );
    assert_eq!(refused.status, 403);
    assert!(refused.html.contains("needs operator"));
}

#[test]
fn what_users_write_is_shown_as_text() {
    let server = Server::start();
    std::fs::write(server.jobs_dir().join("probe.yaml"), XSS_JOB).unwrap();
    std::fs::write(
        server.jobs_dir().join("bad.yaml"),
        "id: \"<img src=x onerror=alert(2)>\"\ntasks: []\n",
    )
    .unwrap();
    let run = server.post(
        "/api/v1/jobs/probe/runs",
        &server.operator,
        json!({"params": {"note": "</code><script>alert(3)</script>"}}),
    );
    let run_id = run.body["run_id"].as_str().unwrap().to_owned();
    let try_id = server.start_try(&run_id, "shout");
    server.log(try_id, 0, &["<script>alert('log')</script>", "a & b < c"]);
    server.finish(try_id, TryState::Success);

    let cookie = server.login(&server.viewer);
    let pages = [
        "/jobs".to_owned(),
        "/jobs/probe".to_owned(),
        "/jobs/probe?tab=graph".to_owned(),
        "/jobs/probe?tab=file".to_owned(),
        "/jobs/probe?tab=trigger".to_owned(),
        format!("/runs/{run_id}"),
        format!("/runs/{run_id}/tasks/shout/tries/1"),
    ];
    for path in &pages {
        let page = server.browse("GET", path, Some(&cookie), &[]);
        assert_eq!(page.status, 200, "{path}");
        // The only scripts are the page's own.
        assert_eq!(
            page.html.matches("<script").count(),
            1,
            "{path}: {}",
            page.html
        );
        assert!(!page.html.contains("<img src=x"), "{path}");
        assert!(!page.html.contains("<b>bold"), "{path}");
    }
    let try_page = server.browse(
        "GET",
        &format!("/runs/{run_id}/tasks/shout/tries/1"),
        Some(&cookie),
        &[],
    );
    assert!(
        try_page
            .html
            .contains("&lt;script&gt;alert('log')&lt;/script&gt;"),
        "{}",
        try_page.html
    );
    assert!(try_page.html.contains("a &amp; b &lt; c"));
    let jobs = server.browse("GET", "/jobs", Some(&cookie), &[]);
    assert!(
        jobs.html.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "the bad file's error, as text"
    );
    assert!(jobs
        .html
        .contains("&lt;script&gt;alert('description')&lt;/script&gt;"));
}

#[test]
fn run_pages_show_the_gantt_and_operators_clear_mark_and_cancel() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    server.log(try_id, 0, &["extracting"]);
    server.finish(try_id, TryState::Failed);
    let cookie = server.login(&server.operator);
    let page = server.browse("GET", &format!("/runs/{run_id}"), Some(&cookie), &[]);
    assert_eq!(page.status, 200);
    assert!(page.html.contains("class=\"gantt\""), "{}", page.html);
    assert!(page
        .html
        .contains(&format!("/runs/{run_id}/tasks/extract/tries/1")));
    let csrf = csrf_of(&page.html);

    let cleared = server.browse(
        "POST",
        &format!("/runs/{run_id}/tasks/extract/clear"),
        Some(&cookie),
        &[("csrf", &csrf), ("downstream", "true")],
    );
    assert_eq!(cleared.status, 303);
    let instances = server.get(&format!("/api/v1/runs/{run_id}/tasks"), &server.viewer);
    let states: Vec<&str> = instances.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["none", "none", "none"]);
    server.browse(
        "POST",
        &format!("/runs/{run_id}/tasks/load/mark"),
        Some(&cookie),
        &[("csrf", &csrf), ("state", "success")],
    );
    assert_eq!(
        server
            .get(&format!("/api/v1/runs/{run_id}/tasks/load"), &server.viewer)
            .body["state"],
        "success"
    );
    server.browse(
        "POST",
        &format!("/runs/{run_id}/cancel"),
        Some(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(
        server
            .get(&format!("/api/v1/runs/{run_id}"), &server.viewer)
            .body["cancel_requested"],
        true
    );

    // The grid links each cell to its task instance's latest try.
    let grid = server.browse("GET", "/jobs/etl", Some(&cookie), &[]);
    assert!(grid.html.contains("class=\"grid\""));
    assert!(
        grid.html.contains(&format!(
            "data-task=\"load\" data-run=\"{run_id}\" data-state=\"success\""
        )),
        "{}",
        grid.html
    );
    let pools = server.browse("GET", "/pools", Some(&cookie), &[]);
    assert!(
        pools.html.contains("<td>default</td><td>128</td>"),
        "{}",
        pools.html
    );
}

#[test]
fn a_long_log_opens_at_its_end_a_page_at_a_time() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let texts: Vec<String> = (0..12_000).map(|i| format!("row {i}")).collect();
    for chunk in texts.chunks(4_000).enumerate() {
        let borrowed: Vec<&str> = chunk.1.iter().map(String::as_str).collect();
        server.log(try_id, (chunk.0 * 4_000) as i64, &borrowed);
    }
    server.finish(try_id, TryState::Failed);
    let cookie = server.login(&server.viewer);
    let path = format!("/runs/{run_id}/tasks/extract/tries/1");
    let tail = server.browse("GET", &path, Some(&cookie), &[]);
    assert_eq!(tail.html.matches("class=\"line ").count(), 5_000);
    assert!(tail.html.contains(">row 11999<") && tail.html.contains(">row 7000<"));
    assert!(!tail.html.contains(">row 6999<"));
    assert!(tail.html.contains("Lines 7001–12000 of 12000"), "pager");
    assert!(tail.html.contains(&format!("{path}?from=2000\">Earlier")));
    let first = server.browse("GET", &format!("{path}?from=0"), Some(&cookie), &[]);
    assert!(first.html.contains(">row 0<") && first.html.contains(">row 4999<"));
    assert!(!first.html.contains(">row 5000<"));
    assert!(first.html.contains(&format!("{path}?from=5000\">Later")));
}

/// The try page shows the latest `progress` message above the log (the live log keeps it
/// up to date); a try that reported none shows no bar.
#[test]
fn the_try_page_shows_the_latest_progress() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let cookie = server.login(&server.viewer);
    let path = format!("/runs/{run_id}/tasks/extract/tries/1");
    server.log(try_id, 0, &["starting", "no progress yet"]);
    let before = server.browse("GET", &path, Some(&cookie), &[]);
    assert!(
        before.html.contains("id=\"progress\" hidden"),
        "no bar before any progress"
    );
    // Even positions are stdout (see `Server::log`).
    server.log(
        try_id,
        2,
        &[
            r#"{"type":"progress","done":300,"total":1200}"#,
            "a line on stderr",
            r#"{"done":600,"total":1200,"type":"progress"}"#,
        ],
    );
    let page = server.browse("GET", &path, Some(&cookie), &[]);
    assert!(
        !page.html.contains("id=\"progress\" hidden"),
        "{}",
        page.html
    );
    assert!(page.html.contains("600 of 1200 (50%)"), "{}", page.html);
    assert!(
        page.html.contains("value=\"600\" max=\"1200\""),
        "{}",
        page.html
    );
}

/// Issue 14: cancelling an ended run answered with an error in the CLI, a 409 in the API
/// and silence in the UI. The one action (`stevedore_ops::actions::cancel`) now answers the
/// same at every door: a 409 naming the run and its state.
#[test]
fn an_ended_run_cannot_be_cancelled_at_any_door() {
    let server = Server::start();
    let run_id = server.trigger();
    server
        .runtime
        .block_on(server.store.set_run_state(
            &run_id,
            stevedore_domain::state::RunState::Success,
            chrono::Utc::now(),
        ))
        .unwrap();
    let api = server.post(
        &format!("/api/v1/runs/{run_id}/cancel"),
        &server.operator,
        json!(null),
    );
    assert_eq!(
        (api.status, error_code(&api)),
        (409, "conflict"),
        "{}",
        api.text
    );
    let expected = format!("run {run_id} has already ended (success)");
    assert!(api.text.contains(&expected), "{}", api.text);
    let cookie = server.login(&server.operator);
    let page = server.browse("GET", &format!("/runs/{run_id}"), Some(&cookie), &[]);
    let csrf = csrf_of(&page.html);
    let ui = server.browse(
        "POST",
        &format!("/runs/{run_id}/cancel"),
        Some(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(ui.status, 409);
    assert!(ui.html.contains(&expected), "{}", ui.html);
    assert_eq!(
        server
            .get(&format!("/api/v1/runs/{run_id}"), &server.viewer)
            .body["cancel_requested"],
        false
    );
}

/// Issue 14: the job page's trigger tab backfills a range, as the CLI and the API do.
#[test]
fn an_operator_backfills_a_range_from_the_job_page() {
    let server = Server::start();
    let cookie = server.login(&server.operator);
    let page = server.browse("GET", "/jobs/etl?tab=trigger", Some(&cookie), &[]);
    assert!(page.html.contains("Backfill"), "{}", page.html);
    let csrf = csrf_of(&page.html);
    let done = server.browse(
        "POST",
        "/jobs/etl/backfill",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("from", "2024-02-01"),
            ("to", "2024-02-02"),
        ],
    );
    assert_eq!(done.status, 303);
    let location = done.location.unwrap();
    let shown = server.browse("GET", &location, Some(&cookie), &[]);
    assert!(
        shown
            .html
            .contains("2 interval(s): 2 run(s) created, 0 rerun, 0 already there"),
        "{}",
        shown.html
    );
    let runs = server.get("/api/v1/runs?job_id=etl", &server.viewer);
    assert_eq!(runs.body["items"].as_array().unwrap().len(), 2);
}

/// The run page lists the files its tries left, with sizes; an operator's browser downloads
/// them through its session, a viewer sees them without a link and may not download.
#[test]
fn run_pages_list_artifacts_and_operators_download_them() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let bytes = vec![7u8; 1536];
    let sha = server.put_artifact(&run_id, try_id, "out/<b>rows</b>.jsonl", &bytes);
    server.finish(try_id, TryState::Success);
    let link = format!("/runs/{run_id}/artifacts/extract/out/%3Cb%3Erows%3C/b%3E.jsonl?try=1");

    let operator = server.login(&server.operator);
    let page = server.browse("GET", &format!("/runs/{run_id}"), Some(&operator), &[]);
    assert_eq!(page.status, 200);
    assert!(page.html.contains("<h2>Artifacts</h2>"), "{}", page.html);
    assert!(page.html.contains(&link), "no download link: {}", page.html);
    assert!(
        page.html.contains("out/&lt;b&gt;rows&lt;/b&gt;.jsonl"),
        "the path as text"
    );
    assert!(page.html.contains("1.5 KiB"));
    assert!(page.html.contains(&sha[..12]));
    let download = server.browse("GET", &link, Some(&operator), &[]);
    assert_eq!(download.status, 200);
    assert_eq!(download.html.as_bytes(), &bytes[..]);

    let viewer = server.login(&server.viewer);
    let page = server.browse("GET", &format!("/runs/{run_id}"), Some(&viewer), &[]);
    assert!(page.html.contains("out/&lt;b&gt;rows&lt;/b&gt;.jsonl"));
    assert!(!page.html.contains(&link), "a viewer gets no link");
    assert!(page
        .html
        .contains("Downloading a file needs the operator role."));
    let refused = server.browse("GET", &link, Some(&viewer), &[]);
    assert_eq!(refused.status, 403);
}

/// Issue 17: the Alerts page lists the outbox with where each delivery stands (a failed one
/// marked), filters failed deliveries, and lets an operator send one again; a run's page
/// lists its own alerts and a task instance's wait for its backend.
#[test]
fn the_alerts_page_lists_deliveries_and_an_operator_sends_one_again() {
    use chrono::Utc;
    use stevedore_domain::notify::NotifyEvent;
    use stevedore_store::{DeliveryOutcome, NewNotification, NotificationAttempt, Waiting};
    let server = Server::start();
    let run_id = server.trigger();
    let run = server
        .runtime
        .block_on(server.store.get_run(&run_id))
        .unwrap();
    let notification = NewNotification::new(
        "t",
        NotifyEvent::Failure,
        "oncall",
        (&run.job_id, &run.job_version),
        &run.run_id,
        None,
        "failed",
        Some("task `load` failed".into()),
        run.logical_date,
        Utc::now(),
    );
    server.runtime.block_on(async {
        server
            .store
            .mark_deadline_missed(&run_id, std::slice::from_ref(&notification), Utc::now())
            .await
            .unwrap();
        let claimed = server
            .store
            .claim_notifications(
                "s",
                Utc::now() + chrono::TimeDelta::seconds(1),
                Utc::now() + chrono::TimeDelta::seconds(60),
                10,
            )
            .await
            .unwrap();
        let attempt = NotificationAttempt {
            attempt: 0,
            at: Utc::now(),
            channel: Some("slack".into()),
            ok: false,
            status_code: Some(400),
            error: Some("Slack answered 400 Bad Request: invalid_blocks".into()),
            duration_ms: 5,
        };
        server
            .store
            .record_deliveries(&[(claimed[0].seq, attempt, DeliveryOutcome::GiveUp)])
            .await
            .unwrap();
        server
            .store
            .set_waiting(&[(
                run_id.clone(),
                "extract".into(),
                Some(Waiting {
                    since: Utc::now(),
                    reason: "Nomad at http://10.0.0.9:4646 is unreachable".into(),
                }),
            )])
            .await
            .unwrap();
    });
    let viewer = server.login(&server.viewer);
    let page = server.browse("GET", "/notifications?failed=1", Some(&viewer), &[]);
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("delivery-failed"), "{}", page.html);
    assert!(page.html.contains("invalid_blocks"));
    assert!(page.html.contains("failed after 1 attempts"));
    assert!(
        !page.html.contains("Send again"),
        "a viewer cannot send again"
    );
    let run_page = server.browse("GET", &format!("/runs/{run_id}"), Some(&viewer), &[]);
    assert!(run_page.html.contains("Alerts"));
    assert!(run_page.html.contains("oncall"));
    assert!(run_page.html.contains("Deadline missed at"));
    assert!(run_page.html.contains("waiting for its backend since"));
    assert!(run_page
        .html
        .contains("Nomad at http://10.0.0.9:4646 is unreachable"));

    let operator = server.login(&server.operator);
    let page = server.browse("GET", "/notifications", Some(&operator), &[]);
    assert!(page.html.contains("Send again"), "{}", page.html);
    let csrf = csrf_of(&page.html);
    let sent = server.browse(
        "POST",
        &format!("/notifications/{}/retry", notification.id),
        Some(&operator),
        &[("csrf", &csrf)],
    );
    assert_eq!(sent.status, 303, "{}", sent.html);
    let again = server
        .runtime
        .block_on(server.store.find_notification(&notification.id))
        .unwrap();
    assert_eq!(again.status, stevedore_store::NotificationStatus::Pending);
    // Without the session's CSRF token, nothing is sent.
    let forged = server.browse(
        "POST",
        &format!("/notifications/{}/retry", notification.id),
        Some(&operator),
        &[("csrf", "0")],
    );
    assert_eq!(forged.status, 403);
}

/// The try page shows the task's committed state and its history; an operator sets and
/// clears it there, a viewer sees no form; the trigger form asks for a full refresh.
#[test]
fn the_try_page_shows_the_task_s_state_and_an_operator_sets_and_clears_it() {
    let server = Server::start();
    let run_id = server.trigger();
    server.start_try(&run_id, "extract");
    let try_page = format!("/runs/{run_id}/tasks/extract/tries/1");
    let operator = server.login(&server.operator);
    let page = server.browse("GET", &try_page, Some(&operator), &[]);
    assert_eq!(page.status, 200);
    assert!(page.html.contains("No committed state"), "{}", page.html);
    let csrf = csrf_of(&page.html);
    let set = server.browse(
        "POST",
        "/jobs/etl/tasks/extract/state",
        Some(&operator),
        &[
            ("csrf", &csrf),
            ("value", r#"{"cursor": "2024-05-01T00:00:00Z"}"#),
            ("back", &try_page),
        ],
    );
    assert_eq!(
        (set.status, set.location.as_deref()),
        (303, Some(try_page.as_str())),
        "{}",
        set.html
    );
    let page = server.browse("GET", &try_page, Some(&operator), &[]);
    assert!(page.html.contains("2024-05-01T00:00:00Z"), "{}", page.html);
    assert!(page.html.contains("set by "), "{}", page.html);
    let not_json = server.browse(
        "POST",
        "/jobs/etl/tasks/extract/state",
        Some(&operator),
        &[("csrf", &csrf), ("value", "{oops"), ("back", &try_page)],
    );
    assert_eq!(not_json.status, 422);
    assert!(not_json.html.contains("not JSON"), "{}", not_json.html);
    // A back link to another site is not followed.
    let cleared = server.browse(
        "POST",
        "/jobs/etl/tasks/extract/state/clear",
        Some(&operator),
        &[("csrf", &csrf), ("back", "https://elsewhere.example/")],
    );
    assert_eq!(
        (cleared.status, cleared.location.as_deref()),
        (303, Some("/jobs/etl"))
    );
    let page = server.browse("GET", &try_page, Some(&operator), &[]);
    assert!(page.html.contains("No committed state"), "{}", page.html);
    assert!(page.html.contains("History (latest 2)"), "{}", page.html);

    let viewer = server.login(&server.viewer);
    let page = server.browse("GET", &try_page, Some(&viewer), &[]);
    assert!(!page.html.contains("Set state"), "a viewer gets no form");
    let refused = server.browse(
        "POST",
        "/jobs/etl/tasks/extract/state/clear",
        Some(&viewer),
        &[(
            "csrf",
            &csrf_of(&server.browse("GET", "/jobs", Some(&viewer), &[]).html),
        )],
    );
    assert_eq!(refused.status, 403);

    let job = server.browse("GET", "/jobs/etl?tab=trigger", Some(&operator), &[]);
    assert!(job.html.contains("name=\"full_refresh\""), "{}", job.html);
    let triggered = server.browse(
        "POST",
        "/jobs/etl/trigger",
        Some(&operator),
        &[("csrf", &csrf_of(&job.html)), ("full_refresh", "true")],
    );
    assert_eq!(triggered.status, 303, "{}", triggered.html);
    let newest = server.get("/api/v1/runs?job_id=etl&limit=1", &server.viewer);
    assert_eq!(
        newest.body["items"][0]["full_refresh"],
        serde_json::json!(["extract", "load", "report"])
    );
}

#[test]
fn the_assets_pages_show_producers_consumers_and_updates() {
    let server = Server::start();
    let write =
        |name: &str, text: &str| std::fs::write(server.jobs_dir().join(name), text).unwrap();
    write(
        "charges.yaml",
        "id: charges\ntasks:\n  - id: load\n    image: stevedore/synth:0.1.0\n    produces: [warehouse.charges]\n",
    );
    write(
        "models.yaml",
        "id: models\nschedule: {assets: [warehouse.charges]}\ntasks:\n  - id: run\n    image: stevedore/synth:0.1.0\n",
    );
    let cookie = server.login(&server.viewer);
    let page = server.browse("GET", "/assets", Some(&cookie), &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.html.contains("data-asset=\"warehouse.charges\""),
        "{}",
        page.html
    );
    assert!(page.html.contains("charges.load"));
    assert!(page.html.contains("href=\"/jobs/models\""));
    assert!(page.html.contains("never"), "not updated yet");

    // An update: a try of `load` that succeeds.
    let run_id = server.trigger();
    server.runtime.block_on(async {
        let run = server
            .store
            .create_run(stevedore_store::NewRun {
                job_id: "charges".into(),
                job_version: "v".into(),
                trigger: stevedore_domain::state::RunTrigger::Manual,
                logical_date: chrono::Utc::now(),
                data_interval: server.store.get_run(&run_id).await.unwrap().data_interval,
                params: serde_json::json!({}),
                task_ids: vec!["load".into()],
                full_refresh: Vec::new(),
            })
            .await
            .unwrap();
        let started = server
            .store
            .start_try(
                &stevedore_store::TryKey {
                    run_id: run.run_id.clone(),
                    task_id: "load".into(),
                    try_number: 1,
                },
                "docker",
                "stevedore/synth:0.1.0",
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        server
            .store
            .finish_try(&stevedore_store::TryFinish {
                try_id: started.try_id,
                state: TryState::Success,
                ended_at: chrono::Utc::now(),
                exit_code: Some(0),
                failure_reason: None,
                task_state: stevedore_domain::state::TaskState::Success,
                next_try_at: None,
                notifications: Vec::new(),
                produces: vec!["warehouse.charges".into()],
                metrics: Vec::new(),
            })
            .await
            .unwrap();
    });
    let page = server.browse("GET", "/assets/warehouse.charges", Some(&cookie), &[]);
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html.contains("table class=\"asset-updates\""),
        "{}",
        page.html
    );
    assert!(page.html.contains(">load<"), "{}", page.html);
    let missing = server.browse("GET", "/assets/nothing.here", Some(&cookie), &[]);
    assert_eq!(missing.status, 404);
}
