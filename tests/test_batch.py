"""Several syntheses at once (engine.batch): each as if alone, isolated failures, memory-aware
admission, real out-of-memory splits, batched rows through a real local Ray, and calls that
fill a worker's batch (the scheduler's share per worker, a later call joining the batch)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.batch import EvaluationBatch, run_together
from nst_engine.engine.memory import MemoryModel, is_out_of_memory
from nst_engine.engine.optimize import OptimizerSettings
from tests.conftest import out_of_memory_report, write_image

BASE = SynthesisConfig(size=48, iterations=12)


@pytest.fixture
def images(tmp_path: Path) -> tuple[list[Path], Path]:
    contents = [write_image(tmp_path / f"c{i}.png", 48, 40, seed=i) for i in range(3)]
    return contents, write_image(tmp_path / "s.png", 40, 48, seed=9)


def batched(stylizer: Stylizer, jobs: list, members: int, memory: MemoryModel | None = None) -> list:
    batch = EvaluationBatch(stylizer.device, members, memory)
    with batch:
        return run_together([lambda job=job: stylizer.synthesize(*job, batch=batch) for job in jobs], members)


def test_a_batch_of_three_gives_the_images_of_three_alone(stylizer: Stylizer, images) -> None:
    contents, style = images
    configs = [replace(BASE, seed=i, ratio=r) for i, r in enumerate((1e-3, 1e-2, 1e-1))]
    jobs = [(c, [style], config) for c, config in zip(contents, configs, strict=True)]
    alone = [stylizer.synthesize(*job) for job in jobs]
    together = batched(stylizer, jobs, 3)
    for a, b in zip(alone, together, strict=True):
        assert not isinstance(b, BaseException), b
        assert b.stats.batch_size == 3 and a.stats.batch_size == 1
        assert b.stats.iterations == a.stats.iterations == 12
        assert b.stats.loss_evaluations == a.stats.loss_evaluations
        assert b.stats.final_total_loss == pytest.approx(a.stats.final_total_loss, rel=1e-4)
        assert float((a.image - b.image).abs().max()) < 1e-2


def test_a_diverging_or_bad_item_leaves_the_others_as_alone(
    stylizer: Stylizer, images, tmp_path: Path
) -> None:
    contents, style = images
    good = [(contents[0], [style], replace(BASE, seed=1)), (contents[1], [style], replace(BASE, seed=2))]
    # a style weight past float32's range: the loss is infinite from the start
    diverging = (contents[2], [style], replace(BASE, optimizer="adam", ratio=1e-45))
    missing = (tmp_path / "missing.png", [style], BASE)
    alone = [stylizer.synthesize(*job) for job in good]
    outcomes = batched(stylizer, [good[0], diverging, missing, good[1]], 4)
    assert outcomes[1].stats.stop_reason == "diverged"
    assert isinstance(outcomes[2], Exception) and "missing.png" in str(outcomes[2])
    for a, b in zip(alone, [outcomes[0], outcomes[3]], strict=True):
        assert b.stats.batch_size >= 2
        assert b.stats.final_total_loss == pytest.approx(a.stats.final_total_loss, rel=1e-4)
        assert float((a.image - b.image).abs().max()) < 1e-2


def test_the_memory_model_admits_only_what_fits(stylizer: Stylizer, images) -> None:
    contents, style = images
    settings = BASE.optimizer_settings()
    pixels = 48 * 40
    per_pixel = 5000.0
    need = MemoryModel(0, per_pixel).need(pixels, settings)
    model = MemoryModel(budget=int(2.5 * need), bytes_per_pixel=per_pixel)  # room for two
    jobs = [(c, [style], replace(BASE, seed=i)) for i, c in enumerate(contents * 2)]
    outcomes = batched(stylizer, jobs, 6, model)
    assert all(not isinstance(o, BaseException) for o in outcomes)
    assert max(o.stats.batch_size for o in outcomes) == 2


def test_the_model_counts_the_optimizers_state_exactly() -> None:
    lbfgs = OptimizerSettings(history_size=100)
    model = MemoryModel(budget=0, bytes_per_pixel=3000.0)
    assert model.need(1000, lbfgs) == 3000 * 1000 + 4 * 3 * 1000 * (8 + 200)
    model.observe(1000, 10_000_000)  # measured: 10 kB per pixel
    assert model.need(1000, lbfgs) == 10_000 * 1000 + 4 * 3 * 1000 * (8 + 200)
    model.ran_out(2000)
    assert model.bytes_per_pixel == 10_000  # a budget of 0 teaches nothing lower


class _Convolutions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += func.overloadpacket.__name__ == "convolution"
        return func(*args, **(kwargs or {}))


def test_the_first_pass_is_measured_warm(images) -> None:
    """A batch's first pass runs twice and its memory is measured on the second: the
    first warms the device up (cuDNN autotunes there, and its workspaces are not the
    activations the model plans for)."""
    contents, style = images
    config = replace(BASE, iterations=1)
    passes = []
    for memory in (MemoryModel(budget=2**40), MemoryModel(budget=2**40, bytes_per_pixel=5000.0)):
        stylizer = Stylizer(random_weights(seed=0), device="cpu")  # no targets cached
        with EvaluationBatch(stylizer.device, 2, memory) as batch, _Convolutions() as convolutions:
            stylizer.synthesize(contents[0], [style], config, batch=batch)  # in this thread: counted
        passes.append(convolutions.count)
        assert memory.measured
    forward = 13  # the network's convolutions up to conv5_1
    assert passes[0] - passes[1] == forward  # one more pass
    assert memory.bytes_per_pixel == 5000.0  # a measured model is not measured again


def test_allocation_failures_of_cuda_libraries_are_out_of_memory() -> None:
    """cuDNN and cuBLAS report a workspace or handle they could not allocate in their own
    words, and CUDA's runtime outside PyTorch's allocator in its: all are out of memory (a
    smaller batch or size may fit), not an item's fault to retry as is."""
    for text in (
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
    ):
        assert is_out_of_memory(RuntimeError(text)), text
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))
    assert not is_out_of_memory(ValueError("CUDNN_STATUS_ALLOC_FAILED in a file name"))


