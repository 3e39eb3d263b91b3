//! Receivers of alerts for the alert tests: an HTTP receiver that records every request
//! (a webhook, or a Slack incoming webhook that checks each body against Slack's format and
//! answers as Slack does) and can be stopped and started again on its address; and a real
//! SMTP server (aiosmtpd, from PyPI; `scripts/setup.sh` installs it) that keeps every mail
//! in a Maildir.

#[allow(unused_imports)]
use super::*;

use std::sync::Mutex;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What a receiver plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverKind {
    /// Any POST is taken (200).
    Webhook,
    /// A Slack incoming webhook: `200 ok` for a message in Slack's format, `400
    /// invalid_payload` / `invalid_blocks` otherwise ([`slack_format_problem`]).
    Slack,
}

/// An HTTP receiver on 127.0.0.1, recording what it gets.
pub struct Receiver {
    pub url: String,
    address: std::net::SocketAddr,
    kind: ReceiverKind,
    received: Arc<Mutex<Vec<Received>>>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(kind: ReceiverKind) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut receiver = Receiver {
            url: format!("http://{address}/hook"),
            address,
            kind,
            received: Arc::default(),
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let received = self.received.clone();
        let kind = self.kind;
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = received.clone();
                    async move {
                        let (status, answer) = match kind {
                            ReceiverKind::Webhook => (200, "received".to_owned()),
                            ReceiverKind::Slack => match slack_format_problem(&body) {
                                None => (200, "ok".to_owned()),
                                Some(problem) => (400, problem),
                            },
                        };
                        received.lock().unwrap().push(Received {
                            headers: headers
                                .iter()
                                .map(|(name, value)| {
                                    (
                                        name.as_str().to_owned(),
                                        value.to_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect(),
                            body: body.to_vec(),
                            status,
                        });
                        (axum::http::StatusCode::from_u16(status).unwrap(), answer)
                    }
                },
            ),
        );
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Stops listening: deliveries find the port closed until [`Receiver::restart`].
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot listen on {} again: {error}",
                        self.address
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    /// Every request so far, in the order they came.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests came (at most `limit`).
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let received = self.received();
            if received.len() >= count || tokio::time::Instant::now() > deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Why `body` is not a message Slack's incoming webhooks take, in Slack's own error words
/// (`invalid_payload`, `no_text`, `invalid_blocks`), or `None`. The rules of Slack's
/// reference: a JSON object with `text` or `blocks`; at most 50 blocks, each of a known
/// type; a header's text `plain_text` of at most 150 characters; a section's text at most
/// 3000 characters and at most 10 fields of at most 2000 each; a context at most 10
/// elements; text objects `plain_text` or `mrkdwn`.
pub fn slack_format_problem(body: &[u8]) -> Option<String> {
    let Ok(serde_json::Value::Object(message)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Some("invalid_payload".into());
    };
    let text = message.get("text").and_then(|t| t.as_str());
    let blocks = message.get("blocks");
    if text.is_none_or(|t| t.is_empty()) && blocks.is_none() {
        return Some("no_text".into());
    }
    let Some(blocks) = blocks else { return None };
    let Some(blocks) = blocks.as_array() else {
        return Some("invalid_blocks: blocks is not an array".into());
    };
    if blocks.len() > 50 {
        return Some("invalid_blocks: more than 50 blocks".into());
    }
    let text_object =
        |value: &serde_json::Value, limit: usize, plain_only: bool| -> Option<String> {
            let kind = value.get("type").and_then(|t| t.as_str());
            let ok_kind = if plain_only {
                kind == Some("plain_text")
            } else {
                matches!(kind, Some("plain_text" | "mrkdwn"))
            };
            let text = value.get("text").and_then(|t| t.as_str());
            match (ok_kind, text) {
                (true, Some(text)) if !text.is_empty() && text.chars().count() <= limit => None,
                _ => Some(format!("invalid_blocks: bad text object {value}")),
            }
        };
    for block in blocks {
        let problem = match block.get("type").and_then(|t| t.as_str()) {
            Some("header") => text_object(&block["text"], 150, true),
            Some("section") => {
                let mut problem = None;
                if let Some(text) = block.get("text") {
                    problem = text_object(text, 3000, false);
                }
                match block.get("fields").map(|f| f.as_array()) {
                    Some(Some(fields)) if fields.len() <= 10 => {
                        for field in fields {
                            problem = problem.or_else(|| text_object(field, 2000, false));
                        }
                    }
                    Some(_) => problem = Some("invalid_blocks: bad fields".into()),
                    None if block.get("text").is_none() => {
                        problem = Some("invalid_blocks: a section needs text or fields".into())
                    }
                    None => {}
                }
                problem
            }
            Some("context") => match block.get("elements").and_then(|e| e.as_array()) {
                Some(elements) if !elements.is_empty() && elements.len() <= 10 => elements
                    .iter()
                    .find_map(|element| text_object(element, 3000, false)),
                _ => Some("invalid_blocks: bad context elements".into()),
            },
            Some("divider") => None,
            other => Some(format!("invalid_blocks: unknown block type {other:?}")),
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// A real SMTP server (aiosmtpd) on 127.0.0.1, keeping each mail in a Maildir; stopped on
/// drop.
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    maildir: tempfile::TempDir,
    child: std::process::Child,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let binary = repo_root().join(".stevedore/venv-s3/bin/aiosmtpd");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(&binary)
            .args([
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the alert tests need aiosmtpd at {} (scripts/setup.sh installs it): {e}",
                    binary.display()
                )
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer {
            host: "127.0.0.1".into(),
            port,
            maildir,
            child,
        }
    }

    /// Every mail received so far, as its raw text.
    pub fn mails(&self) -> Vec<String> {
        let mut mails = Vec::new();
        for folder in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.path().join("mail").join(folder))
            else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    mails.push(text);
                }
            }
        }
        mails
    }

    /// Waits until at least `count` mails came (at most `limit`).
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mails = self.mails();
            if mails.len() >= count || tokio::time::Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
