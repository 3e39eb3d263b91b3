//! Alerts end to end (issue 17): a real scheduler runs real containers and delivers its
//! events to receivers the tests start — an HTTP webhook receiver (signatures checked
//! against the secret), a receiver that checks Slack's incoming-webhook format and answers
//! as Slack does, and a real SMTP server (aiosmtpd). The chaos test with three schedulers
//! on PostgreSQL is in `crates/cli/tests/chaos.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stevedore_domain::mask::Masker;
use stevedore_domain::state::{RunState, TryState};
use stevedore_store::NotificationFilter;
use stevedore_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);
const WEBHOOK_SECRET: &str = "whsec-4f9a2c-never-shown";

async fn connection(harness: &Harness, name: &str, values: &[(&str, &str)]) {
    let values: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    stevedore_ops::connections::put(
        harness.store.as_ref(),
        &harness.secret_key,
        name,
        &values,
        "",
    )
    .await
    .unwrap();
}

/// `X-Stevedore-Signature` checked the way a receiver would: HMAC-SHA256 of the raw body
/// under the shared secret, in constant time.
fn signature_holds(received: &Received) -> bool {
    let Some(header) = received.headers.get("x-stevedore-signature") else {
        return false;
    };
    let Some(hex_mac) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(bytes) = hex_decode(hex_mac) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(&received.body);
    mac.verify_slice(&bytes).is_ok()
}

fn hex_decode(text: &str) -> Result<Vec<u8>, ()> {
    if text.len() % 2 != 0 {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| ()))
        .collect()
}

