"""Shared fixtures: tiny real images and a tiny random VGG-19."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_engine.engine import Stylizer, random_weights


def write_image(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random colour image (gradients plus blobs), so features are non-trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-6, 6, size=3)
        channels.append(0.5 + 0.5 * np.sin(a * x + b * y + c))
    array = (np.stack(channels, -1) * 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def content_path(tmp_path: Path) -> Path:
    return write_image(tmp_path / "content.png", 48, 40, seed=1)


@pytest.fixture
def style_path(tmp_path: Path) -> Path:
    return write_image(tmp_path / "style.png", 40, 48, seed=2)


@pytest.fixture
def stylizer() -> Stylizer:
    return Stylizer(random_weights(seed=0), device="cpu")
