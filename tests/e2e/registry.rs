//! End-to-end: images pulled by tag from a real registry, with the digest recorded.

use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use stevedore_backend::DockerBackend;
use stevedore_domain::state::RunState;
use stevedore_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_by_tag_and_its_registry_digest_recorded() {
    require_images().await;
    let registry = Registry::start();
    let docker = DockerBackend::from_env().unwrap().client().unwrap();
    let repository = format!("{}/stevedore/synth", registry.address);
    let reference = format!("{repository}:0.1.0");
    docker
        .tag_image(
            SYNTH,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(&repository)
                    .tag("0.1.0")
                    .build(),
            ),
        )
        .await
        .unwrap();
    let mut push = docker.push_image(
        &repository,
        Some(PushImageOptionsBuilder::default().tag("0.1.0").build()),
        Some(DockerCredentials::default()),
    );
    while let Some(step) = push.next().await {
        step.expect("push to the test registry");
    }
    let pushed = docker.inspect_image(&reference).await.unwrap();
    let digest = pushed
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&format!("{repository}@")).map(str::to_owned))
        .expect("the push gave the image a registry digest");
    // Untag, so the engine has to pull it by tag.
    docker
        .remove_image(
            &reference,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await
        .unwrap();
    assert!(docker.inspect_image(&reference).await.is_err());

    let job = format!("id: pulled\ntasks:\n  - id: extract\n    image: {reference}\n    args: [extract, --records, 7]\n");
    let never = format!("id: never_pulled\ntasks:\n  - id: t\n    image: {}/stevedore/absent:1.0\n    pull_policy: never\n", registry.address);
    let harness = Harness::start(&[("pulled.yaml", &job), ("never.yaml", &never)]).await;
    let run = harness.trigger("pulled").await;
    let run = harness
        .wait_run(&run.run_id, Duration::from_secs(120))
        .await;
    assert_eq!(run.state, RunState::Success);
    let attempt = &harness.tries(&run.run_id, "extract").await[0];
    assert_eq!(attempt.image_ref, reference);
    assert_eq!(attempt.image_digest.as_deref(), Some(digest.as_str()));
    let lines = harness.log_lines(attempt).await;
    assert!(
        lines.iter().any(|(stream, text)| stream == "log"
            && text.starts_with(&format!("info: pulling {reference}: "))),
        "{lines:?}"
    );
    assert!(
        docker.inspect_image(&reference).await.is_ok(),
        "pulled image is present"
    );

    let run = harness.trigger("never_pulled").await;
    let run = harness.wait_run(&run.run_id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Failed);
    let reason = harness.tries(&run.run_id, "t").await[0]
        .failure_reason
        .clone()
        .unwrap();
    assert!(
        reason.contains("stevedore/absent:1.0") && reason.contains("pull_policy is never"),
        "{reason}"
    );
    harness.stop().await;
    let _ = docker
        .remove_image(
            &reference,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await;
}

/// A new version under a new tag is picked up by editing the job's tag, while a task pinned
/// by digest keeps running exactly the old image; every try records the digest it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tag_is_picked_up_by_editing_the_job_and_a_digest_pin_holds() {
    require_images().await;
    let registry = Registry::start();
    let docker = DockerBackend::from_env().unwrap().client().unwrap();
    let repository = format!("{}/stevedore/synth", registry.address);
    let old = push_image(&docker, SYNTH, &repository, "0.1.0").await;

    // Version 0.2.0: the same program under a new label, so a new image and digest.
    let mut context = tar::Builder::new(Vec::new());
    let dockerfile = format!("FROM {SYNTH}\nLABEL org.opencontainers.image.version=0.2.0\n");
    let mut header = tar::Header::new_gnu();
    header.set_path("Dockerfile").unwrap();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    context.append(&header, dockerfile.as_bytes()).unwrap();
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .t("stevedore-test/synth-next:0.2.0")
        .rm(true)
        .build();
    let mut build = docker.build_image(
        options,
        None,
        Some(bollard::body_full(context.into_inner().unwrap().into())),
    );
    while let Some(step) = build.next().await {
        step.expect("build the new version");
    }
    let new = push_image(
        &docker,
        "stevedore-test/synth-next:0.2.0",
        &repository,
        "0.2.0",
    )
    .await;
    assert_ne!(old, new);

    let tagged = |tag: &str| {
        format!("id: tagged\ntasks:\n  - id: t\n    image: {repository}:{tag}\n    args: [noop]\n")
    };
    let pinned =
        format!("id: pinned\ntasks:\n  - id: t\n    image: {repository}@{old}\n    args: [noop]\n");
    let harness =
        Harness::start(&[("tagged.yaml", &tagged("0.1.0")), ("pinned.yaml", &pinned)]).await;
    let digest_of = |run_id: String| {
        let harness = &harness;
        async move {
            let run = harness.wait_run(&run_id, Duration::from_secs(60)).await;
            assert_eq!(run.state, RunState::Success);
            harness.tries(&run.run_id, "t").await[0]
                .image_digest
                .clone()
                .unwrap()
        }
    };
    assert_eq!(digest_of(harness.trigger("tagged").await.run_id).await, old);
    assert_eq!(digest_of(harness.trigger("pinned").await.run_id).await, old);

    std::fs::write(harness.jobs_dir().join("tagged.yaml"), tagged("0.2.0")).unwrap();
    assert_eq!(digest_of(harness.trigger("tagged").await.run_id).await, new);
    assert_eq!(digest_of(harness.trigger("pinned").await.run_id).await, old);
    harness.stop().await;
    for image in [
        format!("{repository}:0.1.0"),
        format!("{repository}:0.2.0"),
        "stevedore-test/synth-next:0.2.0".to_owned(),
    ] {
        let _ = docker
            .remove_image(
                &image,
                Some(RemoveImageOptionsBuilder::default().build()),
                None,
            )
            .await;
    }
}
