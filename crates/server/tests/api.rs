//! The REST API against a real SQLite store, over real HTTP: every endpoint, roles and auth
//! failures, paging, errors, and following a running try's log as Server-Sent Events. Tries
//! are written into the store as the scheduler writes them (tests/ runs them for real).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{json, Value};
use stevedore_domain::role::Role;
use stevedore_domain::state::TryState;

mod common;
use common::*;

#[test]
fn health_is_open_and_everything_else_needs_a_valid_token() {
    let server = Server::start();
    let health = server.call("GET", "/api/v1/health", None, None);
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );

    for path in [
        "/api/v1/jobs",
        "/api/v1/runs",
        "/api/v1/pools",
        "/api/v1/openapi.json",
        "/metrics",
    ] {
        let missing = server.call("GET", path, None, None);
        assert_eq!(missing.status, 401, "{path}");
        assert_eq!(error_code(&missing), "unauthorized", "{path}");
        let wrong = server.call("GET", path, Some("stv_not-a-token"), None);
        assert_eq!(wrong.status, 401, "{path}");
    }
    let basic = server.call("GET", "/api/v1/jobs", None, None);
    assert!(basic.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));

    // A revoked token stops working at once.
    server
        .runtime
        .block_on(server.store.revoke_token("viewer"))
        .unwrap();
    assert_eq!(server.get("/api/v1/jobs", &server.viewer).status, 401);
    assert_eq!(server.get("/api/v1/jobs", &server.operator).status, 200);
    // Its use is recorded (for `stevedore tokens list`).
    let tokens = server.runtime.block_on(server.store.list_tokens()).unwrap();
    assert!(tokens
        .iter()
        .find(|t| t.name == "operator")
        .unwrap()
        .last_used_at
        .is_some());
}

#[test]
fn roles_decide_what_a_token_may_do() {
    let server = Server::start();
    let run = server.trigger();
    let cases: [(&str, &str, Option<Value>, Role); 8] = [
        ("GET", "/api/v1/jobs", None, Role::Viewer),
        (
            "POST",
            "/api/v1/jobs/etl/runs",
            Some(json!({})),
            Role::Operator,
        ),
        ("POST", "/api/v1/jobs/etl/pause", None, Role::Operator),
        (
            "POST",
            &format!("/api/v1/runs/{run}/tasks/extract/clear"),
            Some(json!({})),
            Role::Operator,
        ),
        (
            "PUT",
            "/api/v1/pools/stripe_api",
            Some(json!({"slots": 2})),
            Role::Admin,
        ),
        (
            "PUT",
            "/api/v1/connections/stripe",
            Some(json!({"values": {"TOKEN": "x"}})),
            Role::Admin,
        ),
        ("DELETE", "/api/v1/pools/stripe_api", None, Role::Admin),
        ("GET", "/metrics", None, Role::Viewer),
    ]
    .map(|(m, p, b, r)| (m, Box::leak(p.to_owned().into_boxed_str()) as &str, b, r));
    for (method, path, body, needed) in cases {
        for (role, token) in [
            (Role::Viewer, &server.viewer),
            (Role::Operator, &server.operator),
            (Role::Admin, &server.admin),
        ] {
            let reply = server.call(method, path, Some(token), body.clone());
            if role.allows(needed) {
                assert!(
                    reply.status < 300,
                    "{method} {path} as {role}: {} {}",
                    reply.status,
                    reply.text
                );
            } else {
                assert_eq!(reply.status, 403, "{method} {path} as {role}");
                assert_eq!(error_code(&reply), "forbidden");
                assert!(reply.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("needs {needed}")));
            }
        }
    }
}

#[test]
fn jobs_show_their_dag_and_triggers_check_params() {
    let server = Server::start();
    let jobs = server.get("/api/v1/jobs", &server.viewer);
    assert_eq!(jobs.status, 200);
    let items = jobs.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["job_id"], "etl");
    assert_eq!(items[0]["schedule"], "@daily");
    assert!(items[0]["next_run_at"].is_string());
    // A broken job file is reported, and does not hide the good one.
    assert!(
        jobs.body["errors"][0]
            .as_str()
            .unwrap()
            .contains("broken.yaml"),
        "{}",
        jobs.text
    );

    let job = server.get("/api/v1/jobs/etl", &server.viewer);
    assert_eq!(
        job.body["tasks"][2],
        json!({"task_id": "report", "image": "stevedore/synth:0.1.0", "depends_on": ["load"], "trigger_rule": "all_success", "pool": "default", "retries": 0, "connections": []})
    );
    assert_eq!(job.body["params"], json!({"records": 10, "mode": "full"}));
    assert!(job.body["source"].as_str().unwrap().starts_with("id: etl"));
    let missing = server.get("/api/v1/jobs/nope", &server.viewer);
    assert_eq!((missing.status, error_code(&missing)), (404, "not_found"));

    let bad = server.post(
        "/api/v1/jobs/etl/runs",
        &server.operator,
        json!({"params": {"records": "many", "extra": 1}}),
    );
    assert_eq!((bad.status, error_code(&bad)), (422, "invalid"));
    let message = bad.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("param `records` must be an integer") && message.contains("param `extra`"),
        "{message}"
    );
    let malformed = server.call(
        "POST",
        "/api/v1/jobs/etl/runs",
        Some(&server.operator),
        Some(json!({"parms": {}})),
    );
    assert_eq!(
        (malformed.status, error_code(&malformed)),
        (400, "bad_request")
    );

    let run = server.post(
        "/api/v1/jobs/etl/runs",
        &server.operator,
        json!({"params": {"records": 3}}),
    );
    assert_eq!(run.status, 201);
    assert_eq!(run.body["state"], "queued");
    assert_eq!(run.body["params"], json!({"records": 3, "mode": "full"}));

    let paused = server.post("/api/v1/jobs/etl/pause", &server.operator, json!(null));
    assert_eq!(paused.body, json!({"job_id": "etl", "paused": true}));
    assert_eq!(
        server.get("/api/v1/jobs/etl", &server.viewer).body["paused"],
        true
    );
    server.post("/api/v1/jobs/etl/unpause", &server.operator, json!(null));
    assert_eq!(
        server.get("/api/v1/jobs", &server.viewer).body["items"][0]["paused"],
        false
    );
}

