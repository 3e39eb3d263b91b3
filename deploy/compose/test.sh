#!/usr/bin/env bash
# The compose deployment's test, run by scripts/test.sh: brings it up with one command
# (up.sh), runs the example job to success, then runs it again and `docker kill`s the
# scheduler that owns the run while its tries run; the other scheduler must take the run
# over and complete it, each task with exactly one successful try (nothing lost, nothing run
# twice). Everything it started is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
say() { printf '\n==> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; compose logs --tail 80 scheduler-a scheduler-b >&2 || true; exit 1; }

# Its own project, ports and jobs folder (the example job only), so it never touches a
# deployment of the same machine.
export COMPOSE_PROJECT_NAME=stevedore-test STEVEDORE_PORT=${STEVEDORE_PORT:-18080}
jobs_dir=""
export STEVEDORE_REGISTRY_PORT=${STEVEDORE_REGISTRY_PORT:-15000}
cleanup() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  [ -z "$jobs_dir" ] || rm -rf "$jobs_dir"
  # Tries' containers and workspaces of the test's runs (labelled with their job).
  docker ps -aq --filter label=io.stevedore.job=example_etl | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker volume ls -q --filter label=io.stevedore.job=example_etl | xargs -r docker volume rm >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
jobs_dir=$(mktemp -d)
cp "$here/../../jobs/example_etl.yaml" "$jobs_dir/"
chmod -R a+rX "$jobs_dir"
export STEVEDORE_JOBS_DIR=$jobs_dir

started=$(date +%s)
"$here/up.sh" --debug
say "up in $(($(date +%s) - started)) s"

sql() { compose exec -T postgres psql -U stevedore -d stevedore -tAc "$1"; }
cli() { docker exec -i "$(compose ps -q server)" stevedore "$@"; }
wait_run() { # run_id timeout
  for _ in $(seq 1 "$2"); do
    state=$(sql "SELECT state FROM runs WHERE run_id = '$1'")
    case "$state" in success | failed) echo "$state"; return 0 ;; esac
    sleep 1
  done
  echo "timeout"
}
check_tries() { # run_id: every task instance succeeded with exactly one try
  local tasks bad
  tasks=$(sql "SELECT count(*) FROM task_instances WHERE run_id = '$1' AND state = 'success'")
  [ "$tasks" = 5 ] || fail "run $1: $tasks of 5 task instances succeeded"
  bad=$(sql "SELECT task_id || ':' || count(*) FROM tries WHERE run_id = '$1' GROUP BY task_id HAVING count(*) <> 1 OR bool_or(state <> 'success')")
  [ -z "$bad" ] || fail "run $1: tasks with more or other than one successful try: $bad"
}

say "stevedore jobs trigger example_etl --wait"
first=$(cli jobs trigger example_etl --wait | tail -1) || fail "the first run did not succeed: $first"
first_id=$(sql "SELECT run_id FROM runs WHERE job_id = 'example_etl' AND run_trigger = 'manual' ORDER BY queued_at DESC LIMIT 1")
[ "$(wait_run "$first_id" 5)" = success ] || fail "run $first_id did not succeed"
check_tries "$first_id"
say "run $first_id: success, 5 tasks, one try each"

say "a second run whose extract takes 20 s; the scheduler that owns it is killed under it"
cli jobs trigger example_etl --param extract_sleep=20 >/dev/null
second=$(sql "SELECT run_id FROM runs WHERE job_id = 'example_etl' AND run_trigger = 'manual' AND run_id <> '$first_id' ORDER BY queued_at DESC LIMIT 1")
owner_host=""
for _ in $(seq 1 300); do
  owner_host=$(sql "SELECT s.host FROM runs r JOIN schedulers s ON s.id = r.owner JOIN tries t ON t.run_id = r.run_id AND t.state = 'running' AND t.container_id IS NOT NULL WHERE r.run_id = '$second' LIMIT 1")
  [ -n "$owner_host" ] && break
  sleep 0.1
done
[ -n "$owner_host" ] || fail "run $second never had a running try"
victim=""
for service in scheduler-a scheduler-b; do
  id=$(compose ps -q "$service")
  [ "$(docker inspect -f '{{.Config.Hostname}}' "$id")" = "$owner_host" ] && victim=$service
done
[ -n "$victim" ] || fail "no scheduler container has the host name $owner_host"
running=$(sql "SELECT string_agg(task_id, ',') FROM tries WHERE run_id = '$second' AND state = 'running'")
docker kill "$(compose ps -q "$victim")" >/dev/null
killed_at=$(date +%s)
say "killed $victim (host $owner_host) while $running ran"
state=$(wait_run "$second" 180)
[ "$state" = success ] || fail "run $second ended $state after $victim was killed"
check_tries "$second"
adopted=$(compose logs scheduler-a scheduler-b 2>/dev/null | grep -c "re-attaching to a try a stopped scheduler left running" || true)
[ "$adopted" -ge 1 ] || fail "no scheduler re-attached to the try that ran when $victim was killed"
say "run $second: success $(($(date +%s) - killed_at)) s after the kill; the other scheduler re-attached to the running extract; 5 tasks, one try each"
say "compose deployment test passed in $(($(date +%s) - started)) s"
