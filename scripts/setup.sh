#!/usr/bin/env bash
# Prepares a fresh Debian machine for Stevedore: Debian packages, the binaries and the
# integration images (built offline from images/). Safe to run again: finished steps are
# quick the second time.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

packages=()
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
command -v curl >/dev/null || packages+=(curl)
# A real browser for the web UI's browser tests.
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
command -v docker-registry >/dev/null || packages+=(docker-registry)
# docker-compose for the compose deployment (deploy/compose), unless the engine has the plugin.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || packages+=(docker-compose)
# PostgreSQL for the warehouse in tests and the quickstart (started by them, not here).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
  say "installing Debian packages: ${packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "error: the Docker engine is not reachable (is dockerd running? is DOCKER_HOST right?)" >&2
  exit 1
fi

# An S3-compatible server for the artifact store's tests (moto's server mode, from PyPI).
venv=.stevedore/venv-s3
if [ ! -x "$venv/bin/moto_server" ]; then
  say "virtualenv $venv: moto (an S3-compatible server for the tests)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]==5.2.5'
fi
# A real SMTP server for the alert tests' emails (aiosmtpd, from PyPI), in the same venv.
if [ ! -x "$venv/bin/aiosmtpd" ]; then
  say "virtualenv $venv: aiosmtpd (an SMTP server for the alert tests)"
  "$venv/bin/pip" install -q 'aiosmtpd==1.4.6'
fi

say "building stevedore"
cargo build --workspace --bins

# The entrypoint of wrapped Singer and Airbyte connectors, static and optimized: it handles
# every record a connector sends (`stevedore images build` copies it into their images).
say "building stevedore-shim (static, for wrapped connectors)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p stevedore-shim \
  --target x86_64-unknown-linux-gnu

say "building integration images"
target/debug/stevedore images build
