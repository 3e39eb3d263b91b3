#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with schemathesis (PyPI), bounded in
# time: no 5xx, no response that breaks the document's schemas or status codes. Runs
# `stevedore server` (no scheduler: runs stay queued, no container starts) on a throwaway
# store with the jobs under jobs/ and an admin token. Part of scripts/test.sh.
#   FUZZ_MAX_TIME   seconds for the fuzzing phases (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
max_time=${FUZZ_MAX_TIME:-90}
stevedore=target/debug/stevedore
[ -x "$stevedore" ] || cargo build -p stevedore-cli

venv=.stevedore/venv-schemathesis
if [ ! -x "$venv/bin/schemathesis" ]; then
  printf '==> virtualenv %s: schemathesis\n' "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis==4.32.5'
fi

work=$(mktemp -d /tmp/stevedore-fuzz.XXXXXX)
export STEVEDORE_DB=$work/fuzz.db STEVEDORE_JOBS=$work/jobs
# A key to seal the connections the fuzzer writes.
STEVEDORE_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
export STEVEDORE_SECRET_KEY
cp -r jobs "$work/jobs"
token=$($stevedore tokens create fuzz --role admin 2>/dev/null)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$stevedore server --port "$port" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done

printf '==> schemathesis against http://127.0.0.1:%s (max %ss)\n' "$port" "$max_time"
status=0
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-time "$max_time" \
  --workers 1 \
  --seed 20261123 \
  --warnings off || status=$?
if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked:" >&2
  grep -A5 "panicked" "$work/server.log" >&2
  status=1
fi
exit $status
