//! The task's args, read once into [`Settings`]: every mistake is a clear error naming the
//! arg, and not retryable (a retry cannot mend a job file).

use std::time::Duration;

use stevedore_sdk::Context;

/// How the next page is found.
#[derive(Clone, Debug, PartialEq)]
pub enum Pagination {
    /// No paging: one request.
    None,
    /// A cursor from the page (`--next-cursor-path`) sent back as `--cursor-param`.
    Cursor { param: String, next_path: String },
    /// The next page's URL in the page (`--next-url-path`, HubSpot's `paging.next.link`).
    NextUrl { path: String },
    /// The next page's URL in the `Link` header's `rel="next"` (GitHub, RFC 8288).
    LinkHeader,
    /// The last record's key (`--last-key-field`) sent as `--last-key-param` (Stripe's
    /// `starting_after`), until the page's `--has-more-path` says false (or a short page).
    LastKey {
        field: String,
        param: String,
        has_more_path: Option<String>,
    },
    /// Page numbers from `--first-page` in `--page-param`, until a short page.
    Page { param: String, first: u64 },
    /// Record offsets in `--offset-param`, until a short page.
    Offset { param: String },
}

/// How the requests are authenticated; the secrets come from the task's connections.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic {
        username: String,
        password: String,
    },
    Header {
        name: String,
        value: String,
    },
    Query {
        name: String,
        value: String,
    },
    /// OAuth2 client credentials: a token fetched from `token_url`, fetched again before it
    /// expires and when the API says it has (401).
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

/// How the cursor is written into `--since-param`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinceFormat {
    /// As the records carry it.
    AsIs,
    /// RFC 3339 / ISO 8601 in UTC (`2024-01-01T00:00:00Z`).
    Iso8601,
    /// Unix seconds.
    Unix,
    /// Unix milliseconds.
    UnixMs,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    /// Where the records are in a page: a dotted path, empty for the page itself.
    pub records_path: String,
    pub auth: Auth,
    pub pagination: Pagination,
    pub limit_param: Option<String>,
    pub page_size: u64,
    pub incremental_field: Option<String>,
    pub since_param: String,
    pub since_format: SinceFormat,
    /// Query parameters sent with every request (`--query K=V`).
    pub query: Vec<(String, String)>,
    /// Headers sent with every request (`--header 'Name: value'`).
    pub headers: Vec<(String, String)>,
    pub max_retries: usize,
    pub max_backoff: Duration,
    /// At most this many requests a second (`--max-requests-per-second`), none if unset.
    pub max_rate: Option<f64>,
    /// The largest page body read (`--max-page-bytes`).
    pub max_page_bytes: u64,
    /// At most this many requests in all (`--max-requests`), a guard against an API that
    /// pages without end.
    pub max_requests: u64,
}

fn env(name: &str, what: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!(
            "the {what} variable {name} is not set (add it with a connection)"
        )),
    }
}

/// Every value of a repeatable `--name VALUE`.
fn all(ctx: &Context, name: &str) -> Vec<String> {
    let flag = format!("--{name}");
    ctx.args
        .windows(2)
        .filter(|pair| pair[0] == flag)
        .map(|pair| pair[1].clone())
        .collect()
}

/// A URL as given, or a path joined to the base URL in `--base-url-env`.
fn absolute(ctx: &Context, arg: &str, url: &str) -> Result<String, String> {
    if !url.starts_with('/') {
        return Ok(url.to_owned());
    }
    let variable = ctx.arg("base-url-env").unwrap_or("API_BASE_URL");
    match std::env::var(variable) {
        Ok(base) if !base.is_empty() => Ok(format!("{}{url}", base.trim_end_matches('/'))),
        _ => Err(format!(
            "--{arg} `{url}` is a path but {variable} is not set (put the API's base URL in the task's connection)"
        )),
    }
}

