#!/usr/bin/env bash
# The quickstart: sets the machine up, starts Stevedore on the embedded SQLite store,
# triggers the example job (extract → 3 transforms → load, each a real container) and
# shows it succeed. The store and the scheduler's log are kept under .stevedore/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

mkdir -p .stevedore
export STEVEDORE_DB=.stevedore/demo.db STEVEDORE_JOBS=jobs
stevedore=target/debug/stevedore

printf '\n==> starting stevedore standalone (log: .stevedore/standalone.log)\n'
$stevedore standalone >.stevedore/standalone.log 2>&1 &
standalone=$!
trap 'kill -INT $standalone 2>/dev/null; wait $standalone 2>/dev/null || true' EXIT

printf '\n==> stevedore jobs trigger example_etl --wait\n'
status=0
output=$($stevedore jobs trigger example_etl --wait) || status=$?
run_id=$(printf '%s\n' "$output" | head -n 1)

printf '\n==> stevedore runs show %s\n' "$run_id"
$stevedore runs show "$run_id"

printf '\n==> stevedore tasks logs %s load\n' "$run_id"
$stevedore tasks logs "$run_id" load

printf '\n%s\n' "$(printf '%s\n' "$output" | tail -n 1)"
exit $status
