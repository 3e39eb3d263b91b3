//! The Stripe-, GitHub- and HubSpot-like API servers of `crates/testkit/apis/saas_apis.py`,
//! started for one test on a free 127.0.0.1 port and stopped on drop.

#[allow(unused_imports)]
use super::*;

use std::io::BufRead;

pub struct SaasApis {
    pub address: String,
    child: std::process::Child,
}

/// The credentials the servers accept.
pub const STRIPE_KEY: &str = "sk_test_stevedore";
pub const GITHUB_TOKEN: &str = "ghp_stevedore";
pub const PLAIN_KEY: &str = "plain-key";
pub const HUBSPOT_CLIENT_ID: &str = "stevedore-client";
pub const HUBSPOT_CLIENT_SECRET: &str = "stevedore-secret";

impl SaasApis {
    /// `records` records; OAuth2 tokens live `token_lifetime_s` and answer at most
    /// `token_uses` requests (0: any number).
    pub fn start(records: usize, token_lifetime_s: u64, token_uses: u64) -> SaasApis {
        let script = repo_root().join("crates/testkit/apis/saas_apis.py");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--bind", "0.0.0.0"])
            .args(["--records", &records.to_string()])
            .args(["--token-lifetime", &token_lifetime_s.to_string()])
            .args(["--token-uses", &token_uses.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the test API servers");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .expect("the API servers say their port");
        let port = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line `{first}`"))
            .to_owned();
        SaasApis {
            address: format!("127.0.0.1:{port}"),
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Adds `count` records updated now.
    pub fn add_records(&self, count: usize) {
        let (status, _, body) = http(
            "POST",
            &self.address,
            &format!("/admin/records?count={count}"),
            &[],
        );
        assert_eq!(status, 200, "{body}");
    }

    /// The next `count` requests to `route` (`stripe`, `github`, `hubspot`, `plain`, `any`)
    /// fail as `kind` says: `429` (with `Retry-After: 1`), `429-bare` (without), `403-ratelimit`
    /// (GitHub's: remaining 0, reset in a second), `500`.
    pub fn fault(&self, route: &str, kind: &str, count: usize) {
        let (status, _, body) = http(
            "POST",
            &self.address,
            &format!("/admin/faults?route={route}&kind={kind}&count={count}"),
            &[],
        );
        assert_eq!(status, 200, "{body}");
    }

    /// What the servers counted: requests per route, statuses per route, tokens issued, and
    /// each request's time.
    pub fn stats(&self) -> serde_json::Value {
        let (status, _, body) = http("GET", &self.address, "/admin/stats", &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats are JSON")
    }
}

impl Drop for SaasApis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
