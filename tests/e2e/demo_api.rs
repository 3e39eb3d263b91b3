//! The demo SaaS API behaves like the APIs integrations pull from.

use serde_json::Value;
use stevedore_testkit::*;

const AUTH: (&str, &str) = ("Authorization", "Bearer demo-token");

fn get(api: &DemoApi, path: &str) -> (u16, Value) {
    let (status, _, body) = http("GET", &api.address, path, &[AUTH]);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<u64> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn pages_by_cursor_and_offset_filters_by_updated_at_and_fails_on_request() {
    let api = DemoApi::start(250);

    // Cursor pagination walks every record once, in (updated_at, id) order.
    let mut seen = Vec::new();
    let mut path = "/v1/charges?limit=100".to_owned();
    loop {
        let (status, page) = get(&api, &path);
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/charges?limit=100&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=250).collect::<Vec<u64>>());
    let (_, last_page) = get(&api, "/v1/charges?offset=249&limit=10");
    let watermark = last_page["data"][0]["updated_at"]
        .as_str()
        .unwrap()
        .to_owned();

    // Offset pagination too.
    let (_, page) = get(&api, "/v1/charges?offset=200&limit=100");
    assert_eq!(ids(&page), (201..=250).collect::<Vec<u64>>());

    // Records that arrive later are the only ones past the watermark.
    let (status, _, _) = http("POST", &api.address, "/admin/records?count=3", &[]);
    assert_eq!(status, 200);
    let (_, fresh) = get(&api, &format!("/v1/charges?updated_since={watermark}"));
    assert_eq!(ids(&fresh), vec![251, 252, 253]);

    // Auth, and injected failures: a 429 with Retry-After, then a 500, then normal again.
    let (status, _, _) = http(
        "GET",
        &api.address,
        "/v1/charges",
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(status, 401);
    http(
        "POST",
        &api.address,
        "/admin/faults?status=429&count=1&retry_after=2",
        &[],
    );
    http(
        "POST",
        &api.address,
        "/admin/faults?status=500&count=1",
        &[],
    );
    let (status, headers, _) = http("GET", &api.address, "/v1/charges?limit=1", &[AUTH]);
    assert_eq!(
        (status, headers.get("retry-after").map(String::as_str)),
        (429, Some("2"))
    );
    assert_eq!(get(&api, "/v1/charges?limit=1").0, 500);
    assert_eq!(get(&api, "/v1/charges?limit=1").0, 200);
}
