"""One placement decision (engine.placement): whole, batched or tiled, the same answer for
the engine, the worker, `nst stylize` and the plan's fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.batch import EvaluationBatch
from nst_engine.engine.memory import MemoryModel
from nst_engine.engine.placement import How, Placement, place

ROOMY = MemoryModel(budget=2**40, bytes_per_pixel=3000.0)
CONFIG = SynthesisConfig(size=2048, iterations=10, history_size=5)


def test_an_image_that_fits_runs_whole_or_joins_the_batch() -> None:
    assert place(1536, 2048, CONFIG, ROOMY) == Placement(How.WHOLE)
    assert place(1536, 2048, CONFIG, ROOMY, batch=True) == Placement(How.BATCHED)


def test_an_image_larger_than_its_tile_or_its_budget_runs_tiled_and_alone() -> None:
    asked = place(1536, 2048, SynthesisConfig(size=2048, tile=512), ROOMY, batch=True)
    assert asked == Placement(How.TILED, 512) and asked.tiles(1536, 2048) == 12
    tight = MemoryModel(budget=2 * 1024**3, bytes_per_pixel=3000.0)  # 2 GiB: 2048x1536 needs 9 GiB
    placement = place(1536, 2048, CONFIG, tight, batch=True)
    assert placement.how is How.TILED and 0 < placement.tile < 2048 and placement.tile % 16 == 0
    with pytest.raises(MemoryError, match="does not fit even in tiles"):
        place(1536, 2048, SynthesisConfig(size=2048, history_size=100), MemoryModel(budget=10**8))


def test_the_engine_runs_as_placed(content_path: Path, style_path: Path) -> None:
    """A synthesis that is given no placement decides it with the same function: with a
    batch, against the batch's own memory model (the budget its members were admitted
    by), so what other members hold now never makes it tile."""
    stylizer = Stylizer(random_weights(seed=0), device="cpu")
    config = SynthesisConfig(size=64, iterations=2, tile=32)
    assert stylizer.place(64, 64, config).tile == 32
    result = stylizer.synthesize(content_path, [style_path], config)
    assert result.stats.tile == 32 and result.stats.batch_size == 1
    batch = EvaluationBatch(stylizer.device, 2, MemoryModel(budget=2**40, bytes_per_pixel=1.0))
    assert stylizer.place(64, 64, SynthesisConfig(size=64), batch).how is How.BATCHED
