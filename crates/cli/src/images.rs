//! `stevedore images build`: builds every integration image under `images/` and tags it
//! `stevedore/<folder>:<VERSION>`.
//!
//! A folder may hold a `prepare` script, run first (it builds a static binary into the
//! build context, or makes a base image from a Debian root filesystem itself). With a
//! `Dockerfile`, the folder is then built by the engine. An image whose build context has
//! not changed since it was built (same content hash, stored as a label) is not rebuilt.
//! Images built `FROM` another image of the folder are built after it.
//!
//! Why one file of a little over 600 lines: it is one command, read top to bottom (find the
//! folders, order them by `FROM`, hash, prepare, build); its parts are used nowhere else.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use stevedore_backend::docker::registry_credentials;
use stevedore_backend::{DockerBackend, RegistryAuth};
use stevedore_domain::image::ImageRef;

pub(crate) const HASH_LABEL: &str = "io.stevedore.context-hash";
const NAMESPACE: &str = "stevedore";

struct ImageDir {
    name: String,
    version: String,
    path: PathBuf,
    /// Images of the same folder this one is built from.
    bases: Vec<String>,
}

impl ImageDir {
    fn tag(&self) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, self.version)
    }
}

fn discover(dir: &Path) -> anyhow::Result<Vec<ImageDir>> {
    let mut images = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = std::fs::canonicalize(entry?.path())?;
        let version_file = path.join("VERSION");
        if !version_file.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let version = std::fs::read_to_string(&version_file)?.trim().to_owned();
        if version.is_empty() {
            bail!("{} is empty", version_file.display());
        }
        let mut bases = Vec::new();
        if path.join("connector.yaml").is_file() {
            bases.push(crate::connectors::BASE_NAME.to_owned());
        }
        if let Ok(dockerfile) = std::fs::read_to_string(path.join("Dockerfile")) {
            for line in dockerfile.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() >= 2 && words[0].eq_ignore_ascii_case("FROM") {
                    if let Some(rest) = words[1].strip_prefix(&format!("{NAMESPACE}/")) {
                        bases.push(rest.split(':').next().unwrap_or(rest).to_owned());
                    }
                }
            }
        }
        images.push(ImageDir {
            name,
            version,
            path,
            bases,
        });
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

