"""Faults against a real Ray: a worker node killed mid-run, and the driver SIGKILLed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.scheduler import run_render
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.runs import read_runs
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]


def test_worker_node_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=2, sizes=(64,), iterations=150)
    output = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    victim = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    killed = threading.Event()

    def kill_when_working() -> None:
        # wait for the first finished item (its image), so both workers are busy, then kill one node
        deadline = time.time() + 120
        while time.time() < deadline and not list(output.rglob("*.png")):
            time.sleep(0.2)
        cluster.remove_node(victim, allow_graceful=False)
        killed.set()

    try:
        plan = load_manifest(manifest)
        items = expand(plan)
        killer = threading.Thread(target=kill_when_working, daemon=True)
        killer.start()
        summary = run_render(
            items, plan.weights, OutputRoot(plan.output), PoolOptions(cpu_actors=2, threads_per_actor=1)
        )
        killer.join(timeout=10)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed.is_set()
    assert summary.failed == []
    table = rows(output)
    ok = Counter(r["item_id"] for r in table if r["status"] == "ok")
    assert set(ok) == {i.item_id for i in items}
    assert set(ok.values()) == {1}  # every item completes exactly once
    assert summary.retried >= 1  # the killed node's items were retried elsewhere
    assert any(r["status"] == "retried" and "worker lost" in r["error"] for r in table)
    assert len(assert_outputs_whole(output)) == len(items)


def test_driver_sigkill_then_rerun_completes_only_the_rest(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=2, sizes=(48,), iterations=30)
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "--cpu-actors", "1", "-q"]
    driver = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(output.rglob("*.png"))) < 2:
            time.sleep(0.2)
        assert driver.poll() is None, "the run finished before it could be killed"
        driver.send_signal(signal.SIGKILL)  # the driver only, as a crash would
        driver.wait(timeout=30)
    finally:
        # then clean up whatever the dead driver's embedded Ray left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    # finished items are the images written; their rows may still have been in the
    # driver's buffer (results.table): the rerun records those from the images
    finished = {p: p.stat().st_mtime_ns for p in output.rglob("*.png")}
    assert len(finished) >= 2 and not (output / "results.parquet").exists()  # killed before compaction
    [killed] = read_runs(str(output)).to_pylist()
    assert killed["state"] == "running" and killed["finished_at"] is None
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing finished was redone
    after = rows(output)
    ok = Counter(r["item_id"] for r in after if r["status"] == "ok")
    assert len(ok) == 8 and set(ok.values()) == {1}
    assert "skipped" not in {r["status"] for r in after}
    record = next(r for r in read_runs(str(output)).to_pylist() if r["state"] == "finished")
    assert record["skipped"] >= len(finished) and record["rendered"] == 8 - record["skipped"]
    assert len(assert_outputs_whole(output)) == 8
