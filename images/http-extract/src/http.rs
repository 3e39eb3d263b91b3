//! The requests: authentication (with OAuth2 tokens fetched and refreshed), a request
//! budget, and retries inside the try — 429 and rate-limit answers wait what the API asks
//! (`Retry-After`, `X-RateLimit-Reset`), 5xx and connection errors back off exponentially,
//! refused credentials and other 4xx fail at once and are not retryable.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;
use stevedore_sdk::{log, Failure};

use crate::settings::{Auth, Settings};

/// One page as the API answered it.
pub struct Page {
    pub body: Value,
    /// The `Link` header's `rel="next"` URL, if any.
    pub link_next: Option<String>,
}

pub struct Client<'a> {
    settings: &'a Settings,
    agent: ureq::Agent,
    token: Option<(String, Instant)>,
    last_request: Option<Instant>,
    pub requests: u64,
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
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

/// `url` with `params` added to its query.
pub fn with_query(url: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{url}{separator}{}", query.join("&"))
}

/// The `rel="next"` target of a `Link` header (RFC 8288), as GitHub sends it.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// `next` resolved against `base`: absolute as it is, `/path` on `base`'s origin.
pub fn resolve(base: &str, next: &str) -> String {
    if next.starts_with("http://") || next.starts_with("https://") {
        return next.to_owned();
    }
    let origin_end = base
        .find("://")
        .and_then(|at| base[at + 3..].find('/').map(|slash| at + 3 + slash))
        .unwrap_or(base.len());
    if next.starts_with('/') {
        format!("{}{next}", &base[..origin_end])
    } else {
        let dir_end = base[..base.find('?').unwrap_or(base.len())]
            .rfind('/')
            .unwrap_or(base.len());
        format!("{}/{next}", &base[..dir_end])
    }
}

/// How long a refused request asks to wait: `Retry-After` seconds, else the time until
/// `X-RateLimit-Reset` (Unix seconds), when the API says either.
fn asked_wait(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(seconds) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(seconds));
    }
    let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

/// Whether a 403 is a rate limit (GitHub's primary limit: `X-RateLimit-Remaining: 0`; its
/// secondary one: `Retry-After`) rather than refused credentials.
fn is_rate_limited(response: &ureq::http::Response<ureq::Body>) -> bool {
    let headers = response.headers();
    headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0")
        || headers.contains_key("retry-after")
}