def test_a_pass_that_runs_out_of_memory_is_split_and_no_item_is_lost(tmp_path: Path) -> None:
    """A real allocation failure (RLIMIT_AS in a subprocess): a pass of four images that
    does not fit is evaluated again in halves; every synthesis ends as it would alone, or
    is handed back retryable (CrowdedOut); a single image that does not fit fails with the
    memory in its message, and the next synthesis on the same stylizer renders."""
    report = out_of_memory_report("batch_oom_child.py", tmp_path)
    assert report["chunk"] < 4, report  # the pass of four was split
    assert len(report["batch_sizes"]) + len(report["errors"]) == 4, report
    assert all(e.startswith("CrowdedOut: 256x256 did not fit beside") for e in report["errors"]), report
    if report["batch_sizes"]:
        assert max(report["batch_sizes"]) < 4 and report["max_difference"] < 1e-5, report
    single = report["single"]
    assert "does not fit alone: predicted" in single or "can't allocate memory" in single, report
    assert report["afterwards"] == "ok", report


def test_rows_record_the_batch_through_ray(tmp_path: Path) -> None:
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from tests.ray_helpers import assert_outputs_whole, render_in_one_batch_worker, rows, tiny_manifest

    manifest = tiny_manifest(tmp_path, contents=4, styles=1, iterations=60)
    items = expand(load_manifest(manifest))
    assert len({i.batch_key for i in items}) == 1  # one shape: one batch
    summary = render_in_one_batch_worker(manifest)
    assert (summary.rendered, len(summary.failed)) == (4, 0)
    assert len(assert_outputs_whole(tmp_path / "out")) == 4
    found = rows(tmp_path / "out")
    assert sorted(r["status"] for r in found) == ["ok"] * 4
    assert max(r["batch_size"] for r in found) >= 2  # the worker ran them together


def test_a_batching_worker_gets_its_whole_share_in_one_call(tmp_path: Path) -> None:
    """A share per worker, not per call slot: 40 items for a lone worker batching 32 go in
    one call (two slots of 20 each would keep its batch below 32); with two workers the
    queue is split between them, and the first, holding its half, gets no second call."""
    from nst_engine.distributed.pool import Lane, Worker
    from nst_engine.distributed.scheduler import Scheduler
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from tests.ray_helpers import tiny_manifest

    items = expand(load_manifest(tiny_manifest(tmp_path, contents=20, styles=2)))
    assert len(items) == 40 and len({i.batch_key for i in items}) == 1

    def pool(workers: int) -> tuple[Lane, list[Worker]]:
        lane = Lane("render", {}, "cpu", 1, workers, workers, items)
        ready = [Worker(k, lane, None, None, ready=True, info={"max_batch": "32"}) for k in range(workers)]
        return lane, ready

    lane, (alone,) = pool(1)
    call = lane.hand_out(alone, Scheduler.batch_size(lane, 1, alone))
    assert len(call) == 40 and not lane.queue  # all 40: its batch of 32 fills, the rest join

    lane, (first, second) = pool(2)
    calls = [lane.hand_out(first, Scheduler.batch_size(lane, 2, first))]
    assert Scheduler.batch_size(lane, 2, first) == 0  # holds its share: its next slot stays empty
    calls.append(lane.hand_out(second, Scheduler.batch_size(lane, 2, second)))
    assert [len(c) for c in calls] == [20, 20] and not lane.queue
    assert {i.item_id for c in calls for i, _ in c} == {i.item_id for i in items}


