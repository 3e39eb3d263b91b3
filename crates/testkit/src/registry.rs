//! A throwaway image registry (Debian's `docker-registry`) on 127.0.0.1, with or without a
//! login, and pushing images to it.

#[allow(unused_imports)]
use super::*;

/// A real registry (Debian's `docker-registry`) on a free 127.0.0.1 port, stopped on drop.
pub struct Registry {
    pub address: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that asks for this user and password (htpasswd, bcrypt) on every request.
    pub fn start_with_login(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {address}}}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            text.push_str(&format!(
                "auth: {{htpasswd: {{realm: stevedore-test, path: {}}}}}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "these tests need Debian's docker-registry package (scripts/setup.sh installs it)",
            );
        let registry = Registry {
            address,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !registry.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry on {} did not start",
                registry.address
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn answers(&self) -> bool {
        // 401 is the answer of a registry that asks for a login.
        matches!(
            try_http("GET", &self.address, "/v2/", &[]),
            Ok((200 | 401, _, _))
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `source` (a local image) as `repository:tag` and returns its registry digest.
pub async fn push_image(
    docker: &bollard::Docker,
    source: &str,
    repository: &str,
    tag: &str,
) -> String {
    push_image_as(docker, source, repository, tag, Default::default()).await
}

/// [`push_image`] with credentials, for a registry that asks for a login.
pub async fn push_image_as(
    docker: &bollard::Docker,
    source: &str,
    repository: &str,
    tag: &str,
    credentials: bollard::auth::DockerCredentials,
) -> String {
    use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
    use futures_util::StreamExt;
    docker
        .tag_image(
            source,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repository)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("tag {source} as {repository}:{tag}: {e}"));
    let mut push = docker.push_image(
        repository,
        Some(PushImageOptionsBuilder::default().tag(tag).build()),
        Some(credentials),
    );
    while let Some(step) = push.next().await {
        step.expect("push to the test registry");
    }
    // Each push of a new image adds its digest; find the one of this tag's image.
    let inspected = docker
        .inspect_image(&format!("{repository}:{tag}"))
        .await
        .unwrap();
    inspected
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")).map(str::to_owned))
        .expect("pushed image has a registry digest")
}

/// The registry address the repository's job files name (the quickstart's registry).
pub const QUICKSTART_REGISTRY: &str = "127.0.0.1:5000";
