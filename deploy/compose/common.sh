# Shared by up.sh, down.sh and test.sh: the compose command and project.
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose "$@"
  else
    echo "neither \`docker compose\` nor docker-compose is installed (apt-get install docker-compose)" >&2
    return 1
  fi
}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-stevedore}
# The socket's group, so the unprivileged user in the stevedore image may reach the engine.
DOCKER_SOCKET_GID=$(stat -c %g /var/run/docker.sock)
export DOCKER_SOCKET_GID
compose() { compose_cmd -f "$(dirname "${BASH_SOURCE[0]}")/docker-compose.yml" "$@"; }
