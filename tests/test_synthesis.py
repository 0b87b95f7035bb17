"""End-to-end syntheses on a tiny random VGG-19 at 32-64 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst_engine.engine import ConfigError, Stylizer, SynthesisConfig, random_weights, read_png_metadata
from nst_engine.engine.images import load_image, to_tensor
from tests.conftest import write_image

TINY = SynthesisConfig(size=48, iterations=15)


def test_losses_fall_and_stats_are_complete(stylizer: Stylizer, content_path: Path, style_path: Path) -> None:
    result = stylizer.synthesize(content_path, [style_path], TINY)
    stats = result.stats
    assert (stats.height, stats.width) == (40, 48)
    assert stats.pixels == 40 * 48
    assert stats.iterations == 15 == len(stats.total_losses) == len(stats.iteration_seconds)
    assert stats.loss_evaluations >= stats.iterations + 1  # one initial evaluation, then >= 1 per iteration
    assert stats.final_total_loss < stats.total_losses[0] / 2
    assert stats.final_style_loss < stats.style_losses[0]
    assert stats.device_type == "cpu" and stats.device_name
    assert stats.peak_memory_kind == "cpu_peak_rss" and stats.peak_memory_bytes > 10_000_000
    assert stats.setup_seconds >= stats.targets_seconds > 0
    assert stats.params["ratio"] == TINY.ratio and stats.params["style_layers"][0] == "conv1_1"
    assert stats.torch_version == torch.__version__
    assert stats.weights_source.startswith("random")
    assert result.image.shape == (1, 3, 40, 48)
    assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0


def test_same_seed_same_bytes_and_other_seed_differs(
    tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    outputs = []
    for seed in (7, 7, 8):
        stylizer = Stylizer(random_weights(seed=0), device="cpu")
        result = stylizer.synthesize(
            content_path, [style_path], SynthesisConfig(size=48, iterations=5, seed=seed)
        )
        outputs.append(result.save(tmp_path / f"out{len(outputs)}.png").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_png_metadata_holds_parameters_and_weight_source(
    stylizer: Stylizer, tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    result = stylizer.synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=2, ratio=5e-4)
    )
    meta = read_png_metadata(result.save(tmp_path / "out.png"))
    params = json.loads(meta["nst:params"])
    assert params["ratio"] == 5e-4 and params["iterations"] == 2 and params["init"] == "noise"
    assert meta["nst:weights"].startswith("random")
    assert json.loads(meta["nst:iterations"]) == 2


def test_style_targets_cached_per_style_and_size(
    stylizer: Stylizer, content_path: Path, style_path: Path
) -> None:
    config = SynthesisConfig(size=32, iterations=1)
    stylizer.synthesize(content_path, [style_path], config)
    stylizer.synthesize(content_path, [style_path], config)
    assert stylizer.target_cache_hits == 1
    stylizer.synthesize(content_path, [style_path], SynthesisConfig(size=40, iterations=1))
    assert stylizer.target_cache_hits == 1  # a new size is a new target


def test_style_scale_keeps_style_aspect(stylizer: Stylizer, style_path: Path) -> None:
    style = load_image(style_path)  # 40x48
    assert stylizer.style_size(style, 40, 48, None) == (40, 48)  # paper: content size
    height, width = stylizer.style_size(style, 40, 48, 1.0)
    assert abs(height * width - 40 * 48) < 60 and height > width


@pytest.mark.parametrize(
    "changes",
    [
        {"init": "content"},
        {"init": "style"},
        {"optimizer": "adam"},
        {"pooling": "max"},
        {"tv_weight": 1e-3},
        {"color": "histogram"},
        {"style_scale": 1.5},
        {"history_size": 3},
    ],
)
def test_options_run_and_reduce_loss(
    stylizer: Stylizer, content_path: Path, style_path: Path, changes: dict
) -> None:
    config = SynthesisConfig(size=32, iterations=8, **changes)
    stats = stylizer.synthesize(content_path, [style_path], config).stats
    assert stats.final_total_loss < stats.total_losses[0]
    for key, value in changes.items():
        assert stats.params[key] == value


def test_line_search_counts_evaluations_separately(
    stylizer: Stylizer, content_path: Path, style_path: Path
) -> None:
    stats = stylizer.synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=6, line_search=True)
    ).stats
    assert stats.iterations == 6
    assert stats.loss_evaluations > stats.iterations + 1


def test_init_from_file_and_luminance_keeps_content_colours(
    stylizer: Stylizer, tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    init = write_image(tmp_path / "init.png", 20, 20, seed=5)
    stats = stylizer.synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=3, init=str(init))
    ).stats
    assert stats.params["init"] == str(init)
    result = stylizer.synthesize(
        content_path, [style_path], SynthesisConfig(size=48, iterations=3, color="luminance")
    )
    from nst_engine.engine.color import rgb_to_yiq

    content = to_tensor(load_image(content_path))
    chroma_out = rgb_to_yiq(result.image)[:, 1:]
    chroma_in = rgb_to_yiq(content)[:, 1:]
    # chroma comes from the content (up to clamping to [0, 1]); a plain run's does not
    plain = stylizer.synthesize(content_path, [style_path], SynthesisConfig(size=48, iterations=3)).image
    assert (chroma_out - chroma_in).abs().mean() < 0.02
    assert (rgb_to_yiq(plain)[:, 1:] - chroma_in).abs().mean() > 0.02


def test_several_styles_blend_weights(
    stylizer: Stylizer, tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    other = write_image(tmp_path / "style2.png", 30, 30, seed=9)
    config = SynthesisConfig(size=32, iterations=3, style_weights=(0.3, 0.7))
    stats = stylizer.synthesize(content_path, [style_path, other], config).stats
    assert len(stats.style_ids) == 2 and stats.style_ids[0] != stats.style_ids[1]
    with pytest.raises(ConfigError, match="--style-weights"):
        stylizer.synthesize(content_path, [style_path], config)


def test_snapshots_every_k_iterations(
    stylizer: Stylizer, tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    stylizer.synthesize(
        content_path,
        [style_path],
        SynthesisConfig(size=32, iterations=4),
        snapshot_every=2,
        snapshot_path=lambda i: tmp_path / f"snap{i}.png",
    )
    assert sorted(p.name for p in tmp_path.glob("snap*.png")) == ["snap2.png", "snap4.png"]


def test_bad_config_values_raise_config_error(
    stylizer: Stylizer, content_path: Path, style_path: Path
) -> None:
    for changes, option in [
        ({"style_layers": ("conv9_1",)}, "--style-layers"),
        ({"ratio": 0.0}, "--ratio"),
        ({"size": 0}, "--size"),
        ({"size": 8}, "conv5_1"),
        ({"style_layer_weights": (1.0,)}, "--style-layer-weights"),
    ]:
        with pytest.raises(ConfigError, match=option):
            stylizer.synthesize(content_path, [style_path], SynthesisConfig(**changes))
