"""Preemption-safe syntheses: a synthesis saves itself and a later attempt resumes it.

The engine tests run in-process on the tiny random network; the last test kills the node
of a real multi-node Ray cluster under a running synthesis."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from PIL import Image
from ray.cluster_utils import Cluster

from nst_engine.distributed.checkpoints import CHECKPOINT_DIR, checkpoint_path, remove_checkpoints
from nst_engine.distributed.options import PoolOptions, parse_checkpoint_every
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import RunSummary, run_render
from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.checkpoint import CheckpointPolicy
from nst_engine.engine.result import SynthesisResult
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import Manifest, load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest


class Store:
    """Checkpoint bytes in memory, counting saves: the policy's two callables."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data
        self.saves = 0

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data, self.saves = data, self.saves + 1

    def policy(self, every_seconds: float = 0.0, **options: object) -> CheckpointPolicy:
        return CheckpointPolicy(every_seconds, self.load, self.save, **options)  # type: ignore[arg-type]


def synthesize(
    content: Path, style: Path, config: SynthesisConfig, policy: CheckpointPolicy | None, stop_after: int = 0
) -> SynthesisResult:
    """A synthesis by a fresh Stylizer (as a new worker would run it), cancelled after
    ``stop_after`` iterations when given."""
    seen = [0]

    def count(_record: object, _image: object) -> None:
        seen[0] += 1

    return Stylizer(random_weights(seed=0), device="cpu").synthesize(
        content,
        [style],
        config,
        on_iteration=count,
        should_stop=(lambda: seen[0] >= stop_after) if stop_after else None,
        checkpoint=policy,
    )


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_resumed_synthesis_equals_uninterrupted(optimizer: str, content_path: Path, style_path: Path) -> None:
    config = SynthesisConfig(size=32, iterations=12, optimizer=optimizer)
    straight = synthesize(content_path, style_path, config, None)

    store = Store()
    stopped = synthesize(content_path, style_path, config, store.policy(max_overhead=None), stop_after=5)
    assert stopped.stats.stop_reason == "cancelled" and stopped.stats.iterations == 5
    assert store.saves == 5  # every iteration, none for the cancelled state

    resumed = synthesize(content_path, style_path, config, store.policy(max_overhead=None))
    stats, expected = resumed.stats, straight.stats
    assert stats.resumed_from_iteration == 5 and expected.resumed_from_iteration == 0
    assert stats.iterations == expected.iterations == 12 and stats.stop_reason == expected.stop_reason
    assert stats.loss_evaluations == expected.loss_evaluations
    # the row's curves are whole: the first attempt's records come first
    assert len(stats.iteration_seconds) == 12
    assert stats.total_losses[:5] == stopped.stats.total_losses
    np.testing.assert_allclose(stats.total_losses, expected.total_losses, rtol=1e-6)
    assert stats.final_total_loss == pytest.approx(expected.final_total_loss, rel=1e-6)
    torch.testing.assert_close(resumed.image, straight.image, rtol=1e-6, atol=1e-6)


