"""Tiled synthesis: the tile-wise loss and gradient are the untiled ones, exactly."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.images import load_image
from nst_engine.engine.losses import StyleTransferObjective
from nst_engine.engine.memory import MemoryModel, optimizer_state_bytes
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache
from nst_engine.engine.tiles import TiledGradient, grid_and_halo, spans, tile_for
from nst_engine.errors import ConfigError
from tests.conftest import out_of_memory_report, write_image


def problem(content_path: Path, style_path: Path, **params: object) -> Problem:
    """The tiny random network in float64: equality up to summation order shows at 1e-10."""
    weights = random_weights(seed=3)
    weights.convs = [(w.double(), b.double()) for w, b in weights.convs]
    cache = TargetCache(weights, torch.device("cpu"))
    config = SynthesisConfig(**{"size": 200, "channels_last": False, **params})  # type: ignore[arg-type]
    built = Problem.build(load_image(content_path).convert("RGB"), [load_image(style_path)], config, cache)
    built.objective.double()
    return built


def untiled(objective: StyleTransferObjective, image: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    x = image.clone().requires_grad_(True)
    terms = objective(x)
    (grad,) = torch.autograd.grad(terms.total.sum(), x)
    return list(terms.values()), grad


def tiled_at(
    tiled: TiledGradient, objective: StyleTransferObjective, image: torch.Tensor
) -> tuple[list[float], torch.Tensor]:
    """A tiled evaluation's loss terms as floats and its flat gradient."""
    values, grad = tiled(objective, image)
    return values[0].tolist(), grad.reshape(-1)


@pytest.mark.parametrize(
    ("tile", "params"),
    [
        (64, {}),  # many tiles, the image 200 px wide: a ragged last tile
        (96, {"tv_weight": 1e-3}),  # with the total-variation prior
        (48, {"content_layers": ("conv4_2", "conv3_1"), "style_layers": ("conv1_1", "conv5_1")}),
        (32, {"pooling": "max"}),
    ],
)
def test_tiled_loss_and_gradient_equal_untiled(
    tile: int, params: dict, content_path: Path, style_path: Path
) -> None:
    built = problem(content_path, style_path, **params)
    image = built.initial_image().double()
    values, grad = untiled(built.objective, image)
    tiled = TiledGradient(built.objective, tile)
    assert len(tiled.tiles(*image.shape[-2:])) > 4  # really tiled
    for _ in range(3):  # each evaluation moves the grid
        tiled_values, tiled_grad = tiled_at(tiled, built.objective, image)
        assert tiled_values == pytest.approx(values, rel=1e-10, abs=1e-12)
        assert torch.allclose(tiled_grad, grad.reshape(-1), rtol=1e-9, atol=1e-9 * grad.abs().max().item())


def test_too_small_a_halo_would_differ(content_path: Path, style_path: Path) -> None:
    """The halo is what makes it exact: with none, the tiles' borders see zero padding."""
    built = problem(content_path, style_path, size=192)  # 192x160: no tile below one cell
    image = built.initial_image().double()
    values, _ = untiled(built.objective, image)
    tiled = TiledGradient(built.objective, 64)
    tiled.halo = 0
    assert tiled_at(tiled, built.objective, image)[0][0] != pytest.approx(values[0], rel=1e-6)


def test_tiles_own_every_pixel_once_on_the_grid() -> None:
    grid, halo = grid_and_halo(("conv4_2", "conv5_1"))
    assert (grid, halo) == (16, 80)  # conv5_1 reaches 70 px beyond its 16 px cell
    for offset in (0, 16, 48):
        parts = spans(1000, 256, halo, offset)
        assert [p.own_start for p in parts[1:]] == [p.own_stop for p in parts[:-1]]
        assert parts[0].own_start == 0 and parts[-1].own_stop == 1000
        assert all(p.start % grid == 0 and p.own_start % grid == 0 for p in parts)
        assert all(p.start == max(0, p.own_start - halo) for p in parts)


def test_tile_for_fits_the_budget() -> None:
    config = SynthesisConfig(history_size=10)  # conv5_1 deepest: 16 px grid, 80 px halo
    settings = config.optimizer_settings()
    memory = MemoryModel(budget=4 * 2**30)
    assert tile_for(512, 512, config, memory) == 0  # fits whole
    tile = tile_for(2048, 2048, config, memory)
    assert tile % 16 == 0 and 0 < tile < 2048
    state = optimizer_state_bytes(settings, 2048 * 2048)  # the whole image's, tiled or not
    assert memory.activation_bytes_per_pixel * (tile + 2 * 80) ** 2 + state <= memory.budget
    assert memory.activation_bytes_per_pixel * (tile + 16 + 2 * 80) ** 2 + state > memory.budget  # largest
    assert tile_for(2048, 2048, replace(config, tile=256), memory) == 256  # asked for by name
    assert tile_for(200, 200, replace(config, tile=256), memory) == 0  # smaller than one tile
    with pytest.raises(MemoryError, match="lower history_size"):
        tile_for(2048, 2048, replace(config, history_size=500), memory)


