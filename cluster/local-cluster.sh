#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, for trying `nst render --address` and
# `nst submit` without cloud machines: one head node plus N worker nodes, each its own
# `ray start` (several raylets on one host is how Ray itself tests multi-node behaviour).
#
#   bash cluster/local-cluster.sh start [N]   # head + N worker nodes (default N=2)
#   bash cluster/local-cluster.sh status      # ray status
#   bash cluster/local-cluster.sh stop        # stop every node of this cluster
#
# Everything binds to 127.0.0.1: GCS on 127.0.0.1:6379, dashboard / Jobs API on
# http://127.0.0.1:8265. Nothing is reachable from other machines.
#
# Settings (environment variables):
#   HEAD_CPUS=0          CPUs the head offers to tasks (0: the head only coordinates)
#   WORKER_CPUS=1        CPUs each worker node offers
#   WORKER_GPUS=0        GPUs each worker node offers (all nodes share this host's GPUs,
#                        so give at most one worker node a GPU per physical GPU)
#   OBJECT_STORE_MB=256  shared-memory object store per node (images are small)
#   RAY=.venv/bin/ray    the ray executable (default: the project's virtual environment)
#   RAY_PORT=6379, DASHBOARD_PORT=8265
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
HOST=127.0.0.1
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
HEAD_CPUS="${HEAD_CPUS:-0}"
WORKER_CPUS="${WORKER_CPUS:-1}"
WORKER_GPUS="${WORKER_GPUS:-0}"
OBJECT_STORE_BYTES=$(( ${OBJECT_STORE_MB:-256} * 1024 * 1024 ))

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

need_ray() {
    if [[ ! -x "$RAY" ]]; then
        echo "error: $RAY not found; run 'make install' first (or set RAY=/path/to/ray)" >&2
        exit 2
    fi
}

# Jobs submitted with `nst submit` run their entrypoint (`nst render ...`) in the
# environment of the Ray processes, so the venv's bin/ must be on their PATH.
export PATH="$(dirname "$RAY"):$PATH"
export RAY_USAGE_STATS_ENABLED=0
# torch, not Ray, decides which GPUs a CPU-only actor sees (same as the embedded cluster)
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0

common=(--node-ip-address "$HOST" --object-store-memory "$OBJECT_STORE_BYTES" --disable-usage-stats)

start() {
    local workers="${1:-2}"
    if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
        echo "error: N must be a whole number, got '$workers'" >&2
        exit 2
    fi
    need_ray
    echo "starting head on $HOST:$RAY_PORT (dashboard http://$HOST:$DASHBOARD_PORT, $HEAD_CPUS CPUs)"
    "$RAY" start --head --port "$RAY_PORT" \
        --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 "${common[@]}" >/dev/null
    for i in $(seq 1 "$workers"); do
        echo "starting worker node $i/$workers ($WORKER_CPUS CPUs, $WORKER_GPUS GPUs)"
        "$RAY" start --address "$HOST:$RAY_PORT" \
            --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" "${common[@]}" >/dev/null
    done
    wait_for_nodes $((workers + 1))
    cat <<EOF
cluster up: 1 head + $workers worker nodes
  render:  $ROOT/.venv/bin/nst render manifests/demo.yaml --address $HOST:$RAY_PORT --threads-per-actor $WORKER_CPUS
  submit:  $ROOT/.venv/bin/nst submit manifests/demo.yaml --address http://$HOST:$DASHBOARD_PORT
  status:  bash cluster/local-cluster.sh status
  stop:    bash cluster/local-cluster.sh stop
EOF
}

wait_for_nodes() {
    local want="$1" have=0
    for _ in $(seq 1 60); do
        have=$("$RAY" list nodes --address "$HOST:$RAY_PORT" --filter "state=ALIVE" --format json \
            2>/dev/null | grep -c '"node_id"' || true)
        if [[ "$have" -ge "$want" ]]; then
            return 0
        fi
        sleep 1
    done
    echo "warning: only $have of $want nodes alive after 60 s; see 'ray status --address $HOST:$RAY_PORT'" >&2
}

status() {
    need_ray
    "$RAY" status --address "$HOST:$RAY_PORT"
}

stop() {
    need_ray
    # `ray stop` ends every Ray process of this user on this machine: the head and all
    # worker nodes started above (and any other Ray you started by hand on this host).
    "$RAY" stop || "$RAY" stop --force
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    status) status ;;
    stop) stop ;;
    *) usage ;;
esac
