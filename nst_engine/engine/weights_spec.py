"""What network to load, as plain data: a batch worker receives this and loads it once."""

from __future__ import annotations

import importlib.resources
import time
from dataclasses import dataclass
from pathlib import Path

from nst_engine.engine.normalization import normalize_weights
from nst_engine.engine.weights import VGGWeights, load_weights


def sample_images() -> list[Path]:
    """The shipped sample images (see nst_engine/samples/CREDITS.md)."""
    folder = importlib.resources.files("nst_engine.samples")
    return sorted(
        Path(str(folder / name))
        for name in ("tubingen.jpg", "starry_night.jpg", "shipwreck.jpg", "the_scream.jpg")
    )


@dataclass(frozen=True)
class WeightsSpec:
    source: str = "embedded"  # embedded | torchvision | random[:seed] | path to a state dict
    preprocessing: str | None = None  # for a path: torchvision (default) or caffe
    normalize: bool = False  # the paper's optional mean-activation normalization
    # images for the normalization (paths or s3://, gs://, file:// URIs, read by each worker
    # itself through load_image); default: the shipped samples
    calibration: tuple[str, ...] = ()
    calibration_size: int = 256
    allow_download: bool = False

    def load(self) -> tuple[VGGWeights, float]:
        """The weights and the seconds it took to load (and normalize) them."""
        start = time.perf_counter()
        weights = load_weights(self.source, self.preprocessing, self.allow_download)
        if self.normalize:
            images = list(self.calibration) or sample_images()
            weights = normalize_weights(weights, images, size=self.calibration_size)
        return weights, time.perf_counter() - start