def test_a_tiled_synthesis_gives_the_untiled_image(stylizer: Stylizer, tmp_path: Path) -> None:
    """Through the engine, coarse-to-fine included: the coarse scale (below the tile) runs
    whole, the final one in tiles, and the image is the untiled one to float32 rounding."""
    content = write_image(tmp_path / "content.png", 160, 120, seed=4)
    style = write_image(tmp_path / "style.png", 100, 100, seed=5)
    base = SynthesisConfig(size=160, iterations=6, scales=2, scale_iterations=3, tile=0)
    whole = stylizer.synthesize(content, [style], base)
    tiled = stylizer.synthesize(content, [style], replace(base, tile=48))
    assert (whole.stats.tile, whole.stats.tiles) == (0, 0)
    assert (tiled.stats.tile, tiled.stats.tiles) == (48, 12)  # 160x120 in 48 px tiles: 4 × 3
    assert tiled.stats.scale_schedule == whole.stats.scale_schedule == "80x60:3,160x120:6"
    assert tiled.stats.final_total_loss == pytest.approx(whole.stats.final_total_loss, rel=1e-4)
    assert (tiled.image - whole.image).abs().max() < 1e-3
    assert base.to_params() == replace(base, tile=48).to_params()  # the same item either way


def test_a_tile_off_the_grid_is_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of 16 px") as caught:
        SynthesisConfig(tile=100)
    assert caught.value.field == "tile"


def test_a_manifest_tile_renders_alone_in_tiles_through_ray(tmp_path: Path) -> None:
    """``params.tile`` in a manifest reaches the worker; items that would be tiled leave
    the batch (each sized for the whole device), and their ids are the untiled ones'."""
    import yaml

    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from tests.ray_helpers import assert_outputs_whole, render_in_one_batch_worker, rows, tiny_manifest

    manifest = tiny_manifest(tmp_path, contents=3, styles=1, iterations=3)
    untiled_ids = sorted(i.item_id for i in expand(load_manifest(manifest)))
    spec = yaml.safe_load(manifest.read_text())
    spec["params"]["tile"] = 16
    manifest.write_text(yaml.safe_dump(spec))
    assert sorted(i.item_id for i in expand(load_manifest(manifest))) == untiled_ids
    summary = render_in_one_batch_worker(manifest)
    assert (summary.rendered, len(summary.failed)) == (3, 0)
    assert len(assert_outputs_whole(tmp_path / "out")) == 3
    found = rows(tmp_path / "out")
    assert [(r["status"], r["tile"], r["batch_size"]) for r in found] == [("ok", 16, 1)] * 3
    assert all(r["tiles"] == 4 for r in found)  # 32x27 in 16 px tiles: 2 × 2
    spans_run = sorted((r["started_at"], r["finished_at"]) for r in found)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans_run))  # one at a time


def test_a_pooling_layer_as_a_loss_layer_tiles_exactly(content_path: Path, style_path: Path) -> None:
    """A pooling layer's positions are its own pooling's width apart (pool2: 4 px)."""
    built = problem(
        content_path, style_path, size=50, style_layers=("conv1_1", "pool2"), content_layers=("pool2",)
    )
    image = built.initial_image().double()
    values, grad = untiled(built.objective, image)
    tiled_values, tiled_grad = tiled_at(TiledGradient(built.objective, 16), built.objective, image)
    assert tiled_values == pytest.approx(values, rel=1e-10, abs=1e-12)
    assert torch.allclose(tiled_grad, grad.reshape(-1), rtol=1e-9, atol=1e-9 * grad.abs().max().item())


def test_unknown_free_memory_does_not_tile() -> None:
    """A budget of 0 is free memory not known (no /proc), not nothing free."""
    assert tile_for(4096, 4096, SynthesisConfig(), MemoryModel(budget=0)) == 0


