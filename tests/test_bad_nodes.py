"""Bad nodes stop getting work (``distributed/nodes.py``), against a real multi-node Ray:
one node of a ``Cluster`` made to fail on purpose with a real ``torch.AcceleratorError``
from inside the real worker's synthesis, so the real ``outcome_of`` classifies it."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import torch
from ray.cluster_utils import Cluster

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.scheduler import run_render
from nst_engine.distributed.worker import RenderWorker
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.runs import decode_excluded, read_runs
from nst_engine.results.status import render_status
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest
from tests.test_status import nst

#: How long the good node's worker waits to see the exclusion in runs.parquet (it comes
#: within a second or two; the bound only keeps a broken live write from hanging the test).
SEE_EXCLUSION_SECONDS = 60
DEVICE_ERROR = "CUDA error: uncorrectable ECC error encountered"


class FaultyNodeWorker(RenderWorker):
    """The real worker, but on the node ``bad_node`` (a class attribute, set per test) its
    device fails every synthesis with a real ``torch.AcceleratorError``. Every worker
    leaves a file in ``marks`` naming its node as it starts, so the test sees where
    workers were placed. Elsewhere, its first ``render`` waits until ``runs.parquet``
    names the bad node excluded while the run is still running (the live record ``nst
    status`` reads), and says so in a file."""

    bad_node = ""
    marks = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        (Path(self.marks) / f"started-{self.node_id}-{self.actor_id}").touch()
        if self.node_id == self.bad_node:

            def broken(*_args: Any, **_kwargs: Any) -> Any:
                raise torch.AcceleratorError(DEVICE_ERROR)

            self.stylizer.synthesize = broken  # type: ignore[method-assign]

    def render(self, item: Any, attempt: int, *args: Any, **kwargs: Any) -> Any:
        if self.node_id != self.bad_node:
            self._wait_for_the_exclusion()
        return super().render(item, attempt, *args, **kwargs)

    def _wait_for_the_exclusion(self) -> None:
        seen = Path(self.marks) / "seen-while-running"
        deadline = time.time() + SEE_EXCLUSION_SECONDS
        while not seen.exists() and time.time() < deadline:
            run = read_runs(self.root).to_pylist()[-1]
            if run["state"] == "running" and run["excluded_nodes"]:
                seen.write_text(run["excluded_nodes"])
                return
            time.sleep(0.1)


def test_a_node_whose_device_fails_is_excluded_and_its_items_end_ok_elsewhere(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=3, styles=2, sizes=(48,), iterations=100)
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    bad = cluster.add_node(num_cpus=1)
    good = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    worker = type("Worker", (FaultyNodeWorker,), {"bad_node": bad.node_id, "marks": str(marks)})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        plan = load_manifest(manifest)
        items = expand(plan)
        # two workers, one a node; the bad node is out at its 2nd fault, before its worker's
        # 3rd retires it; attempts to spare, so every item can end ok on the good node
        options = PoolOptions(
            cpu_actors=2, threads_per_actor=1, max_node_failures=2, max_worker_failures=3, max_attempts=5
        )
        summary = run_render(items, plan.weights, OutputRoot(plan.output), options, worker_class=worker)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        cluster.shutdown()

    # the summary names the bad node, once, with its device's error
    assert [node.node_id for node in summary.excluded_nodes] == [bad.node_id]
    assert summary.excluded_nodes[0].reason.startswith("2 faults, last: ")
    assert "AcceleratorError" in summary.excluded_nodes[0].reason
    # every item ends ok, once, every ok row from the good node
    assert summary.failed == []
    table = rows(plan.output)
    ok = [r for r in table if r["status"] == "ok"]
    assert Counter(r["item_id"] for r in ok) == Counter(i.item_id for i in items)
    assert {r["node_id"] for r in ok} == {good.node_id}
    faults = [r for r in table if r["node_id"] == bad.node_id]
    assert faults and all(r["status"] == "retried" and "AcceleratorError" in r["error"] for r in faults)
    assert len(assert_outputs_whole(Path(plan.output))) == len(items)
    # one worker ever started on the bad node: the first; its replacement (the lane wants
    # two workers, and the bad node's CPU is the free one) never went there
    started = Counter(path.name.split("-")[1] for path in marks.glob("started-*"))
    assert started[bad.node_id] == 1, started
    # runs.parquet named it while the run was running (what a live nst status reads) ...
    assert [n["node_id"] for n in json.loads((marks / "seen-while-running").read_text())] == [bad.node_id]
    # ... and at its end; nst status shows it, as JSON and for people
    run = read_runs(plan.output).to_pylist()[-1]
    assert run["state"] == "finished"
    assert [n["node_id"] for n in decode_excluded(run["excluded_nodes"])] == [bad.node_id]
    assert [n["node_id"] for n in render_status(plan.output).excluded_nodes] == [bad.node_id]
    found = nst("status", str(plan.output), "--json")
    assert found.returncode == 0, found.stderr
    assert [n["node_id"] for n in json.loads(found.stdout)["excluded_nodes"]] == [bad.node_id]
    human = nst("status", str(plan.output))
    assert human.returncode == 0 and "excluded" in human.stderr and bad.node_id[:12] in human.stderr


def test_a_lane_whose_every_node_is_excluded_fails_its_queue_rather_than_hang(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=2, styles=1, sizes=(32,), iterations=5)
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    bad = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    worker = type("Worker", (FaultyNodeWorker,), {"bad_node": bad.node_id, "marks": str(marks)})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        plan = load_manifest(manifest)
        items = expand(plan)
        options = PoolOptions(
            cpu_actors=1, threads_per_actor=1, max_node_failures=1, max_attempts=5, worker_start_timeout=2
        )
        summary = run_render(items, plan.weights, OutputRoot(plan.output), options, worker_class=worker)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        cluster.shutdown()
    assert [node.node_id for node in summary.excluded_nodes] == [bad.node_id]
    # the replacement waits for a node the selector allows, none joins: the stall fails the
    # queue after worker_start_timeout, saying which node was excluded
    assert summary.rendered == 0 and len(summary.failed) == len(items)
    excluded = f"excluded: {summary.excluded_nodes[0].describe()}"
    assert all(reason.endswith(excluded) for _, reason in summary.failed), summary.failed
    assert Counter(path.name.split("-")[1] for path in marks.glob("started-*")) == {bad.node_id: 1}


def test_the_live_view_and_the_summary_name_an_excluded_node(capsys: Any) -> None:
    from rich.console import Console

    from nst_engine.cli.render import RenderView, print_summary
    from nst_engine.distributed.nodes import ExcludedNode
    from nst_engine.distributed.progress import Progress
    from nst_engine.distributed.recording import RunSummary

    node = ExcludedNode("ab" * 28, "gpu-7", f"2 faults, last: AcceleratorError: {DEVICE_ERROR}")
    view = RenderView(total=4)
    view.update(Progress(4, 1, 0, 0, 3.0, {}, [node.describe()]))
    console = Console(record=True, width=200)
    console.print(view)
    assert f"excluded  {node.describe()}" in console.export_text()
    print_summary(RunSummary(total=4, rendered=4, excluded_nodes=[node]), "out/results.parquet")
    assert f"excluded node: {node.describe()}" in capsys.readouterr().err
