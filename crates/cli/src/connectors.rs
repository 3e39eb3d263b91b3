//! Wrapping published Singer and Airbyte connectors as Stevedore integrations, unmodified:
//! `stevedore images wrap KIND PACKAGE==VERSION`, or a folder under `images/` holding a
//! `connector.yaml` that `images build` builds like any other image.
//!
//! The image: the Debian Python base (`stevedore/debian-python-venv`), the package installed
//! into a virtualenv from wheels fetched on this host by pip (the package registry is the
//! only network the wrap needs; nothing is downloaded inside the build), and
//! `stevedore-shim` as its entrypoint, which speaks the entrypoint contract for the
//! connector (docs/connectors.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stevedore_backend::DockerBackend;

use crate::images::{engine_build, HASH_LABEL};

/// The base every wrapped connector is built on (`images/debian-python-venv`).
pub const BASE_IMAGE: &str = "stevedore/debian-python-venv:bookworm-1";
pub const BASE_NAME: &str = "debian-python-venv";
const KINDS: [&str; 4] = [
    "singer-tap",
    "singer-target",
    "airbyte-source",
    "airbyte-destination",
];

/// What to wrap: `connector.yaml` in an image folder, or `images wrap`'s arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    pub kind: String,
    pub package: String,
    pub version: String,
    /// The image's name: `stevedore/<name>:<version>`.
    pub name: String,
    /// The connector's executable in the virtualenv (a console script of the package).
    pub command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorFile {
    kind: String,
    package: String,
    #[serde(default)]
    command: Option<String>,
}

impl Declaration {
    /// `kind`, `PACKAGE==VERSION` (pinned: an image's version is the package's), the image
    /// name (default: the package's) and the executable (default: the package's name).
    pub fn new(
        kind: &str,
        pinned: &str,
        name: Option<&str>,
        command: Option<&str>,
    ) -> anyhow::Result<Declaration> {
        if !KINDS.contains(&kind) {
            bail!("kind `{kind}` is not one of {}", KINDS.join(", "));
        }
        let Some((package, version)) = pinned.split_once("==") else {
            bail!("`{pinned}` is not PACKAGE==VERSION: a wrapped connector is pinned to one version, which its image carries");
        };
        let valid_package = !package.is_empty()
            && package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_package {
            bail!("`{package}` is not a Python package name");
        }
        let valid_version = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
        if !valid_version {
            bail!("`{version}` is not a version (PACKAGE==1.2.3)");
        }
        let name = name
            .unwrap_or(package)
            .to_ascii_lowercase()
            .replace('_', "-");
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        {
            bail!("`{name}` is not an image name (a-z, 0-9, - and .)");
        }
        let command = command.unwrap_or(package).to_owned();
        if command.contains('/') || command.is_empty() {
            bail!("the command `{command}` is not an executable's name");
        }
        Ok(Declaration {
            kind: kind.to_owned(),
            package: package.to_owned(),
            version: version.to_owned(),
            name,
            command,
        })
    }

