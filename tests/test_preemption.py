"""Preemption without loss: a worker told to stop (SIGTERM) checkpoints every synthesis it
holds at once and exits; the retry resumes from that checkpoint.

The engine's stop notice is tested in-process; the worker's stop on a real multi-node
Ray cluster, with SIGTERM sent to the actor's process as Kubernetes or a spot notice
relay would."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from ray.cluster_utils import Cluster

from nst_engine.distributed.cluster import pool_shape
from nst_engine.distributed.dispatch import Scheduler
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.preemption import (
    DEFAULT_GRACE_SECONDS,
    GRACE_ENV,
    PROCESS_TITLE,
    grace_seconds,
    relay,
    titled,
)
from nst_engine.distributed.recording import RunSummary
from nst_engine.distributed.scheduler import render_lane
from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.checkpoint import CheckpointPolicy
from nst_engine.engine.stop_notice import StopRequested, request_stop, stop_requested, withdraw_stop
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

#: Where a traced worker notes its iterations (the test's folder), set for Ray's workers.
TRACE_ENV = "NST_TEST_PREEMPTION_TRACE"
#: Seconds a traced worker's iteration takes at least, so the test signals mid-synthesis.
PACE = 0.05


class Store:
    """Checkpoint bytes in memory: the policy's two callables."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data, self.saves = data, 0

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data, self.saves = data, self.saves + 1


def saved_iteration(data: bytes | None) -> int:
    """The iteration a checkpoint's bytes resume from (0: none)."""
    return len(torch.load(io.BytesIO(data), weights_only=True)["run"]["records"]) if data else 0


@pytest.fixture
def notice() -> Iterator[None]:
    """The process-wide stop notice, withdrawn after the test whatever happens."""
    try:
        yield
    finally:
        withdraw_stop()


# --- the engine's notice, no Ray ---------------------------------------------------------


def test_stop_notice_saves_at_the_next_iteration_and_ends(
    content_path: Path, style_path: Path, notice: None
) -> None:
    config = SynthesisConfig(size=32, iterations=30)
    store = Store()
    # an interval of an hour and a "too short to checkpoint" rule: only the stop saves
    policy = CheckpointPolicy(3600, store.load, store.save, min_predicted_seconds=1e9)

    def stop_at_4(record: Any, _image: Any) -> None:
        if record.iteration + 1 == 4:
            request_stop()

    stylizer = Stylizer(random_weights(seed=0), device="cpu")
    with pytest.raises(StopRequested) as stopped:
        stylizer.synthesize(content_path, [style_path], config, on_iteration=stop_at_4, checkpoint=policy)
    assert stopped.value.saved_at == 4 and store.saves == 1 and saved_iteration(store.data) == 4

    # while the notice stands, a synthesis does no work at all (its checkpoint stays)
    with pytest.raises(StopRequested) as again:
        stylizer.synthesize(content_path, [style_path], config, checkpoint=policy)
    assert again.value.saved_at is None and saved_iteration(store.data) == 4

    withdraw_stop()
    resumed = stylizer.synthesize(content_path, [style_path], config, checkpoint=policy)
    assert resumed.stats.resumed_from_iteration == 4 and resumed.stats.iterations == 30


def test_stop_notice_leaves_unchecked_syntheses_alone(
    content_path: Path, style_path: Path, notice: None
) -> None:
    """Checkpointing off (no policy): nothing to save, so the notice does not end it."""
    request_stop()
    result = Stylizer(random_weights(seed=0), device="cpu").synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=5)
    )
    assert result.stats.iterations == 5


def test_grace_period_from_the_environment() -> None:
    assert grace_seconds({}) == DEFAULT_GRACE_SECONDS
    assert grace_seconds({GRACE_ENV: "7.5"}) == 7.5
    assert grace_seconds({GRACE_ENV: "soon"}) == DEFAULT_GRACE_SECONDS
    assert grace_seconds({GRACE_ENV: "-1"}) == DEFAULT_GRACE_SECONDS


# --- a real cluster: SIGTERM to the worker's process mid-synthesis ---------------------

#: The trace a traced worker writes in the output root: "pid content iteration" a line.
TRACE = "trace.txt"
#: The content whose first synthesis waits at ``HOLD_AT`` for the stop.
HELD, HOLD_AT = "c0", 12
ITERATIONS = 80


