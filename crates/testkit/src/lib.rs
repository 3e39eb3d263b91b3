//! Test support for every crate's tests (`stevedore-testkit`): the end-to-end harness (a
//! scheduler on a fresh SQLite store and a jobs folder of the test's own, against the real
//! Docker engine), a throwaway PostgreSQL server, image registry and S3 server, a second Docker engine,
//! the demo API, certificates and the Nomad API simulator. Each starts on 127.0.0.1 for one
//! test and is removed when dropped; each fails loudly when what it needs is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use chrono::Utc;
use stevedore_backend::scripted::ScriptedBackend;
use stevedore_backend::{Backend, DockerBackend, LaunchSpec, ProcessBackend, LABEL_RUN};
use stevedore_domain::clock::{Clock, ManualClock};
use stevedore_ops::jobs_dir::load_jobs_dir;
use stevedore_ops::runs::trigger_manual;
use stevedore_scheduler::{Scheduler, SchedulerConfig};
use stevedore_store::secrets::SecretKey;
use stevedore_store::{LogReader, RunRecord, SqliteStore, Store, TryRecord};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod demo_api;
mod engine;
mod harness;
pub mod nomad_sim;
mod pipeline;
mod postgres;
mod receivers;
mod registry;
mod s3;
mod saas_apis;
mod tls_front;

pub use demo_api::*;
pub use engine::*;
pub use harness::*;
pub use pipeline::*;
pub use postgres::*;
pub use receivers::*;
pub use registry::*;
pub use s3::*;
pub use saas_apis::*;
/// What a scripted try plays ([`Harness::script`]).
pub use stevedore_backend::scripted::Play;
pub use tls_front::TlsFront;

/// The images every end-to-end test uses, built by `stevedore images build`.
pub const SYNTH: &str = "stevedore/synth:0.1.0";

pub const SHELL: &str = "stevedore/shell-transform:0.1.1";

/// The synth integration as a local program, for the `process` backend: the very binary
/// the image holds (built by `images/synth/prepare`).
pub fn synth_command() -> String {
    let path = repo_root().join("images/synth/.build/synth");
    assert!(
        path.is_file(),
        "{} is missing: run `stevedore images build` first",
        path.display()
    );
    path.display().to_string()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("repo root")
        .to_owned()
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("STEVEDORE_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
}

/// Fails the test (never skips it) when the engine or the images are missing.
pub async fn require_images() {
    let docker = DockerBackend::from_env().expect("docker client");
    docker
        .health()
        .await
        .expect("these tests need a running Docker engine");
    for image in [SYNTH, SHELL] {
        docker
            .client()
            .expect("docker client")
            .inspect_image(image)
            .await
            .unwrap_or_else(|_| panic!("image {image} is missing: run `stevedore images build` first (scripts/test.sh does)"));
    }
}

/// What `synth count --lines N` prints: `out 1` .. `out N` on stdout, and `err n` on stderr
/// for every third n.
pub fn counted(lines: u32) -> (Vec<String>, Vec<String>) {
    (
        (1..=lines).map(|n| format!("out {n}")).collect(),
        (1..=lines)
            .filter(|n| n % 3 == 0)
            .map(|n| format!("err {n}"))
            .collect(),
    )
}

/// The texts of one stream's lines, in order.
pub fn stream_lines(
    lines: &[(stevedore_backend::Stream, String)],
    stream: stevedore_backend::Stream,
) -> Vec<String> {
    lines
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, text)| text.clone())
        .collect()
}

pub fn read_repo_job(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("jobs").join(name)).expect("repo job file")
}

/// A minimal HTTP/1.0 exchange over a TCP socket: `(status, headers, body)`. Enough to drive
/// the demo API and the registry without an HTTP client library in the tests.
pub fn http(
    method: &str,
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    try_http(method, address, path, headers)
        .unwrap_or_else(|e| panic!("{method} http://{address}{path}: {e}"))
}

/// [`http`], with connection errors returned rather than failing the test.
pub fn try_http(
    method: &str,
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, HashMap<String, String>, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// The default bridge's gateway: this host as containers see it.
pub fn docker_gateway() -> String {
    let output = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if gateway.is_empty() {
        "172.17.0.1".to_owned()
    } else {
        gateway
    }
}