#[test]
fn runs_are_paged_filtered_shown_and_cancelled() {
    let server = Server::start();
    let mut created: Vec<String> = (0..7).map(|_| server.trigger()).collect();
    created.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/v1/runs?limit=3&job_id=etl".to_owned();
    loop {
        let page = server.get(&path, &server.viewer);
        assert_eq!(page.status, 200, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/runs?limit=3&job_id=etl&cursor={}", cursor),
            None => break,
        }
    }
    assert_eq!(seen, created, "each run once, newest first");
    for (query, status) in [
        ("limit=0", 400),
        ("limit=501", 400),
        ("state=exploded", 400),
        ("bogus=1", 400),
    ] {
        let reply = server.get(&format!("/api/v1/runs?{query}"), &server.viewer);
        assert_eq!(
            (reply.status, error_code(&reply)),
            (status, "bad_request"),
            "{query}: {}",
            reply.text
        );
    }

    let run_id = &created[0];
    let cancelled = server.post(
        &format!("/api/v1/runs/{run_id}/cancel"),
        &server.operator,
        json!(null),
    );
    assert_eq!(cancelled.body["cancel_requested"], true);
    let queued = server.get(
        "/api/v1/runs?state=queued,running&limit=500",
        &server.viewer,
    );
    assert_eq!(queued.body["items"].as_array().unwrap().len(), 7);
    let none = server.get("/api/v1/runs?state=success", &server.viewer);
    assert_eq!(none.body["items"], json!([]));

    let shown = server.get(&format!("/api/v1/runs/{run_id}"), &server.viewer);
    assert_eq!(shown.body["run_id"], run_id.as_str());
    // The API takes whole run ids only (the CLI takes prefixes).
    let prefix = server.get(&format!("/api/v1/runs/{}", &run_id[..24]), &server.viewer);
    assert_eq!(prefix.status, 404);
    let tasks: Vec<&str> = shown.body["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["extract", "load", "report"]);
    let missing = server.get("/api/v1/runs/ffffffff", &server.viewer);
    assert_eq!((missing.status, error_code(&missing)), (404, "not_found"));
    let not_a_number = server.get(
        &format!("/api/v1/runs/{run_id}/tasks/extract/tries/first"),
        &server.viewer,
    );
    assert_eq!(
        (not_a_number.status, error_code(&not_a_number)),
        (400, "bad_request")
    );
    let unknown = server.get("/api/v1/nothing/here", &server.viewer);
    assert_eq!((unknown.status, error_code(&unknown)), (404, "not_found"));
}

#[test]
fn tries_logs_clear_and_mark() {
    let server = Server::start();
    let run = server.trigger();
    let try_id = server.start_try(&run, "extract");
    let texts: Vec<String> = (0..25).map(|i| format!("line {i}")).collect();
    let borrowed: Vec<&str> = texts.iter().map(String::as_str).collect();
    server.log(try_id, 0, &borrowed);
    server.finish(try_id, TryState::Failed);

    let base = format!("/api/v1/runs/{run}/tasks/extract");
    let instance = server.get(&base, &server.viewer);
    assert_eq!(instance.body["state"], "failed");
    assert_eq!(instance.body["tries"][0]["exit_code"], 3);
    assert_eq!(
        server.get(&format!("{base}/tries"), &server.viewer).body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let attempt = server.get(&format!("{base}/tries/1"), &server.viewer);
    assert_eq!(attempt.body["failure_reason"], "exit_code: 3");
    assert_eq!(attempt.body["outputs"], json!({}));
    assert_eq!(
        server
            .get(&format!("{base}/tries/2"), &server.viewer)
            .status,
        404
    );

    // Logs by range: pages of 10 after a sequence number.
    let mut after: Option<i64> = None;
    let mut got = Vec::new();
    loop {
        let query = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let page = server.get(
            &format!("{base}/tries/1/logs?limit=10{query}"),
            &server.viewer,
        );
        assert_eq!(page.status, 200, "{}", page.text);
        let lines = page.body["lines"].as_array().unwrap().clone();
        got.extend(lines.iter().map(|l| l["text"].as_str().unwrap().to_owned()));
        after = page.body["next_after"].as_i64();
        if page.body["finished"] == true {
            break;
        }
    }
    assert_eq!(got, texts);
    let first = server.get(&format!("{base}/tries/1/logs?limit=2"), &server.viewer);
    assert_eq!(first.body["lines"][1]["stream"], "stderr");

    let cleared = server.post(
        &format!("{base}/clear"),
        &server.operator,
        json!({"downstream": true}),
    );
    assert_eq!(
        cleared.body["cleared"],
        json!(["extract", "load", "report"])
    );
    assert_eq!(server.get(&base, &server.viewer).body["state"], "none");
    let marked = server.post(
        &format!("/api/v1/runs/{run}/tasks/load/mark"),
        &server.operator,
        json!({"state": "success"}),
    );
    assert_eq!(marked.body["state"], "success");
    let bad = server.post(
        &format!("/api/v1/runs/{run}/tasks/load/mark"),
        &server.operator,
        json!({"state": "running"}),
    );
    assert_eq!((bad.status, error_code(&bad)), (422, "invalid"));
    let nope = server.post(
        &format!("/api/v1/runs/{run}/tasks/nope/clear"),
        &server.operator,
        json!({}),
    );
    assert_eq!(nope.status, 404);
}

#[test]
fn following_a_running_try_streams_its_lines_and_ends_with_it() {
    let server = Server::start();
    let run = server.trigger();
    let try_id = server.start_try(&run, "extract");
    server.log(try_id, 0, &["before 0", "before 1"]);

    let url = format!(
        "{}/api/v1/runs/{run}/tasks/extract/tries/1/logs/follow",
        server.base
    );
    let token = server.viewer.clone();
    let (events_tx, events_rx) = std::sync::mpsc::channel::<(String, String)>();
    let reader = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut event = String::new();
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                events_tx.send((event.clone(), data.to_owned())).unwrap();
            }
        }
    });
    let next = || {
        events_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("an event")
    };
    assert_eq!(next().0, "line");
    assert_eq!(
        serde_json::from_str::<Value>(&next().1).unwrap()["text"],
        "before 1"
    );
    // Lines written while the client follows reach it while the try still runs.
    server.log(try_id, 2, &["live 2"]);
    let (kind, data) = next();
    assert_eq!(
        (
            kind.as_str(),
            serde_json::from_str::<Value>(&data).unwrap()["text"].as_str()
        ),
        ("line", Some("live 2"))
    );
    server.log(try_id, 3, &["last 3"]);
    server.finish(try_id, TryState::Success);
    assert_eq!(serde_json::from_str::<Value>(&next().1).unwrap()["seq"], 3);
    let (kind, data) = next();
    assert_eq!(kind, "end");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["state"],
        "success"
    );
    reader.join().unwrap();
    assert!(events_rx.try_recv().is_err(), "nothing after the end");
}