def test_checkpoint_of_other_work_or_damaged_is_ignored_and_replaced(
    content_path: Path, style_path: Path
) -> None:
    seed7 = SynthesisConfig(size=32, iterations=6, seed=7)
    store = Store()
    synthesize(content_path, style_path, seed7, store.policy(max_overhead=None), stop_after=3)
    left_by_seed7 = store.data

    seed8 = SynthesisConfig(size=32, iterations=6, seed=8)
    other = synthesize(content_path, style_path, seed8, store.policy(max_overhead=None))
    straight = synthesize(content_path, style_path, seed8, None)
    assert other.stats.resumed_from_iteration == 0
    torch.testing.assert_close(other.image, straight.image, rtol=1e-6, atol=1e-6)
    assert store.data != left_by_seed7  # overwritten by the seed-8 run's own checkpoints

    for damaged in (b"not a checkpoint", left_by_seed7[: len(left_by_seed7) // 2]):
        result = synthesize(content_path, style_path, seed7, Store(damaged).policy(max_overhead=None))
        assert result.stats.resumed_from_iteration == 0 and result.stats.iterations == 6


def test_checkpoint_is_plain_tensors_readable_with_weights_only(content_path: Path, style_path: Path) -> None:
    store = Store()
    config = SynthesisConfig(size=32, iterations=6, history_size=3)
    synthesize(content_path, style_path, config, store.policy(max_overhead=None), stop_after=4)
    assert store.data is not None
    state = torch.load(io.BytesIO(store.data), weights_only=True)
    run = state["run"]
    assert run["kind"] == "lbfgs" and len(run["records"]) == 4 and run["stop_reason"] is None
    pairs = len(run["ring"]["s"])
    assert run["image"].dtype == torch.float32 and pairs <= 3 and run["ring"]["sy"].shape == (pairs, pairs)
    # the documented size: image + gradient + 2 tensors per curvature pair, float32
    floats = run["image"].numel() * (2 + 2 * pairs)
    assert floats * 4 <= len(store.data) <= floats * 4 + 64_000


def test_when_checkpoints_are_taken(content_path: Path, style_path: Path) -> None:
    config = SynthesisConfig(size=32, iterations=10)
    # a run predicted to be short is not checkpointed (the `auto` rule)
    short = Store()
    synthesize(content_path, style_path, config, short.policy(min_predicted_seconds=3600.0))
    assert short.saves == 0 and short.data is None
    # a slow save stretches the interval: 0.2 s saves at 10% overhead wait 2 s apart
    slow = Store()

    def slow_save(data: bytes) -> None:
        time.sleep(0.2)
        slow.save(data)

    policy = CheckpointPolicy(0.0, slow.load, slow_save, max_overhead=0.1)
    synthesize(content_path, style_path, config, policy)
    assert slow.saves == 1
    # a save that fails ends checkpointing, not the synthesis

    def broken(_data: bytes) -> None:
        raise OSError("disk full")

    result = synthesize(content_path, style_path, config, CheckpointPolicy(0.0, lambda: None, broken))
    assert result.stats.iterations == 10 and result.stats.stop_reason == "iterations"


def test_checkpoint_every_option() -> None:
    assert parse_checkpoint_every("auto") is None and parse_checkpoint_every("AUTO") is None
    assert parse_checkpoint_every("0") == 0.0 and parse_checkpoint_every("2.5") == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="auto or a number of seconds"):
            parse_checkpoint_every(bad)


def test_remove_checkpoints_takes_the_items_files_and_their_temporaries(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path))
    for item in ("a", "b"):
        root.write_bytes(checkpoint_path(item), b"x")
        # what a save killed between write and rename leaves
        (tmp_path / CHECKPOINT_DIR / f".nst-tmp-{'0' * 32}-{item}.pt").write_bytes(b"half")
    assert remove_checkpoints(root, ["a", "missing"]) == 2
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == [
        f".nst-tmp-{'0' * 32}-b.pt",
        "b.pt",
    ]


# --- a real Ray ----------------------------------------------------------------------------


def left_checkpoint(plan: Manifest, item: WorkItem, after: int) -> bytes:
    """The checkpoint a worker lost after ``after`` iterations of ``item`` would have left
    (same work, same ids)."""
    store = Store()
    weights, _ = plan.weights.load()
    seen = [0]
    Stylizer(weights, device="cpu").synthesize(
        item.content_path,
        list(item.style_paths),
        item.config,
        content_id=item.content_hash,
        style_ids=list(item.style_hashes),
        on_iteration=lambda _r, _i: seen.__setitem__(0, seen[0] + 1),
        should_stop=lambda: seen[0] >= after,
        checkpoint=store.policy(max_overhead=None),
    )
    assert store.data is not None
    return store.data


