//! `http-extract`: a generic REST API extractor. It pages through a JSON API, retries
//! rate limits and server errors with bounded backoff inside the try, writes every record
//! as a JSON line into the run's workspace, and keeps an `updated_at`-style cursor in the
//! task's state so the next run extracts only what changed.
//!
//! Task args (after the contract's `--`):
//!
//! | arg | default | meaning |
//! |---|---|---|
//! | `--url URL` | required | the collection, e.g. `http://api:8080/v1/charges`; a path such as `/v1/charges` is joined to `$API_BASE_URL` |
//! | `--base-url-env VAR` | `API_BASE_URL` | the variable holding the API's base URL (from a connection) |
//! | `--records-field F` | `data` | where a page's records are |
//! | `--auth bearer\|header:NAME\|none` | `bearer` | how the token is sent |
//! | `--token-env VAR` | `API_TOKEN` | the variable holding the token (from a connection) |
//! | `--pagination cursor\|offset\|none` | `cursor` | |
//! | `--cursor-param P`, `--next-cursor-field F` | `cursor`, `next_cursor` | cursor pagination |
//! | `--offset-param P` | `offset` | offset pagination |
//! | `--limit-param P`, `--page-size N` | `limit`, `100` | page size |
//! | `--incremental-field F`, `--since-param P` | none, `updated_since` | incremental extraction |
//! | `--max-retries N`, `--max-backoff-secs S` | `6`, `30` | per request |
//! | `--output FILE` | `$STEVEDORE_WORKSPACE/<task>.jsonl` | |
//!
//! Outputs: `records_file`, `records`. State: `{"cursor": <largest incremental value>}`.

use std::io::Write;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{json, Value};
use stevedore_sdk::{log, metric, output, progress, state, Context, Integration, Outcome};

struct Settings {
    url: String,
    records_field: String,
    auth: Auth,
    pagination: String,
    cursor_param: String,
    next_cursor_field: String,
    offset_param: String,
    limit_param: String,
    page_size: u64,
    incremental_field: Option<String>,
    since_param: String,
    max_retries: usize,
    max_backoff: Duration,
}

enum Auth {
    None,
    Bearer(String),
    Header(String, String),
}

fn settings(ctx: &Context) -> Result<Settings, String> {
    let text = |name: &str, default: &str| ctx.arg(name).unwrap_or(default).to_owned();
    let number = |name: &str, default: u64| -> Result<u64, String> {
        ctx.arg(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("--{name} `{v}` is not a number"))
        })
    };
    let token_env = text("token-env", "API_TOKEN");
    let token = || {
        std::env::var(&token_env).map_err(|_| {
            format!("the token variable {token_env} is not set (add it with a connection)")
        })
    };
    let auth = match text("auth", "bearer").as_str() {
        "none" => Auth::None,
        "bearer" => Auth::Bearer(token()?),
        other => match other.strip_prefix("header:") {
            Some(name) if !name.is_empty() => Auth::Header(name.to_owned(), token()?),
            _ => {
                return Err(format!(
                    "--auth `{other}` is not bearer, header:NAME or none"
                ))
            }
        },
    };
    let pagination = text("pagination", "cursor");
    if !["cursor", "offset", "none"].contains(&pagination.as_str()) {
        return Err(format!(
            "--pagination `{pagination}` is not cursor, offset or none"
        ));
    }
    Ok(Settings {
        url: collection_url(ctx)?,
        records_field: text("records-field", "data"),
        auth,
        pagination,
        cursor_param: text("cursor-param", "cursor"),
        next_cursor_field: text("next-cursor-field", "next_cursor"),
        offset_param: text("offset-param", "offset"),
        limit_param: text("limit-param", "limit"),
        page_size: number("page-size", 100)?,
        incremental_field: ctx.arg("incremental-field").map(str::to_owned),
        since_param: text("since-param", "updated_since"),
        max_retries: number("max-retries", 6)? as usize,
        max_backoff: Duration::from_secs(number("max-backoff-secs", 30)?),
    })
}