#[test]
fn pools_and_connections_whose_values_never_come_back() {
    const SECRET: &str = "sk_live_51HbVq2eZvKYlo2C";
    let server = Server::start();
    let pool = server.call(
        "PUT",
        "/api/v1/pools/stripe_api",
        Some(&server.admin),
        Some(json!({"slots": 4, "description": "Stripe"})),
    );
    assert_eq!(
        pool.body,
        json!({"name": "stripe_api", "slots": 4, "description": "Stripe"})
    );
    let pools = server.get("/api/v1/pools", &server.viewer);
    assert_eq!(pools.body["items"].as_array().unwrap().len(), 2);
    let array = server.post("/api/v1/jobs/etl/runs", &server.operator, json!([]));
    assert_eq!(array.status, 400, "an array is not a trigger body");
    let bad = server.call(
        "PUT",
        "/api/v1/pools/Bad-Name",
        Some(&server.admin),
        Some(json!({"slots": 1})),
    );
    assert_eq!(bad.status, 400);
    // JSON allows a whole number written 4.0; a fraction is refused, and so is a body that
    // is not an object.
    let whole = server.call(
        "PUT",
        "/api/v1/pools/p",
        Some(&server.admin),
        Some(json!({"slots": 4.0})),
    );
    assert_eq!(whole.body["slots"], 4);
    for body in [json!({"slots": 1.5}), json!([])] {
        let reply = server.call("PUT", "/api/v1/pools/p", Some(&server.admin), Some(body));
        assert_eq!((reply.status, error_code(&reply)), (400, "bad_request"));
    }
    let negative = server.call(
        "PUT",
        "/api/v1/pools/p",
        Some(&server.admin),
        Some(json!({"slots": -1})),
    );
    assert_eq!(negative.status, 400);
    assert_eq!(
        server
            .call(
                "DELETE",
                "/api/v1/pools/stripe_api",
                Some(&server.admin),
                None
            )
            .status,
        204
    );
    assert_eq!(
        server
            .call(
                "DELETE",
                "/api/v1/pools/stripe_api",
                Some(&server.admin),
                None
            )
            .status,
        404
    );

    let put = server.call(
        "PUT",
        "/api/v1/connections/stripe",
        Some(&server.admin),
        Some(json!({"values": {"STRIPE_TOKEN": SECRET}, "description": "Stripe API"})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(
        put.body,
        json!({"name": "stripe", "keys": ["STRIPE_TOKEN"], "description": "Stripe API"})
    );
    let listed = server.get("/api/v1/connections", &server.admin);
    assert_eq!(
        listed.body["items"],
        json!([{"name": "stripe", "keys": ["STRIPE_TOKEN"], "description": "Stripe API"}])
    );
    assert!(!put.text.contains(SECRET) && !listed.text.contains(SECRET));
    let bad_key = server.call(
        "PUT",
        "/api/v1/connections/stripe",
        Some(&server.admin),
        Some(json!({"values": {"lower": "x"}})),
    );
    assert_eq!(bad_key.status, 400);
    assert_eq!(
        server
            .call(
                "DELETE",
                "/api/v1/connections/stripe",
                Some(&server.admin),
                None
            )
            .status,
        204
    );
}

#[test]
fn metrics_count_runs_task_instances_and_requests() {
    let server = Server::start();
    server.trigger();
    server.trigger();
    let metrics = server.get("/metrics", &server.viewer);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("stevedore_runs{state=\"queued\"} 2"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("stevedore_task_instances{state=\"none\"} 6"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("stevedore_http_requests_total{route=\"/api/v1/jobs/{job_id}/runs\",method=\"POST\",status=\"201\"} 2"),
        "{}",
        metrics.text
    );
}

/// Security review, finding 3: three viewers opening a try with a huge line took the server
/// to gigabytes. A page of lines is bounded in bytes (about 4 MiB), whatever its limit, and
/// says it is not finished, so a client reads on from `next_after`.
#[test]
fn a_log_page_is_bounded_in_bytes_whatever_its_lines() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let long = "x".repeat(60 * 1024);
    for chunk in 0..4 {
        let texts: Vec<&str> = (0..50).map(|_| long.as_str()).collect();
        server.log(try_id, chunk * 50, &texts);
    }
    server.finish(try_id, TryState::Success);
    let path = format!("/api/v1/runs/{run_id}/tasks/extract/tries/1/logs?limit=10000");
    let first = server.get(&path, &server.viewer);
    assert_eq!(first.status, 200);
    assert!(
        first.text.len() < 5 * 1024 * 1024,
        "a page of {} bytes",
        first.text.len()
    );
    assert_eq!(first.body["finished"], false, "more lines follow");
    let mut seen = first.body["lines"].as_array().unwrap().len();
    let mut after = first.body["next_after"].as_i64().unwrap();
    loop {
        let page = server.get(&format!("{path}&after={after}"), &server.viewer);
        assert!(page.text.len() < 5 * 1024 * 1024);
        seen += page.body["lines"].as_array().unwrap().len();
        after = page.body["next_after"].as_i64().unwrap();
        if page.body["finished"] == true {
            break;
        }
    }
    assert_eq!(seen, 200, "every line, once");
}

/// Security review, finding 6: unauthenticated requests with made-up methods and paths
/// each made a new series in `/metrics`, without bound.
#[test]
fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let server = Server::start();
    // A raw request: HTTP clients refuse to send made-up methods.
    let raw = |method: &str, path: &str| {
        use std::io::{Read, Write};
        let address = server.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    for n in 0..200 {
        let answer = raw(&format!("BREW{n}"), "/api/v1/runs");
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        server.call("GET", &format!("/no/such/path/{n}"), None, None);
        server.call("GET", &format!("/api/v1/runs/made-up-{n}"), None, None);
    }
    let metrics = server.get("/metrics", &server.viewer);
    let series: Vec<&str> = metrics
        .text
        .lines()
        .filter(|line| line.starts_with("stevedore_http_requests_total{"))
        .collect();
    assert!(
        series.len() <= 6,
        "600 made-up requests made {} series:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(
        !metrics.text.contains("BREW")
            && !metrics.text.contains("/no/such")
            && !metrics.text.contains("made-up"),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains(
            "stevedore_http_requests_total{route=\"other\",method=\"other\",status=\"404\"} 200"
        ),
        "{}",
        metrics.text
    );
}

/// The OpenAPI document lists every operation, and each one it lists is served (filled with
/// real ids, none answers "no route").
#[test]
fn the_openapi_document_describes_what_is_served() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    server.put_artifact(&run_id, try_id, "out/records.jsonl", b"{}\n");
    server.finish(try_id, TryState::Success);
    let document = server.get("/api/v1/openapi.json", &server.viewer);
    assert_eq!(document.status, 200);
    assert_eq!(document.body["openapi"], "3.1.0");
    let paths = document.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (template, methods) in paths {
        let path = template
            .replace("{job_id}", "etl")
            .replace("{run_id}", &run_id)
            .replace("{task_id}", "extract")
            .replace("{try_number}", "1")
            .replace("{path}", "out/records.jsonl")
            .replace("{name}", "default");
        for (method, operation) in methods.as_object().unwrap() {
            operations += 1;
            let method = method.to_uppercase();
            // Read operations are called; for the others an unknown role shows the route
            // exists (403, not 404) without changing anything.
            let reply = if method == "GET" {
                if path.ends_with("/follow") {
                    continue;
                }
                server.get(&path, &server.admin)
            } else {
                server.call(&method, &path, Some(&server.viewer), Some(json!({})))
            };
            assert!(
                !reply.text.contains("no route"),
                "{method} {path} ({}) is documented but not served",
                operation["operationId"]
            );
            let status = reply.status.to_string();
            assert!(
                operation["responses"].get(&status).is_some(),
                "{method} {path} answered {status}, which the document does not list"
            );
        }
    }
    assert_eq!(
        operations, 39,
        "the 29 of before, listNotifications, getNotification and retryNotification, \
         getTaskState, listTaskStateHistory, setTaskState and clearTaskState"
    );
}

/// Pausing a job no scheduler has recorded yet records it paused at once.
#[test]
fn pausing_a_job_the_store_has_not_seen_records_it_paused() {
    let server = Server::start();
    assert!(server
        .runtime
        .block_on(server.store.list_jobs())
        .unwrap()
        .is_empty());
    let paused = server.post("/api/v1/jobs/etl/pause", &server.operator, json!(null));
    assert_eq!(paused.body, json!({"job_id": "etl", "paused": true}));
    let jobs = server.runtime.block_on(server.store.list_jobs()).unwrap();
    assert_eq!((jobs.len(), jobs[0].paused), (1, true));
    assert_eq!(
        server.get("/api/v1/jobs", &server.viewer).body["items"][0]["paused"],
        true
    );
}

/// Issue 14: backfill was the CLI's alone. The one use-case (`stevedore_ops::backfill`) is
/// reachable from the API too: the runs of every interval of the range, in order; the same
/// range again keeps them; a bad range is a 422 naming the field.
#[test]
fn a_backfill_from_the_api_creates_the_runs_of_its_range_once() {
    let server = Server::start();
    let body = json!({"from": "2024-01-01", "to": "2024-01-03"});
    let first = server.post("/api/v1/jobs/etl/backfill", &server.operator, body.clone());
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["intervals"], 3);
    assert_eq!(first.body["created"].as_array().unwrap().len(), 3);
    assert_eq!(first.body["from"], "2024-01-01T00:00:00Z");
    let runs = server.get("/api/v1/runs?job_id=etl", &server.viewer);
    let mut dates: Vec<&str> = runs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "backfill")
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    dates.sort();
    assert_eq!(dates.len(), 3, "{}", runs.text);
    assert!(dates[0].starts_with("2024-01-01"), "{dates:?}");
    let again = server.post("/api/v1/jobs/etl/backfill", &server.operator, body.clone());
    assert_eq!(
        (
            again.body["created"].as_array().unwrap().len(),
            again.body["kept"].as_u64()
        ),
        (0, Some(3))
    );
    let viewer = server.post("/api/v1/jobs/etl/backfill", &server.viewer, body);
    assert_eq!(viewer.status, 403);
    let bad = server.post(
        "/api/v1/jobs/etl/backfill",
        &server.operator,
        json!({"from": "2024-01-05", "to": "2024-01-01"}),
    );
    assert_eq!(
        (bad.status, error_code(&bad)),
        (422, "invalid"),
        "{}",
        bad.text
    );
    assert!(bad.text.contains("to is before from"), "{}", bad.text);
}