def test_an_evaluation_that_runs_out_of_memory_runs_again_in_smaller_tiles(tmp_path: Path) -> None:
    """A real allocation failure (RLIMIT_AS in a subprocess) at a whole-image tile: the
    evaluation runs again in half-size tiles and gives the same loss and gradient."""
    report = out_of_memory_report("tiles_oom_child.py", tmp_path)
    assert 16 <= report["tile"] < 512, report  # halved at least once
    assert report["loss_difference"] < 1e-5 and report["grad_difference"] < 1e-4, report


def _with_temporal(built: Problem, weight: float, seed: int) -> None:
    """``built``'s objective plus a temporal term (Ruder et al. 2016, eq. 7) towards a
    random warped frame over random {0, 1} weights, in float64."""
    from nst_engine.engine.temporal import TemporalLoss

    gen = torch.Generator().manual_seed(seed)
    shape = built.initial_image().shape
    warped = torch.rand(shape, generator=gen, dtype=torch.float64)
    weights = (torch.rand(1, 1, *shape[-2:], generator=gen) < 0.7).double()
    built.objective.with_temporal(TemporalLoss(warped, weights), weight)
    built.objective.double()  # the term keeps float32 buffers: its target is rounded once


def test_tiled_temporal_loss_and_gradient_equal_untiled(content_path: Path, style_path: Path) -> None:
    """A video frame's temporal term, cut per tile over the pixels each owns, gives the
    untiled loss and gradient, as the paper's terms do (TV on too: both pixel terms)."""
    built = problem(content_path, style_path, size=128, tv_weight=1e-3)
    image = built.initial_image().double()
    plain, _ = untiled(built.objective, image)
    _with_temporal(built, weight=1e4, seed=6)
    values, grad = untiled(built.objective, image)
    assert values[0] > plain[0] * 1.01  # the term weighs in the total
    assert values[1:] == pytest.approx(plain[1:], rel=1e-12)  # and in no other column
    tiled = TiledGradient(built.objective, 48)  # a ragged last tile
    assert len(tiled.tiles(*image.shape[-2:])) > 4
    for _ in range(2):  # the grid moves: owned regions change, the sum does not
        tiled_values, tiled_grad = tiled_at(tiled, built.objective, image)
        assert tiled_values == pytest.approx(values, rel=1e-10, abs=1e-12)
        assert torch.allclose(tiled_grad, grad.reshape(-1), rtol=1e-9, atol=1e-9 * grad.abs().max().item())


def test_tiled_temporal_gradient_pulls_towards_the_target(content_path: Path, style_path: Path) -> None:
    """At weight alone (the paper's weights 0), the tiled gradient is (2/D)·c·(x − ω)
    itself, zero wherever c is."""
    built = problem(content_path, style_path, size=96)
    built.objective.content_weight = built.objective.style_weight = 0.0  # α = β = 0
    image = built.initial_image().double()
    _with_temporal(built, weight=1.0, seed=7)
    warped, weights = built.objective.temporal_loss.target, built.objective.temporal_loss.weights
    _, grad = tiled_at(TiledGradient(built.objective, 48), built.objective, image)
    expected = 2.0 / image[0].numel() * weights * (image - warped)
    assert torch.allclose(grad, expected.reshape(-1), rtol=1e-12, atol=1e-18)
    assert (weights == 0).any() and (grad.view_as(image)[(weights == 0).expand_as(image)] == 0).all()


def test_a_tiled_video_frame_gives_the_untiled_frame(stylizer: Stylizer, tmp_path: Path) -> None:
    """Through the engine: a frame with the temporal loss runs in tiles (no longer refused)
    and lands where the untiled frame does."""
    from nst_engine.engine.synthesis import PreviousFrame

    content = write_image(tmp_path / "content.png", 64, 48, seed=4)
    style = write_image(tmp_path / "style.png", 48, 48, seed=5)
    base = SynthesisConfig(size=64, iterations=5, tile=0)
    gen = torch.Generator().manual_seed(8)
    previous = PreviousFrame(
        torch.rand(1, 3, 48, 64, generator=gen), (torch.rand(1, 1, 48, 64, generator=gen) < 0.8).float()
    )
    whole = stylizer.synthesize(content, [style], base, previous=previous)
    tiled = stylizer.synthesize(content, [style], replace(base, tile=32), previous=previous)
    assert (tiled.stats.tile, tiled.stats.tiles) == (32, 4)  # 64x48: 2 × 2
    assert whole.stats.final_temporal_loss is not None
    assert tiled.stats.final_temporal_loss == pytest.approx(whole.stats.final_temporal_loss, rel=1e-4)
    assert tiled.stats.final_total_loss == pytest.approx(whole.stats.final_total_loss, rel=1e-4)
    assert (tiled.image - whole.image).abs().max() < 1e-3
