"""Several syntheses at once (engine.batch): each as if alone, isolated failures, memory-aware
admission, real out-of-memory splits, and batched rows through a real local Ray."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from nst_engine.engine import Stylizer, SynthesisConfig
from nst_engine.engine.batch import EvaluationBatch, run_together
from nst_engine.engine.memory import MemoryModel
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
