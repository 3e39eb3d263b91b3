#!/bin/bash
# shell-transform: an integration written in plain shell, no SDK. It implements the
# entrypoint contract: `transform run --job J ... -- ARGS`, the STEVEDORE_* environment,
# JSON-lines protocol messages on stdout and plain log lines on stdout and stderr.
#
# Task args: --partition P --of N --records R
#   Takes partition P (0-based) of N of R upstream records, "transforms" it and publishes
#   the row count as output `rows`. Exit 99 (skipped) when the partition is empty.
#
# Every argument may come from a param or an upstream output, so none is trusted: each is
# checked to be a plain decimal number before bash arithmetic sees it (arithmetic expands
# `a[$(cmd)]` and so would run commands), and every text printed inside JSON is escaped.
set -euo pipefail

case "${1:-}" in
  spec)
    echo '{"type":"spec","name":"shell-transform","version":"0.1.1","params":{"type":"object"}}'
    exit 0 ;;
  check)
    echo '{"type":"log","level":"info","message":"nothing to check"}'
    exit 0 ;;
  run) shift ;;
  *) echo "usage: transform spec | check | run --job J ... -- ARGS" >&2; exit 2 ;;
esac

# Skip the contract options up to `--`; the same values are in the environment.
while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
[ "${1:-}" = "--" ] && shift

# A JSON string's contents: backslashes, quotes and control characters escaped.
json_text() {
  local text=$1 out="" char code i
  for (( i = 0; i < ${#text}; i++ )); do
    char=${text:i:1}
    case "$char" in
      '\') out+='\\' ;;
      '"') out+='\"' ;;
      *)
        printf -v code '%d' "'$char" 2>/dev/null || code=32
        if [ "$code" -ge 0 ] && [ "$code" -lt 32 ]; then
          printf -v char '\\u%04x' "$code"
        fi
        out+=$char ;;
    esac
  done
  printf '%s' "$out"
}

log() { printf '{"type":"log","level":"%s","message":"%s"}\n' "$1" "$(json_text "$2")"; }

# The value of option $1 ($2) as a number, or exit 2 naming the option and the value.
number() {
  if ! [[ $2 =~ ^[0-9]{1,9}$ ]]; then
    echo "$1 must be a whole number of at most 9 digits, not \"$2\"" >&2
    exit 2
  fi
  printf '%d' "$((10#$2))"
}

partition=0 of=1 records=0
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
  case "$1" in
    --partition) partition=$(number --partition "$2"); shift 2 ;;
    --of) of=$(number --of "$2"); shift 2 ;;
    --records) records=$(number --records "$2"); shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$of" -eq 0 ]; then
  echo "--of must be at least 1" >&2
  exit 2
fi

log info "transforming partition $partition of $of for run ${STEVEDORE_RUN_ID:-?} (try ${STEVEDORE_TRY_NUMBER:-?})"
echo "interval: ${STEVEDORE_DATA_INTERVAL_START:-?} .. ${STEVEDORE_DATA_INTERVAL_END:-?}"
rows=$(( records / of ))
if [ "$partition" -lt $(( records % of )) ]; then rows=$(( rows + 1 )); fi
if [ "$rows" -eq 0 ]; then
  echo "partition $partition is empty, skipping" >&2
  exit 99
fi
echo "partition $partition: $rows rows" >&2
printf '{"type":"output","key":"rows","value":%d}\n' "$rows"
printf '{"type":"metric","name":"rows","value":%d}\n' "$rows"