/// GET with a token, the raw reply: status, headers and the body's bytes (or the error
/// reading it ended with).
fn get_bytes(
    server: &Server,
    path: &str,
    token: &str,
) -> (u16, ureq::http::HeaderMap, Result<Vec<u8>, String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("{}{path}", server.base))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| e.to_string());
    (status, headers, body)
}

/// A signed artifact link (what a Nomad client fetches a try's input from) serves the blob
/// without a token; an altered link is refused 403, a blob the store lacks is a 404.
#[test]
fn a_signed_artifact_link_serves_its_blob_and_nothing_else() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let sha = server.put_artifact(&run_id, try_id, "records.jsonl", &bytes);
    let blob = stevedore_artifacts::Blob {
        sha256: sha.clone(),
        size: bytes.len() as u64,
    };
    let url = server
        .runtime
        .block_on(
            server
                .artifacts
                .signed_url(&run_id, &blob, std::time::Duration::from_secs(60)),
        )
        .unwrap();
    let path = url
        .strip_prefix(&server.base)
        .expect("a link to this server")
        .to_owned();
    let reply = server.call("GET", &path, None, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (status, headers, body) = get_bytes(&server, &path, "no-token-needed");
    assert_eq!(status, 200);
    assert_eq!(headers["x-stevedore-sha256"], sha.as_str());
    assert!(body.unwrap() == bytes, "the blob comes back whole");
    let tampered = path.replace("expires=", "expires=9");
    let refused = server.call("GET", &tampered, None, None);
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.text.contains("signature is not valid"),
        "{}",
        refused.text
    );
    let bigger = path.replace(
        &format!("size={}", bytes.len()),
        &format!("size={}", bytes.len() + 1),
    );
    assert_eq!(server.call("GET", &bigger, None, None).status, 403);
    let gone = stevedore_artifacts::Blob {
        sha256: "0".repeat(64),
        size: 3,
    };
    let url = server
        .runtime
        .block_on(
            server
                .artifacts
                .signed_url(&run_id, &gone, std::time::Duration::from_secs(60)),
        )
        .unwrap();
    let missing = server.call("GET", url.strip_prefix(&server.base).unwrap(), None, None);
    assert_eq!(missing.status, 404, "{}", missing.text);
}