fn event_names(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Issue 17, must show 1: a task failing twice with one retry makes exactly one `retry`
/// and one `failure` at the webhook, each signed; the job's next good run one `recovery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_s_retry_failure_and_recovery_reach_a_signed_webhook_once_each() {
    let receiver = Receiver::start(ReceiverKind::Webhook).await;
    let job = format!(
        "id: nightly_load\nparams: {{code: 3}}\nnotify:\n  - {{on: [retry, failure, recovery], connection: ops}}\ntasks:\n  - id: load\n    image: {SYNTH}\n    args: [exit, --code, \"{{{{ params.code }}}}\"]\n    retries: 1\n    retry_delay: 1s\n"
    );
    let harness = Harness::start(&[("nightly.yaml", &job)]).await;
    connection(
        &harness,
        "ops",
        &[
            ("WEBHOOK_URL", &receiver.url),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;
    let run = harness.trigger("nightly_load").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(harness.tries(&run.run_id, "load").await.len(), 2);
    let received = receiver.wait_for(2, MINUTE).await;
    assert_eq!(event_names(&received), ["retry", "failure"]);
    for request in &received {
        assert!(
            signature_holds(request),
            "bad signature: {:?}",
            request.headers
        );
        let body = request.json();
        assert_eq!(
            request
                .headers
                .get("x-stevedore-event-id")
                .map(String::as_str),
            body["id"].as_str()
        );
        assert_eq!(body["job_id"], "nightly_load");
        assert_eq!(body["run_id"], run.run_id.as_str());
        for key in ["state", "reason", "logical_date", "url", "occurred_at"] {
            assert!(body.get(key).is_some(), "{key}: {body}");
        }
    }
    let retry = received[0].json();
    assert_eq!(
        (retry["task_id"].as_str(), retry["try_number"].as_u64()),
        (Some("load"), Some(1))
    );
    assert_eq!(retry["reason"], "exit_code: 3");
    let failure = received[1].json();
    assert!(
        failure.get("task_id").is_none(),
        "the run's failure: {failure}"
    );
    assert_eq!(failure["state"], "failed");
    assert_eq!(failure["reason"], "task `load` failed");
    assert_eq!(
        failure["url"],
        format!("{HARNESS_PUBLIC_URL}/runs/{}", run.run_id).as_str()
    );
    assert_eq!(
        retry["url"],
        format!(
            "{HARNESS_PUBLIC_URL}/runs/{}/tasks/load/tries/1",
            run.run_id
        )
        .as_str()
    );

    let mut params = serde_json::Map::new();
    params.insert("code".into(), serde_json::json!(0));
    let good = harness.trigger_with("nightly_load", params).await;
    let good = harness.wait_run(&good.run_id, MINUTE).await;
    assert_eq!(good.state, RunState::Success);
    let received = receiver.wait_for(3, MINUTE).await;
    assert_eq!(event_names(&received), ["retry", "failure", "recovery"]);
    assert_eq!(received[2].json()["run_id"], good.run_id.as_str());
    assert!(signature_holds(&received[2]));
    // Nothing is sent twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 3);
    let delivered = harness
        .store
        .list_notifications(&NotificationFilter {
            job_id: Some("nightly_load".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(delivered.iter().all(
        |n| n.status == stevedore_store::NotificationStatus::Delivered
            && n.channel.as_deref() == Some("webhook")
            && n.attempts == 1
    ));
    harness.stop().await;
}

/// Issue 17, must show 1: a run sleeping past its `deadline` is told of while it runs (and
/// goes on); a run past its `run_timeout` has its container killed and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_run_is_told_of_while_it_runs_and_a_run_timeout_kills_its_container() {
    let receiver = Receiver::start(ReceiverKind::Webhook).await;
    let late = format!(
        "id: late_load\ndeadline: 3s\nnotify:\n  - {{on: [deadline_missed, success], connection: ops}}\ntasks:\n  - id: slow\n    image: {SYNTH}\n    args: [sleep, --seconds, \"8\"]\n"
    );
    let bounded = format!(
        "id: bounded_load\nrun_timeout: 4s\nnotify:\n  - {{on: [failure], connection: ops}}\ntasks:\n  - id: endless\n    image: {SYNTH}\n    args: [sleep, --seconds, \"600\"]\n    retries: 2\n"
    );
    let harness = Harness::start(&[("late.yaml", &late), ("bounded.yaml", &bounded)]).await;
    connection(&harness, "ops", &[("WEBHOOK_URL", &receiver.url)]).await;
    let late_run = harness.trigger("late_load").await;
    let bounded_run = harness.trigger("bounded_load").await;

    let first = receiver.wait_for(1, MINUTE).await;
    let deadline_event = first
        .iter()
        .map(Received::json)
        .find(|body| body["event"] == "deadline_missed")
        .expect("deadline_missed");
    assert_eq!(deadline_event["run_id"], late_run.run_id.as_str());
    // Told while it runs: the run has not ended.
    let now = harness.store.get_run(&late_run.run_id).await.unwrap();
    assert_eq!(now.state, RunState::Running, "{deadline_event}");
    let late_run = harness.wait_run(&late_run.run_id, MINUTE).await;
    assert_eq!(late_run.state, RunState::Success);

    let bounded_run = harness.wait_run(&bounded_run.run_id, MINUTE).await;
    assert_eq!(bounded_run.state, RunState::Failed);
    let took = bounded_run.ended_at.unwrap() - bounded_run.started_at.unwrap();
    assert!(took < chrono::TimeDelta::seconds(20), "failed after {took}");
    wait_containers_gone(&bounded_run.run_id, MINUTE).await;
    let deadline = tokio::time::Instant::now() + MINUTE;
    let tries = loop {
        let tries = harness.tries(&bounded_run.run_id, "endless").await;
        if tries.iter().all(|t| t.state != TryState::Running) {
            break tries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{tries:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(tries.len(), 1, "no retry after a run timeout: {tries:?}");
    assert_eq!(
        tries[0].failure_reason.as_deref(),
        Some("killed: run timeout")
    );

    let received = receiver.wait_for(3, MINUTE).await;
    let mut by_event: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for body in received.iter().map(Received::json) {
        by_event
            .entry(body["event"].as_str().unwrap().to_owned())
            .or_default()
            .push(body);
    }
    assert_eq!(by_event["deadline_missed"].len(), 1, "{by_event:?}");
    assert_eq!(by_event["success"].len(), 1, "{by_event:?}");
    let failure = &by_event["failure"];
    assert_eq!(failure.len(), 1, "{by_event:?}");
    assert_eq!(failure[0]["run_id"], bounded_run.run_id.as_str());
    assert_eq!(
        failure[0]["reason"],
        "run timeout: not ended 4s after it started"
    );
    harness.stop().await;
}

/// The text of a mail's body, decoded from its transfer encoding.
fn mail_body(raw: &str) -> String {
    let (headers, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    let encoding = headers
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-transfer-encoding:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    match encoding.as_str() {
        "base64" => {
            use base64::Engine;
            let joined: String = body.split_whitespace().collect();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(joined)
                    .unwrap(),
            )
            .unwrap()
        }
        "quoted-printable" => {
            let joined = body.replace("=\r\n", "").replace("=\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'=' && i + 2 < bytes.len() {
                    if let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        _ => body.to_owned(),
    }
}

/// Issue 17, must shows 2 and 4: a failed task's alert goes as an email to a real SMTP
/// server (with the reason, a link and its last log lines) and as a Slack message in
/// Slack's format; the task printed its connection's secret (plainly and encoded), and no
/// body of any channel holds it in any form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_and_slack_messages_arrive_and_never_hold_a_task_s_secret() {
    const SECRET: &str = "tok_9f8e7d-Sécret/+=value";
    let smtp = SmtpServer::start();
    let slack = Receiver::start(ReceiverKind::Slack).await;
    let hook = Receiver::start(ReceiverKind::Webhook).await;
    let job = "id: leaky\nnotify:\n  - {on: [failure], connection: mail}\n  - {on: [failure], connection: chat}\n  - {on: [failure], connection: hook}\ndefaults:\n  notify:\n    - {on: [failure], connection: mail}\n    - {on: [failure], connection: chat}\n    - {on: [failure], connection: hook}\ntasks:\n  - id: extract\n    image: stevedore/debian-minbase:bookworm-1\n    command: [sh, -c, 'echo \"token $API_TOKEN\"; printf %s \"$API_TOKEN\" | base64; echo \"{\\\"type\\\":\\\"log\\\",\\\"level\\\":\\\"error\\\",\\\"message\\\":\\\"refused $API_TOKEN\\\"}\"; echo \"the API refused us\" >&2; exit 4']\n    connections: [api]\n";
    let harness = Harness::start(&[("leaky.yaml", job)]).await;
    connection(&harness, "api", &[("API_TOKEN", SECRET)]).await;
    let port = smtp.port.to_string();
    connection(
        &harness,
        "mail",
        &[
            ("SMTP_HOST", smtp.host.as_str()),
            ("SMTP_PORT", port.as_str()),
            ("SMTP_TLS", "none"),
            ("SMTP_FROM", "stevedore@example.com"),
            ("SMTP_TO", "oncall@example.com, data@example.com"),
        ],
    )
    .await;
    connection(&harness, "chat", &[("SLACK_WEBHOOK_URL", &slack.url)]).await;
    connection(&harness, "hook", &[("WEBHOOK_URL", &hook.url)]).await;
    let run = harness.trigger("leaky").await;
    let run = harness.wait_run(&run.run_id, MINUTE).await;
    assert_eq!(run.state, RunState::Failed);

    // Two events (the task's failure and the run's), on three channels each.
    let mails = smtp.wait_for(2, MINUTE).await;
    let slacks = slack.wait_for(2, MINUTE).await;
    let hooks = hook.wait_for(2, MINUTE).await;
    assert_eq!((mails.len(), slacks.len(), hooks.len()), (2, 2, 2));
    for message in &slacks {
        assert_eq!(
            message.status,
            200,
            "Slack refused it: {}",
            String::from_utf8_lossy(&message.body)
        );
        let text = message.json()["text"].as_str().unwrap().to_owned();
        assert!(text.contains("failure: job leaky"), "{text}");
    }
    let task_mail = mails
        .iter()
        .map(|raw| (raw.clone(), mail_body(raw)))
        .find(|(_, body)| body.contains("Task:         extract"))
        .expect("the task's failure mail");
    assert!(
        task_mail
            .0
            .contains("Subject: [Stevedore] failure: job leaky, task extract (try 1)"),
        "{}",
        task_mail.0
    );
    assert!(task_mail.0.contains("oncall@example.com") && task_mail.0.contains("data@example.com"));
    let body = &task_mail.1;
    assert!(body.contains("Reason:\nexit_code: 4"), "{body}");
    assert!(
        body.contains(&format!("/runs/{}/tasks/extract/tries/1", run.run_id)),
        "{body}"
    );
    assert!(body.contains("The last "), "{body}");
    assert!(body.contains("token ***"), "the log tail, masked: {body}");
    assert!(body.contains("the API refused us"), "{body}");

    // No form of the secret anywhere: plain, base64, URL- and JSON-encoded.
    let forms = Masker::new([SECRET]).forms().to_vec();
    assert!(forms.len() > 3, "{forms:?}");
    let mut bodies: Vec<String> = mails
        .iter()
        .map(|raw| format!("{raw}\n{}", mail_body(raw)))
        .collect();
    bodies.extend(
        slacks
            .iter()
            .chain(hooks.iter())
            .map(|r| String::from_utf8_lossy(&r.body).into_owned()),
    );
    for body in &bodies {
        for form in &forms {
            assert!(
                !body.contains(form.as_str()),
                "`{form}` in a notification: {body}"
            );
        }
    }
    harness.stop().await;
}

/// Issue 17, must show 3: the webhook receiver is down for 30 s while two runs make their
/// events; once it is back every event arrives, each run's in the order they happened. A
/// second rule's receiver, up all along, gets its events meanwhile: a channel that fails
/// never holds back the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_thirty_seconds_gets_every_event_in_order_once_back() {
    let mut receiver = Receiver::start(ReceiverKind::Webhook).await;
    receiver.stop().await;
    let down_since = tokio::time::Instant::now();
    let audit = Receiver::start(ReceiverKind::Webhook).await;
    let job = format!(
        "id: flaky_feed\nnotify:\n  - {{on: [failure], connection: ops}}\n  - {{on: [failure], connection: audit}}\ndefaults:\n  notify:\n    - {{on: [retry, failure], connection: ops}}\ntasks:\n  - id: pull\n    image: {SYNTH}\n    args: [exit, --code, \"2\"]\n    retries: 2\n    retry_delay: 1s\n"
    );
    let harness = Harness::start(&[("flaky.yaml", &job)]).await;
    connection(&harness, "ops", &[("WEBHOOK_URL", &receiver.url)]).await;
    connection(&harness, "audit", &[("WEBHOOK_URL", &audit.url)]).await;
    let first = harness.trigger("flaky_feed").await;
    let second = harness.trigger("flaky_feed").await;
    for run in [&first, &second] {
        assert_eq!(
            harness.wait_run(&run.run_id, MINUTE).await.state,
            RunState::Failed
        );
    }
    // Each run: retry, retry, the task's failure, the run's failure.
    let outbox = harness
        .store
        .list_notifications(&NotificationFilter {
            job_id: Some("flaky_feed".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    // And each run's failure to `audit`, which is up: delivered while `ops` is down.
    let audited = audit.wait_for(2, MINUTE).await;
    assert_eq!(event_names(&audited), ["failure", "failure"]);
    assert!(
        down_since.elapsed() < Duration::from_secs(30),
        "too slow to show it"
    );
    let outbox: Vec<_> = outbox
        .into_iter()
        .filter(|n| n.connection == "ops")
        .collect();
    assert_eq!(outbox.len(), 8, "{outbox:#?}");
    let failing = outbox.iter().filter(|n| n.attempts > 0).count();
    assert!(
        failing > 0,
        "deliveries were tried while the receiver was down"
    );
    let left = Duration::from_secs(30).saturating_sub(down_since.elapsed());
    tokio::time::sleep(left).await;
    receiver.restart().await;
    let received = receiver.wait_for(8, Duration::from_secs(90)).await;
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    let mut expected: Vec<String> = outbox.iter().map(|n| n.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every event, and nothing else");
    for run in [&first, &second] {
        let mut in_order: Vec<_> = outbox.iter().filter(|n| n.run_id == run.run_id).collect();
        in_order.sort_by_key(|n| n.seq);
        let expected: Vec<&str> = in_order.iter().map(|n| n.id.as_str()).collect();
        let mut arrived: Vec<String> = Vec::new();
        for body in received.iter().map(Received::json) {
            let id = body["id"].as_str().unwrap().to_owned();
            if body["run_id"] == run.run_id.as_str() && !arrived.contains(&id) {
                arrived.push(id);
            }
        }
        assert_eq!(
            arrived, expected,
            "run {}'s events in the order they happened",
            run.run_id
        );
        let events: Vec<String> = in_order.iter().map(|n| n.event.to_string()).collect();
        assert_eq!(events, ["retry", "retry", "failure", "failure"]);
    }
    harness.stop().await;
}
