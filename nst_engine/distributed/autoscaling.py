"""How big a pool should be: pure functions of what the cluster and a lane look like now,
no Ray, so each rule is tested on plain numbers (``tests/test_autoscaling.py``).

* ``shape_pool``: the render pool's worker shape and bounds, from the resources the
  cluster has, the most its autoscaler may bring up, and each live node's CPUs
  (``cluster.pool_shape`` reads them from Ray);
* ``resize``: how many worker requests a lane adds or withdraws, and whether it lets its
  idle workers go, from its queue, its calls in flight and its ready and pending workers;
* ``stall``: whether a lane with queued items can still expect a worker.

Requests run ahead of the nodes on purpose: a pending actor is how Ray's autoscaler
(cluster launcher, KubeRay) learns to add a node, and asking for all at once lets it
add them in one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from nst_engine.distributed.options import MAX_DEFAULT_THREADS, PoolOptions


@dataclass(frozen=True)
class PoolShape:
    """What ``run_render`` asks Ray for: MIN..MAX workers of one shape."""

    min_workers: int
    max_workers: int
    resources: dict[str, Any]  # Ray actor options of one worker
    device: str  # what the worker's Stylizer is given (auto: cuda when its torch sees one)
    threads: int | None  # torch threads (CPU workers)
    memory_share: float = 1.0  # part of its device's memory a worker plans on (1/N of a shared GPU)


def worker_threads(requested: int | None, node_cpus: list[int]) -> int:
    """Torch threads of one CPU worker, for ``nst render`` and ``nst bench scaling`` alike:
    ``requested``, else min(largest node's cores, 4).

    Four, because a worker must fit on one node and torch's intra-op threads scale well
    only to a few cores on these convolutions: more workers of four threads render more
    items per hour than fewer wide ones. The benchmark measures the same worker shape, so
    ``nst estimate`` predicts what a render worker will take.
    """
    if requested:
        return requested
    return max(1, min(max(node_cpus), MAX_DEFAULT_THREADS))


def shape_pool(
    options: PoolOptions,
    items: int,
    *,
    present: dict[str, float],
    ceiling: dict[str, float],
    node_cpus: list[int],
) -> PoolShape:
    """The render pool, from the resources the cluster has now (``present``), the most
    its autoscaler may bring up (``ceiling``, empty without one) and the CPUs of each
    live node.

    GPU workers when ``use_gpus`` is True, or (None) when the cluster has a GPU now or its
    autoscaler may bring one up: a GPU group that scales from zero nodes is the normal
    way to pay for GPUs, and must not turn a render into a CPU render. ``use_gpus=True``
    never falls back to CPU: the workers wait for a GPU node (``WorkerStartError`` after
    ``worker_start_timeout``). Their device is ``auto``: the GPU Ray assigned, or the CPU
    when torch sees none (a ``num_gpus`` node without CUDA, as in the tests); the rows'
    ``device`` columns say which.

    Default bounds (``workers`` / ``cpu_actors`` override them): GPU workers MIN = GPUs
    present, MAX = the most GPUs the autoscaler may bring up (at least MIN, at least 1),
    each times ``workers_per_gpu`` (workers sharing a GPU ask Ray for a fraction of it,
    and plan on that fraction of its memory: ``memory_share``);
    CPU workers MIN = the workers of ``threads`` CPUs that fit on the live nodes, MAX =
    as many as fit in the autoscaler's CPUs. MAX is capped at ``items``: a worker that
    could get no item is never requested.
    """
    gpus_now, gpus_max = int(present.get("GPU", 0)), int(ceiling.get("GPU", 0))
    use_gpus = options.use_gpus if options.use_gpus is not None else bool(gpus_now or gpus_max)
    if use_gpus:
        share = options.workers_per_gpu  # workers that share one GPU, each with 1/share of it
        default = (gpus_now * share, max(gpus_now, gpus_max, 1) * share)
        resources: dict[str, Any] = {"num_gpus": 1 / share if share > 1 else 1, "num_cpus": 1}
        device, threads, memory_share = "auto", None, 1 / share
    else:
        # a worker must fit on one node: size threads by the largest node, count by every node
        threads = worker_threads(options.threads_per_actor, node_cpus)
        fit_now = max(1, sum(c // threads for c in node_cpus))
        default = (fit_now, max(fit_now, int(ceiling.get("CPU", 0)) // threads))
        resources, device, memory_share = {"num_cpus": threads, "num_gpus": 0}, "cpu", 1.0
    low, high = options.worker_range or default
    high = max(1, min(high, items))
    return PoolShape(min(low, high), high, resources, device, threads, memory_share)


def start_budget(max_workers: int, max_worker_failures: int) -> int:
    """Worker starts a lane may make in a run: each of its ``max_workers`` and up to
    ``max_worker_failures`` replacements of each, so a lane whose workers keep failing
    ends rather than start workers forever."""
    return max_workers * (1 + max_worker_failures)


@dataclass(frozen=True)
class LaneLoad:
    """What the policy sees of a lane (``Lane.load``)."""

    queued: int  # items waiting
    in_flight_items: int  # items of calls not back yet
    live: int  # workers ready and not retired
    pending: int  # worker requests no node has started yet
    min_workers: int
    max_workers: int
    starts_left: int  # worker starts the lane may still make (``start_budget``)


@dataclass(frozen=True)
class Resize:
    start: int = 0  # new worker requests
    withdraw: int = 0  # pending requests withdrawn, the newest first
    release_idle: bool = False  # let every ready worker with no call in flight go


def resize(load: LaneLoad) -> Resize:
    """Size a lane's pool to its queue, after dispatch (so a non-empty queue means every
    live worker is full or holds its share).

    With items queued the lane wants its live workers plus one per queued item, within
    ``min_workers``..``max_workers``: it requests what is missing (within its starts
    left) and withdraws the newest requests beyond that (a short queue needs fewer new
    nodes). With an empty queue it wants only its busy workers: every request no node
    took is withdrawn and idle workers are let go, so their nodes can scale down while
    the last items finish."""
    if not load.queued:
        return Resize(withdraw=load.pending, release_idle=True)
    wanted = min(load.max_workers, max(load.min_workers, load.live + load.queued))
    missing = wanted - load.live - load.pending
    return Resize(start=max(0, min(missing, load.starts_left)), withdraw=min(load.pending, max(0, -missing)))


class Stall(Enum):
    """Why a lane with queued items and nothing in flight gets no further."""

    NONE = "none"  # it has a worker, or may still get one
    NO_WORKERS = "no workers"  # every worker failed and none is left to start: its queue fails
    TIMED_OUT = "timed out"  # no worker ready for the start timeout, after some were: its queue fails
    NEVER_STARTED = "never started"  # no worker was ever ready within the timeout: the run stops


def stall(load: LaneLoad, ever_ready: bool, waited: float, timeout: float) -> Stall:
    """Whether ``load``'s lane is stuck, ``waited`` seconds after it last had a ready worker."""
    if load.live or not load.queued or load.in_flight_items:
        return Stall.NONE
    if not load.live + load.pending:
        return Stall.NO_WORKERS
    if waited > timeout:
        return Stall.TIMED_OUT if ever_ready else Stall.NEVER_STARTED
    return Stall.NONE
