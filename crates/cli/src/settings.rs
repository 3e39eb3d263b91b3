//! Settings, resolved once at start-up into typed values each component is given (ripgrep's
//! low-level flags → high-level settings).
//!
//! Every setting has a key (`lease`, in the config file) and a variable (`STEVEDORE_LEASE`).
//! Its value is the command line's (for the few that are flags), else the environment's,
//! else the config file's, else the default. Nothing is passed on through the process
//! environment: the config file is read into [`Settings`], never exported, so no child
//! process (a `process` try, above all) can inherit a setting such as the secret key, the
//! database URL or the Nomad token. See docs/configuration.md.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stevedore_backend::docker_hosts::DockerHostConfig;
use stevedore_backend::NomadConfig;
use stevedore_domain::protocol::TryLimits;
use stevedore_scheduler::try_runner::TryDefaults;
use stevedore_store::secrets::KeySource;

use crate::config;
use crate::output::Format;
use crate::{Global, ServeArgs};

/// Variables read from the environment besides the settings: the docker CLI's default
/// certificate folder is under `HOME`.
const OTHER_VARIABLES: &[&str] = &["HOME"];

/// Everything Stevedore was told, typed.
#[derive(Debug)]
pub struct Settings {
    pub db: String,
    pub jobs: PathBuf,
    pub pools: PathBuf,
    pub output: Format,
    /// The log filter (`log`), when one is set.
    pub log: Option<String>,
    pub bind: IpAddr,
    pub port: u16,
    /// The registry `images build --push` pushes to.
    pub registry: String,
    /// Where the connections' key comes from.
    pub secret_key: KeySource,
    pub heartbeat_every: Option<Duration>,
    pub lease: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    /// Where tries' files travel (`artifact_store` and its S3 settings).
    pub artifact_store: stevedore_artifacts::StoreSettings,
    pub artifact_retention: Option<Duration>,
    /// How long after a try ends its log moves to the artifact store (`log_archive_after`):
    /// `Some(None)` for `never`, `None` when not set (the scheduler's default, 1 h).
    pub log_archive_after: Option<Option<Duration>>,
    /// How long ended runs are kept (`retention`): `never` (the default), `90d`, `500 runs`.
    pub retention: stevedore_domain::retention::Retention,
    /// Where `stevedore server` is reached from outside (`public_url`): the base of the
    /// signed links a folder artifact store gives Nomad clients.
    pub public_url: Option<String>,
    pub sweep_every: Option<Duration>,
    /// How long a try waits for a backend that does not answer before it fails
    /// (`backend_unavailable_timeout`).
    pub backend_unavailable_timeout: Option<Duration>,
    /// How long a notification is tried before it is given up (`notification_give_up_after`).
    pub notification_give_up_after: Option<Duration>,
    /// Several Docker hosts, when `docker_hosts` lists them.
    pub docker_hosts: Option<Vec<DockerHostConfig>>,
    pub host_lost_after: Duration,
    /// The Nomad cluster, when `nomad_addr` is set.
    pub nomad: Option<NomadConfig>,
    /// Whether a scheduler runs `process` tries: `None` when not set (then on for
    /// `standalone` only).
    pub process_backend: Option<bool>,
    /// The private folder (0700) the `process` backend keeps its tries and workspaces in.
    pub process_dir: PathBuf,
    pub limits: TryLimits,
    pub try_defaults: TryDefaults,
    /// The resolved value of every variable, for the backends that take theirs by name.
    variables: BTreeMap<&'static str, String>,
}

/// Where one setting's value came from, for error messages.
fn describe(key: &str) -> String {
    let variable = config::variable_of(key).unwrap_or("?");
    format!("setting `{key}` ({variable})")
}

