//! What the API and UI tests share: a server on a real SQLite store over real HTTP, with a
//! token of each role, and tries written into the store as the scheduler writes them.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};
use stevedore_domain::role::Role;
use stevedore_domain::state::{TaskState, TryState};
use stevedore_server::auth::new_token;
use stevedore_server::AppState;
use stevedore_store::secrets::SecretKey;
use stevedore_store::{LogLine, LogStream, SqliteStore, Store, TryFinish, TryKey};

pub const JOB: &str = "id: etl\ndescription: extract and load\nschedule: \"@daily\"\nparams: {records: 10, mode: full}\ntasks:\n  - id: extract\n    image: stevedore/synth:0.1.0\n  - id: load\n    image: stevedore/synth:0.1.0\n    depends_on: [extract]\n  - id: report\n    image: stevedore/synth:0.1.0\n    depends_on: [load]\n";

/// The key the test server's artifact links are signed with.
pub const LINK_KEY: [u8; 32] = [9; 32];

pub struct Server {
    pub base: String,
    pub jobs: std::path::PathBuf,
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Runtime,
    pub viewer: String,
    pub operator: String,
    pub admin: String,
    /// The folder artifact store the server downloads from.
    pub artifacts: stevedore_artifacts::ArtifactStore,
    pub artifacts_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::write(jobs.join("etl.yaml"), JOB).unwrap();
        std::fs::write(jobs.join("broken.yaml"), "id: broken\ntasks: 3\n").unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let artifacts_dir = dir.path().join("artifacts");
        let artifacts =
            stevedore_artifacts::ArtifactStore::open(&stevedore_artifacts::StoreSettings {
                url: format!("file://{}", artifacts_dir.display()),
                ..Default::default()
            })
            .unwrap();
        let (store, base, artifacts) = runtime.block_on(async {
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(dir.path().join("s.db")).await.unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            // The folder store gives links this server serves, as with `public_url`.
            let artifacts = artifacts.with_links(&base, LINK_KEY);
            let state = AppState::new(store.clone(), jobs, Some(SecretKey::generate().unwrap()))
                .with_artifacts(artifacts.clone());
            tokio::spawn(stevedore_server::serve(
                listener,
                state,
                std::future::pending(),
            ));
            (store, base, artifacts)
        });
        let mut tokens = Vec::new();
        for role in Role::ALL {
            let (token, hash) = new_token().unwrap();
            runtime
                .block_on(store.create_token(role.as_str(), role, &hash))
                .unwrap();
            tokens.push(token);
        }
        Server {
            base,
            jobs: dir.path().join("jobs"),
            store,
            viewer: tokens[0].clone(),
            operator: tokens[1].clone(),
            admin: tokens[2].clone(),
            runtime,
            artifacts,
            artifacts_dir,
            _dir: dir,
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some(body) => agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .unwrap(),
            ),
            None => agent.run(request.body(()).unwrap()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub fn jobs_dir(&self) -> std::path::PathBuf {
        self.jobs.clone()
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body))
    }

    pub fn trigger(&self) -> String {
        let reply = self.post("/api/v1/jobs/etl/runs", &self.operator, json!({}));
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.body["run_id"].as_str().unwrap().to_owned()
    }

    /// Starts try 1 of `task` as the scheduler would; returns its try id.
    pub fn start_try(&self, run_id: &str, task: &str) -> i64 {
        let key = TryKey {
            run_id: run_id.to_owned(),
            task_id: task.to_owned(),
            try_number: 1,
        };
        self.runtime
            .block_on(
                self.store
                    .start_try(&key, "docker", "stevedore/synth:0.1.0", Utc::now()),
            )
            .unwrap()
            .try_id
    }

    pub fn log(&self, try_id: i64, from: i64, texts: &[&str]) {
        let lines: Vec<LogLine> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| LogLine {
                try_id,
                seq: from + i as i64,
                stream: if i % 2 == 0 {
                    LogStream::Stdout
                } else {
                    LogStream::Stderr
                },
                timestamp: Utc::now(),
                text: text.to_string(),
            })
            .collect();
        self.runtime
            .block_on(self.store.append_logs(&lines))
            .unwrap();
    }

    /// Stores `bytes` as the file `path` a try left, as the scheduler's capture does;
    /// returns its sha256.
    pub fn put_artifact(&self, run_id: &str, try_id: i64, path: &str, bytes: &[u8]) -> String {
        self.runtime.block_on(async {
            let blob = self.artifacts.put(run_id, bytes, u64::MAX).await.unwrap();
            self.store
                .record_artifacts(
                    try_id,
                    &[stevedore_store::CapturedFile {
                        path: path.to_owned(),
                        size: blob.size,
                        sha256: blob.sha256.clone(),
                        modified: 1_767_225_600,
                    }],
                )
                .await
                .unwrap();
            blob.sha256
        })
    }

    pub fn finish(&self, try_id: i64, state: TryState) {
        let finish = TryFinish {
            try_id,
            state,
            ended_at: Utc::now(),
            exit_code: Some(if state == TryState::Success { 0 } else { 3 }),
            failure_reason: (state != TryState::Success).then(|| "exit_code: 3".to_owned()),
            task_state: if state == TryState::Success {
                TaskState::Success
            } else {
                TaskState::Failed
            },
            next_try_at: None,
            notifications: Vec::new(),
            produces: Vec::new(),
            metrics: Vec::new(),
        };
        self.runtime
            .block_on(self.store.finish_try(&finish))
            .unwrap();
    }
}

pub fn error_code(reply: &Reply) -> &str {
    reply.body["error"]["code"].as_str().unwrap_or("")
}

/// A browser's answer: status, where it redirects, the cookie it sets, the page.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub html: String,
}

impl Server {
    /// A UI request with a session cookie (if any) and a form body (if any); redirects are
    /// not followed.
    pub fn browse(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
    ) -> Page {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("Cookie", format!("stevedore_session={cookie}"));
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = request
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .unwrap();
        let mut response = agent.run(request).unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, set_cookie) = (header("location"), header("set-cookie"));
        Page {
            status: response.status().as_u16(),
            location,
            set_cookie,
            html: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// Logs in with `token`; returns the session cookie's value.
    pub fn login(&self, token: &str) -> String {
        let page = self.browse(
            "POST",
            "/login",
            None,
            &[("token", token), ("next", "/jobs")],
        );
        assert_eq!(
            (page.status, page.location.as_deref()),
            (303, Some("/jobs")),
            "{}",
            page.html
        );
        let cookie = page.set_cookie.expect("a session cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("stevedore_session=")
            .to_owned()
    }
}

/// The CSRF token in a page's forms.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF field") + marker.len();
    html[start..start + 64].to_owned()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