def test_the_queue_keeps_each_batch_key_together(tmp_path: Path) -> None:
    """Contents 125x100, 125x101 and 125x102 at 64: the last two share an output shape
    (52x64), but the planner's pixel estimate truncates where the shape rounds, so by it
    the first (51x64) sorts between them and no call could carry both."""
    from nst_engine.distributed.scheduler import queue_order
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from tests.conftest import write_image
    from tests.ray_helpers import tiny_manifest

    manifest = tiny_manifest(tmp_path, contents=0, styles=1, sizes=(64,))
    for height in (100, 101, 102):
        write_image(tmp_path / "photos" / f"h{height}.png", 125, height, seed=height)
    items = expand(load_manifest(manifest))
    assert sorted(i.shape for i in items) == [(51, 64), (52, 64), (52, 64)]

    def runs(order: list) -> int:  # stretches of one batch_key in queue order
        return len(list(itertools.groupby(i.batch_key for i in order)))

    assert runs(sorted(items, key=lambda i: (-i.pixels_estimate, i.batch_key))) == 3  # the old order
    ordered = sorted(items, key=queue_order)
    assert runs(ordered) == 2 and ordered[0].shape == (52, 64)  # still largest first


def test_three_items_for_a_batch_of_three_run_as_one_batch(tmp_path: Path) -> None:
    """One worker, --max-batch 3, three items of one shape: one call, one batch of three
    (a share per call slot sent calls of two and one)."""
    from tests.ray_helpers import render_in_one_batch_worker, rows, tiny_manifest

    manifest = tiny_manifest(tmp_path, contents=3, styles=1, iterations=60)
    summary = render_in_one_batch_worker(manifest, max_batch=3)
    assert (summary.rendered, len(summary.failed)) == (3, 0)
    assert [r["batch_size"] for r in rows(tmp_path / "out")] == [3, 3, 3]


def test_a_later_call_joins_the_batch_of_the_running_one(tmp_path: Path) -> None:
    """A worker batching six, sent calls of at most three: only items of both of its
    calls in one pass can make a row's batch_size above three. Every item has one ok row
    and one whole image."""
    import ray

    from nst_engine.distributed.options import PoolOptions
    from nst_engine.distributed.runtime import connect
    from nst_engine.distributed.scheduler import Lane, Scheduler
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from nst_engine.storage.roots import OutputRoot
    from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

    plan = load_manifest(tiny_manifest(tmp_path, contents=6, styles=1, iterations=60))
    items = expand(plan)
    connect(num_cpus=2)
    try:
        options = PoolOptions(max_batch=6, max_in_flight=2)
        scheduler = Scheduler(plan.weights, OutputRoot(plan.output), options)
        scheduler.add_lane(Lane("render", {"num_cpus": 1}, "cpu", 1, 1, 1, items, max_batch=3))
        summary = scheduler.run()
    finally:
        ray.shutdown()
    assert (summary.rendered, summary.failed, summary.retried) == (6, [], 0)
    found = rows(tmp_path / "out")
    assert sorted(r["item_id"] for r in found) == sorted(i.item_id for i in items)  # none lost or twice
    assert {r["status"] for r in found} == {"ok"} and len(assert_outputs_whole(tmp_path / "out")) == 6
    assert max(r["batch_size"] for r in found) > 3, [r["batch_size"] for r in found]


def test_a_member_that_joins_later_is_evaluated_against_its_own_targets(stylizer: Stylizer, images) -> None:
    """Members come and go: a later member takes a finished one's place in the batch (its
    slot, its row of the stacked objective), yet every pass evaluates it against its own
    targets, never a departed member's."""
    contents, style = images
    other_style = write_image(contents[0].parent / "other.png", 40, 48, seed=11)
    jobs = [
        (contents[0], [style], replace(BASE, iterations=80)),  # still running when the third joins
        (contents[1], [style], replace(BASE, iterations=3)),  # leaves early
        (contents[2], [other_style], replace(BASE, ratio=1e-2)),  # joins in its place
    ]
    alone = [stylizer.synthesize(*job) for job in jobs]
    together = batched(stylizer, jobs, 2)
    for a, b in zip(alone, together, strict=True):
        assert not isinstance(b, BaseException), b
        assert b.stats.total_losses[:2] == pytest.approx(a.stats.total_losses[:2], rel=1e-5)
    assert together[2].stats.batch_size == 2


def test_a_member_whose_callback_raises_hands_its_state_back(stylizer: Stylizer, images) -> None:
    """A synthesis that fails outside its iterations (a snapshot or checkpoint write that
    raises) still gives back its slot of the batch's optimizer state, and the other member
    finishes."""
    contents, style = images

    def fail_at_third(record, _image) -> None:
        if record.iteration == 2:
            raise OSError("disk full")

    with EvaluationBatch(stylizer.device, 2, MemoryModel(budget=2**40, bytes_per_pixel=1.0)) as batch:
        outcomes = run_together(
            [
                lambda: stylizer.synthesize(contents[0], [style], BASE, batch=batch),
                lambda: stylizer.synthesize(
                    contents[1], [style], BASE, batch=batch, on_iteration=fail_at_third
                ),
            ],
            2,
        )
        assert not isinstance(outcomes[0], BaseException) and outcomes[0].stats.iterations == 12
        assert isinstance(outcomes[1], OSError)
        assert batch.segments.segments == {}  # every slot given back, every segment freed
