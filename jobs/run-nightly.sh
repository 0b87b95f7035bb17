#!/usr/bin/env bash
# Submit a job file with `nst submit` and wait until the Ray job ends, so that cron's flock
# or a systemd oneshot service covers the whole render, not just the submission: the next
# night cannot start while this one still renders. Exit status 0 only when it SUCCEEDED.
#
#   jobs/run-nightly.sh [JOB_FILE] [nst submit options, e.g. --output s3://BUCKET/nst]
#
# Environment: NST (the nst executable; default .venv/bin/nst of this checkout),
# NST_ADDRESS (dashboard address; default: the job file's address, else $RAY_ADDRESS,
# else http://127.0.0.1:8265), POLL_SECONDS (default 60), RAY_AUTH_MODE (default token).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NST="${NST:-$ROOT/.venv/bin/nst}"
PYTHON="$(dirname "$NST")/python"
JOB_FILE="${1:-$ROOT/jobs/nightly.yaml}"
shift || true
POLL_SECONDS="${POLL_SECONDS:-60}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }

address="${NST_ADDRESS:-}"
if [[ -z "$address" && -x "$PYTHON" ]]; then
    address=$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("address") or "")' "$JOB_FILE")
fi
address="${address:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"

log "submitting $JOB_FILE to $address"
job_id=$("$NST" submit "$JOB_FILE" --address "$address" "$@")
log "job $job_id submitted; follow it with: nst logs $job_id --address $address"

failures=0
while true; do
    sleep "$POLL_SECONDS"
    if ! state=$("$NST" status "$job_id" --address "$address" 2>&1); then
        failures=$((failures + 1))
        log "status check failed ($failures): $state"
        if ((failures >= 10)); then
            log "giving up on $job_id; it may still be running on the cluster"
            exit 1
        fi
        continue
    fi
    failures=0
    case "$state" in
        SUCCEEDED | FAILED | STOPPED) break ;;
    esac
done

log "job $job_id ended: $state; last lines of its log:"
"$NST" logs "$job_id" --address "$address" 2>&1 | tail -n 25 || true
[[ "$state" == SUCCEEDED ]]
