#!/bin/bash
# shell-transform: an integration written in plain shell, no SDK. It implements the
# entrypoint contract: `transform run --job J ... -- ARGS`, the STEVEDORE_* environment,
# JSON-lines protocol messages on stdout and plain log lines on stdout and stderr.
#
# Task args: --partition P --of N --records R
#   Takes partition P (0-based) of N of R upstream records, "transforms" it and publishes
#   the row count as output `rows`. Exit 99 (skipped) when the partition is empty.
set -euo pipefail

case "${1:-}" in
  spec)
    echo '{"type":"spec","name":"shell-transform","version":"0.1.0","params":{"type":"object"}}'
    exit 0 ;;
  check)
    echo '{"type":"log","level":"info","message":"nothing to check"}'
    exit 0 ;;
  run) shift ;;
  *) echo "usage: transform spec | check | run --job J ... -- ARGS" >&2; exit 2 ;;
esac

# Skip the contract options up to `--`; the same values are in the environment.
while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift 2; done
[ "${1:-}" = "--" ] && shift

partition=0 of=1 records=0
while [ $# -gt 0 ]; do
  case "$1" in
    --partition) partition=$2; shift 2 ;;
    --of) of=$2; shift 2 ;;
    --records) records=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { printf '{"type":"log","level":"%s","message":"%s"}\n' "$1" "$2"; }

log info "transforming partition $partition of $of for run $STEVEDORE_RUN_ID (try $STEVEDORE_TRY_NUMBER)"
echo "interval: $STEVEDORE_DATA_INTERVAL_START .. $STEVEDORE_DATA_INTERVAL_END"
rows=$(( records / of ))
if [ "$partition" -lt $(( records % of )) ]; then rows=$(( rows + 1 )); fi
if [ "$rows" -eq 0 ]; then
  echo "partition $partition is empty, skipping" >&2
  exit 99
fi
echo "partition $partition: $rows rows" >&2
printf '{"type":"output","key":"rows","value":%d}\n' "$rows"
printf '{"type":"metric","name":"rows","value":%d}\n' "$rows"
