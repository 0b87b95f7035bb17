#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, for trying `nst render --address` and
# `nst submit` without cloud machines: one head node plus N worker nodes, each its own
# `ray start` (several raylets on one host is how Ray itself tests multi-node behaviour).
#
#   bash cluster/local-cluster.sh start [N]   # head + N worker nodes (default N=2)
#   bash cluster/local-cluster.sh status      # ray status of this cluster
#   bash cluster/local-cluster.sh env         # the exports a client shell needs
#   bash cluster/local-cluster.sh stop        # stop every process of this cluster
#
# Every port of the cluster listens on 127.0.0.1 only (the dashboard / Jobs API on
# http://127.0.0.1:8265, the GCS on 6379, the Ray Client server, raylets, agents and
# metrics), and token authentication is on: RAY_AUTH_MODE=token, token in
# ~/.ray/auth_token (generated if missing). Three read-only Prometheus /metrics exporters
# answer without the token, on 127.0.0.1 (see cluster/README.md).
#
# Settings (environment variables):
#   HOST=127.0.0.1         the address the nodes listen on; another address of this
#                          machine opens the cluster to other machines (they can join it
#                          with `ray start --address HOST:RAY_PORT`): firewall it, see
#                          cluster/README.md. The dashboard stays on 127.0.0.1.
#   HEAD_CPUS=0            CPUs the head offers to tasks (0: the head only coordinates)
#   WORKER_CPUS=1          CPUs each worker node offers
#   WORKER_GPUS=0          GPUs each worker node offers (all nodes share this host's GPUs:
#                          give at most one node each physical GPU)
#   OBJECT_STORE_MB=256    shared-memory object store per node (images are small)
#   RAY_PORT=6379          GCS port;  DASHBOARD_PORT=8265  dashboard / Jobs API port
#   CLUSTER_DIR=/tmp/nst-ray  Ray's temp dir for this cluster (sessions, logs, sockets);
#                          kept apart from /tmp/ray so `ray.init()` elsewhere on this
#                          machine does not attach to this cluster by accident
#   RAY=.venv/bin/ray      the ray executable (default: the project's virtual environment)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
BIN="$(dirname "$RAY")"
HOST="${HOST:-127.0.0.1}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
HEAD_CPUS="${HEAD_CPUS:-0}"
WORKER_CPUS="${WORKER_CPUS:-1}"
WORKER_GPUS="${WORKER_GPUS:-0}"
OBJECT_STORE_BYTES=$((${OBJECT_STORE_MB:-256} * 1024 * 1024))
CLUSTER_DIR="${CLUSTER_DIR:-/tmp/nst-ray}"
# Every process of this cluster inherits this variable (given to `ray start` only);
# `stop` finds them by it.
MARK="NST_LOCAL_CLUSTER=$CLUSTER_DIR:$RAY_PORT"

usage() {
    # the comment block at the top of this file
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 2
}

need_ray() {
    if [[ ! -x "$RAY" ]]; then
        echo "error: $RAY not found; run 'make install' first (or set RAY=/path/to/ray)" >&2
        exit 2
    fi
}

# Jobs submitted with `nst submit` run their entrypoint (`nst render ...`) with the
# environment of the Ray processes, so the venv's bin/ must be on their PATH.
export PATH="$BIN:$PATH"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
# CPU-only actors keep seeing the GPUs they do not use (as in the embedded cluster)
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0

# Ray's single-machine mode keeps every port of a node on the loopback interface (its
# normal mode replaces 127.0.0.1 by the machine's address); the Ray processes read it from
# their environment. It refuses `ray start --address`, so the other nodes start through
# cluster/loopback-node.py, which lifts that refusal only.
ray_node=("$RAY")
if [[ "$HOST" == 127.* || "$HOST" == localhost ]]; then
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    ray_node=("$BIN/python" "$ROOT/cluster/loopback-node.py")
fi

common=(
    --node-ip-address "$HOST"
    --temp-dir "$CLUSTER_DIR"
    --object-store-memory "$OBJECT_STORE_BYTES"
    --disable-usage-stats
)

marked_pids() {
    # PIDs (of this user) whose environment carries $MARK: the ray start processes'
    # daemons (GCS, raylets, dashboard, monitors), Ray workers and the drivers of
    # submitted jobs.
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid="${environ#/proc/}"
        pid="${pid%/environ}"
        [[ -r "$environ" ]] || continue
        if tr '\0' '\n' 2>/dev/null <"$environ" | grep -qxF "$MARK"; then
            echo "$pid"
        fi
    done
}