/// A run's artifacts are listed to a viewer and downloaded by an operator, whole and with
/// their sha256; a viewer may not download; an unknown file is a 404 naming it; a damaged
/// blob is never served as if whole (the body is cut short).
#[test]
fn artifacts_are_listed_and_downloaded_by_role() {
    let server = Server::start();
    let run_id = server.trigger();
    let try_id = server.start_try(&run_id, "extract");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let sha = server.put_artifact(&run_id, try_id, "out/part 1.bin", &big);
    server.put_artifact(&run_id, try_id, "small.txt", b"hello");
    server.finish(try_id, TryState::Success);

    let listed = server.get(&format!("/api/v1/runs/{run_id}/artifacts"), &server.viewer);
    assert_eq!(listed.status, 200, "{}", listed.text);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", listed.text);
    assert_eq!(items[0]["task_id"], "extract");
    assert_eq!(items[0]["try_number"], 1);
    assert_eq!(items[0]["path"], "out/part 1.bin");
    assert_eq!(items[0]["size"], big.len() as u64);
    assert_eq!(items[0]["sha256"], sha.as_str());
    assert_eq!(items[0]["modified"], "2026-01-01T00:00:00.000000Z");
    let none = server.get(
        &format!("/api/v1/runs/{run_id}/artifacts?task_id=load"),
        &server.viewer,
    );
    assert_eq!(none.body["items"], json!([]));
    // The run's detail lists them too.
    let detail = server.get(&format!("/api/v1/runs/{run_id}"), &server.viewer);
    assert_eq!(detail.body["artifacts"].as_array().unwrap().len(), 2);

    let url = format!("/api/v1/runs/{run_id}/artifacts/extract/out/part%201.bin");
    let (status, _, _) = get_bytes(&server, &url, &server.viewer);
    assert_eq!(status, 403);
    let (status, headers, body) = get_bytes(&server, &url, &server.operator);
    assert_eq!(status, 200);
    assert_eq!(headers["x-stevedore-sha256"], sha.as_str());
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(body.unwrap() == big, "the file comes back whole");
    let (status, _, body) = get_bytes(
        &server,
        &format!("/api/v1/runs/{run_id}/artifacts/extract/small.txt?try=1"),
        &server.operator,
    );
    assert_eq!((status, body.unwrap()), (200, b"hello".to_vec()));

    let missing = server.get(
        &format!("/api/v1/runs/{run_id}/artifacts/extract/nope.txt"),
        &server.operator,
    );
    assert_eq!(missing.status, 404);
    assert!(
        missing.text.contains("left no file `nope.txt`"),
        "{}",
        missing.text
    );
    let other_try = server.get(
        &format!("/api/v1/runs/{run_id}/artifacts/extract/small.txt?try=2"),
        &server.operator,
    );
    assert_eq!(other_try.status, 404);

    // The stored bytes are damaged: the download never completes as if they were the file.
    let blob = server
        .artifacts_dir
        .join("runs")
        .join(&run_id)
        .join("blobs")
        .join(&sha);
    let mut damaged = big.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();
    let (status, _, body) = get_bytes(&server, &url, &server.operator);
    assert_eq!(status, 200);
    assert!(body.is_err(), "a damaged file was served whole");
    // Gone from the store: a 404 naming it.
    std::fs::remove_file(&blob).unwrap();
    let gone = server.get(&url, &server.operator);
    assert_eq!(gone.status, 404);
    assert!(
        gone.text.contains("missing from the artifact store"),
        "{}",
        gone.text
    );
}

