"""A worker pool that follows the cluster, on real Ray clusters whose nodes join mid-run.

``ray.cluster_utils.Cluster`` starts real raylets on this machine; a node started with
``num_gpus=1`` makes Ray place ``num_gpus=1`` actors there although torch sees no CUDA,
so a GPU worker (device ``auto``) renders on the CPU and says so in its rows.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from ray.cluster_utils import Cluster

from nst_engine.distributed.options import PoolOptions, parse_workers
from nst_engine.distributed.scheduler import Scheduler, pool_shape, render_lane, run_render
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]


class Background(threading.Thread):
    """``run_render`` in a thread, so the test's main thread can add nodes meanwhile
    (``Cluster.add_node`` installs signal handlers: main thread only)."""

    def __init__(self, manifest: Path, options: PoolOptions) -> None:
        super().__init__(daemon=True)
        self.manifest, self.options = manifest, options
        self.result: tuple | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = render(self.manifest, self.options)
        except BaseException as exc:  # handed to the test by outcome()
            self.error = exc

    def outcome(self, timeout: float) -> tuple:
        self.join(timeout)
        assert not self.is_alive(), "the render did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def cluster():
    """A cluster whose head has 1 CPU, connected; the test adds nodes."""
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=made.address)
    yield made
    ray.shutdown()
    made.shutdown()


def render(manifest: Path, options: PoolOptions):
    plan = load_manifest(manifest)
    items = expand(plan)
    return run_render(items, plan.weights, OutputRoot(plan.output), options), items


def test_parse_workers() -> None:
    assert parse_workers("3") == (3, 3)
    assert parse_workers("0:8") == (0, 8)
    for bad in ("", "x", "2:1", "0", "-1:2", "1:2:3"):
        with pytest.raises(ValueError, match="--workers"):
            parse_workers(bad)


def test_gpus_wait_for_a_gpu_node_that_joins_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    """--gpus on a cluster with no GPU yet (an autoscaler's GPU group at 0 nodes): the GPU
    worker is requested anyway, the run waits, and a GPU node that joins gets every item;
    the CPU head, free all along, renders nothing."""
    manifest = tiny_manifest(tmp_path, contents=2, styles=2)
    started = time.time()
    run = Background(manifest, PoolOptions(use_gpus=True, worker_start_timeout=120))
    run.start()
    time.sleep(4)
    assert run.is_alive()  # waiting for a GPU worker, not rendering on the free CPU
    gpu_node, joined_at = cluster.add_node(num_cpus=1, num_gpus=1).node_id, time.time()
    summary, items = run.outcome(timeout=240)
    assert (summary.rendered, summary.failed) == (len(items), [])
    assert summary.workers == summary.peak_workers == 1  # MAX defaults to 1 GPU worker here
    table = rows(tmp_path / "out")
    assert {r["status"] for r in table} == {"ok"} and len(table) == len(items)
    assert {r["node_id"] for r in table} == {gpu_node}
    # a num_gpus=1 worker whose torch sees no CUDA renders on the CPU, and says so
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {r["device_type"] for r in table} == {expected}
    assert min(r["started_at"].timestamp() for r in table) >= joined_at - 1 > started
    assert len(assert_outputs_whole(tmp_path / "out")) == len(items)


def test_workers_sharing_a_gpu_plan_on_their_share_of_its_memory(cluster: Cluster, tmp_path: Path) -> None:
    """--workers-per-gpu 2 on a node with one GPU: two workers, each asking Ray for half
    of it, and each one's Stylizer plans on half of its memory (``ready`` says so)."""
    cluster.add_node(num_cpus=2, num_gpus=1)
    plan = load_manifest(tiny_manifest(tmp_path, contents=2, styles=1))
    items = expand(plan)
    options = PoolOptions(use_gpus=True, workers_per_gpu=2)
    shape = pool_shape(options, len(items))
    assert (shape.min_workers, shape.max_workers, shape.resources["num_gpus"]) == (2, 2, 0.5)
    scheduler = Scheduler(plan.weights, OutputRoot(plan.output), options)
    try:
        lane = scheduler.add_lane(render_lane(items, shape))
        infos = ray.get([w.ready_ref for w in lane.members.values()], timeout=120)
    finally:
        scheduler.shutdown()
    assert [info["memory_share"] for info in infos] == ["0.5", "0.5"]


def test_gpus_with_no_gpu_node_is_a_clear_error_not_a_cpu_run(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1)
    cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q"]
    proc = subprocess.run(
        [*cmd, "--gpus", "--worker-start-timeout", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "no GPU node joined within 3 s; is the autoscaler running?" in errors[0]
    assert "--no-gpus" in errors[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").rglob("*.png"))  # nothing rendered on the CPU
    assert [r for r in rows(tmp_path / "out") if r["status"] == "ok"] == []


def test_pool_grows_as_nodes_join_and_shrinks_as_the_queue_drains(cluster: Cluster, tmp_path: Path) -> None:
    """--workers 1:4 on a 1-CPU head: 4 workers are requested at once, 1 starts; a 2-CPU
    node joins and 2 more start and get work; the 4th request, which no node can take,
    is withdrawn when the queue drains (the run does not wait for it), and workers left
    idle while one long item finishes are released before the run ends."""
    manifest = tiny_manifest(tmp_path, contents=4, styles=4, sizes=(32, 64), iterations=30)
    data = yaml.safe_load(manifest.read_text())
    # one long item (largest first: it starts first, on the head) and 31 short ones that
    # last long enough for workers on the new node to start
    long = {"size": 64, "content": "c0*", "style": "s0"}
    data["overrides"] = [{"match": long, "params": {"iterations": 3000, "tolerance": 0}}]
    manifest.write_text(yaml.safe_dump(data))
    options = PoolOptions(workers=(1, 4), threads_per_actor=1, worker_start_timeout=300)
    started = time.time()
    run = Background(manifest, options)
    run.start()
    time.sleep(3)
    new_node = cluster.add_node(num_cpus=2).node_id
    summary, items = run.outcome(timeout=280)
    wall = time.time() - started
    assert (summary.rendered, summary.failed) == (len(items), [])
    assert summary.workers == summary.peak_workers == 3  # grew from 1 to 3 as the node joined
    assert summary.cancelled == 1  # the request no node could take, withdrawn at the drain
    assert summary.released >= 1  # idle while the long item ran: released early
    assert wall < options.worker_start_timeout  # never waited for the 4th worker
    table = rows(tmp_path / "out")
    nodes = {r["node_id"] for r in table if r["status"] == "ok"}
    assert new_node in nodes and len(nodes) == 2  # the joined node got work too
    assert len({r["actor_id"] for r in table}) == 3