pub fn settings(ctx: &Context) -> Result<Settings, String> {
    let text = |name: &str, default: &str| ctx.arg(name).unwrap_or(default).to_owned();
    let number = |name: &str, default: u64| -> Result<u64, String> {
        ctx.arg(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("--{name} `{v}` is not a number"))
        })
    };
    let url = absolute(ctx, "url", ctx.arg("url").ok_or("--url is required")?)?;
    let token = || env(&text("token-env", "API_TOKEN"), "token");
    let auth_kind = text("auth", "bearer");
    let auth = match auth_kind.as_str() {
        "none" => Auth::None,
        "bearer" => Auth::Bearer(token()?),
        "basic" => Auth::Basic {
            username: env(&text("username-env", "API_USERNAME"), "username")?,
            // Stripe's basic auth is the key with an empty password.
            password: std::env::var(text("password-env", "API_PASSWORD")).unwrap_or_default(),
        },
        "oauth2" => Auth::OAuth2 {
            token_url: absolute(
                ctx,
                "token-url",
                ctx.arg("token-url")
                    .ok_or("--auth oauth2 needs --token-url")?,
            )?,
            client_id: env(&text("client-id-env", "OAUTH_CLIENT_ID"), "client id")?,
            client_secret: env(
                &text("client-secret-env", "OAUTH_CLIENT_SECRET"),
                "client secret",
            )?,
            scope: ctx.arg("scope").map(str::to_owned),
        },
        other => match other.split_once(':') {
            Some(("header", name)) if !name.is_empty() => Auth::Header {
                name: name.to_owned(),
                value: token()?,
            },
            Some(("query", name)) if !name.is_empty() => Auth::Query {
                name: name.to_owned(),
                value: token()?,
            },
            _ => {
                return Err(format!(
                    "--auth `{other}` is not bearer, basic, header:NAME, query:NAME, oauth2 or none"
                ))
            }
        },
    };
    let pagination = match text("pagination", "cursor").as_str() {
        "none" => Pagination::None,
        "cursor" => Pagination::Cursor {
            param: text("cursor-param", "cursor"),
            next_path: ctx
                .arg("next-cursor-path")
                .or(ctx.arg("next-cursor-field"))
                .unwrap_or("next_cursor")
                .to_owned(),
        },
        "next-url" => Pagination::NextUrl {
            path: ctx
                .arg("next-url-path")
                .ok_or("--pagination next-url needs --next-url-path (e.g. paging.next.link)")?
                .to_owned(),
        },
        "link-header" => Pagination::LinkHeader,
        "last-key" => Pagination::LastKey {
            field: text("last-key-field", "id"),
            param: text("last-key-param", "starting_after"),
            has_more_path: Some(text("has-more-path", "has_more")).filter(|p| p != "-"),
        },
        "page" => Pagination::Page {
            param: text("page-param", "page"),
            first: number("first-page", 1)?,
        },
        "offset" => Pagination::Offset {
            param: text("offset-param", "offset"),
        },
        other => {
            return Err(format!(
                "--pagination `{other}` is not cursor, next-url, link-header, last-key, page, offset or none"
            ))
        }
    };
    let since_format = match text("since-format", "as-is").as_str() {
        "as-is" => SinceFormat::AsIs,
        "iso8601" => SinceFormat::Iso8601,
        "unix" => SinceFormat::Unix,
        "unix-ms" => SinceFormat::UnixMs,
        other => {
            return Err(format!(
                "--since-format `{other}` is not as-is, iso8601, unix or unix-ms"
            ))
        }
    };
    let mut query = Vec::new();
    for pair in all(ctx, "query") {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--query `{pair}` is not KEY=VALUE"))?;
        query.push((key.to_owned(), value.to_owned()));
    }
    let mut headers = Vec::new();
    for pair in all(ctx, "header") {
        let (name, value) = pair
            .split_once(':')
            .ok_or_else(|| format!("--header `{pair}` is not 'Name: value'"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let max_rate = match ctx.arg("max-requests-per-second") {
        None => None,
        Some(text) => Some(
            text.parse::<f64>()
                .ok()
                .filter(|rate| *rate > 0.0)
                .ok_or_else(|| {
                    format!("--max-requests-per-second `{text}` is not a positive number")
                })?,
        ),
    };
    let limit_param = text("limit-param", "limit");
    Ok(Settings {
        url,
        records_path: ctx
            .arg("records-path")
            .or(ctx.arg("records-field"))
            .unwrap_or("data")
            .trim_matches('.')
            .to_owned(),
        auth,
        pagination,
        limit_param: (limit_param != "-").then_some(limit_param),
        page_size: number("page-size", 100)?.max(1),
        incremental_field: ctx.arg("incremental-field").map(str::to_owned),
        since_param: text("since-param", "updated_since"),
        since_format,
        query,
        headers,
        max_retries: number("max-retries", 6)? as usize,
        max_backoff: Duration::from_secs(number("max-backoff-secs", 30)?),
        max_rate,
        max_page_bytes: number("max-page-bytes", 64 * 1024 * 1024)?,
        max_requests: number("max-requests", 100_000)?,
    })
}