/// Issue 17: the outbox through the API — listed newest first and paged, filtered by job,
/// run and failure, shown with every attempt, sent again by an operator (not a viewer), in
/// the run's detail, and counted per channel and outcome in the metrics.
#[test]
fn notifications_are_listed_shown_retried_and_counted() {
    use chrono::Utc;
    use stevedore_domain::notify::NotifyEvent;
    use stevedore_store::{DeliveryOutcome, NewNotification, NotificationAttempt};
    let server = Server::start();
    let run_id = server.trigger();
    let run = server
        .runtime
        .block_on(server.store.get_run(&run_id))
        .unwrap();
    let make = |what: &str, event: NotifyEvent| {
        NewNotification::new(
            what,
            event,
            "ops",
            (&run.job_id, &run.job_version),
            &run.run_id,
            Some(("extract", 1)),
            "up_for_retry",
            Some("exit_code: 3".into()),
            run.logical_date,
            Utc::now(),
        )
    };
    let made = [
        make("a", NotifyEvent::Retry),
        make("b", NotifyEvent::Failure),
        make("c", NotifyEvent::Stuck),
    ];
    server
        .runtime
        .block_on(
            server
                .store
                .mark_deadline_missed(&run_id, &made, Utc::now()),
        )
        .unwrap();
    // The first is delivered, the second given up after a 503.
    let claimed = server
        .runtime
        .block_on(server.store.claim_notifications(
            "s",
            Utc::now() + chrono::TimeDelta::seconds(1),
            Utc::now() + chrono::TimeDelta::seconds(60),
            10,
        ))
        .unwrap();
    let attempt = |ok: bool, code: u16| NotificationAttempt {
        attempt: 0,
        at: Utc::now(),
        channel: Some("webhook".into()),
        ok,
        status_code: Some(code),
        error: (!ok).then(|| "the webhook answered 503".to_owned()),
        duration_ms: 3,
    };
    server
        .runtime
        .block_on(server.store.record_deliveries(&[(
            claimed[0].seq,
            attempt(true, 200),
            DeliveryOutcome::Delivered,
        )]))
        .unwrap();
    let claimed = server
        .runtime
        .block_on(server.store.claim_notifications(
            "s",
            Utc::now() + chrono::TimeDelta::seconds(1),
            Utc::now() + chrono::TimeDelta::seconds(60),
            10,
        ))
        .unwrap();
    server
        .runtime
        .block_on(server.store.record_deliveries(&[(
            claimed[0].seq,
            attempt(false, 503),
            DeliveryOutcome::GiveUp,
        )]))
        .unwrap();

    let page = server.get("/api/v1/notifications?limit=2", &server.viewer);
    assert_eq!(page.status, 200, "{}", page.text);
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], made[2].id.as_str(), "newest first");
    assert_eq!(items[0]["status"], "pending");
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = server.get(
        &format!("/api/v1/notifications?limit=2&cursor={cursor}"),
        &server.viewer,
    );
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["items"][0]["id"], made[0].id.as_str());
    assert_eq!(rest.body["items"][0]["status"], "delivered");
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let failed = server.get("/api/v1/notifications?failed=true", &server.viewer);
    let failed = failed.body["items"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], made[1].id.as_str());
    assert_eq!(failed[0]["status"], "failed");
    assert_eq!(failed[0]["last_status_code"], 503);
    let elsewhere = server.get("/api/v1/notifications?job_id=other", &server.viewer);
    assert_eq!(elsewhere.body["items"], json!([]));
    for cursor in ["x1", ""] {
        let bad = server.get(
            &format!("/api/v1/notifications?cursor={cursor}"),
            &server.viewer,
        );
        assert_eq!(bad.status, 400, "cursor `{cursor}`");
    }

    let shown = server.get(
        &format!("/api/v1/notifications/{}", made[1].id),
        &server.viewer,
    );
    assert_eq!(shown.status, 200, "{}", shown.text);
    assert_eq!(shown.body["event"], "failure");
    assert_eq!(shown.body["task_id"], "extract");
    assert_eq!(shown.body["attempts"][0]["status_code"], 503);
    assert_eq!(
        shown.body["attempts"][0]["error"],
        "the webhook answered 503"
    );
    let prefix = server.get(
        &format!("/api/v1/notifications/{}", &made[1].id[..8]),
        &server.viewer,
    );
    assert_eq!(prefix.status, 404, "the API takes whole ids");

    let path = format!("/api/v1/notifications/{}/retry", made[1].id);
    assert_eq!(server.post(&path, &server.viewer, json!({})).status, 403);
    let retried = server.post(&path, &server.operator, json!({}));
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.body["status"], "pending");
    assert_eq!(retried.body["attempts"], 1);

    let detail = server.get(&format!("/api/v1/runs/{run_id}"), &server.viewer);
    let listed: Vec<&str> = detail.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["retry", "failure", "stuck"], "oldest first");
    assert!(detail.body["deadline_missed_at"].is_string());

    let metrics = server.get("/metrics", &server.viewer);
    for line in [
        "stevedore_notification_deliveries_total{channel=\"webhook\",outcome=\"sent\"} 1",
        "stevedore_notification_deliveries_total{channel=\"webhook\",outcome=\"failed\"} 1",
        "stevedore_notification_deliveries_total{channel=\"email\",outcome=\"sent\"} 0",
    ] {
        assert!(metrics.text.contains(line), "{line}: {}", metrics.text);
    }
}

