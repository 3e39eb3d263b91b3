//! The end-to-end tests, one binary: linking each workspace-sized test binary costs more than
//! running its tests, so the suites are modules of one. Each needs a running Docker engine
//! and the images `stevedore images build` makes (`scripts/test.sh` builds them first).
//!
//! - `alerts`: alerts delivered to a webhook, Slack-format and SMTP receivers.
//! - `backends`: the contract every backend passes (docker, nomad on the simulator, process).
//! - `docker`: whole jobs on the Docker engine (logs, workspaces, limits, adoption,
//!   cancelling).
//!
//! The scheduling semantics (retries, trigger rules, pools, sensors) are tested without
//! Docker, on scripted backends and a manual clock: `crates/scheduler/tests/semantics.rs`.
//! - `nomad`: the Nomad backend against the simulator (`stevedore_testkit::nomad_sim`).
//! - `integrations`, `demo_api`, `registry`: the example integrations, the demo API, pulls
//!   from a registry that needs a login.
//! - `connectors`: Singer and Airbyte connectors from PyPI, wrapped unmodified.
//! - `mapping`: a mapped task (`for_each`) fanning out into containers.
//! - `webhooks`: posted events given to runs in batches, as `events.jsonl`.

mod alerts;
mod backends;
mod bench_artifacts;
mod connectors;
mod demo_api;
mod docker;
mod integrations;
mod mapping;
mod nomad;
mod registry;
mod webhooks;
