#!/usr/bin/env bash
# Benchmarks (not tests); each prints its figures (docs/benchmarks.md).
#   scripts/bench.sh platform   per-task overhead against `docker run --rm`, log throughput
#   scripts/bench.sh pipeline   100,000 records demo API → warehouse against the Singer
#                               pipeline (tap-rest-api-msdk | target-postgres from PyPI)
#   scripts/bench.sh ui         the grid page, the runs list API and a 100,000-line log page
#                               on a store of 10,000 runs (wrk from Debian)
#   scripts/bench.sh scheduler  task instances/s with the instant backend, SQLite and PostgreSQL;
#                               then with alert rules against without, and 11,000 events
#                               delivered (BENCH_ONLY=alerts: that part alone)
#   scripts/bench.sh artifacts  the 100,000-record pipeline with a folder and an S3 artifact
#                               store; 1 GiB between two engines against `docker cp`
#   scripts/bench.sh connectors the wrapped tap-rest-api-msdk against the tap alone (the shim's
#                               cost), wrapped tap -> postgres-load against tap | target-postgres,
#                               the scheduler's RSS while a wrapped tap sends 1,000,000 records
#   scripts/bench.sh webhooks   events/s `stevedore server` accepts on SQLite and PostgreSQL
#                               from 10 clients (JSON lines of 100, and one event a request)
#   scripts/bench.sh archive    a year of hourly runs: 100,000 runs x 10 tasks, their logs
#                               archived to S3 (s3s-fs), the UI's pages on it (wrk), db clean
#                               of 90% beside a scheduler (BENCH_RUNS=... for a smaller store)
#   scripts/bench.sh            all nine
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
scripts/setup.sh
cargo build --release -p stevedore-cli

status=0
if [ "$what" = platform ] || [ "$what" = all ]; then
  printf '\n==> platform benchmark\n'
  python3 scripts/bench.py || status=$?
fi
if [ "$what" = pipeline ] || [ "$what" = connectors ] || [ "$what" = all ]; then
  # The Singer side, each program in its own virtualenv, at the versions the figures in
  # docs/benchmarks.md were taken with.
  venvs=.stevedore/bench
  for pair in "tap:tap-rest-api-msdk==1.4.2" "target:meltanolabs-target-postgres==0.8.1"; do
    name=${pair%%:*} package=${pair#*:}
    if [ ! -x "$venvs/venv-$name/bin/pip" ] || ! "$venvs/venv-$name/bin/pip" show -q "${package%%==*}" >/dev/null 2>&1; then
      printf '\n==> virtualenv %s: %s\n' "$venvs/venv-$name" "$package"
      python3 -m venv "$venvs/venv-$name"
      "$venvs/venv-$name/bin/pip" install -q "$package"
    fi
  done
  if [ "$what" != connectors ]; then
    printf '\n==> pipeline benchmark\n'
    python3 scripts/bench_pipeline.py || status=$?
  fi
fi
if [ "$what" = connectors ] || [ "$what" = all ]; then
  printf '\n==> connectors benchmark\n'
  python3 scripts/bench_connectors.py || status=$?
fi
if [ "$what" = ui ] || [ "$what" = all ]; then
  command -v wrk >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq wrk >/dev/null; }
  cargo build --release -p stevedore-server --example seed_bench
  printf '\n==> UI and API benchmark\n'
  python3 scripts/bench_ui.py || status=$?
fi
if [ "$what" = scheduler ] || [ "$what" = all ]; then
  cargo build --release -p stevedore-scheduler --example schedule_bench
  printf '\n==> scheduling benchmark\n'
  python3 scripts/bench_scheduler.py || status=$?
fi
if [ "$what" = artifacts ] || [ "$what" = all ]; then
  printf '\n==> artifacts benchmark (tests/e2e/bench_artifacts.rs)\n'
  cargo test --release -p stevedore-e2e --test e2e bench_artifacts -- --ignored --nocapture || status=$?
fi
if [ "$what" = archive ] || [ "$what" = all ]; then
  command -v wrk >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq wrk >/dev/null; }
  cargo build --release -p stevedore-scheduler --example archive_bench
  # An S3 server on a folder, in Rust (crates.io): moto's one Python process would bound
  # archiving at about 100 tries/s (BENCH_S3=moto to use it all the same).
  [ -x .stevedore/s3s/bin/s3s-fs ] || cargo install -q s3s-fs@0.14.1 --features binary --root .stevedore/s3s
  printf '\n==> archive and retention benchmark\n'
  python3 scripts/bench_archive.py || status=$?
fi
if [ "$what" = webhooks ] || [ "$what" = all ]; then
  printf '\n==> webhooks benchmark\n'
  python3 scripts/bench_webhooks.py || status=$?
fi
exit $status