def test_render_resumes_a_left_checkpoint_and_force_starts_afresh(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1, sizes=(32,), iterations=12)
    plan = load_manifest(manifest)
    (item,) = expand(plan)
    left = left_checkpoint(plan, item, after=5)
    options = PoolOptions(cpu_actors=1, threads_per_actor=1)  # checkpoint_every: auto
    connect(num_cpus=1)
    try:
        resumed = {}
        for force in (False, True):
            root = OutputRoot(str(tmp_path / f"out-force-{force}"))
            root.write_bytes(checkpoint_path(item.item_id), left)
            summary = run_render([item], plan.weights, root, options, force=force)
            assert summary.rendered == 1
            (row,) = rows(root.local_path())
            assert row["status"] == "ok" and row["iterations"] == 12
            assert not root.exists(checkpoint_path(item.item_id))  # removed after success
            resumed[force] = row["resumed_from_iteration"]
    finally:
        ray.shutdown()
    assert resumed == {False: 5, True: 0}


# --- a real cluster: the worker's node dies mid-synthesis -----------------------------------


def checkpointed_iteration(path: Path) -> int:
    """The iteration the checkpoint at ``path`` would resume from (0 when none yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return len(torch.load(io.BytesIO(data), weights_only=True)["run"]["records"])


def test_node_killed_mid_synthesis_resumes_from_checkpoint(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1, sizes=(128,), iterations=3000)
    spec = yaml.safe_load(manifest.read_text())
    spec["params"]["history_size"] = 10  # small checkpoints: a few MB at 128 px
    manifest.write_text(yaml.safe_dump(spec))
    output = tmp_path / "out"
    plan = load_manifest(manifest)
    (item,) = expand(plan)
    saved = output / checkpoint_path(item.item_id)

    # the worker can start only on the victim; the survivor joins once the run is saved
    # (nodes are added and removed from the main thread, so the render runs beside it)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    victim = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    outcome: dict[str, object] = {}

    def render() -> None:
        options = PoolOptions(cpu_actors=1, threads_per_actor=1, checkpoint_every=0.2)
        try:
            outcome["summary"] = run_render([item], plan.weights, OutputRoot(plan.output), options)
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome["error"] = exc

    seen_at_kill: list[int] = []
    try:
        driver = threading.Thread(target=render, daemon=True)
        driver.start()
        deadline = time.time() + 180
        while time.time() < deadline and driver.is_alive() and checkpointed_iteration(saved) < 100:
            time.sleep(0.05)
        cluster.add_node(num_cpus=1)
        seen_at_kill.append(checkpointed_iteration(saved))
        cluster.remove_node(victim, allow_graceful=False)
        driver.join(timeout=300)
    finally:
        ray.shutdown()
        cluster.shutdown()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    summary = outcome["summary"]
    assert isinstance(summary, RunSummary)

    assert seen_at_kill and seen_at_kill[0] >= 100, "the node was not killed mid-synthesis"
    assert summary.failed == [] and summary.retried == 1
    table = sorted(rows(output), key=lambda r: r["attempt"])
    assert [(r["status"], r["attempt"]) for r in table] == [("retried", 1), ("ok", 2)]
    assert "worker lost" in table[0]["error"]
    ok = table[1]
    # resumed from the last checkpoint the dead worker saved, not from iteration 0
    assert seen_at_kill[0] <= ok["resumed_from_iteration"] < 3000
    assert ok["iterations"] == 3000 == len(ok["iteration_seconds"]) == len(ok["total_losses"])
    assert not saved.exists() and not list((output / CHECKPOINT_DIR).iterdir())
    (png,) = assert_outputs_whole(output)

    # the same image as an uninterrupted synthesis of the item (same thread count on CPU)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights, _ = plan.weights.load()
        straight = Stylizer(weights, device="cpu").synthesize(
            item.content_path, [item.style_paths[0]], item.config
        )
    finally:
        torch.set_num_threads(threads)
    with Image.open(png) as img:
        rendered = np.asarray(img.convert("RGB"), dtype=np.int16)
    expected = np.asarray(straight.image[0].permute(1, 2, 0).mul(255).round().to(torch.int16))
    assert rendered.shape == expected.shape
    assert np.abs(rendered - expected).max() <= 1
    assert ok["final_total_loss"] == pytest.approx(straight.stats.final_total_loss, rel=1e-5)