impl Settings {
    /// Resolves the settings from the command line (`global`, `serve`), the environment
    /// (`environment(name)`) and the config file the command line or the environment names.
    pub fn resolve(
        global: &Global,
        serve: Option<&ServeArgs>,
        environment: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let file = match &global.config {
            Some(path) => config::read(path)?,
            None => BTreeMap::new(),
        };
        let mut variables: BTreeMap<&'static str, String> = BTreeMap::new();
        for (key, variable) in config::KEYS {
            let value = environment(variable)
                .filter(|v| !v.is_empty())
                .or_else(|| file.get(*key).cloned());
            if let Some(value) = value {
                variables.insert(variable, value);
            }
        }
        for variable in OTHER_VARIABLES {
            if let Some(value) = environment(variable) {
                variables.insert(variable, value);
            }
        }
        let get = |key: &str| -> Option<String> {
            config::variable_of(key).and_then(|variable| variables.get(variable).cloned())
        };
        let duration = |key: &str| -> Result<Option<Duration>, String> {
            get(key)
                .map(|text| {
                    stevedore_domain::duration::parse_duration(&text)
                        .map_err(|e| format!("{}: {e}", describe(key)))
                })
                .transpose()
        };
        let flag = |key: &str| -> Result<Option<bool>, String> {
            get(key)
                .map(|text| match text.trim() {
                    "true" | "1" | "yes" | "on" => Ok(true),
                    "false" | "0" | "no" | "off" => Ok(false),
                    other => Err(format!("{}: `{other}` is not true or false", describe(key))),
                })
                .transpose()
        };
        let size = |key: &str, low: u64, high: u64| -> Result<Option<u64>, String> {
            get(key)
                .map(|text| {
                    let bytes = stevedore_domain::job::parse_memory(&text)
                        .map_err(|e| format!("{}: {e}", describe(key)))?;
                    if bytes < low || bytes > high {
                        return Err(format!(
                            "{}: {bytes} bytes is outside {low}..={high}",
                            describe(key)
                        ));
                    }
                    Ok(bytes)
                })
                .transpose()
        };

        let db = global
            .db
            .clone()
            .or_else(|| get("db"))
            .unwrap_or_else(|| "stevedore.db".to_owned());
        let jobs = global
            .jobs
            .clone()
            .or_else(|| get("jobs").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("jobs"));
        let pools = global
            .pools
            .clone()
            .or_else(|| get("pools").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("pools.yaml"));
        let bind = match serve.and_then(|s| s.bind).map(Ok).or_else(|| {
            get("bind").map(|text| {
                text.parse::<IpAddr>()
                    .map_err(|_| format!("{}: `{text}` is not an IP address", describe("bind")))
            })
        }) {
            Some(bind) => bind?,
            None => IpAddr::from([127, 0, 0, 1]),
        };
        let port = match serve.and_then(|s| s.port).map(Ok).or_else(|| {
            get("port").map(|text| {
                text.parse::<u16>()
                    .map_err(|_| format!("{}: `{text}` is not a port number", describe("port")))
            })
        }) {
            Some(port) => port?,
            None => 8080,
        };
        let secret_key = KeySource {
            key: get("secret_key"),
            file: get("secret_key_file")
                .map(PathBuf::from)
                .unwrap_or_else(|| beside_store(&db, "key")),
        };
        let docker_hosts = get("docker_hosts")
            .filter(|text| !text.trim().is_empty())
            .map(|text| {
                stevedore_backend::docker_hosts::parse_hosts(&text)
                    .map_err(|e| format!("{}: {e}", describe("docker_hosts")))
            })
            .transpose()?;
        let nomad = match get("nomad_addr").filter(|a| !a.trim().is_empty()) {
            Some(_) => Some(
                NomadConfig::from_settings(&|name| variables.get(name).cloned())
                    .map_err(|e| format!("nomad settings: {e}"))?,
            ),
            None => None,
        };
        let defaults = TryLimits::default();
        let limits = TryLimits {
            max_line_bytes: size("max_line_bytes", 1024, 1024 * 1024)?
                .map_or(defaults.max_line_bytes, |b| b as usize),
            max_output_bytes: size("max_output_bytes", 1024, 16 * 1024 * 1024)?
                .map_or(defaults.max_output_bytes, |b| b as usize),
            max_outputs: match get("max_outputs") {
                Some(text) => text
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "{}: `{text}` is not a number in 1..=100000",
                            describe("max_outputs")
                        )
                    })?,
                None => defaults.max_outputs,
            },
        };
        let pids_limit = match get("pids_limit") {
            Some(text) => match text.trim().parse::<i64>() {
                Ok(0) => None,
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(format!(
                        "{}: `{text}` is not a number of processes (0 for no limit)",
                        describe("pids_limit")
                    ))
                }
            },
            None => Some(1024),
        };
        let default_memory = match get("default_memory") {
            Some(text) if matches!(text.trim(), "none" | "0") => None,
            Some(_) => size("default_memory", 4 * 1024 * 1024, u64::MAX)?,
            None => Some(1 << 30),
        };
        Ok(Settings {
            output: global.output,
            log: get("log"),
            bind,
            port,
            registry: get("registry").unwrap_or_else(|| "127.0.0.1:5000".to_owned()),
            secret_key,
            heartbeat_every: duration("heartbeat_every")?,
            lease: duration("lease")?,
            shutdown_grace: duration("shutdown_grace")?,
            artifact_store: stevedore_artifacts::StoreSettings {
                url: get("artifact_store").unwrap_or_else(|| {
                    let folder = beside_store(&db, "artifacts");
                    let folder = std::path::absolute(&folder).unwrap_or(folder);
                    format!("file://{}", folder.display())
                }),
                endpoint: get("artifact_store_endpoint"),
                region: get("artifact_store_region"),
                path_style: flag("artifact_store_path_style")?.unwrap_or(false),
                access_key_id: get("artifact_store_access_key_id"),
                secret_access_key: get("artifact_store_secret_access_key"),
            },
            artifact_retention: match duration("artifact_retention")? {
                Some(value) => Some(value),
                None => duration("workspace_retention")?,
            },
            retention: match get("retention") {
                Some(text) => stevedore_domain::retention::Retention::parse(&text)
                    .map_err(|e| format!("{}: {e}", describe("retention")))?,
                None => Default::default(),
            },
            log_archive_after: match get("log_archive_after") {
                Some(text) if text.trim() == "never" => Some(None),
                Some(_) => Some(duration("log_archive_after")?),
                None => None,
            },
            public_url: match get("public_url") {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(format!(
                        "public_url `{url}`: must be an http:// or https:// URL"
                    ))
                }
                other => other,
            },
            sweep_every: match duration("sweep_every")? {
                Some(value) => Some(value),
                None => duration("workspace_sweep_every")?,
            },
            backend_unavailable_timeout: duration("backend_unavailable_timeout")?,
            notification_give_up_after: duration("notification_give_up_after")?,
            docker_hosts,
            host_lost_after: duration("host_lost_after")?.unwrap_or(Duration::from_secs(300)),
            nomad,
            process_backend: flag("process_backend")?,
            process_dir: get("process_dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| beside_store(&db, "runtime")),
            limits,
            try_defaults: TryDefaults {
                pids_limit,
                memory_bytes: default_memory,
            },
            db,
            jobs,
            pools,
            variables,
        })
    }

    /// The resolved value of a setting's variable (`DOCKER_HOST`, `NOMAD_TOKEN`, ...).
    pub fn variable(&self, name: &str) -> Option<String> {
        self.variables.get(name).cloned()
    }

    /// The artifact store the settings name, opened (a folder is created when missing).
    /// A folder store with `public_url` (else `own_url`, the address of a server in the same
    /// process) and the secret key gives signed links that `stevedore server` serves (for
    /// Nomad clients to fetch inputs from).
    pub fn artifacts(
        &self,
        own_url: Option<&str>,
    ) -> Result<stevedore_artifacts::ArtifactStore, String> {
        let store = stevedore_artifacts::ArtifactStore::open(&self.artifact_store)
            .map_err(|e| e.to_string())?;
        if store.signs_urls() {
            return Ok(store);
        }
        match (
            self.public_url.as_deref().or(own_url),
            stevedore_store::secrets::SecretKey::load(&self.secret_key, false),
        ) {
            (Some(url), Ok(key)) => Ok(store.with_links(url, key.derive(ARTIFACT_LINK_KEY))),
            _ => Ok(store),
        }
    }

    /// The Docker engine the settings name (`docker_host`, `docker_tls_verify`, ...).
    pub fn docker(
        &self,
    ) -> Result<stevedore_backend::DockerBackend, stevedore_backend::BackendError> {
        stevedore_backend::DockerBackend::from_settings(&|name| self.variable(name))
    }
}

