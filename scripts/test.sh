#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup (packages, binaries, images), then unit,
# property, contract, CLI and end-to-end tests against the real Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

printf '\n==> cargo fmt --check\n'
cargo fmt --all -- --check

printf '\n==> cargo test\n'
status=0
cargo test --workspace --no-fail-fast || status=$?

printf '\n==> fuzzing the REST API from its OpenAPI document (scripts/fuzz-api.sh)\n'
scripts/fuzz-api.sh || status=$?
exit $status
