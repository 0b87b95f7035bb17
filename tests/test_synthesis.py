"""End-to-end syntheses on a tiny random VGG-19 at 32-64 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nst_engine.engine import (
    ConfigError,
    Stylizer,
    SynthesisConfig,
    random_weights,
    read_png_metadata,
    resolve_device,
)
from nst_engine.engine.images import load_image, to_tensor
from nst_engine.engine.targets import style_size
from tests.conftest import write_image

TINY = SynthesisConfig(size=48, iterations=15)


def test_losses_fall_and_stats_are_complete(stylizer: Stylizer, content_path: Path, style_path: Path) -> None:
    result = stylizer.synthesize(content_path, [style_path], TINY)
    stats = result.stats
    assert (stats.height, stats.width) == (40, 48)
    assert stats.pixels == 40 * 48
    assert stats.iterations == 15 == len(stats.total_losses) == len(stats.iteration_seconds)
    assert stats.resumed_from_iteration == 0  # no checkpoint policy, nothing resumed
    assert stats.loss_evaluations >= stats.iterations + 1  # one initial evaluation, then >= 1 per iteration
    assert stats.final_total_loss < stats.total_losses[0] / 2
    assert stats.final_style_loss < stats.style_losses[0]
    assert stats.device_type == "cpu" and stats.device_name
    assert stats.peak_memory_kind == "cpu_peak_rss" and stats.peak_memory_bytes > 10_000_000
    assert stats.setup_seconds >= stats.targets_seconds > 0
    params = result.metadata["nst:params"]
    assert params["ratio"] == TINY.ratio and params["style_layers"][0] == "conv1_1"
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
    assert stylizer.cache.hits == 1
    stylizer.synthesize(content_path, [style_path], SynthesisConfig(size=40, iterations=1))
    assert stylizer.cache.hits == 1  # a new size is a new target


def test_style_scale_keeps_style_aspect(style_path: Path) -> None:
    style = load_image(style_path)  # 40x48
    assert style_size(style, 40, 48, None) == (40, 48)  # paper: content size
    height, width = style_size(style, 40, 48, 1.0)
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
    result = stylizer.synthesize(content_path, [style_path], config)
    stats = result.stats
    assert stats.final_total_loss < stats.total_losses[0]
    for key, value in changes.items():
        assert result.metadata["nst:params"][key] == value


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
    metadata = stylizer.synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=3, init=str(init))
    ).metadata
    assert metadata["nst:params"]["init"] == str(init)
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
    style_ids = stylizer.synthesize(content_path, [style_path, other], config).metadata["nst:style_ids"]
    assert len(style_ids) == 2 and style_ids[0] != style_ids[1]
    with pytest.raises(ConfigError, match="give 1 weight, one per style image") as error:
        stylizer.synthesize(content_path, [style_path], config)
    assert error.value.field == "style_weights"


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
    for changes, field, needle in [
        ({"style_layers": ("conv9_1",)}, "style_layers", "conv9_1"),
        ({"ratio": 0.0}, "ratio", "0.0"),
        ({"size": 0}, "size", "0"),
        ({"size": 8}, "size", "conv5_1"),
        ({"style_layer_weights": (1.0,)}, "style_layer_weights", "one per layer"),
        ({"size": 32, "style_scale": 0.1}, "style_scale", "conv5_1"),
    ]:
        with pytest.raises(ConfigError, match=needle) as error:
            stylizer.synthesize(content_path, [style_path], SynthesisConfig(**changes))
        assert error.value.field == field, changes
        assert "--" not in error.value.message, changes  # front ends add their own spelling


def test_unknown_device_names_the_field() -> None:
    with pytest.raises(ConfigError, match="unknown device") as error:
        resolve_device("tpu7")
    assert error.value.field == "device"


def test_target_cache_keeps_the_most_recent(content_path: Path, style_path: Path) -> None:
    stylizer = Stylizer(random_weights(seed=0), device="cpu", target_cache_size=1)
    for size in (32, 40, 32):
        stylizer.synthesize(content_path, [style_path], SynthesisConfig(size=size, iterations=0))
    assert stylizer.cache.hits == 0  # 32 was evicted by 40
    stylizer.synthesize(content_path, [style_path], SynthesisConfig(size=32, iterations=0))
    assert stylizer.cache.hits == 1


def test_choice_values_are_normalised_to_their_enum() -> None:
    """Any spelling that validates is the value every comparison in the engine sees."""
    from nst_engine.engine import ColorMode, Precision

    config = SynthesisConfig(color="Luminance", precision=" BF16 ")
    assert config.color is ColorMode.LUMINANCE and config.precision is Precision.BF16
    assert config.to_params()["color"] == "luminance" and type(config.to_params()["color"]) is str