/// A task's committed state through the API: shown, set and cleared by an operator (not a
/// viewer), every change in its history; a full refresh named on the trigger.
#[test]
fn a_task_s_state_is_shown_set_cleared_and_kept_in_its_history() {
    let server = Server::start();
    let state = "/api/v1/jobs/etl/tasks/extract/state";
    let none = server.get(state, &server.viewer);
    assert_eq!(none.status, 404, "{}", none.text);
    assert!(
        none.text.contains("has no committed state"),
        "{}",
        none.text
    );

    let denied = server.call(
        "PUT",
        state,
        Some(&server.viewer),
        Some(json!({"value": {"cursor": "2024-01-01"}})),
    );
    assert_eq!(denied.status, 403);
    let set = server.call(
        "PUT",
        state,
        Some(&server.operator),
        Some(json!({"value": {"cursor": "2024-01-01"}})),
    );
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["action"], "set");
    let shown = server.get(state, &server.viewer);
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["value"], json!({"cursor": "2024-01-01"}));
    assert_eq!(shown.body["action"], "set");
    assert!(shown.body["actor"].is_string());

    for (body, status, says) in [
        (json!({"value": null}), 422, "clear it instead"),
        (json!({"value": "x".repeat(1_100_000)}), 422, "over"),
        (json!({"cursor": 1}), 400, "value"),
    ] {
        let refused = server.call("PUT", state, Some(&server.operator), Some(body));
        assert_eq!(refused.status, status, "{}", refused.text);
        assert!(refused.text.contains(says), "{}", refused.text);
    }
    let unknown = server.call(
        "PUT",
        "/api/v1/jobs/etl/tasks/nope/state",
        Some(&server.operator),
        Some(json!({"value": 1})),
    );
    assert_eq!(unknown.status, 422);
    assert!(
        unknown.text.contains("has no task `nope`"),
        "{}",
        unknown.text
    );

    let cleared = server.call("DELETE", state, Some(&server.operator), None);
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert_eq!(cleared.body["action"], "clear");
    assert_eq!(server.get(state, &server.viewer).status, 404);
    let history = server.get(&format!("{state}/history"), &server.viewer);
    assert_eq!(history.status, 200);
    let actions: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["clear", "set"]);
    assert_eq!(
        server
            .get(&format!("{state}/history?limit=0"), &server.viewer)
            .status,
        400
    );

    let refreshing = server.post(
        "/api/v1/jobs/etl/runs",
        &server.operator,
        json!({"full_refresh": true, "full_refresh_tasks": ["extract"]}),
    );
    assert_eq!(refreshing.status, 201, "{}", refreshing.text);
    assert_eq!(refreshing.body["full_refresh"], json!(["extract"]));
    let all = server.post(
        "/api/v1/jobs/etl/runs",
        &server.operator,
        json!({"full_refresh": true}),
    );
    assert_eq!(
        all.body["full_refresh"],
        json!(["extract", "load", "report"])
    );
    let bad = server.post(
        "/api/v1/jobs/etl/runs",
        &server.operator,
        json!({"full_refresh": true, "full_refresh_tasks": ["nope"]}),
    );
    assert_eq!(bad.status, 422);
    assert!(bad.text.contains("no task `nope`"), "{}", bad.text);
}

