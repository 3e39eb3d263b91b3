//! `http-extract`: a REST API extractor configured without code. It pages through a JSON
//! API in any of the common ways (a cursor, a next-page URL in the body, the `Link` header,
//! the last record's key, page numbers, offsets), authenticates as APIs ask (bearer, basic,
//! an API key in a header or the query, OAuth2 client credentials with token refresh),
//! keeps to a request budget, retries rate limits and server errors inside the try, writes
//! every record as a JSON line into the run's workspace, and keeps the largest value of an
//! incremental field as the task's state, so the next run asks only for what changed.
//!
//! Every arg is in docs/connectors.md ("http-extract"), with a worked example per pagination
//! style. Outputs: `records_file`, `records`. State: `{"cursor": <largest value>}`.

mod http;
mod settings;

use std::cmp::Ordering;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};
use stevedore_sdk::{log, metric, output, progress, state, Context, Failure, Integration, Outcome};

use http::{resolve, with_query, Client};
use settings::{settings, Pagination, Settings, SinceFormat};

/// The value at a dotted path (`paging.next.link`, `items.0.id`); the value itself for an
/// empty path.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A cursor value as a point in time, when it is one: RFC 3339 text, or Unix seconds (or
/// milliseconds, for numbers too large to be seconds).
fn as_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| text.parse::<i64>().ok().and_then(unix)),
        Value::Number(n) => n.as_i64().and_then(unix),
        _ => None,
    }
}

fn unix(number: i64) -> Option<DateTime<Utc>> {
    if number > 100_000_000_000 {
        Utc.timestamp_millis_opt(number).single()
    } else {
        Utc.timestamp_opt(number, 0).single()
    }
}

/// Orders two incremental values: numbers as numbers, times as times, text as text.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => match (as_time(a), as_time(b)) {
            (Some(s), Some(t)) => Some(s.cmp(&t)),
            _ => Some(x.cmp(y)),
        },
        _ => None,
    }
}

