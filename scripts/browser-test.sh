#!/usr/bin/env bash
# Browser tests (tests/browser/test_ui.py): the web UI in a real headless Chromium from
# Debian's packages, driven by selenium from PyPI, against `stevedore standalone` running
# real containers. Part of scripts/test.sh.
#   SCREENSHOTS_DIR   where the views' screenshots go (default: a temporary folder;
#                     docs/screenshots to refresh the ones the README links)
set -euo pipefail
cd "$(dirname "$0")/.."
stevedore=$PWD/target/debug/stevedore
[ -x "$stevedore" ] || cargo build -p stevedore-cli
for program in chromium chromedriver; do
  command -v $program >/dev/null || { echo "error: $program is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
venv=.stevedore/venv-browser
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
  printf '==> virtualenv %s: selenium\n' "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'selenium==4.27.1'
fi

work=$(mktemp -d /tmp/stevedore-browser.XXXXXX)
mkdir -p "$work/jobs"
cp jobs/example_etl.yaml jobs/per_account.yaml "$work/jobs/"
cat >"$work/jobs/ui_demo.yaml" <<'YAML'
id: ui_demo
description: extract, a slow step that logs every second, a report
params: {records: 100}
tasks:
  - id: extract
    image: stevedore/synth:0.1.0
    args: [extract, --records, "{{ params.records }}"]
  - id: slow
    image: stevedore/synth:0.1.0
    depends_on: [extract]
    args: [sleep, --seconds, 6, --tick]
  - id: report
    image: stevedore/synth:0.1.0
    depends_on: [slow]
    args: [load, --inputs, "{{ outputs.extract.records }}"]
YAML
cat >"$work/jobs/xss_probe.yaml" <<'YAML'
id: xss_probe
description: "<script>alert('xss')</script>"
params: {note: "<img src=x onerror=alert(1)>"}
tasks:
  - id: t
    image: stevedore/synth:0.1.0
    args: [noop]
YAML
printf 'id: "<img src=x onerror=alert(1)>"\ntasks: []\n' >"$work/jobs/broken.yaml"
cat >"$work/jobs/state_demo.yaml" <<'YAML'
id: state_demo
description: an extract that commits a cursor, for the try page's State section
tasks:
  - id: extract
    image: stevedore/synth:0.1.0
    args: [extract, --records, "10"]
YAML
cat >"$work/jobs/alerting_demo.yaml" <<'YAML'
id: alerting_demo
description: a task that fails, and an alert to a receiver that is not there
notify:
  - {on: [failure], connection: ops}
tasks:
  - id: doomed
    image: stevedore/synth:0.1.0
    args: [exit, --code, 3]
YAML

export STEVEDORE_DB=$work/ui.db STEVEDORE_JOBS=$work/jobs STEVEDORE_WORKSPACE_RETENTION=0s
token=$($stevedore tokens create browser --role operator 2>/dev/null)
$stevedore connections add ops --env WEBHOOK_URL=http://127.0.0.1:9/hook >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$stevedore standalone --port "$port" >"$work/standalone.log" 2>&1 &
standalone=$!
trap 'kill -INT $standalone 2>/dev/null; wait $standalone 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done

STEVEDORE_URL=http://127.0.0.1:$port STEVEDORE_TOKEN=$token \
  SCREENSHOTS_DIR=${SCREENSHOTS_DIR:-$work/screenshots} \
  "$venv/bin/python" tests/browser/test_ui.py
