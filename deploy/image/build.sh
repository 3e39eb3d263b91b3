#!/usr/bin/env bash
# Builds the images a deployment of Stevedore runs, offline, from this repository and
# Debian's packages (no registry pull):
#
#   stevedore/stevedore:<version>        the `stevedore` binary on the Debian base image
#   stevedore/postgres:15-bookworm-1     PostgreSQL 15 from Debian, for the metadata store
#   stevedore/registry:2.8-bookworm-1    Debian's docker-registry, for integration images
#
# `deploy/image/build.sh` builds the binary in release mode; `--debug` reuses the debug
# build the tests make (faster, bigger). An image whose tag is present is kept, except the
# stevedore one, which is rebuilt from the binary each time (cheap: one layer).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
[ "${1:-}" = --debug ] && profile=debug
say() { printf '\n==> %s\n' "$*"; }

# The Debian base image (mmdebstrap) the integration images also use.
images/debian-minbase/prepare
base="stevedore/debian-minbase:$(cat images/debian-minbase/VERSION)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "building the stevedore binary ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -p stevedore-cli --bin stevedore
else
  cargo build -p stevedore-cli --bin stevedore
fi
mkdir -p "$work/stevedore"
cp "target/$profile/stevedore" "$work/stevedore/stevedore"
cat >"$work/stevedore/Dockerfile" <<DOCKERFILE
FROM $base
COPY stevedore /usr/local/bin/stevedore
# Not root: the scheduler reaches the Docker engine through the socket it is given.
RUN useradd --system --uid 10001 --home-dir /var/lib/stevedore --create-home stevedore
USER stevedore
WORKDIR /var/lib/stevedore
ENV STEVEDORE_BIND=0.0.0.0 STEVEDORE_JOBS=/etc/stevedore/jobs
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/stevedore"]
CMD ["standalone"]
DOCKERFILE
say "docker build stevedore/stevedore:$version"
docker build -q -t "stevedore/stevedore:$version" "$work/stevedore" >/dev/null

postgres=stevedore/postgres:15-bookworm-1
if ! docker image inspect "$postgres" >/dev/null 2>&1; then
  say "building $postgres (mmdebstrap with postgresql-15)"
  mmdebstrap --quiet --variant=minbase --include=postgresql-15 bookworm "$work/pg.tar"
  docker import "$work/pg.tar" stevedore/postgres-rootfs:15-bookworm-1 >/dev/null
  mkdir -p "$work/postgres"
  cp deploy/image/postgres-entrypoint.sh "$work/postgres/entrypoint.sh"
  cat >"$work/postgres/Dockerfile" <<'DOCKERFILE'
FROM stevedore/postgres-rootfs:15-bookworm-1
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql \
 && chmod 0755 /usr/local/bin/entrypoint.sh
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
DOCKERFILE
  docker build -q -t "$postgres" "$work/postgres" >/dev/null
  docker rmi stevedore/postgres-rootfs:15-bookworm-1 >/dev/null
fi

registry=stevedore/registry:2.8-bookworm-1
if ! docker image inspect "$registry" >/dev/null 2>&1; then
  say "building $registry (Debian's docker-registry)"
  if ! command -v docker-registry >/dev/null; then
    echo "docker-registry is missing: apt-get install docker-registry (scripts/setup.sh does it)" >&2
    exit 1
  fi
  mkdir -p "$work/registry"
  cp "$(command -v docker-registry)" "$work/registry/docker-registry"
  cat >"$work/registry/config.yml" <<'CONFIG'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
CONFIG
  cat >"$work/registry/Dockerfile" <<DOCKERFILE
FROM $base
COPY docker-registry /usr/local/bin/docker-registry
COPY config.yml /etc/docker/registry/config.yml
VOLUME /var/lib/docker-registry
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]
DOCKERFILE
  docker build -q -t "$registry" "$work/registry" >/dev/null
fi
say "images ready: stevedore/stevedore:$version $postgres $registry"