/// The cursor as `--since-param` sends it.
fn since_text(cursor: &Value, format: SinceFormat) -> Result<String, Failure> {
    let plain = || match cursor {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if format == SinceFormat::AsIs {
        return Ok(plain());
    }
    let time = as_time(cursor).ok_or_else(|| {
        Failure::not_retryable(format!(
            "the cursor {cursor} is not a time, so --since-format cannot write it; use --since-format as-is"
        ))
    })?;
    Ok(match format {
        SinceFormat::Iso8601 => time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        SinceFormat::Unix => time.timestamp().to_string(),
        SinceFormat::UnixMs => time.timestamp_millis().to_string(),
        SinceFormat::AsIs => unreachable!(),
    })
}

/// `check -- ARGS`: one request for one record, with the task's URL and credentials.
fn check(ctx: &Context) -> Result<String, String> {
    let mut settings = settings(ctx)?;
    settings.max_retries = 1;
    settings.max_backoff = std::time::Duration::from_secs(2);
    let mut params = Vec::new();
    if let Some(limit) = &settings.limit_param {
        params.push((limit.clone(), "1".to_owned()));
    }
    let url = with_query(&settings.url, &params);
    let page = Client::new(&settings)
        .get(&url)
        .map_err(|failure| failure.message)?;
    match at(&page.body, &settings.records_path) {
        Some(Value::Array(_)) => Ok(format!(
            "{} answered with its records at `{}`",
            settings.url, settings.records_path
        )),
        _ => Err(format!(
            "{} answered, but without an array of records at `{}` (see --records-path)",
            settings.url, settings.records_path
        )),
    }
}

/// Where the next page is, after a page with `count` records.
enum Next {
    Done,
    /// The same collection URL with these paging params.
    Params(Vec<(String, String)>),
    /// A URL the API gave (it carries every param already).
    Url(String),
}

fn next_page(
    settings: &Settings,
    page: &http::Page,
    records: &[Value],
    page_number: &mut u64,
    offset: &mut u64,
    current_url: &str,
) -> Result<Next, Failure> {
    let short = (records.len() as u64) < settings.page_size;
    Ok(match &settings.pagination {
        Pagination::None => Next::Done,
        Pagination::Cursor { param, next_path } => {
            match at(&page.body, next_path).filter(|v| !v.is_null() && *v != "") {
                Some(cursor) if !records.is_empty() => {
                    let cursor = match cursor {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    Next::Params(vec![(param.clone(), cursor)])
                }
                _ => Next::Done,
            }
        }
        Pagination::NextUrl { path } => match at(&page.body, path).and_then(Value::as_str) {
            Some(next) if !next.is_empty() && !records.is_empty() => {
                Next::Url(resolve(current_url, next))
            }
            _ => Next::Done,
        },
        Pagination::LinkHeader => match &page.link_next {
            Some(next) if !records.is_empty() => Next::Url(resolve(current_url, next)),
            _ => Next::Done,
        },
        Pagination::LastKey {
            field,
            param,
            has_more_path,
        } => {
            let more = match has_more_path.as_deref().and_then(|p| at(&page.body, p)) {
                Some(Value::Bool(more)) => *more,
                _ => !short,
            };
            match records.last().and_then(|r| at(r, field)) {
                Some(key) if more => {
                    let key = match key {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    Next::Params(vec![(param.clone(), key)])
                }
                None if more => {
                    return Err(Failure::not_retryable(format!(
                        "--pagination last-key: the page's last record has no `{field}` (see --last-key-field)"
                    )))
                }
                _ => Next::Done,
            }
        }
        Pagination::Page { param, .. } => {
            if short {
                Next::Done
            } else {
                *page_number += 1;
                Next::Params(vec![(param.clone(), page_number.to_string())])
            }
        }
        Pagination::Offset { param } => {
            *offset += records.len() as u64;
            if short {
                Next::Done
            } else {
                Next::Params(vec![(param.clone(), offset.to_string())])
            }
        }
    })
}

fn extract(ctx: &Context) -> Result<Outcome, Failure> {
    let settings = settings(ctx).map_err(Failure::not_retryable)?;
    let path = match ctx.arg("output") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let workspace = std::env::var("STEVEDORE_WORKSPACE").map_err(|_| {
                Failure::not_retryable("STEVEDORE_WORKSPACE is not set; give --output")
            })?;
            std::path::Path::new(&workspace).join(format!("{}.jsonl", ctx.task_id))
        }
    };
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut client = Client::new(&settings);

    let previous = ctx
        .state
        .as_ref()
        .map(|s| s["cursor"].clone())
        .filter(|c| !c.is_null());
    let mut high_water = previous.clone();
    let mut base_params: Vec<(String, String)> = Vec::new();
    if let Some(limit) = &settings.limit_param {
        base_params.push((limit.clone(), settings.page_size.to_string()));
    }
    match (&settings.incremental_field, &previous) {
        (Some(_), Some(cursor)) => {
            let since = since_text(cursor, settings.since_format)?;
            log(
                "info",
                &format!(
                    "extracting records since the cursor: {}={since}",
                    settings.since_param
                ),
            );
            base_params.push((settings.since_param.clone(), since));
        }
        (Some(_), None) => log("info", "no cursor yet: extracting every record"),
        (None, _) => {}
    }
    let mut page_number = match &settings.pagination {
        Pagination::Page { param, first } => {
            base_params.push((param.clone(), first.to_string()));
            *first
        }
        _ => 0,
    };
    let mut offset: u64 = 0;
    if let Pagination::Offset { param } = &settings.pagination {
        base_params.push((param.clone(), "0".to_owned()));
    }
    let mut url = with_query(&settings.url, &base_params);
    let mut count: u64 = 0;
    loop {
        let page = client.get(&url)?;
        let records = at(&page.body, &settings.records_path)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Failure::not_retryable(format!(
                    "the page of {url} has no array of records at `{}` (see --records-path)",
                    settings.records_path
                ))
            })?;
        for record in records {
            writeln!(writer, "{record}")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if let Some(value) = settings
                .incremental_field
                .as_deref()
                .and_then(|field| at(record, field))
                .filter(|v| !v.is_null())
            {
                let newer = match &high_water {
                    None => true,
                    Some(high) => compare(value, high) == Some(Ordering::Greater),
                };
                if newer {
                    high_water = Some(value.clone());
                }
            }
        }
        count += records.len() as u64;
        progress(count, None);
        match next_page(
            &settings,
            &page,
            records,
            &mut page_number,
            &mut offset,
            &url,
        )? {
            Next::Done => break,
            Next::Url(next) => url = next,
            Next::Params(paging) => {
                let mut params: Vec<(String, String)> = base_params
                    .iter()
                    .filter(|(k, _)| !paging.iter().any(|(p, _)| p == k))
                    .cloned()
                    .collect();
                params.extend(paging);
                url = with_query(&settings.url, &params);
            }
        }
    }
    writer
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    log(
        "info",
        &format!(
            "extracted {count} records into {} in {} requests",
            path.display(),
            client.requests
        ),
    );
    output("records_file", path.display().to_string());
    output("records", count);
    metric("records", count as f64);
    metric("requests", client.requests as f64);
    if let Some(cursor) = high_water {
        state(json!({"cursor": cursor}));
    }
    Ok(Outcome::Success)
}

fn main() {
    Integration::new("http-extract", include_str!("../VERSION").trim())
        .params_schema(json!({"type": "object"}))
        .check(check)
        .run(extract)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let page = json!({"paging": {"next": {"link": "/x?after=3"}}, "items": [{"id": 7}]});
        assert_eq!(at(&page, "paging.next.link"), Some(&json!("/x?after=3")));
        assert_eq!(at(&page, "items.0.id"), Some(&json!(7)));
        assert_eq!(at(&page, ""), Some(&page));
        assert_eq!(at(&page, "paging.prev"), None);
    }

    #[test]
    fn cursors_compare_as_what_they_are() {
        assert_eq!(compare(&json!(10), &json!(9)), Some(Ordering::Greater));
        assert_eq!(
            compare(
                &json!("2024-01-01T10:00:00+02:00"),
                &json!("2024-01-01T09:00:00Z")
            ),
            Some(Ordering::Less)
        );
        assert_eq!(compare(&json!("b"), &json!("a")), Some(Ordering::Greater));
        assert_eq!(
            since_text(&json!(1704067200), SinceFormat::Iso8601).unwrap(),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            since_text(&json!("2024-01-01T00:00:00Z"), SinceFormat::Unix).unwrap(),
            "1704067200"
        );
        assert_eq!(
            since_text(&json!("2024-01-01T00:00:00.5Z"), SinceFormat::UnixMs).unwrap(),
            "1704067200500"
        );
        assert_eq!(since_text(&json!(17), SinceFormat::AsIs).unwrap(), "17");
        assert!(since_text(&json!("abc"), SinceFormat::Unix).is_err());
    }
}