class TracedWorker(RenderWorker):
    """A ``RenderWorker`` that notes each iteration its syntheses finish in ``TRACE``
    (before the engine's checkpoint check), each taking ``PACE`` seconds at least; the
    synthesis of ``HELD`` waits at ``HOLD_AT`` until the process is told to stop, so the
    test signals it there, mid-synthesis, whatever the machine's speed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        trace = Path(self.root.local_path()) / TRACE
        synthesize = self.stylizer.synthesize

        def traced(content: Any, *rest: Any, on_iteration: Any = None, **options: Any) -> Any:
            name = Path(content).stem

            def note(record: Any, image: Any) -> None:
                if on_iteration is not None:
                    on_iteration(record, image)
                done = record.iteration + 1
                with trace.open("a") as out:
                    out.write(f"{os.getpid()} {name} {done}\n")
                if name == HELD and done == HOLD_AT:
                    waited = time.monotonic() + 60  # no stop: the test fails on the rows
                    while not stop_requested() and time.monotonic() < waited:
                        time.sleep(0.01)
                time.sleep(PACE)

            return synthesize(content, *rest, on_iteration=note, **options)

        self.stylizer.synthesize = traced  # type: ignore[method-assign]


def traced(output: Path) -> list[tuple[int, str, int]]:
    """The trace's (pid, content, iteration) lines so far."""
    try:
        lines = (output / TRACE).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(p), n, int(i)) for p, n, i in (line.split() for line in lines if line.count(" ") == 2)]


