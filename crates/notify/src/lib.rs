//! Alert channels: what an event becomes on each, and sending it.
//!
//! - **webhook** (`WEBHOOK_URL`, optional `WEBHOOK_SECRET`): an HTTP `POST` of the event as
//!   JSON ([`Event`]), with `X-Stevedore-Event-Id`, and with a secret
//!   `X-Stevedore-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//! - **Slack** (`SLACK_WEBHOOK_URL`): an incoming-webhook message, `text` plus Block Kit
//!   `blocks` ([`slack_body`]); Mattermost and Rocket.Chat take the same.
//! - **email** (`SMTP_HOST`, `SMTP_PORT`, `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_FROM`,
//!   `SMTP_TO`, `SMTP_TLS`): plain text with the link, the reason and the failed try's last
//!   log lines ([`email_text`]).
//!
//! Which channel a connection is, is the domain's rule (`stevedore_domain::notify::Channel`).
//! What goes in is already masked by the caller: nothing here sees a secret but the
//! channel's own (its URL, its signing secret, its SMTP password), and those are never in a
//! message, a log line or an error this crate returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use stevedore_domain::notify::Channel;

/// The most of a receiver's answer read for an error message.
const MAX_ANSWER_BYTES: usize = 1024;
/// How long one delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// The most text of one field (the reason, a log line) a message carries.
pub const MAX_FIELD_CHARS: usize = 2000;
/// How many of the failed try's last log lines an email carries.
pub const LOG_TAIL_LINES: usize = 20;

/// An event as a webhook receives it (its JSON body) and every channel tells it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Unique per event, the same at every delivery attempt: receivers drop repeats by it.
    pub id: String,
    pub event: String,
    pub job_id: String,
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub try_number: Option<u32>,
    pub state: String,
    pub reason: Option<String>,
    pub logical_date: String,
    /// The run's page, or the try's, in the web UI (`public_url`); `None` without it.
    pub url: Option<String>,
    pub occurred_at: String,
}

