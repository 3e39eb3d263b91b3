#!/usr/bin/env bash
# Benchmarks (not a test): platform overhead per task and log throughput. Prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p stevedore-cli
exec python3 scripts/bench.py