def reached(output: Path, pid: int, name: str) -> int:
    """The last iteration process ``pid`` noted for ``name`` (0: none)."""
    return max((i for p, n, i in traced(output) if p == pid and n == name), default=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head with no CPUs and two worker nodes of one CPU: a worker's retry may run on
    either node, each a process of its own."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    here = sys.modules[__name__]  # TracedWorker, by value: Ray's workers cannot import tests
    ray.cloudpickle.register_pickle_by_value(here)
    try:
        yield cluster
    finally:
        ray.cloudpickle.unregister_pickle_by_value(here)
        ray.shutdown()
        cluster.shutdown()


def render_and_stop(tmp_path: Path, contents: int, max_batch: int) -> tuple[RunSummary, dict[str, Any]]:
    """Render ``contents`` items on one traced worker (checkpoints hourly: only the stop
    saves), SIGTERM its process once ``HELD`` waits at ``HOLD_AT``; the run's summary and
    what the test saw: the pid stopped, each item's iteration just before and just after
    the signal."""
    manifest = tiny_manifest(tmp_path, contents=contents, styles=1, sizes=(32,), iterations=ITERATIONS)
    spec = yaml.safe_load(manifest.read_text())
    spec["params"]["history_size"] = 5  # small checkpoints
    manifest.write_text(yaml.safe_dump(spec))
    plan = load_manifest(manifest)
    items = expand(plan)
    output = Path(plan.output)
    options = PoolOptions(workers=(1, 1), threads_per_actor=1, checkpoint_every=3600, max_batch=max_batch)
    scheduler = Scheduler(plan.weights, OutputRoot(plan.output), options, worker_class=TracedWorker)
    seen: dict[str, Any] = {}

    def stop_when_held() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            held = [p for p, n, i in traced(output) if n == HELD and i == HOLD_AT]
            if held:
                pid = held[0]
                names = {n for p, n, _ in traced(output) if p == pid}
                seen["titled"] = pid in titled(f"ray::{TracedWorker.__name__}")  # as a relay finds it
                seen["before"] = {n: reached(output, pid, n) for n in names}
                os.kill(pid, signal.SIGTERM)
                seen["after"] = {n: reached(output, pid, n) for n in names}
                seen["pid"] = pid
                seen["ready_pids"] = [
                    w.info.get("pid") for w in list(scheduler.pool.lanes[0].members.values())
                ]
                return
            time.sleep(0.02)

    signaller = threading.Thread(target=stop_when_held, daemon=True)
    signaller.start()
    scheduler.add_lane(render_lane(items, pool_shape(options, len(items))))
    summary = scheduler.run()
    scheduler.store.flush()
    signaller.join(timeout=5)
    return summary, seen


def check_resumed(tmp_path: Path, summary: RunSummary, seen: dict[str, Any], contents: int) -> dict[str, int]:
    """Every item ok on its second attempt after a retried first; each ok row's
    ``resumed_from_iteration`` by content name."""
    assert "pid" in seen, "the held synthesis never reached its iteration"
    assert str(seen["pid"]) in seen["ready_pids"]  # ready() names the process to signal
    assert seen["titled"], "the relay's title does not find the worker's process"
    output = tmp_path / "out"
    assert summary.failed == [] and summary.retried == contents
    table = rows(output)
    assert sorted((r["status"], r["attempt"]) for r in table) == sorted(
        [("retried", 1), ("ok", 2)] * contents
    )
    assert all("worker lost" in r["error"] for r in table if r["status"] == "retried")
    assert len(assert_outputs_whole(output)) == contents
    resumed = {}
    for row in table:
        if row["status"] == "ok":
            assert row["iterations"] == ITERATIONS
            resumed[Path(row["content_path"]).stem] = row["resumed_from_iteration"]
    # the retry ran in another process and went on from there
    assert any(p != seen["pid"] and i > HOLD_AT for p, n, i in traced(output) if n == HELD)
    return resumed


def test_sigterm_mid_synthesis_checkpoints_and_the_retry_resumes(tmp_path: Path, cluster: Cluster) -> None:
    summary, seen = render_and_stop(tmp_path, contents=1, max_batch=1)
    resumed = check_resumed(tmp_path, summary, seen, contents=1)
    # saved where it was stopped, not at a periodic checkpoint (hourly) nor from scratch
    assert resumed == {HELD: HOLD_AT}


def test_sigterm_checkpoints_every_synthesis_a_batch_worker_holds(tmp_path: Path, cluster: Cluster) -> None:
    summary, seen = render_and_stop(tmp_path, contents=2, max_batch=2)
    resumed = check_resumed(tmp_path, summary, seen, contents=2)
    assert resumed[HELD] == HOLD_AT
    # the other synthesis ran on beside it: saved within an iteration of where the signal
    # found it, and at the last iteration it finished
    other = "c1"
    assert seen["before"][other] > 0, "the second synthesis had not started: not a batch"
    assert seen["before"][other] <= resumed[other] <= seen["after"][other] + 1
    assert resumed[other] == reached(tmp_path / "out", seen["pid"], other)


# --- the relay a node about to go runs (preStop, spot notice) --------------------------


def test_the_relay_looks_for_render_workers_by_their_process_title() -> None:
    """Ray titles an actor's process ``ray::<class>`` (``.method`` added while a call
    runs), as the traced worker's test above shows for its own class."""
    assert f"ray::{RenderWorker.__name__}" == PROCESS_TITLE


def titled_process(title: str, ignore_term: bool = False) -> subprocess.Popen:
    """A process whose command line starts with ``title``, as a Ray worker's does."""
    trap = "trap '' TERM; " if ignore_term else ""  # an ignored signal stays so across exec
    return subprocess.Popen(["bash", "-c", f"{trap}exec -a '{title}' sleep 60"])


def test_relay_stops_the_titled_processes_and_waits_for_them() -> None:
    title = f"ray::NoWorker{uuid.uuid4().hex}"  # this test's own: others' workers are left alone
    workers = [titled_process(title + ".render"), titled_process(title)]
    try:
        deadline = time.monotonic() + 10
        while len(titled(title)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(titled(title)) == sorted(w.pid for w in workers)
        # the relay returns once they are gone: reaped here, as their parent
        threading.Thread(target=lambda: [w.wait() for w in workers], daemon=True).start()
        assert relay(title, wait=30) == 0
        assert [w.wait(timeout=5) for w in workers] == [-signal.SIGTERM] * 2
    finally:
        for worker in workers:
            worker.kill()


def test_relay_gives_up_after_its_wait() -> None:
    title = f"ray::NoWorker{uuid.uuid4().hex}"
    stubborn = titled_process(title, ignore_term=True)
    try:
        deadline = time.monotonic() + 10
        while not titled(title) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay(title, wait=0.5) == 1 and stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()