cluster_pids() {
    # The marked processes and all their descendants: Ray's Python daemons rename
    # themselves (setproctitle), which can blank /proc/PID/environ, so the agents that a
    # raylet starts are found as its children. Nothing else is included.
    local marked
    marked=$(marked_pids | tr '\n' ' ')
    [[ -z "${marked// /}" ]] && return 0
    ps -e -o pid=,ppid= | awk -v roots="$marked" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                added = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 }
            } while (added)
            for (p in keep) if (p in parent) print p
        }'
}

alive() {
    # Running processes among the PIDs given (zombies are finished, only not yet reaped).
    local pid state
    for pid in "$@"; do
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || continue
        if [[ -n "$state" && "$state" != Z ]]; then
            echo "$pid"
        fi
    done
    return 0
}

start() {
    local workers="${1:-2}"
    if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
        echo "error: N must be a whole number, got '$workers'" >&2
        exit 2
    fi
    need_ray
    if [[ -n "$(cluster_pids)" ]]; then
        echo "error: a local cluster in $CLUSTER_DIR is already running; run '$0 stop' first" >&2
        exit 1
    fi
    mkdir -p "$CLUSTER_DIR"
    "$RAY" get-auth-token --generate >/dev/null 2>&1
    echo "starting head on $HOST:$RAY_PORT (dashboard http://127.0.0.1:$DASHBOARD_PORT, $HEAD_CPUS CPUs)"
    env "$MARK" "$RAY" start --head --port "$RAY_PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 "${common[@]}" >"$CLUSTER_DIR/start-head.log" 2>&1 ||
        fail_start "$CLUSTER_DIR/start-head.log"
    for i in $(seq 1 "$workers"); do
        echo "starting worker node $i/$workers ($WORKER_CPUS CPUs, $WORKER_GPUS GPUs)"
        env "$MARK" "${ray_node[@]}" start --address "$HOST:$RAY_PORT" \
            --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" "${common[@]}" \
            >"$CLUSTER_DIR/start-worker-$i.log" 2>&1 || fail_start "$CLUSTER_DIR/start-worker-$i.log"
    done
    wait_for_nodes $((workers + 1))
    cat <<EOF
cluster up: 1 head + $workers worker nodes ($CLUSTER_DIR)
in the client shell first:  eval "\$(bash cluster/local-cluster.sh env)"
  render:  nst render manifests/demo.yaml --address $HOST:$RAY_PORT --threads-per-actor $WORKER_CPUS
  submit:  nst submit jobs/nightly.yaml   # sets threads_per_actor 1; see cluster/README.md
  status:  bash cluster/local-cluster.sh status
  stop:    bash cluster/local-cluster.sh stop
EOF
}

fail_start() {
    echo "error: ray start failed; its output ($1):" >&2
    tail -n 20 "$1" >&2
    echo "stopping what was started" >&2
    stop
    exit 1
}

wait_for_nodes() {
    local want="$1" have=0
    for _ in $(seq 1 60); do
        have=$("$RAY" status --address "$HOST:$RAY_PORT" 2>/dev/null |
            awk '/^Active:/{a=1; next} /^(Pending|Recent failures):/{a=0} a && /node_/{n++} END{print n+0}')
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

client_env() {
    # What a shell needs to use this cluster with `nst render/submit/status/logs`.
    cat <<EOF
export PATH="$BIN:\$PATH"
export RAY_AUTH_MODE=token
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
EOF
    if [[ -n "${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-}" ]]; then
        echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=$RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    fi
}

stop() {
    # Not `ray stop`: that ends every Ray process of this user on the machine, including
    # other clusters and the embedded clusters of running `nst render` commands.
    local pids left
    pids=$(cluster_pids | tr '\n' ' ')
    if [[ -z "${pids// /}" ]]; then
        echo "no local cluster running ($CLUSTER_DIR)"
        return 0
    fi
    echo "stopping $(wc -w <<<"$pids") processes of the local cluster ($CLUSTER_DIR)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        # shellcheck disable=SC2086
        left=$(alive $pids | tr '\n' ' ')
        [[ -z "${left// /}" ]] && break
        sleep 0.5
    done
    if [[ -n "${left// /}" ]]; then
        echo "still running after 10 s, killing: $left"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
    fi
    rm -f "$CLUSTER_DIR/ray_current_cluster"
    echo "stopped"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    status) status ;;
    env) client_env ;;
    stop) stop ;;
    *) usage ;;
esac
