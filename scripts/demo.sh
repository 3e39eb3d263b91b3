#!/usr/bin/env bash
# The quickstart: sets the machine up and runs the main job, jobs/charges_to_warehouse.yaml,
# as real containers on the embedded SQLite store:
#
#   demo API (a container) → http-extract → postgres-load → PostgreSQL warehouse
#
# It starts a registry on 127.0.0.1:5000 and pushes the integration images to it (the job
# pulls them from there), a PostgreSQL warehouse and the demo API, adds the two connections,
# and starts `stevedore standalone`. The hourly schedule makes the first run at once, which
# loads every record; then 25 records are added to the API and a manual run extracts only
# those. Everything it started is stopped at the end; the store (.stevedore/demo.db) stays
# for `stevedore runs list` and friends.
#
# `scripts/demo.sh --keep` leaves it all running at the end (the web UI at
# http://127.0.0.1:8080/) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = --keep ] && keep=true
scripts/setup.sh

say() { printf '\n==> %s\n' "$*"; }
stevedore=target/debug/stevedore
state=.stevedore
mkdir -p "$state"
export STEVEDORE_DB=$state/demo.db STEVEDORE_JOBS=jobs
# The demo starts from a clean slate each time.
rm -rf "$state"/demo.db* "$state"/demo.key

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
# This host as containers on the default bridge see it: the bridge's gateway, which an engine
# that does not report it puts on the subnet's first address.
gateway=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
if [ -z "$gateway" ]; then
  subnet=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}')
  subnet=${subnet%/*}
  gateway=${subnet%.*}.$((${subnet##*.} + 1))
fi

cleanups=()
cleanup() {
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
}
trap cleanup EXIT

# --- the registry ----------------------------------------------------------------------
registry=127.0.0.1:5000
if curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
  say "a registry already answers on $registry; using it"
else
  say "starting a registry on $registry (Debian's docker-registry; data in $state/registry)"
  mkdir -p "$state/registry"
  cat >"$state/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $PWD/$state/registry/data}}
http: {addr: $registry}
EOF
  docker-registry serve "$state/registry/config.yml" >"$state/registry/registry.log" 2>&1 &
  registry_pid=$!
  cleanups+=("kill $registry_pid 2>/dev/null; wait $registry_pid 2>/dev/null")
  for _ in $(seq 100); do
    curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
say "stevedore images build --push --registry $registry"
$stevedore images build --push --registry "$registry"

# --- the warehouse ---------------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_port=15432
export PGPASSWORD="warehouse-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
warehouse=$(mktemp -d /tmp/stevedore-warehouse.XXXXXX)
cleanups+=("rm -rf $warehouse")
say "starting the PostgreSQL warehouse on 127.0.0.1:$pg_port and $gateway:$pg_port (data in $warehouse)"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # The server refuses to run as root.
  as_pg=(runuser -u postgres --)
  chown postgres:postgres "$warehouse"
fi
(umask 077 && printf '%s\n' "$PGPASSWORD" >"$warehouse/pwfile")
[ ${#as_pg[@]} -eq 0 ] || chown postgres "$warehouse/pwfile"
"${as_pg[@]}" "$pg_bin/initdb" -D "$warehouse/data" -U postgres -A scram-sha-256 \
  --pwfile="$warehouse/pwfile" --no-sync >/dev/null
rm -f "$warehouse/pwfile"
echo "host all all $gateway/16 scram-sha-256" | "${as_pg[@]}" tee -a "$warehouse/data/pg_hba.conf" >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$warehouse/data" -l "$warehouse/server.log" -w \
  -o "-p $pg_port -k $warehouse -c listen_addresses=127.0.0.1,$gateway" start >/dev/null
cleanups+=("${as_pg[*]} $pg_bin/pg_ctl -D $warehouse/data -m fast stop >/dev/null")

# --- the demo API ----------------------------------------------------------------------
say "starting the demo API (stevedore/demo-api:0.2.0, 1000 charges) on 127.0.0.1:18080"
docker rm -f stevedore-demo-api >/dev/null 2>&1 || true
docker run -d --name stevedore-demo-api -p 127.0.0.1:18080:8080 stevedore/demo-api:0.2.0 >/dev/null
cleanups+=("docker rm -f stevedore-demo-api >/dev/null")
api_ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' stevedore-demo-api)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:18080/health >/dev/null 2>&1 && break
  sleep 0.1
done

# --- connections: where the job's addresses and secrets live ---------------------------
say "stevedore connections add demo_api / warehouse (values sealed; key in $state/demo.key)"
export API_TOKEN=demo-token
$stevedore connections add demo_api --env API_BASE_URL="http://$api_ip:8080" --env API_TOKEN \
  --description "the demo SaaS API"
$stevedore connections add warehouse --env PGHOST="$gateway" --env PGPORT=$pg_port \
  --env PGUSER=postgres --env PGDATABASE=postgres --env PGPASSWORD --description "the warehouse"
$stevedore connections list

# --- the runs --------------------------------------------------------------------------
say "starting stevedore standalone (log: $state/standalone.log)"
$stevedore standalone >"$state/standalone.log" 2>&1 &
standalone=$!
cleanups+=("kill -INT $standalone 2>/dev/null; wait $standalone 2>/dev/null")

say "the hourly schedule makes the first run: stevedore runs wait --job charges_to_warehouse"
status=0
first=$($stevedore runs wait --job charges_to_warehouse --timeout 600) || status=$?
first=${first%% *}
$stevedore runs show "$first"
if [ $status -ne 0 ]; then
  $stevedore tasks logs "$first" extract || true
  $stevedore tasks logs "$first" load || true
  exit $status
fi

say "25 new charges in the API; a manual run extracts only those"
curl -fsS -X POST "http://127.0.0.1:18080/admin/records?count=25" && echo
output=$($stevedore jobs trigger charges_to_warehouse --wait) || status=$?
second=$(printf '%s\n' "$output" | head -n 1)
$stevedore runs show "$second"

say "stevedore tasks logs $second extract"
$stevedore tasks logs "$second" extract

say "the warehouse: every charge exactly once"
"$pg_bin/psql" -h 127.0.0.1 -p $pg_port -U postgres -d postgres -c \
  "SELECT count(*) AS charges, count(DISTINCT id) AS distinct_ids, max(updated_at) AS latest FROM charges"

$stevedore runs list --job charges_to_warehouse
printf '\n%s\n' "$(printf '%s\n' "$output" | tail -n 1)"

token=$($stevedore tokens create "demo-$(date +%s)" --role admin 2>/dev/null)
if $keep; then
  printf '\n==> the web UI: http://127.0.0.1:8080/  (log in with the token %s)\n' "$token"
  printf '    everything stays up until Ctrl-C\n'
  wait $standalone || true
else
  printf '\n==> to see it in the web UI: scripts/demo.sh --keep, or\n'
  printf '    STEVEDORE_DB=%s STEVEDORE_JOBS=jobs %s standalone\n' "$STEVEDORE_DB" "$stevedore"
  printf '    then open http://127.0.0.1:8080/ and log in with the token %s\n' "$token"
fi
exit $status
