#!/usr/bin/env bash
# Stops the compose deployment; `down.sh -v` also drops the store's and the registry's data.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
compose down --remove-orphans "$@"
