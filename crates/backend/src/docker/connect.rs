//! Reaching the engine: the endpoint from the environment or the settings, TLS files,
//! the pinned API version, and an engine that does not answer turned into `Unavailable`.

#[allow(unused_imports)]
use super::*;

/// The files of a TLS connection to an engine, as the docker CLI keeps them in
/// `DOCKER_CERT_PATH`: the CA that signed the engine's certificate, and the client's own
/// certificate and key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir` (the docker CLI's layout).
    pub fn in_dir(dir: impl AsRef<std::path::Path>) -> TlsFiles {
        let dir = dir.as_ref();
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// The first file that cannot be read, named.
    fn check(&self) -> Result<(), String> {
        for (what, path) in [
            ("CA certificate", &self.ca),
            ("client certificate", &self.cert),
            ("client key", &self.key),
        ] {
            if let Err(error) = std::fs::metadata(path) {
                return Err(format!("the TLS {what} {}: {error}", path.display()));
            }
        }
        Ok(())
    }
}

impl DockerBackend {
    /// A client for `DOCKER_HOST` (`unix://` or `tcp://`), or the local socket; over TLS when
    /// `DOCKER_TLS_VERIFY` is set, with the files in `DOCKER_CERT_PATH` (default
    /// `~/.docker`), as the docker CLI does. Connecting is lazy: an unreachable engine shows
    /// up in [`Backend::health`], not here. Tests and tools use this; the scheduler is given
    /// its settings through [`DockerBackend::from_settings`].
    pub fn from_env() -> Result<DockerBackend, BackendError> {
        DockerBackend::from_settings(&|name| std::env::var(name).ok())
    }

    /// The same from `setting(name)`: the value of the variable `name` (`DOCKER_HOST`,
    /// `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`, `HOME`) as the caller resolved it.
    pub fn from_settings(
        setting: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DockerBackend, BackendError> {
        let set = |name: &str| setting(name).filter(|value| !value.is_empty());
        let endpoint = set("DOCKER_HOST").unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        let verify = set("DOCKER_TLS_VERIFY").filter(|value| value != "0");
        let tls = verify.map(|_| {
            let dir = set("DOCKER_CERT_PATH")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(set("HOME").unwrap_or_default()).join(".docker")
                });
            TlsFiles::in_dir(dir)
        });
        DockerBackend::connect_with(&endpoint, tls)
    }

    pub fn connect(endpoint: &str) -> Result<DockerBackend, BackendError> {
        DockerBackend::connect_with(endpoint, None)
    }

    /// A client for `endpoint`, over TLS with `tls` (a `tcp://` endpoint only).
    pub fn connect_with(
        endpoint: &str,
        tls: Option<TlsFiles>,
    ) -> Result<DockerBackend, BackendError> {
        if !(endpoint.starts_with("unix://")
            || endpoint.starts_with("tcp://")
            || endpoint.starts_with("http://"))
        {
            return Err(BackendError::Unavailable(format!(
                "DOCKER_HOST `{endpoint}` is not a unix:// or tcp:// address"
            )));
        }
        if tls.is_some() && !endpoint.starts_with("tcp://") {
            return Err(BackendError::Unavailable(format!(
                "Docker endpoint `{endpoint}`: TLS needs a tcp:// address"
            )));
        }
        Ok(DockerBackend {
            endpoint: endpoint.to_owned(),
            tls,
            client: std::sync::Mutex::new(None),
        })
    }

    /// The engine client, made now if it was not yet.
    pub fn client(&self) -> Result<Docker, BackendError> {
        let mut client = self.client.lock().expect("poisoned");
        if let Some(docker) = client.as_ref() {
            return Ok(docker.clone());
        }
        let timeout = 120;
        let docker = match (&self.tls, self.endpoint.strip_prefix("unix://")) {
            (Some(tls), _) => {
                tls.check().map_err(|problem| {
                    BackendError::Unavailable(format!(
                        "cannot reach the Docker engine at {}: {problem}",
                        self.endpoint
                    ))
                })?;
                Docker::connect_with_ssl(
                    &self.endpoint,
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    timeout,
                    &API_VERSION,
                )
            }
            (None, Some(path)) => Docker::connect_with_unix(path, timeout, &API_VERSION),
            (None, None) => Docker::connect_with_http(&self.endpoint, timeout, &API_VERSION),
        }
        .map_err(|error| self.unavailable(&error))?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(super) fn unavailable(&self, error: &bollard::errors::Error) -> BackendError {
        BackendError::Unavailable(format!(
            "cannot reach the Docker engine at {}: {error}",
            self.endpoint
        ))
    }
}