impl<'a> Client<'a> {
    pub fn new(settings: &'a Settings) -> Client<'a> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            settings,
            agent,
            token: None,
            last_request: None,
            requests: 0,
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.max_retries)
            .with_jitter()
            .build()
    }

    /// Waits so that requests keep to `--max-requests-per-second`, and counts them against
    /// `--max-requests`.
    fn pace(&mut self) -> Result<(), Failure> {
        if self.requests >= self.settings.max_requests {
            return Err(Failure::not_retryable(format!(
                "made {} requests, the most --max-requests allows: the API may page without end",
                self.requests
            )));
        }
        if let (Some(rate), Some(last)) = (self.settings.max_rate, self.last_request) {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let since = last.elapsed();
            if since < interval {
                std::thread::sleep(interval - since);
            }
        }
        self.last_request = Some(Instant::now());
        self.requests += 1;
        Ok(())
    }

    fn read_body(
        &self,
        url: &str,
        response: &mut ureq::http::Response<ureq::Body>,
    ) -> Result<String, Failure> {
        response
            .body_mut()
            .with_config()
            .limit(self.settings.max_page_bytes)
            .read_to_string()
            .map_err(|e| {
                Failure::from(format!(
                    "reading {url}: {e} (pages are read up to --max-page-bytes, {} bytes)",
                    self.settings.max_page_bytes
                ))
            })
    }

    /// An OAuth2 access token: the one held unless it expires within 30 s, else a new one
    /// from the token URL (client credentials grant, RFC 6749 section 4.4).
    fn access_token(&mut self, fresh: bool) -> Result<String, Failure> {
        let Auth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } = &self.settings.auth
        else {
            return Err("not an OAuth2 connection".into());
        };
        if let Some((token, expires)) = &self.token {
            if !fresh && Instant::now() + Duration::from_secs(30) < *expires {
                return Ok(token.clone());
            }
        }
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.clone()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope.clone()));
        }
        let mut backoff = self.backoff();
        loop {
            self.pace()?;
            let answer = self
                .agent
                .post(token_url)
                .send_form(form.iter().map(|(k, v)| (*k, v.as_str())));
            let problem = match answer {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let body = self.read_body(token_url, &mut response)?;
                    match status {
                        200..=299 => {
                            let value: Value = serde_json::from_str(&body).map_err(|e| {
                                format!("the token endpoint {token_url} did not answer JSON: {e}")
                            })?;
                            let token = value["access_token"]
                                .as_str()
                                .ok_or_else(|| {
                                    format!("the token endpoint {token_url} answered without an access_token")
                                })?
                                .to_owned();
                            let lifetime = value["expires_in"].as_u64().unwrap_or(3600);
                            log(
                                "info",
                                &format!("fetched an OAuth2 access token (expires in {lifetime} s)"),
                            );
                            self.token = Some((
                                token.clone(),
                                Instant::now() + Duration::from_secs(lifetime),
                            ));
                            return Ok(token);
                        }
                        400 | 401 | 403 => {
                            return Err(Failure::not_retryable(format!(
                                "{status} from the token endpoint {token_url}: the client credentials were refused; check the connection's client id and secret"
                            )))
                        }
                        _ => format!("{status} from the token endpoint {token_url}"),
                    }
                }
                Err(error) => format!("cannot reach the token endpoint {token_url}: {error}"),
            };
            let delay = backoff.next().ok_or_else(|| {
                Failure::from(format!(
                    "{problem}; gave up after {} retries",
                    self.settings.max_retries
                ))
            })?;
            log(
                "warn",
                &format!("{problem}; retrying in {} ms", delay.as_millis()),
            );
            std::thread::sleep(delay);
        }
    }

    /// One GET of `url` (with the settings' query, headers and credentials), retried as the
    /// module doc says.
    pub fn get(&mut self, url: &str) -> Result<Page, Failure> {
        let mut url = with_query(url, &self.settings.query);
        if let Auth::Query { name, value } = &self.settings.auth {
            url = with_query(&url, &[(name.clone(), value.clone())]);
        }
        let mut backoff = self.backoff();
        let mut refreshed = false;
        loop {
            let bearer = match &self.settings.auth {
                Auth::OAuth2 { .. } => Some(self.access_token(false)?),
                Auth::Bearer(token) => Some(token.clone()),
                _ => None,
            };
            self.pace()?;
            let mut request = self.agent.get(&url);
            for (name, value) in &self.settings.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            request = match (&self.settings.auth, bearer) {
                (_, Some(token)) => request.header("Authorization", &format!("Bearer {token}")),
                (Auth::Basic { username, password }, None) => {
                    use base64::Engine as _;
                    let pair = format!("{username}:{password}");
                    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                    request.header("Authorization", &format!("Basic {encoded}"))
                }
                (Auth::Header { name, value }, None) => {
                    request.header(name.as_str(), value.as_str())
                }
                _ => request,
            };
            let (problem, asked) = match request.call() {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let asked = asked_wait(&response);
                    let rate_limited = is_rate_limited(&response);
                    let link_next = response
                        .headers()
                        .get("link")
                        .and_then(|v| v.to_str().ok())
                        .and_then(next_link);
                    let body = self.read_body(&url, &mut response)?;
                    match status {
                        200..=299 => {
                            let body = serde_json::from_str(&body)
                                .map_err(|e| format!("{url} did not answer JSON: {e}"))?;
                            return Ok(Page { body, link_next });
                        }
                        401 if matches!(self.settings.auth, Auth::OAuth2 { .. }) && !refreshed => {
                            log("info", "the API says the access token expired: fetching a new one");
                            self.access_token(true)?;
                            refreshed = true;
                            continue;
                        }
                        403 | 429 if rate_limited || status == 429 => {
                            (format!("{status} from {url} (rate limited)"), asked)
                        }
                        401 | 403 => {
                            return Err(Failure::not_retryable(format!(
                                "{status} from {url}: the API refused the credentials; check the connection's token"
                            )))
                        }
                        500..=599 => (format!("{status} from {url}"), asked),
                        _ => {
                            return Err(Failure::not_retryable(format!(
                                "{status} from {url}: {}",
                                body.chars().take(200).collect::<String>()
                            )))
                        }
                    }
                }
                Err(error) => (format!("cannot reach {url}: {error}"), None),
            };
            let Some(delay) = backoff.next() else {
                return Err(Failure::from(format!(
                    "{problem}; gave up after {} retries",
                    self.settings.max_retries
                )));
            };
            let delay = asked.map_or(delay, |asked| asked.min(self.settings.max_backoff));
            log(
                "warn",
                &format!("{problem}; retrying in {} ms", delay.as_millis()),
            );
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_and_relative_urls_are_read() {
        let github = r#"<https://api.github.com/repositories/1/issues?page=2>; rel="next", <https://api.github.com/repositories/1/issues?page=5>; rel="last""#;
        assert_eq!(
            next_link(github).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev""#), None);
        assert_eq!(
            resolve("http://h:1/a/b?x=1", "/c?after=2"),
            "http://h:1/c?after=2"
        );
        assert_eq!(resolve("http://h:1/a/b", "c?d"), "http://h:1/a/c?d");
        assert_eq!(resolve("http://h/a", "https://o/p"), "https://o/p");
        assert_eq!(
            with_query("http://h/a?x=1", &[("created[gt]".into(), "5 6".into())]),
            "http://h/a?x=1&created%5Bgt%5D=5%206"
        );
    }
}
