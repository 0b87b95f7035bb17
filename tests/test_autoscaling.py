"""The autoscaling policy (``distributed.autoscaling``) on plain numbers: the render pool's
shape from what a cluster has and may add, how a lane's pool follows its queue, and when
a lane can get no worker. No Ray is started (nor imported by the policy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nst_engine.distributed.autoscaling import (
    LaneLoad,
    Resize,
    Stall,
    resize,
    shape_pool,
    stall,
    start_budget,
    worker_threads,
)
from nst_engine.distributed.options import PoolOptions

REPO = Path(__file__).resolve().parents[1]


def load(queued: int, live: int = 0, pending: int = 0, **kwargs: int) -> LaneLoad:
    fields = {"in_flight_items": 0, "min_workers": 1, "max_workers": 4, "starts_left": 16, **kwargs}
    return LaneLoad(queued=queued, live=live, pending=pending, **fields)


@pytest.mark.parametrize(
    ("lane", "expected"),
    [
        # a new lane asks for as many workers as its queue can use, all at once
        (load(10), Resize(start=4)),
        (load(2), Resize(start=2)),
        # never below min_workers while items are queued, never above max_workers
        (load(1, min_workers=3), Resize(start=3)),
        (load(100, live=2), Resize(start=2)),
        (load(100, live=2, pending=2), Resize()),
        # starts left bound what a lane whose workers keep failing may still request
        (load(10, starts_left=1), Resize(start=1)),
        (load(10, starts_left=0), Resize()),
        # the queue shrinks: the newest requests beyond what it can still use are withdrawn
        (load(2, live=1, pending=3), Resize(withdraw=1)),
        (load(1, live=2, pending=2), Resize(withdraw=1)),
        (load(1, live=0, pending=4, min_workers=2), Resize(withdraw=2)),
        # ready workers are never released while items are queued
        (load(1, live=4), Resize()),
        # the queue is empty: every request withdrawn, idle workers let go
        (load(0, live=2, pending=2, in_flight_items=1), Resize(withdraw=2, release_idle=True)),
        (load(0), Resize(release_idle=True)),
    ],
)
def test_a_lane_follows_its_queue(lane: LaneLoad, expected: Resize) -> None:
    assert resize(lane) == expected


def test_a_lane_may_replace_each_worker_up_to_its_failure_limit() -> None:
    assert start_budget(max_workers=2, max_worker_failures=3) == 8
    assert start_budget(max_workers=1, max_worker_failures=0) == 1


@pytest.mark.parametrize(
    ("lane", "ever_ready", "waited", "expected"),
    [
        (load(5, live=1), False, 1e9, Stall.NONE),  # a worker is ready
        (load(0, pending=1), False, 1e9, Stall.NONE),  # nothing queued
        (load(5, pending=1, in_flight_items=2), False, 1e9, Stall.NONE),  # calls still out
        (load(5, pending=1), False, 10, Stall.NONE),  # still within the start timeout
        (load(5), True, 0, Stall.NO_WORKERS),  # every worker failed, none left to start
        (load(5, pending=2), True, 61, Stall.TIMED_OUT),  # had workers, none came back
        (load(5, pending=2), False, 61, Stall.NEVER_STARTED),  # no node ever took one
    ],
)
def test_a_lane_that_can_get_no_worker(
    lane: LaneLoad, ever_ready: bool, waited: float, expected: Stall
) -> None:
    assert stall(lane, ever_ready, waited, timeout=60) is expected


def test_cpu_worker_threads() -> None:
    assert worker_threads(None, [16, 2]) == 4  # the largest node, at most 4
    assert worker_threads(None, [2, 1]) == 2
    assert worker_threads(3, [16]) == 3  # asked for


def shape(options: PoolOptions, items: int = 100, present=None, ceiling=None, node_cpus=(4,)):
    found = shape_pool(
        options, items, present=present or {}, ceiling=ceiling or {}, node_cpus=list(node_cpus)
    )
    return found.min_workers, found.max_workers, found.resources, found.device, found.threads


def test_gpu_pools() -> None:
    gpu = {"num_gpus": 1, "num_cpus": 1}
    # GPUs present, more the autoscaler may add: MIN those present, MAX the ceiling
    assert shape(PoolOptions(), present={"GPU": 2, "CPU": 8}, ceiling={"GPU": 8}) == (2, 8, gpu, "auto", None)
    # a GPU group that scales from zero nodes is still a GPU render
    assert shape(PoolOptions(), present={"CPU": 8}, ceiling={"GPU": 4, "CPU": 64}) == (
        0,
        4,
        gpu,
        "auto",
        None,
    )
    # --gpus on a cluster with none: one GPU worker requested, never a CPU one
    assert shape(PoolOptions(use_gpus=True), present={"CPU": 8}) == (0, 1, gpu, "auto", None)
    # workers sharing a GPU ask Ray for their part of it and plan on that part of its memory
    shared = shape_pool(PoolOptions(workers_per_gpu=2), 100, present={"GPU": 1}, ceiling={}, node_cpus=[4])
    assert (shared.min_workers, shared.max_workers, shared.resources["num_gpus"]) == (2, 2, 0.5)
    assert shared.memory_share == 0.5


def test_cpu_pools() -> None:
    # threads by the largest node; workers counted on every node; MAX from the autoscaler's CPUs
    cpu4 = {"num_cpus": 4, "num_gpus": 0}
    assert shape(PoolOptions(), present={"CPU": 10}, ceiling={"CPU": 32}, node_cpus=(8, 2)) == (
        2,
        8,
        cpu4,
        "cpu",
        4,
    )
    one = PoolOptions(threads_per_actor=1)
    assert shape(one, present={"CPU": 3}, node_cpus=(1, 2)) == (
        3,
        3,
        {"num_cpus": 1, "num_gpus": 0},
        "cpu",
        1,
    )
    # --no-gpus on a GPU cluster renders on CPU
    assert shape(PoolOptions(use_gpus=False), present={"GPU": 4}, node_cpus=(4,))[3] == "cpu"


def test_asked_bounds_and_the_item_cap() -> None:
    assert shape(PoolOptions(workers=(1, 4)), items=2)[:2] == (1, 2)  # no worker that could get no item
    assert shape(PoolOptions(cpu_actors=3), items=2)[:2] == (2, 2)
    assert shape(PoolOptions(workers=(0, 8)), items=100)[:2] == (0, 8)
    assert shape(PoolOptions(), items=1, present={"GPU": 4})[:2] == (1, 1)


def test_the_policies_import_no_ray() -> None:
    code = (
        "import sys\n"
        "import nst_engine.distributed.autoscaling, nst_engine.distributed.retry\n"
        "import nst_engine.distributed.protocol, nst_engine.distributed.pool\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