/// The collection's URL: `--url` as given, or a path (`/v1/charges`) joined to the base URL
/// in `--base-url-env` (from the API's connection, so job files carry no addresses).
fn collection_url(ctx: &Context) -> Result<String, String> {
    let url = ctx.arg("url").ok_or("--url is required")?;
    if !url.starts_with('/') {
        return Ok(url.to_owned());
    }
    let variable = ctx.arg("base-url-env").unwrap_or("API_BASE_URL");
    match std::env::var(variable) {
        Ok(base) if !base.is_empty() => Ok(format!("{}{url}", base.trim_end_matches('/'))),
        _ => Err(format!(
            "--url `{url}` is a path but {variable} is not set (put the API's base URL in the task's connection)"
        )),
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn page_url(settings: &Settings, params: &[(&str, String)]) -> String {
    let separator = if settings.url.contains('?') { '&' } else { '?' };
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{}{separator}{}", settings.url, query.join("&"))
}

/// One GET with retries: 429 (honouring Retry-After) and 5xx and transport errors are tried
/// again with bounded exponential backoff; 401/403 and other 4xx fail at once.
fn fetch(agent: &ureq::Agent, settings: &Settings, url: &str) -> Result<Value, String> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(settings.max_backoff)
        .with_max_times(settings.max_retries)
        .with_jitter()
        .build();
    loop {
        let mut request = agent.get(url);
        request = match &settings.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.header("Authorization", &format!("Bearer {token}")),
            Auth::Header(name, token) => request.header(name.as_str(), token.as_str()),
        };
        let (problem, retry_after) = match request.call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| format!("reading {url}: {e}"))?;
                match status {
                    200..=299 => return serde_json::from_str(&body).map_err(|e| format!("{url} did not answer JSON: {e}")),
                    401 | 403 => {
                        return Err(format!("{status} from {url}: the API refused the credentials; check the connection's token"))
                    }
                    429 | 500..=599 => (format!("{status} from {url}"), retry_after),
                    _ => return Err(format!("{status} from {url}: {}", body.chars().take(200).collect::<String>())),
                }
            }
            Err(error) => (format!("cannot reach {url}: {error}"), None),
        };
        let Some(delay) = backoff.next() else {
            return Err(format!(
                "{problem}; gave up after {} retries",
                settings.max_retries
            ));
        };
        let delay = retry_after.map_or(delay, |asked| asked.min(settings.max_backoff));
        log(
            "warn",
            &format!("{problem}; retrying in {} ms", delay.as_millis()),
        );
        std::thread::sleep(delay);
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `check -- ARGS`: one request for one record, with the task's URL and credentials.
fn check(ctx: &Context) -> Result<String, String> {
    let mut settings = settings(ctx)?;
    settings.max_retries = 1;
    settings.max_backoff = Duration::from_secs(2);
    let url = page_url(
        &settings,
        &[(settings.limit_param.as_str(), "1".to_owned())],
    );
    let page = fetch(&agent(), &settings, &url)?;
    match page.get(&settings.records_field) {
        Some(Value::Array(_)) => Ok(format!(
            "{} answered with its records in `{}`",
            settings.url, settings.records_field
        )),
        _ => Err(format!(
            "{} answered, but without an array of records in `{}` (see --records-field)",
            settings.url, settings.records_field
        )),
    }
}

fn extract(ctx: &Context) -> Result<Outcome, String> {
    let settings = settings(ctx)?;
    let path = match ctx.arg("output") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let workspace = std::env::var("STEVEDORE_WORKSPACE")
                .map_err(|_| "STEVEDORE_WORKSPACE is not set; give --output")?;
            std::path::Path::new(&workspace).join(format!("{}.jsonl", ctx.task_id))
        }
    };
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let agent = agent();

    let previous = ctx
        .state
        .as_ref()
        .and_then(|s| s["cursor"].as_str())
        .map(str::to_owned);
    let mut high_water = previous.clone();
    match &previous {
        Some(cursor) => log(
            "info",
            &format!(
                "extracting records with {} after {cursor}",
                settings.since_param
            ),
        ),
        None => log("info", "no cursor yet: extracting every record"),
    }
    let mut count: u64 = 0;
    let mut page_cursor: Option<String> = None;
    let mut offset: u64 = 0;
    loop {
        let mut params = vec![(
            settings.limit_param.as_str(),
            settings.page_size.to_string(),
        )];
        if let (Some(_), Some(since)) = (&settings.incremental_field, &previous) {
            params.push((settings.since_param.as_str(), since.clone()));
        }
        match settings.pagination.as_str() {
            "cursor" => {
                if let Some(cursor) = &page_cursor {
                    params.push((settings.cursor_param.as_str(), cursor.clone()));
                }
            }
            "offset" => params.push((settings.offset_param.as_str(), offset.to_string())),
            _ => {}
        }
        let page = fetch(&agent, &settings, &page_url(&settings, &params))?;
        let records = page[&settings.records_field]
            .as_array()
            .ok_or_else(|| format!("the page has no `{}` array", settings.records_field))?;
        for record in records {
            writeln!(writer, "{record}")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if let Some(value) = settings
                .incremental_field
                .as_ref()
                .and_then(|f| record[f].as_str())
            {
                if high_water.as_deref().is_none_or(|h| value > h) {
                    high_water = Some(value.to_owned());
                }
            }
        }
        count += records.len() as u64;
        offset += records.len() as u64;
        progress(count, page["total"].as_u64());
        let more = match settings.pagination.as_str() {
            "cursor" => {
                page_cursor = page[&settings.next_cursor_field]
                    .as_str()
                    .map(str::to_owned);
                page_cursor.is_some()
            }
            "offset" => records.len() as u64 == settings.page_size,
            _ => false,
        };
        if !more || records.is_empty() {
            break;
        }
    }
    writer
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    log(
        "info",
        &format!("extracted {count} records into {}", path.display()),
    );
    output("records_file", path.display().to_string());
    output("records", count);
    metric("records", count as f64);
    if let Some(cursor) = high_water {
        state(json!({"cursor": cursor}));
    }
    Ok(Outcome::Success)
}

fn main() {
    Integration::new("http-extract", env!("CARGO_PKG_VERSION"))
        .params_schema(json!({"type": "object"}))
        .check(check)
        .run(extract)
}