/// Posts `body` to a job's events webhook with the given headers.
fn post_events(server: &Server, job: &str, body: &[u8], headers: &[(&str, String)]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/api/v1/jobs/{job}/events", server.base));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let mut response = agent.run(request.body(body.to_vec()).unwrap()).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

#[test]
fn a_webhook_takes_events_with_its_token_or_signature_and_refuses_the_rest_storing_nothing() {
    let server = Server::start();
    std::fs::write(
        server.jobs_dir().join("hooks.yaml"),
        "id: hooks\nevents: {max_batch: 10, max_wait: 1m, max_body: 1Ki, secret_connection: vendor}\ntasks:\n  - id: t\n    image: stevedore/synth:0.1.0\n",
    )
    .unwrap();
    let (token, hash) = stevedore_server::auth::new_token().unwrap();
    server.runtime.block_on(async {
        server
            .store
            .set_webhook_token("hooks", &hash, chrono::Utc::now())
            .await
            .unwrap();
    });
    let waiting = || {
        server
            .runtime
            .block_on(async { server.store.waiting_events("hooks").await.unwrap() })
    };
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    let json = ("Content-Type", "application/json".to_owned());
    let lines = ("Content-Type", "application/x-ndjson".to_owned());

    // No credentials, a wrong token, a user's token: 401, nothing stored.
    for headers in [
        vec![json.clone()],
        vec![json.clone(), bearer("stv_wrong")],
        vec![json.clone(), bearer(&server.admin)],
    ] {
        let reply = post_events(&server, "hooks", br#"{"id": 1}"#, &headers);
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    assert_eq!(waiting(), 0);

    // The job's token: one JSON event, then three JSON lines.
    let reply = post_events(
        &server,
        "hooks",
        br#"{"id": 1}"#,
        &[json.clone(), bearer(&token)],
    );
    assert_eq!(
        (reply.status, reply.body["accepted"].clone()),
        (202, json!(1)),
        "{}",
        reply.text
    );
    let reply = post_events(
        &server,
        "hooks",
        b"{\"id\": 2}\n{\"id\": 3}\n{\"id\": 4}\n",
        &[lines.clone(), bearer(&token)],
    );
    assert_eq!(reply.body["accepted"], 3, "{}", reply.text);
    assert_eq!(waiting(), 4);

    // Over max_body: 413; a line that is not JSON: 400 naming it; nothing of either kept.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2000));
    let reply = post_events(
        &server,
        "hooks",
        big.as_bytes(),
        &[json.clone(), bearer(&token)],
    );
    assert_eq!(reply.status, 413, "{}", reply.text);
    let reply = post_events(
        &server,
        "hooks",
        b"{\"id\": 5}\nnot json\n",
        &[lines, bearer(&token)],
    );
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("line 2"), "{}", reply.text);
    assert_eq!(waiting(), 4);

    // An HMAC signature under the secret connection's WEBHOOK_SECRET, instead of the token.
    let put = server.call(
        "PUT",
        "/api/v1/connections/vendor",
        Some(&server.admin),
        Some(json!({"values": {"WEBHOOK_SECRET": "shared-secret-123"}})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let body = br#"{"id": 6}"#;
    let signed = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"shared-secret-123").unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let reply = post_events(
        &server,
        "hooks",
        body,
        &[json.clone(), ("X-Stevedore-Signature", signed.clone())],
    );
    assert_eq!(reply.status, 202, "{}", reply.text);
    let forged = post_events(
        &server,
        "hooks",
        br#"{"id": 7}"#,
        &[json.clone(), ("X-Stevedore-Signature", signed)],
    );
    assert_eq!(forged.status, 401, "a signature of another body");
    assert_eq!(waiting(), 5);

    // A paused job: 409, nothing stored. A job without `events:`: 404.
    assert_eq!(
        server
            .post("/api/v1/jobs/hooks/pause", &server.operator, json!({}))
            .status,
        200
    );
    let reply = post_events(
        &server,
        "hooks",
        br#"{"id": 8}"#,
        &[json.clone(), bearer(&token)],
    );
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(waiting(), 5);
    let reply = post_events(&server, "etl", br#"{"id": 9}"#, &[json, bearer(&token)]);
    assert_eq!(reply.status, 404, "{}", reply.text);
}

/// Every event of a try's log followed as Server-Sent Events, to its `end`.
fn follow_to_end(server: &Server, path: &str) -> Vec<(String, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .get(&format!("{}{path}", server.base))
        .header("Authorization", format!("Bearer {}", server.viewer))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut events = Vec::new();
    let mut event = String::new();
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((event.clone(), data.to_owned()));
            if event == "end" {
                break;
            }
        }
    }
    events
}

/// A try's log once archived to the artifact store answers the API's pages (from any
/// line, of any size), its live log (SSE) and the UI's try page exactly as its rows did.
#[test]
fn an_archived_log_answers_pages_sse_and_the_try_page_as_its_rows_did() {
    let server = Server::start();
    let run = server.trigger();
    let try_id = server.start_try(&run, "extract");
    let texts: Vec<String> = (0..12_345)
        .map(|i| match i {
            3 => "unicode é 漢字 🚢 \"quoted\" \\ \t tab".to_owned(),
            _ => format!("line {i}"),
        })
        .collect();
    for (index, chunk) in texts.chunks(1000).enumerate() {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        server.log(try_id, (index * 1000) as i64, &chunk);
    }
    server.finish(try_id, TryState::Success);
    let logs = format!("/api/v1/runs/{run}/tasks/extract/tries/1/logs");
    let ranges = [
        "",
        "?limit=1",
        "?after=2&limit=5",
        "?after=9998&limit=4",
        "?after=10000&limit=5000",
        "?after=12340",
        "?after=12344",
    ];
    let cookie = server.login(&server.viewer);
    let read = |server: &Server| -> (Vec<Value>, Vec<(String, String)>, String) {
        let pages = ranges
            .iter()
            .map(|range| {
                let reply = server.get(&format!("{logs}{range}"), &server.viewer);
                assert_eq!(reply.status, 200, "{range}: {}", reply.text);
                reply.body
            })
            .collect();
        let events = follow_to_end(server, &format!("{logs}/follow?after=12000"));
        let page = server.browse(
            "GET",
            &format!("/runs/{run}/tasks/extract/tries/1"),
            Some(&cookie),
            &[],
        );
        assert_eq!(page.status, 200);
        (pages, events, page.html)
    };
    let (pages, events, html) = read(&server);
    assert_eq!(events.len(), 345, "344 lines and the end");
    assert!(html.contains("line 12344"), "the try page opens at the end");

    let due = server
        .runtime
        .block_on(
            server
                .store
                .logs_to_archive(chrono::Utc::now() + chrono::TimeDelta::seconds(1), 10),
        )
        .unwrap();
    assert_eq!(due.len(), 1);
    server
        .runtime
        .block_on(stevedore_artifacts::logs::archive(
            server.store.as_ref(),
            &server.artifacts,
            &due[0],
            chrono::Utc::now(),
        ))
        .unwrap();
    assert!(server
        .runtime
        .block_on(server.store.logs(try_id, None, 10))
        .unwrap()
        .is_empty());

    let (archived_pages, archived_events, archived_html) = read(&server);
    for (range, (archived, stored)) in ranges.iter().zip(archived_pages.iter().zip(&pages)) {
        assert_eq!(archived, stored, "page {range}");
    }
    assert_eq!(archived_events, events);
    assert_eq!(archived_html, html);

    // /metrics counts where the lines are now.
    let archive = server
        .runtime
        .block_on(server.store.log_archive(try_id))
        .unwrap()
        .unwrap();
    let metrics = server.get("/metrics", &server.viewer).text;
    for series in [
        "stevedore_log_rows 0".to_owned(),
        "stevedore_archived_log_lines 12345".to_owned(),
        format!("stevedore_archived_log_bytes {}", archive.size),
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series}: {metrics}"
        );
    }
}