/// What the artifact links' key is derived for (from the secret key).
pub const ARTIFACT_LINK_KEY: &str = "stevedore artifact links v1";

pub fn is_postgres(db: &str) -> bool {
    matches!(
        stevedore_store::StoreUrl::parse(db),
        stevedore_store::StoreUrl::Postgres(_)
    )
}

/// The file of a SQLite store named by `--db` (a path or `sqlite://path`).
pub fn store_path(db: &str) -> &Path {
    match stevedore_store::StoreUrl::parse(db) {
        stevedore_store::StoreUrl::Sqlite(path) => path,
        stevedore_store::StoreUrl::Postgres(_) => Path::new(db),
    }
}

/// A file or folder that belongs to the store: beside a SQLite store (`stevedore.db` →
/// `stevedore.<extension>`), in the current folder for a PostgreSQL one.
fn beside_store(db: &str, extension: &str) -> PathBuf {
    if is_postgres(db) {
        return PathBuf::from(format!("stevedore.{extension}"));
    }
    store_path(db).with_extension(extension)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn global(args: &[&str]) -> Global {
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            global: Global,
        }
        let mut all = vec!["stevedore"];
        all.extend(args);
        Probe::try_parse_from(all).unwrap().global
    }

    #[test]
    fn the_environment_wins_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stevedore.yaml");
        std::fs::write(&file, "db: from-file.db\nlease: 45s\nmax_line_bytes: 8Ki\npids_limit: 0\ndefault_memory: none\n").unwrap();
        let path = file.display().to_string();
        let environment = |name: &str| match name {
            "STEVEDORE_LEASE" => Some("60s".to_owned()),
            _ => None,
        };
        let settings =
            Settings::resolve(&global(&["--config", &path]), None, &environment).unwrap();
        assert_eq!(settings.db, "from-file.db");
        assert_eq!(settings.lease, Some(Duration::from_secs(60)));
        assert_eq!(settings.limits.max_line_bytes, 8192);
        assert_eq!(
            settings.try_defaults,
            TryDefaults {
                pids_limit: None,
                memory_bytes: None
            }
        );
        assert_eq!(settings.secret_key.file, PathBuf::from("from-file.key"));
        assert_eq!(settings.process_dir, PathBuf::from("from-file.runtime"));
        // The command line wins over both.
        let settings = Settings::resolve(
            &global(&["--config", &path, "--db", "cli.db"]),
            None,
            &environment,
        )
        .unwrap();
        assert_eq!(settings.db, "cli.db");
        // Defaults.
        let settings = Settings::resolve(&global(&[]), None, &|_| None).unwrap();
        assert_eq!(settings.db, "stevedore.db");
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.limits, TryLimits::default());
        assert_eq!(settings.try_defaults.pids_limit, Some(1024));
        assert_eq!(settings.try_defaults.memory_bytes, Some(1 << 30));
        assert_eq!(settings.process_backend, None);
    }

    #[test]
    fn a_bad_value_names_the_setting_and_its_variable() {
        let environment = |name: &str| match name {
            "STEVEDORE_MAX_LINE_BYTES" => Some("10Gi".to_owned()),
            _ => None,
        };
        let error = Settings::resolve(&global(&[]), None, &environment).unwrap_err();
        assert!(
            error.contains("`max_line_bytes` (STEVEDORE_MAX_LINE_BYTES)"),
            "{error}"
        );
        let environment = |name: &str| match name {
            "STEVEDORE_PROCESS_BACKEND" => Some("maybe".to_owned()),
            _ => None,
        };
        let error = Settings::resolve(&global(&[]), None, &environment).unwrap_err();
        assert!(error.contains("`process_backend`"), "{error}");
    }

    /// Security review, finding 1: the config file's settings were exported as environment
    /// variables, which every `process` try inherited.
    #[test]
    fn the_config_file_is_never_exported_to_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stevedore.yaml");
        std::fs::write(&file, "nomad_addr: http://10.0.0.1:4646\nnomad_token: file-token-never-exported\nsecret_key_file: /etc/stevedore/key\n").unwrap();
        let path = file.display().to_string();
        let settings = Settings::resolve(&global(&["--config", &path]), None, &|_| None).unwrap();
        assert_eq!(
            settings.nomad.as_ref().unwrap().token.as_deref(),
            Some("file-token-never-exported")
        );
        assert!(std::env::vars().all(|(_, value)| value != "file-token-never-exported"));
        assert!(std::env::var_os("NOMAD_TOKEN").is_none());
    }
}
