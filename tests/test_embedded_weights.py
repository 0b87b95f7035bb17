"""The real embedded VGG-19 at 64 px: the optimisation does what the paper says."""

from __future__ import annotations

from pathlib import Path

import pytest

from nst_engine.engine import Stylizer, SynthesisConfig
from nst_engine.engine.weights_spec import WeightsSpec, sample_images


@pytest.fixture(scope="module")
def samples() -> dict[str, Path]:
    return {p.stem: p for p in sample_images()}


def test_embedded_weights_style_loss_falls_tenfold(samples: dict[str, Path]) -> None:
    weights, _ = WeightsSpec(source="embedded", normalize=False).load()
    stylizer = Stylizer(weights, device="cpu")
    # content loss grows with pixels while style loss does not, so a small image needs a
    # larger alpha/beta for the content term to matter
    config = SynthesisConfig(size=64, iterations=20, ratio=1e-1)
    stats = stylizer.synthesize(samples["tubingen"], [samples["starry_night"]], config).stats
    assert stats.iterations == 20
    assert stats.final_style_loss * 10 <= stats.style_losses[0]
    assert stats.final_content_loss < stats.content_losses[0]
    assert "embedded" in stats.weights_source


def test_normalized_network_has_unit_mean_activations(samples: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from nst_engine.engine.normalization import mean_activations, normalize_weights
    from nst_engine.engine.weights import load_weights

    raw = load_weights("embedded")
    calibration = [samples["tubingen"], samples["the_scream"]]
    normalized = normalize_weights(raw, calibration, size=64, cache=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # cached on disk
    from nst_engine.engine.images import load_image, output_size, resize, to_tensor

    images = [to_tensor(resize(load_image(p), *output_size(*load_image(p).size, 64))) for p in calibration]
    means = mean_activations(normalized, images)
    live = [m[m > 0] for m in means]
    for layer_means in live:
        assert torch.allclose(layer_means, torch.ones_like(layer_means), rtol=1e-3)
    # the second call reads the cache and gives identical weights
    again = normalize_weights(raw, calibration, size=64, cache=tmp_path)
    assert again.digest == normalized.digest