    /// An image folder's `connector.yaml`; the folder's `VERSION` must be the package's.
    pub fn from_folder(dir: &Path) -> anyhow::Result<Declaration> {
        let file = dir.join("connector.yaml");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed: ConnectorFile = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let declaration = Declaration::new(
            &parsed.kind,
            &parsed.package,
            Some(name),
            parsed.command.as_deref(),
        )
        .with_context(|| format!("{}", file.display()))?;
        let version = std::fs::read_to_string(dir.join("VERSION"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if version != declaration.version {
            bail!(
                "{}: VERSION says `{version}` but the package is pinned to `{}`; they must agree",
                dir.display(),
                declaration.version
            );
        }
        Ok(declaration)
    }

    pub fn tag(&self) -> String {
        format!("stevedore/{}:{}", self.name, self.version)
    }

    pub fn protocol(&self) -> &'static str {
        if self.kind.starts_with("singer") {
            "singer"
        } else {
            "airbyte"
        }
    }

    pub fn dockerfile(&self) -> String {
        format!(
            "# Made by `stevedore images wrap` (docs/connectors.md).\n\
             FROM {BASE_IMAGE}\n\
             COPY wheels /tmp/wheels\n\
             RUN python3 -m venv /opt/connector \\\n \
             && /opt/connector/bin/pip install --quiet --no-index --no-cache-dir --find-links /tmp/wheels '{package}=={version}' \\\n \
             && rm -rf /tmp/wheels \\\n \
             && test -x /opt/connector/bin/{command}\n\
             COPY stevedore-shim /usr/local/bin/stevedore-shim\n\
             ENV STEVEDORE_CONNECTOR_KIND={kind} \\\n    \
             STEVEDORE_CONNECTOR_COMMAND=/opt/connector/bin/{command} \\\n    \
             STEVEDORE_CONNECTOR_PACKAGE={package} \\\n    \
             STEVEDORE_CONNECTOR_VERSION={version}\n\
             ENTRYPOINT [\"/usr/local/bin/stevedore-shim\"]\n",
            package = self.package,
            version = self.version,
            command = self.command,
            kind = self.kind,
        )
    }

    /// The image's labels: OCI's, and the connector's package, version and protocol.
    fn labels(&self, hash: String) -> HashMap<String, String> {
        HashMap::from([
            (HASH_LABEL.to_owned(), hash),
            (
                "org.opencontainers.image.title".to_owned(),
                self.name.clone(),
            ),
            (
                "org.opencontainers.image.version".to_owned(),
                self.version.clone(),
            ),
            (
                "org.opencontainers.image.description".to_owned(),
                format!(
                    "{} {} ({}) wrapped for Stevedore",
                    self.package, self.version, self.kind
                ),
            ),
            ("io.stevedore.connector.kind".to_owned(), self.kind.clone()),
            (
                "io.stevedore.connector.package".to_owned(),
                self.package.clone(),
            ),
            (
                "io.stevedore.connector.version".to_owned(),
                self.version.clone(),
            ),
            (
                "io.stevedore.connector.protocol".to_owned(),
                self.protocol().to_owned(),
            ),
        ])
    }
}

/// The shim copied into wrapped images: `--shim`, else `STEVEDORE_SHIM`, else a static
/// release build of this checkout (`target/x86_64-unknown-linux-gnu/release/stevedore-shim`,
/// which `scripts/setup.sh` makes), else `stevedore-shim` beside this executable.
pub fn shim_path(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit.or_else(|| std::env::var_os("STEVEDORE_SHIM").map(PathBuf::from)) {
        if !path.is_file() {
            bail!("the shim {} is missing", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("stevedore-shim");
    let static_build = exe
        .parent()
        .and_then(|dir| dir.parent())
        .map(|target| target.join("x86_64-unknown-linux-gnu/release/stevedore-shim"));
    match static_build.into_iter().chain([beside.clone()]).find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!(
            "the shim is missing: build it (scripts/setup.sh builds it static; or `cargo build -p stevedore-shim`, which puts it at {}) or give --shim PATH",
            beside.display()
        ),
    }
}

/// Fetches the package and everything it needs as wheels into `dir` (pip on this host: the
/// registry is reached from here, never from inside the build).
async fn fetch_wheels(declaration: &Declaration, dir: &Path) -> anyhow::Result<()> {
    let python = std::env::var("STEVEDORE_WRAP_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = tokio::process::Command::new(&python)
        .args(["-m", "pip", "wheel", "--quiet", "--wheel-dir"])
        .arg(dir)
        .arg(format!("{}=={}", declaration.package, declaration.version))
        .output()
        .await
        .with_context(|| format!("cannot run {python} -m pip (set STEVEDORE_WRAP_PYTHON)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!(
            "pip could not fetch {}=={}:\n{}",
            declaration.package,
            declaration.version,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Builds the wrapped image unless one with the same declaration and shim is there;
/// returns what happened.
pub async fn build_wrapped(
    docker: &bollard::Docker,
    declaration: &Declaration,
    shim: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<&'static str> {
    docker.inspect_image(BASE_IMAGE).await.with_context(|| {
        format!(
            "the base image {BASE_IMAGE} is missing: `stevedore images build {BASE_NAME}` makes it"
        )
    })?;
    let shim_bytes =
        std::fs::read(shim).with_context(|| format!("cannot read {}", shim.display()))?;
    let dockerfile = declaration.dockerfile();
    let mut hasher = Sha256::new();
    hasher.update(dockerfile.as_bytes());
    hasher.update(&shim_bytes);
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = declaration.tag();
    if let Ok(existing) = docker.inspect_image(&tag).await {
        let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(HASH_LABEL) == Some(&hash) {
            return Ok("up to date");
        }
    }
    let work = tempfile_dir()?;
    let wheels = work.path().join("wheels");
    std::fs::create_dir_all(&wheels)?;
    bar.set_message(format!(
        "fetching {}=={} with pip",
        declaration.package, declaration.version
    ));
    fetch_wheels(declaration, &wheels).await?;
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(true);
    archive.sparse(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    let mut header = tar::Header::new_gnu();
    header.set_size(shim_bytes.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    archive.append_data(&mut header, "stevedore-shim", shim_bytes.as_slice())?;
    let mut wheel_files: Vec<PathBuf> = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    wheel_files.sort();
    for file in &wheel_files {
        let name = format!(
            "wheels/{}",
            file.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        );
        archive.append_path_with_name(file, name)?;
    }
    let context = archive.into_inner()?;
    bar.set_message("building");
    engine_build(docker, &tag, context, &declaration.labels(hash), bar).await?;
    Ok("built")
}

/// A scratch folder removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<ScratchDir> {
    let dir = std::env::temp_dir().join(format!(
        "stevedore-wrap-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(ScratchDir(dir))
}

/// `stevedore images wrap KIND PACKAGE==VERSION [--name NAME] [--command CMD]`.
pub async fn wrap(
    backend: &DockerBackend,
    declaration: &Declaration,
    shim: &Path,
    push_to: Option<&crate::images::PushTo>,
) -> anyhow::Result<ExitCode> {
    let docker = &backend.client()?;
    let bar = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {prefix:<32} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_prefix(declaration.tag());
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let outcome = build_wrapped(docker, declaration, shim, &bar).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            bar.finish_and_clear();
            return Err(error);
        }
    };
    let pushed = match push_to {
        Some(to) => Some(crate::images::push(docker, &declaration.tag(), to, &bar).await?),
        None => None,
    };
    bar.finish_and_clear();
    println!(
        "{:<34} {outcome}{} ({:.1}s)",
        declaration.tag(),
        pushed.map(|p| format!(", pushed {p}")).unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_is_pinned_and_named() {
        let tap = Declaration::new("singer-tap", "tap-rest-api-msdk==1.4.2", None, None).unwrap();
        assert_eq!(tap.tag(), "stevedore/tap-rest-api-msdk:1.4.2");
        assert_eq!(tap.command, "tap-rest-api-msdk");
        assert_eq!(tap.protocol(), "singer");
        let dockerfile = tap.dockerfile();
        assert!(
            dockerfile.contains("pip install --quiet --no-index"),
            "{dockerfile}"
        );
        assert!(dockerfile.contains("'tap-rest-api-msdk==1.4.2'"));
        assert!(
            dockerfile.contains("STEVEDORE_CONNECTOR_COMMAND=/opt/connector/bin/tap-rest-api-msdk")
        );
        let named = Declaration::new(
            "airbyte-source",
            "airbyte-source-declarative-manifest==6.0.0",
            Some("source-demo"),
            Some("source-declarative-manifest"),
        )
        .unwrap();
        assert_eq!(named.tag(), "stevedore/source-demo:6.0.0");
        for (kind, pinned, says) in [
            ("singer", "x==1", "is not one of"),
            ("singer-tap", "tap-x", "is not PACKAGE==VERSION"),
            ("singer-tap", "tap x==1", "not a Python package name"),
            ("singer-tap", "tap-x==1; rm", "is not a version"),
        ] {
            let error = Declaration::new(kind, pinned, None, None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}