/// RFC 3339 in UTC, to the second, as every time in a message is written.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `text` cut to [`MAX_FIELD_CHARS`] characters (a `…` says it was).
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The webhook's body: the event as JSON.
pub fn webhook_body(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("an event serializes")
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`: the `X-Stevedore-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A headline such as `failure: job charges_to_warehouse, task load (try 2)`.
pub fn headline(event: &Event) -> String {
    let mut text = format!("{}: job {}", event.event, event.job_id);
    if let Some(task_id) = &event.task_id {
        text.push_str(&format!(", task {task_id}"));
        if let Some(try_number) = event.try_number {
            text.push_str(&format!(" (try {try_number})"));
        }
    }
    text
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` (links and mentions are written with them).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Slack incoming-webhook message: `text` (what notifications and clients without
/// blocks show, and what Mattermost and Rocket.Chat read) and Block Kit `blocks`: a header,
/// the fields, the reason and a link.
pub fn slack_body(event: &Event) -> serde_json::Value {
    let title = slack_escape(&headline(event));
    let mut fields = vec![
        serde_json::json!({"type": "mrkdwn", "text": format!("*Job*\n{}", slack_escape(&event.job_id))}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Run*\n{}", slack_escape(&event.run_id))}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*State*\n{}", slack_escape(&event.state))}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Logical date*\n{}", event.logical_date)}),
    ];
    if let Some(task_id) = &event.task_id {
        fields.push(serde_json::json!({"type": "mrkdwn", "text": format!("*Task*\n{}", slack_escape(task_id))}));
    }
    let mut blocks = vec![
        serde_json::json!({"type": "header", "text": {"type": "plain_text", "text": cut_to(&headline(event), 150)}}),
        serde_json::json!({"type": "section", "fields": fields}),
    ];
    let mut text = format!("*{title}*");
    if let Some(reason) = &event.reason {
        let reason = slack_escape(&cut_to(reason, 2900));
        text.push_str(&format!("\n{reason}"));
        blocks.push(serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Reason*\n{reason}")}}));
    }
    if let Some(url) = &event.url {
        text.push_str(&format!("\n<{url}|Open in Stevedore>"));
        blocks.push(serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{url}|Open in Stevedore>")}}));
    }
    blocks.push(serde_json::json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("event {} at {}", event.id, event.occurred_at)}
    ]}));
    serde_json::json!({"text": text, "blocks": blocks})
}

/// `text` cut to `limit` characters (Slack refuses longer header and section texts).
fn cut_to(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit.saturating_sub(1)) {
        Some((at, _)) if text.chars().count() > limit => format!("{}…", &text[..at]),
        _ => text.to_owned(),
    }
}

/// An email's subject and plain-text body: the fields, the link, the reason and the failed
/// try's last log lines (`log_tail`, oldest first).
pub fn email_text(event: &Event, log_tail: &[String]) -> (String, String) {
    let subject = format!("[Stevedore] {}", headline(event));
    let mut body = format!("{}\n\n", headline(event));
    body.push_str(&format!("Job:          {}\n", event.job_id));
    body.push_str(&format!("Run:          {}\n", event.run_id));
    if let Some(task_id) = &event.task_id {
        body.push_str(&format!("Task:         {task_id}\n"));
    }
    if let Some(try_number) = event.try_number {
        body.push_str(&format!("Try:          {try_number}\n"));
    }
    body.push_str(&format!("State:        {}\n", event.state));
    body.push_str(&format!("Logical date: {}\n", event.logical_date));
    body.push_str(&format!("Occurred at:  {}\n", event.occurred_at));
    body.push_str(&format!("Event id:     {}\n", event.id));
    if let Some(url) = &event.url {
        body.push_str(&format!("\n{url}\n"));
    }
    if let Some(reason) = &event.reason {
        body.push_str(&format!("\nReason:\n{reason}\n"));
    }
    if !log_tail.is_empty() {
        body.push_str(&format!(
            "\nThe last {} log lines of the try:\n",
            log_tail.len()
        ));
        for line in log_tail {
            body.push_str(&format!("  {line}\n"));
        }
    }
    (subject, body)
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub ok: bool,
    /// The receiver's HTTP status, or the SMTP server's reply code.
    pub status_code: Option<u16>,
    /// Why it failed, in words that never hold the channel's secrets.
    pub error: Option<String>,
    pub took: Duration,
}

impl Delivery {
    fn failed(status_code: Option<u16>, error: String, started: Instant) -> Delivery {
        Delivery {
            ok: false,
            status_code,
            error: Some(error),
            took: started.elapsed(),
        }
    }
}

/// Sends events on their channels. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            http: reqwest::Client::builder()
                .timeout(DELIVERY_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                // A receiver's redirect is not followed: a signed body goes where it was
                // told to, and nowhere else.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Delivers `event` on `channel`, with the connection's `values` (its URL, secret or
    /// SMTP settings); `log_tail` goes into an email.
    pub async fn deliver(
        &self,
        channel: Channel,
        values: &BTreeMap<String, String>,
        event: &Event,
        log_tail: &[String],
    ) -> Delivery {
        match channel {
            Channel::Webhook => self.webhook(values, event).await,
            Channel::Slack => self.slack(values, event).await,
            Channel::Email => email(values, event, log_tail).await,
        }
    }

    async fn webhook(&self, values: &BTreeMap<String, String>, event: &Event) -> Delivery {
        let started = Instant::now();
        let Some(url) = values.get("WEBHOOK_URL") else {
            return Delivery::failed(None, "the connection has no WEBHOOK_URL".into(), started);
        };
        let body = webhook_body(event);
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("stevedore/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-stevedore-event-id", &event.id)
            .header("x-stevedore-event", &event.event);
        if let Some(secret) = values.get("WEBHOOK_SECRET").filter(|s| !s.is_empty()) {
            request = request.header("x-stevedore-signature", signature(secret, &body));
        }
        self.post(request.body(body), "the webhook", started).await
    }

    async fn slack(&self, values: &BTreeMap<String, String>, event: &Event) -> Delivery {
        let started = Instant::now();
        let Some(url) = values.get("SLACK_WEBHOOK_URL") else {
            return Delivery::failed(
                None,
                "the connection has no SLACK_WEBHOOK_URL".into(),
                started,
            );
        };
        let request = self.http.post(url).json(&slack_body(event));
        self.post(request, "Slack", started).await
    }

    /// Sends a POST; a 2xx answer is a delivery, anything else a failure whose message
    /// holds the status and the start of the answer, never the URL (it is the secret of a
    /// Slack webhook).
    async fn post(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        started: Instant,
    ) -> Delivery {
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Delivery {
                        ok: true,
                        status_code: Some(status.as_u16()),
                        error: None,
                        took: started.elapsed(),
                    };
                }
                let answer = read_start(response).await;
                Delivery::failed(
                    Some(status.as_u16()),
                    format!("{what} answered {status}: {answer}"),
                    started,
                )
            }
            Err(error) => Delivery::failed(
                None,
                format!("cannot reach {what}: {}", describe(&error)),
                started,
            ),
        }
    }
}

/// The start of a receiver's answer, for an error message.
async fn read_start(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= MAX_ANSWER_BYTES {
            bytes.truncate(MAX_ANSWER_BYTES);
            break;
        }
    }
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// An HTTP error in words, without its URL.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection refused or unreachable"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// How an SMTP connection is secured (`SMTP_TLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain, then upgraded with STARTTLS (port 587 by default): the default.
    StartTls,
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// No TLS at all (port 25 by default): a relay on the same host or network only.
    None,
}

impl SmtpTls {
    pub fn parse(text: Option<&str>) -> Result<SmtpTls, String> {
        match text.map(str::trim) {
            None | Some("") | Some("starttls") => Ok(SmtpTls::StartTls),
            Some("tls") => Ok(SmtpTls::Tls),
            Some("none") => Ok(SmtpTls::None),
            Some(other) => Err(format!(
                "SMTP_TLS `{other}` is not one of starttls, tls, none"
            )),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// Sends the event's email through the connection's SMTP server.
async fn email(values: &BTreeMap<String, String>, event: &Event, log_tail: &[String]) -> Delivery {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let started = Instant::now();
    let get = |name: &str| values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let setting = || -> Result<_, String> {
        let host = get("SMTP_HOST").ok_or("the connection has no SMTP_HOST")?;
        let tls = SmtpTls::parse(get("SMTP_TLS"))?;
        let port = match get("SMTP_PORT") {
            Some(text) => text
                .parse::<u16>()
                .map_err(|_| format!("SMTP_PORT `{text}` is not a port number"))?,
            None => tls.default_port(),
        };
        let from: Mailbox = get("SMTP_FROM")
            .ok_or("the connection has no SMTP_FROM")?
            .parse()
            .map_err(|e| format!("SMTP_FROM is not an address: {e}"))?;
        let to: Vec<Mailbox> = get("SMTP_TO")
            .ok_or("the connection has no SMTP_TO")?
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .map(|address| {
                address
                    .parse::<Mailbox>()
                    .map_err(|e| format!("SMTP_TO `{address}` is not an address: {e}"))
            })
            .collect::<Result<_, _>>()?;
        if to.is_empty() {
            return Err("SMTP_TO names no address".to_owned());
        }
        Ok((host.to_owned(), tls, port, from, to))
    };
    let (host, tls, port, from, to) = match setting() {
        Ok(setting) => setting,
        Err(message) => return Delivery::failed(None, message, started),
    };
    let (subject, body) = email_text(event, log_tail);
    let mut message = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for address in to {
        message = message.to(address);
    }
    let message = match message.body(body) {
        Ok(message) => message,
        Err(error) => {
            return Delivery::failed(None, format!("cannot build the email: {error}"), started)
        }
    };
    let builder = match tls {
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &host,
        )),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host),
    };
    let mut builder = match builder {
        Ok(builder) => builder.port(port).timeout(Some(DELIVERY_TIMEOUT)),
        Err(error) => {
            return Delivery::failed(None, format!("SMTP server {host}:{port}: {error}"), started)
        }
    };
    if let (Some(user), Some(password)) = (get("SMTP_USERNAME"), values.get("SMTP_PASSWORD")) {
        builder = builder.credentials(Credentials::new(user.to_owned(), password.clone()));
    }
    match builder.build().send(message).await {
        Ok(response) => Delivery {
            ok: response.is_positive(),
            status_code: Some(u16::from(response.code())),
            error: (!response.is_positive())
                .then(|| format!("SMTP server {host}:{port} answered {}", response.code())),
            took: started.elapsed(),
        },
        Err(error) => Delivery::failed(
            error.status().map(u16::from),
            format!("SMTP server {host}:{port}: {error}"),
            started,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            id: "01a2".into(),
            event: "failure".into(),
            job_id: "charges".into(),
            run_id: "r-1".into(),
            task_id: Some("load".into()),
            try_number: Some(2),
            state: "failed".into(),
            reason: Some("exit_code: 3 <oops> & more".into()),
            logical_date: "2024-01-01T00:00:00Z".into(),
            url: Some("https://stevedore.example.com/runs/r-1".into()),
            occurred_at: "2024-01-02T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_webhook_body_carries_every_field_and_task_fields_only_for_task_events() {
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(&event())).unwrap();
        for key in [
            "id",
            "event",
            "job_id",
            "run_id",
            "task_id",
            "try_number",
            "state",
            "reason",
            "logical_date",
            "url",
            "occurred_at",
        ] {
            assert!(body.get(key).is_some(), "{key}: {body}");
        }
        let mut run_event = event();
        run_event.task_id = None;
        run_event.try_number = None;
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(&run_event)).unwrap();
        assert!(body.get("task_id").is_none() && body.get("try_number").is_none());
    }

    #[test]
    fn a_slack_message_escapes_its_text_and_links_the_run() {
        let body = slack_body(&event());
        let text = body["text"].as_str().unwrap();
        assert!(
            text.contains("exit_code: 3 &lt;oops&gt; &amp; more"),
            "{text}"
        );
        assert!(text.contains("<https://stevedore.example.com/runs/r-1|Open in Stevedore>"));
        assert_eq!(body["blocks"][0]["type"], "header");
        assert_eq!(body["blocks"][0]["text"]["type"], "plain_text");
    }

    #[test]
    fn an_email_holds_the_reason_the_link_and_the_log_tail() {
        let (subject, body) = email_text(&event(), &["line 1".into(), "line 2".into()]);
        assert_eq!(
            subject,
            "[Stevedore] failure: job charges, task load (try 2)"
        );
        assert!(
            body.contains("Reason:\nexit_code: 3 <oops> & more"),
            "{body}"
        );
        assert!(body.contains("https://stevedore.example.com/runs/r-1"));
        assert!(body.contains("The last 2 log lines of the try:\n  line 1\n  line 2\n"));
    }

    #[test]
    fn smtp_tls_is_one_of_three_and_starttls_by_default() {
        assert_eq!(SmtpTls::parse(None), Ok(SmtpTls::StartTls));
        assert_eq!(SmtpTls::parse(Some("tls")), Ok(SmtpTls::Tls));
        assert_eq!(SmtpTls::parse(Some("none")), Ok(SmtpTls::None));
        assert!(SmtpTls::parse(Some("ssl")).unwrap_err().contains("`ssl`"));
    }

    #[test]
    fn long_fields_are_cut() {
        let long = "x".repeat(MAX_FIELD_CHARS + 10);
        assert_eq!(cut(&long).chars().count(), MAX_FIELD_CHARS + 1);
        assert_eq!(cut("short"), "short");
    }
}
