"""The engine on a CUDA GPU against float32 on the CPU: skipped where torch sees no GPU (CI);
run it with pytest on a machine with one (``benchmarks/gpu_check.py`` is the short device call)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.batch import run_together
from tests.conftest import write_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

CONFIG = SynthesisConfig(size=64, iterations=20, precision="fp32")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_image(tmp_path / "c.png", 64, 48, seed=1), write_image(tmp_path / "s.png", 48, 64, seed=2)


def test_fp32_on_cuda_follows_the_cpu(pair) -> None:
    """Same seed and start: the loss curves agree within 1e-3 relative after 20 iterations."""
    weights = random_weights((64, 128, 256, 512, 512), seed=0)
    cpu = Stylizer(weights, device="cpu").synthesize(pair[0], [pair[1]], CONFIG)
    gpu = Stylizer(weights, device="cuda").synthesize(pair[0], [pair[1]], CONFIG)
    assert gpu.stats.device_type == "cuda" and gpu.stats.iterations == cpu.stats.iterations
    for a, b in zip(cpu.stats.total_losses, gpu.stats.total_losses, strict=True):
        assert b == pytest.approx(a, rel=1e-3)
    assert gpu.stats.final_total_loss == pytest.approx(cpu.stats.final_total_loss, rel=1e-3)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precisions_reach_fp32s_loss(pair, precision: str) -> None:
    weights = random_weights((64, 128, 256, 512, 512), seed=0)
    stylizer = Stylizer(weights, device="cuda")
    full = stylizer.synthesize(pair[0], [pair[1]], CONFIG)
    reduced = stylizer.synthesize(pair[0], [pair[1]], replace(CONFIG, precision=precision))
    assert reduced.stats.final_total_loss == pytest.approx(full.stats.final_total_loss, rel=0.05)


def alone_and_together(pair, configs: list[SynthesisConfig]) -> tuple[list, list]:
    """Each config rendered alone, then all of them as one batch, on a fresh CUDA stylizer."""
    stylizer = Stylizer(random_weights((64, 128, 256, 512, 512), seed=0), device="cuda")
    alone = [stylizer.synthesize(pair[0], [pair[1]], c) for c in configs]
    with stylizer.batch(len(configs)) as batch:
        together = run_together(
            [lambda c=c: stylizer.synthesize(pair[0], [pair[1]], c, batch=batch) for c in configs],
            len(configs),
        )
    return alone, together


def test_a_batch_on_cuda_gives_the_images_alone(pair) -> None:
    alone, together = alone_and_together(pair, [replace(CONFIG, seed=s) for s in range(4)])
    for a, b in zip(alone, together, strict=True):
        assert not isinstance(b, BaseException), b
        assert b.stats.batch_size == 4
        assert b.stats.final_total_loss == pytest.approx(a.stats.final_total_loss, rel=1e-3)


def test_fp32_and_tf32_items_in_one_batch_each_render_as_alone(pair) -> None:
    """cuDNN's TF32 switch is the process's: with one owner per pass, an fp32 item beside a
    tf32 one still runs its convolutions in fp32 (and the tf32 one in TF32)."""
    alone, together = alone_and_together(pair, [CONFIG, replace(CONFIG, precision="tf32")])
    for a, b in zip(alone, together, strict=True):
        assert not isinstance(b, BaseException), b
        assert b.stats.total_losses[:3] == pytest.approx(a.stats.total_losses[:3], rel=1e-5)
