//! The demo SaaS API (the `stevedore/demo-api` image) started for one test.

#[allow(unused_imports)]
use super::*;

/// The demo SaaS API (`images/demo-api`) in a container on a free 127.0.0.1 port, removed
/// on drop.
pub struct DemoApi {
    pub address: String,
    container: String,
}

impl DemoApi {
    pub fn start(records: usize) -> DemoApi {
        let output = std::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "-p",
                "127.0.0.1::8080",
                "-e",
                &format!("DEMO_API_RECORDS={records}"),
                "stevedore/demo-api:0.2.0",
            ])
            .output()
            .expect("docker run");
        assert!(
            output.status.success(),
            "cannot start the demo API (run `stevedore images build`): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let container = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let port = std::process::Command::new("docker")
            .args(["port", &container, "8080"])
            .output()
            .expect("docker port");
        let port = String::from_utf8_lossy(&port.stdout);
        let address = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .expect("published port")
            .trim()
            .to_owned();
        let api = DemoApi { address, container };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = matches!(
                try_http("GET", &api.address, "/health", &[]),
                Ok((200, _, _))
            );
            if ready {
                return api;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo API did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl DemoApi {
    /// The API's base URL as other containers on the default bridge reach it.
    pub fn container_url(&self) -> String {
        let output = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                &self.container,
            ])
            .output()
            .expect("docker inspect");
        format!(
            "http://{}:8080",
            String::from_utf8_lossy(&output.stdout).trim()
        )
    }

    /// How many requests of `method path` answered `status`, from the API's own log.
    pub fn requests(&self, method: &str, path: &str, status: u16) -> usize {
        let output = std::process::Command::new("docker")
            .args(["logs", &self.container])
            .output()
            .expect("docker logs");
        let wanted = format!("{method} {path} -> {status}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.trim() == wanted)
            .count()
    }
}

impl Drop for DemoApi {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
    }
}