/// Orders images so each comes after the images it is built from.
fn build_order(images: Vec<ImageDir>) -> anyhow::Result<Vec<ImageDir>> {
    let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
    let mut pending = images;
    let mut ordered: Vec<ImageDir> = Vec::new();
    while !pending.is_empty() {
        let ready = pending.iter().position(|image| {
            image
                .bases
                .iter()
                .all(|base| !names.contains(base) || ordered.iter().any(|o| &o.name == base))
        });
        match ready {
            Some(index) => ordered.push(pending.remove(index)),
            None => bail!(
                "images are built from each other in a cycle: {}",
                pending
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(ordered)
}

/// Every file of the build context, in path order (the `.build` output included).
fn context_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            let relative = path.strip_prefix(dir)?;
            // Sources of a Rust image live beside its Dockerfile but are not its context.
            if relative.starts_with("src")
                || relative == Path::new("Cargo.toml")
                || relative == Path::new("prepare")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn context_hash(dir: &Path, files: &[PathBuf]) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.strip_prefix(dir)?.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(file)?);
        hasher.update([0]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn context_tar(dir: &Path, files: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(true);
    // The engine's tar reader rejects GNU sparse entries (a freshly linked binary can be
    // sparse on disk).
    archive.sparse(false);
    for file in files {
        archive.append_path_with_name(file, file.strip_prefix(dir)?)?;
    }
    Ok(archive.into_inner()?)
}

async fn run_prepare(image: &ImageDir, bar: &ProgressBar) -> anyhow::Result<()> {
    let script = image.path.join("prepare");
    if !script.is_file() {
        return Ok(());
    }
    bar.set_message("preparing");
    let output = tokio::process::Command::new(&script)
        .current_dir(&image.path)
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Where the image's source lives and at which revision: the repository's `origin` (or its
/// folder) and commit, with `-dirty` when the image's folder has uncommitted changes.
async fn provenance(dir: &Path) -> (String, String) {
    let git = |args: &[&str]| {
        let mut command = tokio::process::Command::new("git");
        command.args(args).current_dir(dir);
        async move {
            let output = command.output().await.ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
    };
    let root = git(&["rev-parse", "--show-toplevel"]).await;
    let source = match git(&["config", "--get", "remote.origin.url"]).await {
        Some(url) if !url.is_empty() => url,
        _ => root
            .map(|r| format!("file://{r}"))
            .unwrap_or_else(|| format!("file://{}", dir.display())),
    };
    let mut revision = git(&["rev-parse", "HEAD"])
        .await
        .unwrap_or_else(|| "unknown".to_owned());
    if git(&["status", "--porcelain", "--", "."])
        .await
        .is_some_and(|changes| !changes.is_empty())
    {
        revision.push_str("-dirty");
    }
    (source, revision)
}

/// Where `images build --push` pushes, and with which credentials.
pub struct PushTo {
    /// A registry address such as `127.0.0.1:5000`.
    pub registry: String,
    pub auth: Option<RegistryAuth>,
}

/// Tags `image` as `registry/image` and pushes it; returns the pushed reference.
pub(crate) async fn push(
    docker: &bollard::Docker,
    tag: &str,
    to: &PushTo,
    bar: &ProgressBar,
) -> anyhow::Result<String> {
    let registry = to.registry.as_str();
    let (repository, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let target = format!("{registry}/{repository}");
    docker
        .tag_image(
            tag,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::default()
                    .repo(&target)
                    .tag(version)
                    .build(),
            ),
        )
        .await
        .with_context(|| format!("cannot tag {tag} as {target}:{version}"))?;
    bar.set_message(format!("pushing to {registry}"));
    let options = bollard::query_parameters::PushImageOptionsBuilder::default()
        .tag(version)
        .build();
    let image = ImageRef::parse(&format!("{target}:{version}")).map_err(|e| anyhow!(e))?;
    let credentials = registry_credentials(&image, to.auth.as_ref());
    let mut stream = docker.push_image(&target, Some(options), Some(credentials));
    while let Some(step) = stream.next().await {
        let step = step.with_context(|| format!("cannot push {target}:{version}"))?;
        if let Some(detail) = step.error_detail {
            bail!(
                "cannot push {target}:{version}: {}",
                detail.message.unwrap_or_default()
            );
        }
    }
    Ok(format!("{target}:{version}"))
}

/// Builds `tag` from a build context (a tar), with `labels`; the engine's transcript is shown
/// on the bar and kept for the error when the build fails.
pub(crate) async fn engine_build(
    docker: &bollard::Docker,
    tag: &str,
    context: Vec<u8>,
    labels: &HashMap<String, String>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let options = BuildImageOptionsBuilder::default()
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(labels)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut transcript = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item
            .map_err(|error| anyhow::anyhow!("building {tag}: {error}\n{}", transcript.join("")))?;
        if let Some(detail) = info.error_detail {
            bail!(
                "building {tag}: {}\n{}",
                detail.message.unwrap_or_default(),
                transcript.join("")
            );
        }
        if let Some(text) = info.stream {
            if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                bar.set_message(line.chars().take(70).collect::<String>());
            }
            transcript.push(text);
        }
    }
    docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("the engine did not tag {tag}"))?;
    Ok(())
}

/// Builds one image; returns what happened ("built", "up to date", "ready").
async fn build_one(
    docker: &bollard::Docker,
    image: &ImageDir,
    bar: &ProgressBar,
) -> anyhow::Result<&'static str> {
    if image.path.join("connector.yaml").is_file() {
        let declaration = crate::connectors::Declaration::from_folder(&image.path)?;
        let shim = crate::connectors::shim_path(None)?;
        return crate::connectors::build_wrapped(docker, &declaration, &shim, bar).await;
    }
    run_prepare(image, bar).await?;
    let tag = image.tag();
    if !image.path.join("Dockerfile").is_file() {
        docker
            .inspect_image(&tag)
            .await
            .with_context(|| format!("{}/prepare did not make {tag}", image.path.display()))?;
        return Ok("ready");
    }
    let files = context_files(&image.path)?;
    let hash = context_hash(&image.path, &files)?;
    if let Ok(existing) = docker.inspect_image(&tag).await {
        let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
        // Same context, and built by a version of this command that labels provenance.
        if labels.get(HASH_LABEL) == Some(&hash)
            && labels.contains_key("org.opencontainers.image.revision")
        {
            return Ok("up to date");
        }
    }
    bar.set_message("building");
    let (source, revision) = provenance(&image.path).await;
    let labels = HashMap::from([
        (HASH_LABEL.to_owned(), hash),
        ("org.opencontainers.image.source".to_owned(), source),
        ("org.opencontainers.image.revision".to_owned(), revision),
        (
            "org.opencontainers.image.version".to_owned(),
            image.version.clone(),
        ),
        (
            "org.opencontainers.image.title".to_owned(),
            image.name.clone(),
        ),
    ]);
    let body = context_tar(&image.path, &files)?;
    engine_build(docker, &tag, body, &labels, bar).await?;
    Ok("built")
}

/// Builds the images; with `push_to`, pushes those built from a Dockerfile to that registry.
/// Base images made by `prepare` alone stay local.
pub async fn build(
    backend: &DockerBackend,
    dir: &Path,
    names: &[String],
    push_to: Option<&PushTo>,
) -> anyhow::Result<ExitCode> {
    let docker = &backend.client()?;
    docker
        .ping()
        .await
        .with_context(|| format!("cannot reach the Docker engine at {}", backend.endpoint()))?;
    let mut images = build_order(discover(dir)?)?;
    if !names.is_empty() {
        let known: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
        for name in names {
            if !known.contains(name) {
                bail!(
                    "no image `{name}` under {}; there are: {}",
                    dir.display(),
                    known.join(", ")
                );
            }
        }
        images.retain(|image| names.contains(&image.name));
    }
    let style = ProgressStyle::with_template("{spinner} {prefix:<32} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    for image in &images {
        let bar = ProgressBar::new_spinner()
            .with_style(style.clone())
            .with_prefix(image.tag());
        bar.enable_steady_tick(Duration::from_millis(120));
        let started = Instant::now();
        let built = async {
            let outcome = build_one(docker, image, &bar).await?;
            let pushed = match push_to {
                Some(to)
                    if image.path.join("Dockerfile").is_file()
                        || image.path.join("connector.yaml").is_file() =>
                {
                    Some(push(docker, &image.tag(), to, &bar).await?)
                }
                _ => None,
            };
            anyhow::Ok((outcome, pushed))
        };
        match built.await {
            Ok((outcome, pushed)) => {
                bar.finish_and_clear();
                let pushed = pushed
                    .map(|target| format!(", pushed {target}"))
                    .unwrap_or_default();
                println!(
                    "{:<34} {outcome}{pushed} ({:.1}s)",
                    image.tag(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(error) => {
                bar.finish_and_clear();
                println!("{:<34} FAILED", image.tag());
                return Err(error);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stevedore images inspect IMAGE`: identity, labels, and what the image's `spec` says.
pub async fn inspect(
    backend: &DockerBackend,
    reference: &str,
    timeout: Duration,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let docker = &backend.client()?;
    let image = docker.inspect_image(reference).await.with_context(|| {
        format!("no image `{reference}` on the engine (pull or build it first)")
    })?;
    let labels = image
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let spec = run_spec(docker, reference, timeout).await;
    let value = serde_json::json!({
        "image": reference,
        "id": image.id,
        "repo_tags": image.repo_tags,
        "repo_digests": image.repo_digests,
        "created": image.created,
        "labels": labels,
        "spec": spec.as_ref().ok(),
        "spec_error": spec.as_ref().err().map(|e| format!("{e:#}")),
    });
    if json_output {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("image:    {reference}");
    println!("id:       {}", image.id.unwrap_or_default());
    for digest in image.repo_digests.unwrap_or_default() {
        println!("digest:   {digest}");
    }
    let mut labels: Vec<_> = labels.into_iter().collect();
    labels.sort();
    for (key, value) in labels {
        println!("label:    {key}={value}");
    }
    match spec {
        Ok(spec) => println!("spec:     {spec}"),
        Err(error) => println!("spec:     unavailable ({error:#})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the image's `spec` command and returns the JSON line it printed.
async fn run_spec(
    docker: &bollard::Docker,
    reference: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let (code, stdout, _) = run_once(
        docker,
        reference,
        vec!["spec".to_owned()],
        &[],
        false,
        timeout,
    )
    .await?;
    if code != 0 {
        bail!("`spec` exited with {code}");
    }
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["type"] == "spec")
        .ok_or_else(|| anyhow::anyhow!("`spec` printed no spec message"))
}

/// The most of a `spec` or `check` call's stdout and of its stderr that is kept; the rest
/// is read and dropped, so an image that prints without end cannot grow the CLI's memory.
const MAX_CALL_OUTPUT: usize = 1024 * 1024;

/// Runs one command of the image in a container removed afterwards: its exit code, stdout
/// and stderr. Without `network` the container has none. A command still running after
/// `timeout` (an entrypoint that ignores `spec` and starts a server, say) is an error naming
/// the command, and its container is removed all the same.
async fn run_once(
    docker: &bollard::Docker,
    reference: &str,
    cmd: Vec<String>,
    env: &[String],
    network: bool,
    timeout: Duration,
) -> anyhow::Result<(i64, String, String)> {
    let command = cmd.first().cloned().unwrap_or_default();
    use bollard::query_parameters::{
        AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
    };
    let body = bollard::models::ContainerCreateBody {
        image: Some(reference.to_owned()),
        cmd: Some(cmd),
        env: Some(env.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(bollard::models::HostConfig {
            network_mode: (!network).then(|| "none".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None, body)
        .await
        .context("cannot create the container")?;
    let id = created.id;
    let result = async {
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut output = docker.attach_container(&id, Some(attach)).await?.output;
        docker.start_container(&id, None).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let keep = |buffer: &mut Vec<u8>, message: &[u8]| {
            let room = MAX_CALL_OUTPUT.saturating_sub(buffer.len());
            buffer.extend_from_slice(&message[..message.len().min(room)]);
        };
        while let Some(chunk) = output.next().await {
            match chunk? {
                bollard::container::LogOutput::StdOut { message } => keep(&mut stdout, &message),
                bollard::container::LogOutput::StdErr { message } => keep(&mut stderr, &message),
                _ => {}
            }
        }
        let mut wait = docker.wait_container(
            &id,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        let code = match wait.next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("the engine did not report the container's exit"),
        };
        anyhow::Ok((
            code,
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        ))
    };
    let result = match tokio::time::timeout(timeout, result).await {
        Ok(result) => result.with_context(|| format!("cannot run `{command}`")),
        Err(_) => Err(anyhow::anyhow!(
            "`{command}` did not finish within {}: the image does not implement `{command}` \
             (its entrypoint may start a server or wait for input); its container was removed",
            stevedore_domain::duration::format_duration(timeout)
        )),
    };
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    result
}

/// `stevedore images check IMAGE [--connection NAME]... [-- ARGS]`: runs the image's `check`
/// with the connections' variables in its environment and the task's args, and prints its
/// verdict (connection values masked). Exit code 0 when the check passed.
pub async fn check(
    backend: &DockerBackend,
    reference: &str,
    connections: BTreeMap<String, String>,
    args: &[String],
    timeout: Duration,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let docker = &backend.client()?;
    docker
        .inspect_image(reference)
        .await
        .with_context(|| format!("no image `{reference}` on this engine"))?;
    let env: Vec<String> = connections
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let masker = stevedore_domain::mask::Masker::new(connections.values());
    let mask = |text: &str| masker.mask(text);
    let mut cmd = vec!["check".to_owned(), "--".to_owned()];
    cmd.extend(args.iter().cloned());
    let (code, stdout, stderr) = run_once(docker, reference, cmd, &env, true, timeout).await?;
    let (stdout, stderr) = (mask(&stdout), mask(&stderr));
    let verdict = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["type"] == "check");
    if json_output {
        println!(
            "{}",
            serde_json::json!({
                "image": reference,
                "exit_code": code,
                "ok": code == 0,
                "message": verdict.as_ref().map(|v| v["message"].clone()),
            })
        );
    } else {
        for line in stdout.lines().chain(stderr.lines()) {
            let is_verdict = serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|value| value["type"] == "check");
            if !is_verdict {
                println!("  {line}");
            }
        }
        let message = verdict
            .as_ref()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "printed no check message".to_owned());
        let verdict = if code == 0 { "ok" } else { "FAILED" };
        println!("check {verdict}: {message}");
    }
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
