#!/usr/bin/env bash
# One command: prepares this machine (scripts/setup.sh: packages, binaries, the integration
# images), builds the deployment's images offline (deploy/image/build.sh), makes the
# connections key, and starts PostgreSQL, the registry, two schedulers and the server. The
# web UI and API answer on http://127.0.0.1:${STEVEDORE_PORT:-8080}/ when it returns.
#
#   deploy/compose/up.sh            release build of stevedore (what to deploy)
#   deploy/compose/up.sh --debug    the debug build the tests make (faster to build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/common.sh"
say() { printf '\n==> %s\n' "$*"; }

"$root/scripts/setup.sh"
"$root/deploy/image/build.sh" "$@"

# The key that seals connection values, shared by every Stevedore container; readable only
# by the image's stevedore user (uid 10001).
if [ ! -s "$here/secret.key" ]; then
  say "making the connections key deploy/compose/secret.key"
  (umask 077 && head -c 32 /dev/urandom | base64 >"$here/secret.key")
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo chown 10001 "$here/secret.key"
$sudo chmod 0400 "$here/secret.key"

say "starting PostgreSQL, the registry, two schedulers and the server"
compose up -d --remove-orphans

port=${STEVEDORE_PORT:-8080}
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1; then
    say "Stevedore is up: http://127.0.0.1:$port/ (stop it with deploy/compose/down.sh)"
    compose ps
    exit 0
  fi
  sleep 1
done
echo "the server did not answer on 127.0.0.1:$port within 120 s" >&2
compose logs --tail 50 >&2
exit 1
