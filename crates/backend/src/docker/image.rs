//! The try's image: resolved against the engine's images and pulled by the task's
//! `pull_policy`, with the registry credentials of its `registry_connection`.

#[allow(unused_imports)]
use super::*;

impl DockerBackend {
    /// Makes the image present per the pull policy; returns its digest (registry digest
    /// when it has one, else the local image id).
    pub(super) async fn resolve_image(
        &self,
        docker: &Docker,
        image: &ImageRef,
        policy: PullPolicy,
        auth: Option<&RegistryAuth>,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<String, ImageProblem> {
        let reference = image.to_string();
        let present = match docker.inspect_image(&reference).await {
            Ok(inspect) => Some(inspect),
            Err(error) if status_code(&error) == Some(404) => None,
            Err(error) if is_connection_error(&error) => {
                return Err(ImageProblem::Unavailable(
                    self.unavailable(&error).to_string(),
                ))
            }
            Err(error) => {
                return Err(ImageProblem::Image(format!(
                    "cannot inspect image `{reference}`: {}",
                    engine_message(&error)
                )))
            }
        };
        let must_pull = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => present.is_none(),
            PullPolicy::Never => false,
        };
        let inspect = if must_pull {
            self.pull(docker, image, auth, events).await?;
            docker.inspect_image(&reference).await.map_err(|error| {
                ImageProblem::Image(format!(
                    "image `{reference}` is missing after its pull: {}",
                    engine_message(&error)
                ))
            })?
        } else {
            present.ok_or_else(|| {
                ImageProblem::Image(format!(
                    "image `{reference}` is not present and its pull_policy is never"
                ))
            })?
        };
        if let Some(digest) = &image.digest {
            return Ok(digest.clone());
        }
        let name = image.name();
        let repo_digest = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find_map(|entry| {
                let (repo, digest) = entry.split_once('@')?;
                (repo == name).then(|| digest.to_owned())
            });
        Ok(repo_digest.or(inspect.id).unwrap_or_default())
    }

    pub(super) async fn pull(
        &self,
        docker: &Docker,
        image: &ImageRef,
        auth: Option<&RegistryAuth>,
        events: &mpsc::Sender<TryEvent>,
    ) -> Result<(), ImageProblem> {
        let reference = image.to_string();
        let tag = image
            .digest
            .clone()
            .unwrap_or_else(|| image.tag_or_latest().to_owned());
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image.name())
            .tag(&tag)
            .build();
        let credentials = Some(registry_credentials(image, auth));
        let mut stream = docker.create_image(Some(options), None, credentials);
        let mut last_status = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let Some(status) = info.status else {
                        continue;
                    };
                    // One event per step of each layer, not per byte of progress.
                    let status = match info.id {
                        Some(layer) if !status.contains(&layer) => format!("{layer}: {status}"),
                        _ => status,
                    };
                    if status != last_status {
                        last_status = status.clone();
                        let _ = events
                            .send(TryEvent::Pulling {
                                image: reference.clone(),
                                status,
                            })
                            .await;
                    }
                }
                Err(error) if is_connection_error(&error) => {
                    return Err(ImageProblem::Unavailable(
                        self.unavailable(&error).to_string(),
                    ))
                }
                Err(error) => {
                    return Err(ImageProblem::Image(format!(
                        "cannot pull image `{reference}`: {}",
                        engine_message(&error)
                    )))
                }
            }
        }
        Ok(())
    }
}
