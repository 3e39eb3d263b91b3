#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup (packages, binaries, images), then unit,
# property, contract, CLI and end-to-end tests against the real Docker engine, the API fuzzed
# from its OpenAPI document, the web UI in a real browser, and the compose deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check

printf '\n==> cargo test\n'
status=0
# The fuzz target of the output path (splitter, parser, masker: crates/backend/src/fuzz.rs)
# runs for this many seconds, beside the other tests.
export STEVEDORE_FUZZ_SECONDS=${STEVEDORE_FUZZ_SECONDS:-30}
cargo test --workspace --no-fail-fast || status=$?

printf '\n==> fuzzing the REST API from its OpenAPI document (scripts/fuzz-api.sh)\n'
scripts/fuzz-api.sh || status=$?

printf '\n==> the web UI in a real Chromium (scripts/browser-test.sh)\n'
scripts/browser-test.sh || status=$?

printf '\n==> the compose deployment: up, the example job, a scheduler killed (deploy/compose/test.sh)\n'
deploy/compose/test.sh || status=$?
exit $status
