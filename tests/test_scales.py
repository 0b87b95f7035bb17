"""Coarse-to-fine synthesis (engine.scales): the paper's single scale untouched, the schedule
run and recorded, refused schedules named, item ids of earlier results kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nst_engine.engine import Stylizer, SynthesisConfig
from nst_engine.engine.scales import coarser_scales, upsample
from nst_engine.errors import ConfigError
from tests.conftest import write_image

CONFIG = SynthesisConfig(size=96, iterations=15)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_image(tmp_path / "c.png", 96, 80, seed=1), write_image(tmp_path / "s.png", 80, 96, seed=2)


def test_one_scale_is_the_papers_method_exactly(stylizer: Stylizer, pair) -> None:
    """scales=1 with any factor or coarse iterations is the same run: same image, same losses."""
    plain = stylizer.synthesize(pair[0], [pair[1]], CONFIG)
    other = stylizer.synthesize(pair[0], [pair[1]], replace(CONFIG, scale_factor=3.0, scale_iterations=7))
    assert torch.equal(plain.image, other.image)
    assert plain.stats.total_losses == other.stats.total_losses
    assert plain.stats.scale_schedule == "96x80:15" and plain.stats.coarse_seconds == 0.0


def test_three_scales_run_smallest_first_and_finish_at_the_size(stylizer: Stylizer, pair) -> None:
    config = replace(CONFIG, scales=3, scale_iterations=10)
    result = stylizer.synthesize(pair[0], [pair[1]], config)
    assert result.image.shape == (1, 3, 80, 96)
    assert result.stats.scale_schedule == "24x20:10,48x40:10,96x80:15"
    assert result.stats.iterations == 15 and len(result.stats.total_losses) == 15  # the last scale's
    assert 0 < result.stats.coarse_seconds < result.stats.synthesis_seconds
    plain = stylizer.synthesize(pair[0], [pair[1]], CONFIG)
    # the coarse start is already structured: the finest scale starts far below white noise
    assert result.stats.total_losses[0] < 0.5 * plain.stats.total_losses[0]
    assert [s.size for s in coarser_scales(config)] == [24, 48]
    assert "scales" in result.metadata["nst:params"]


def test_schedules_below_the_networks_reach_are_refused() -> None:
    with pytest.raises(ConfigError, match="start at 8 px, below the 16 px that conv5_1 needs") as info:
        SynthesisConfig(size=64, scales=4)
    assert info.value.field == "scales"
    for field, value in (("scales", 0), ("scale_factor", 1.0), ("scale_iterations", -1)):
        with pytest.raises(ConfigError) as info:
            replace(CONFIG, **{field: value})
        assert info.value.field == field


def test_ids_of_single_scale_items_are_those_from_before_scales_existed() -> None:
    params = CONFIG.to_params()
    assert not {"scales", "scale_factor", "scale_iterations"} & params.keys()
    assert replace(CONFIG, scales=2).to_params()["scales"] == 2


def test_upsample_keeps_the_range_and_copies() -> None:
    image = torch.rand(1, 3, 8, 10)
    assert upsample(image, 16, 20).shape == (1, 3, 16, 20)
    same = upsample(image, 8, 10)
    assert torch.equal(same, image) and same.data_ptr() != image.data_ptr()
    assert float(upsample(image, 33, 41).min()) >= 0 and float(upsample(image, 33, 41).max()) <= 1
