//! `http-extract` against API servers that behave like Stripe, GitHub and HubSpot
//! (`crates/testkit/apis/saas_apis.py`): every pagination style, every auth, incremental
//! second runs, rate limits with and without `Retry-After`, an OAuth2 token that expires
//! mid-run, refused credentials failing once. The binary is run as the scheduler runs it:
//! the entrypoint contract's arguments, environment and state file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use stevedore_testkit::*;

struct Extracted {
    code: i32,
    messages: Vec<Value>,
    stdout: String,
    records: Vec<Value>,
}

impl Extracted {
    fn state(&self) -> Option<Value> {
        self.messages
            .iter()
            .rev()
            .find(|m| m["type"] == "state")
            .map(|m| m["value"].clone())
    }

    fn output(&self, key: &str) -> Option<Value> {
        self.messages
            .iter()
            .find(|m| m["type"] == "output" && m["key"] == key)
            .map(|m| m["value"].clone())
    }

    fn ids(&self, field: &str) -> Vec<String> {
        self.records
            .iter()
            .map(|r| match &r[field] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }
}

/// Runs `http-extract run ... -- ARGS` with `env`, and `state` as its committed state.
fn extract(args: &[&str], env: &[(&str, &str)], state: Option<&Value>) -> Extracted {
    let workspace = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_http-extract"));
    command
        .args([
            "run",
            "--job",
            "j",
            "--task",
            "extract",
            "--run",
            "r",
            "--try",
            "1",
            "--logical-date",
            "2024-01-01T00:00:00Z",
            "--interval-start",
            "2024-01-01T00:00:00Z",
            "--interval-end",
            "2024-01-02T00:00:00Z",
            "--",
        ])
        .args(args)
        .env_clear()
        .env("STEVEDORE_WORKSPACE", workspace.path())
        .envs(env.iter().copied());
    let state_file: Option<PathBuf> = state.map(|value| {
        let path = workspace.path().join("state.json");
        std::fs::write(&path, value.to_string()).unwrap();
        path
    });
    if let Some(path) = &state_file {
        command.env("STEVEDORE_STATE_FILE", path);
    }
    let output = command.output().expect("run http-extract");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let messages: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let file = workspace.path().join("extract.jsonl");
    let records = if Path::new(&file).exists() {
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    Extracted {
        code: output.status.code().unwrap_or(-1),
        messages,
        stdout,
        records,
    }
}

fn once(ids: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a record came twice");
    set
}

/// Stripe: Basic auth with the key, `starting_after` the last record's id until `has_more`
/// is false, incremental by `created` (Unix seconds) with `created[gt]`; 429s with and
/// without `Retry-After` waited out.
#[test]
fn stripe_like_pages_by_the_last_key_and_extracts_only_new_charges_next_time() {
    let apis = SaasApis::start(250, 3600, 0);
    let env = [("API_USERNAME", STRIPE_KEY)];
    let url = apis.url("/stripe/v1/charges");
    let args = [
        "--url",
        &url,
        "--auth",
        "basic",
        "--pagination",
        "last-key",
        "--last-key-field",
        "id",
        "--last-key-param",
        "starting_after",
        "--has-more-path",
        "has_more",
        "--page-size",
        "100",
        "--incremental-field",
        "created",
        "--since-param",
        "created[gt]",
        "--since-format",
        "unix",
        "--max-backoff-secs",
        "2",
    ];
    apis.fault("stripe", "429", 1);
    apis.fault("stripe", "429-bare", 1);
    let first = extract(&args, &env, None);
    assert_eq!(first.code, 0, "{}", first.stdout);
    assert_eq!(once(&first.ids("id")).len(), 250);
    assert_eq!(first.output("records"), Some(json!(250)));
    let cursor = first.state().expect("a cursor")["cursor"].clone();
    assert_eq!(
        cursor,
        json!(1704067200 + 250 * 60),
        "the newest `created`, a number"
    );
    let waits = first.stdout.matches("429 from").count();
    assert_eq!(waits, 2, "both 429s waited and retried: {}", first.stdout);
    // 3 pages + 2 refused requests.
    assert_eq!(apis.stats()["requests"]["stripe"], 5);

    apis.add_records(20);
    let second = extract(&args, &env, first.state().as_ref());
    assert_eq!(second.code, 0, "{}", second.stdout);
    let new: Vec<u64> = second
        .ids("id")
        .iter()
        .map(|id| id.trim_start_matches("ch_").parse().unwrap())
        .collect();
    assert_eq!(once(&second.ids("id")).len(), 20, "only the new charges");
    assert!(new.iter().all(|n| *n > 250), "{new:?}");
    let newer = second.state().unwrap()["cursor"].as_i64().unwrap();
    assert!(newer > cursor.as_i64().unwrap());
}

/// GitHub: a root array, the `Link` header's next page, `per_page`, a bearer token, `since`
/// (inclusive) as ISO 8601; its rate limit (403 with `X-RateLimit-Remaining: 0`) waited
/// until `X-RateLimit-Reset` rather than taken for refused credentials.
#[test]
fn github_like_follows_the_link_header_and_waits_out_its_rate_limit() {
    let apis = SaasApis::start(250, 3600, 0);
    let env = [("API_TOKEN", GITHUB_TOKEN)];
    let url = apis.url("/github/repos/acme/app/issues");
    let args = [
        "--url",
        &url,
        "--records-path",
        "",
        "--pagination",
        "link-header",
        "--limit-param",
        "per_page",
        "--page-size",
        "100",
        "--query",
        "state=all",
        "--header",
        "Accept: application/vnd.github+json",
        "--incremental-field",
        "updated_at",
        "--since-param",
        "since",
        "--since-format",
        "iso8601",
        "--max-backoff-secs",
        "3",
    ];
    apis.fault("github", "403-ratelimit", 1);
    let first = extract(&args, &env, None);
    assert_eq!(first.code, 0, "{}", first.stdout);
    assert_eq!(once(&first.ids("id")).len(), 250);
    assert!(
        first.stdout.contains("403 from") && first.stdout.contains("rate limited"),
        "{}",
        first.stdout
    );
    assert_eq!(
        first.state().unwrap(),
        json!({"cursor": "2024-01-01T04:10:00Z"})
    );

    apis.add_records(30);
    let second = extract(&args, &env, first.state().as_ref());
    assert_eq!(second.code, 0, "{}", second.stdout);
    // GitHub's `since` is inclusive: the newest issue of the last run comes again, once.
    let ids = once(&second.ids("id"));
    assert_eq!(ids.len(), 31, "{ids:?}");
    let all: BTreeSet<String> = first
        .ids("id")
        .into_iter()
        .chain(second.ids("id"))
        .collect();
    assert_eq!(
        all.len(),
        280,
        "every issue, once after dropping the boundary repeat"
    );
}

/// HubSpot: OAuth2 client credentials; the token expires mid-run (the server refuses it
/// after 2 requests), the API answers 401, and the extract fetches a new token and goes on;
/// pages by `paging.next.link` (a next-page URL in the body) or by `paging.next.after` (a
/// cursor).
#[test]
fn hubspot_like_refreshes_its_oauth2_token_mid_run_and_pages_by_next_link_or_cursor() {
    let apis = SaasApis::start(250, 3600, 2);
    let env = [
        ("API_BASE_URL", apis.url("")),
        ("OAUTH_CLIENT_ID", HUBSPOT_CLIENT_ID.to_owned()),
        ("OAUTH_CLIENT_SECRET", HUBSPOT_CLIENT_SECRET.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let common = [
        "--url",
        "/hubspot/crm/v3/objects/contacts",
        "--records-path",
        "results",
        "--auth",
        "oauth2",
        "--token-url",
        "/hubspot/oauth/v1/token",
        "--page-size",
        "50",
    ];
    let mut by_link = common.to_vec();
    by_link.extend([
        "--pagination",
        "next-url",
        "--next-url-path",
        "paging.next.link",
    ]);
    let linked = extract(&by_link, &env, None);
    assert_eq!(linked.code, 0, "{}", linked.stdout);
    assert_eq!(once(&linked.ids("id")).len(), 250);
    let stats = apis.stats();
    // 5 pages, each token good for 2 requests: at least 3 tokens, every expiry answered 401
    // once and mended.
    let tokens = stats["tokens_issued"].as_u64().unwrap();
    assert!(tokens >= 3, "{stats}");
    assert_eq!(
        stats["statuses"]["hubspot 401"].as_u64(),
        Some(tokens - 1),
        "{stats}"
    );
    assert!(
        linked.stdout.contains("access token expired"),
        "{}",
        linked.stdout
    );

    let mut by_cursor = common.to_vec();
    by_cursor.extend([
        "--pagination",
        "cursor",
        "--cursor-param",
        "after",
        "--next-cursor-path",
        "paging.next.after",
        "--incremental-field",
        "updatedAt",
        "--since-param",
        "updated_after",
    ]);
    let cursored = extract(&by_cursor, &env, None);
    assert_eq!(cursored.code, 0, "{}", cursored.stdout);
    assert_eq!(cursored.ids("id"), linked.ids("id"));
    apis.add_records(7);
    let second = extract(&by_cursor, &env, cursored.state().as_ref());
    assert_eq!(once(&second.ids("id")).len(), 7, "{}", second.stdout);

    // Wrong client credentials: refused once, not retried.
    let wrong: Vec<(&str, &str)> = vec![
        ("API_BASE_URL", env[0].1),
        ("OAUTH_CLIENT_ID", "intruder"),
        ("OAUTH_CLIENT_SECRET", "nope"),
    ];
    let refused = extract(&by_link, &wrong, None);
    assert_eq!(refused.code, 78, "{}", refused.stdout);
    let error = refused
        .messages
        .iter()
        .find(|m| m["type"] == "error")
        .unwrap();
    assert_eq!(error["retryable"], false);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("client credentials were refused"));
}

/// A plain API: page numbers or offsets, the key in the query; a request budget keeps the
/// requests apart; refused credentials fail once (exit 78) without a retry storm.
#[test]
fn page_numbers_offsets_api_keys_in_the_query_and_a_request_budget() {
    let apis = SaasApis::start(95, 3600, 0);
    let env = [("API_TOKEN", PLAIN_KEY)];
    let url = apis.url("/plain/items");
    let paged = extract(
        &[
            "--url",
            &url,
            "--records-path",
            "items",
            "--auth",
            "query:api_key",
            "--pagination",
            "page",
            "--page-param",
            "page",
            "--limit-param",
            "page_size",
            "--page-size",
            "10",
            "--max-requests-per-second",
            "5",
        ],
        &env,
        None,
    );
    assert_eq!(paged.code, 0, "{}", paged.stdout);
    assert_eq!(once(&paged.ids("id")).len(), 95);
    let times: Vec<f64> = apis.stats()["times"]["plain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 10, "pages 1..10, the tenth short");
    let closest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::MAX, f64::min);
    assert!(
        closest >= 0.18,
        "requests {closest:.3} s apart under a budget of 5/s"
    );

    let offsets = extract(
        &[
            "--url",
            &url,
            "--records-path",
            "items",
            "--auth",
            "header:X-API-Key",
            "--pagination",
            "offset",
            "--page-size",
            "20",
            "--incremental-field",
            "modified",
            "--since-param",
            "modified_since",
        ],
        &env,
        None,
    );
    assert_eq!(offsets.code, 0, "{}", offsets.stdout);
    assert_eq!(offsets.ids("id"), paged.ids("id"));
    apis.add_records(3);
    let second = extract(
        &[
            "--url",
            &url,
            "--records-path",
            "items",
            "--auth",
            "header:X-API-Key",
            "--pagination",
            "offset",
            "--page-size",
            "20",
            "--incremental-field",
            "modified",
            "--since-param",
            "modified_since",
        ],
        &env,
        offsets.state().as_ref(),
    );
    assert_eq!(once(&second.ids("id")).len(), 3);

    let before = apis.stats()["requests"]["plain"].as_u64().unwrap();
    let refused = extract(
        &[
            "--url",
            &url,
            "--records-path",
            "items",
            "--auth",
            "query:api_key",
        ],
        &[("API_TOKEN", "wrong")],
        None,
    );
    assert_eq!(refused.code, 78, "{}", refused.stdout);
    assert_eq!(
        apis.stats()["requests"]["plain"].as_u64().unwrap(),
        before + 1,
        "one request, no retry storm"
    );
    let error = refused
        .messages
        .iter()
        .find(|m| m["type"] == "error")
        .unwrap();
    assert!(
        error["message"].as_str().unwrap().starts_with("401 from"),
        "{error}"
    );

    let bad = extract(&["--url", &url, "--pagination", "sideways"], &env, None);
    assert_eq!(bad.code, 78);
    assert!(
        bad.stdout.contains("--pagination `sideways` is not"),
        "{}",
        bad.stdout
    );
}
