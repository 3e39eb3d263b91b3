//! A real S3-compatible server for the artifact store's tests: moto's server mode (from
//! PyPI; `scripts/setup.sh` installs it into `.stevedore/venv-s3`) on 127.0.0.1, with one
//! bucket. moto keeps objects in memory and checks the requests' SigV4 signatures' form;
//! it is a real HTTP S3 API, not a mock written here.

#[allow(unused_imports)]
use super::*;

/// The access key and secret every test client uses (moto takes any).
pub const S3_ACCESS_KEY: &str = "stevedore-test-key";
pub const S3_SECRET_KEY: &str = "stevedore-test-secret-never-logged";

/// A running server, stopped on drop.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    address: String,
    child: Option<std::process::Child>,
}

impl S3Server {
    /// Starts the server and creates the bucket `stevedore-test`.
    pub fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "stevedore-test".to_owned(),
            address: format!("127.0.0.1:{port}"),
            child: None,
        };
        server.spawn();
        let (status, _, body) = try_http("PUT", &server.address, "/stevedore-test", &[])
            .expect("create the test bucket");
        assert_eq!(status, 200, "creating the test bucket: {body}");
        server
    }

    fn spawn(&mut self) {
        let binary = repo_root().join(".stevedore/venv-s3/bin/moto_server");
        let port = self.address.rsplit(':').next().unwrap().to_owned();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the artifact store's tests need moto's S3 server at {} (scripts/setup.sh installs it): {e}",
                    binary.display()
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while try_http("GET", &self.address, "/", &[]).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto's S3 server on {} did not start",
                self.address
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (its objects go with it): the store is unreachable until
    /// [`S3Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the bucket (empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        let (status, _, body) =
            try_http("PUT", &self.address, &format!("/{}", self.bucket), &[]).expect("bucket");
        assert_eq!(status, 200, "creating the test bucket: {body}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
