"""The paper's weight normalization: each filter's mean activation over images and
positions becomes one.

Filter k of layer l is divided by its mean rectified response m_l[k]; layer l+1's
input channel k is multiplied by m_l[k], so layer l+1 sees the same input as before
and each layer's response is the original divided by a per-channel constant. ReLU,
average and max pooling commute with positive scales, so one forward pass of the
original network gives every m_l.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from nst_engine.engine.images import ImageLike, load_image, output_size, resize, to_tensor
from nst_engine.engine.vgg import CONV_NAMES, VGG19Features
from nst_engine.engine.weights import VGGWeights, _torch_load
from nst_engine.storage.files import write_atomic


def cache_dir() -> Path:
    """Where derived data is cached: ``$NST_CACHE_DIR`` or ``~/.cache/nst-engine``."""
    root = os.environ.get("NST_CACHE_DIR") or Path.home() / ".cache" / "nst-engine"
    return Path(root)


@torch.no_grad()
def mean_activations(
    weights: VGGWeights, images: Sequence[torch.Tensor], pooling: str = "avg"
) -> list[torch.Tensor]:
    """Mean rectified response of every conv filter over all images and positions."""
    network = VGG19Features(weights.convs, weights.preprocessing, pooling=pooling, last_layer=CONV_NAMES[-1])
    sums = [torch.zeros(w.shape[0], dtype=torch.float64) for w, _ in weights.convs]
    counts = [0] * len(sums)
    for image in images:
        features = network(image, CONV_NAMES)
        for i, name in enumerate(CONV_NAMES):
            response = features[name]
            sums[i] += response.double().sum(dim=(0, 2, 3))
            counts[i] += response.shape[0] * response.shape[2] * response.shape[3]
    return [(s / c).float() for s, c in zip(sums, counts, strict=True)]


def rescale(weights: VGGWeights, means: Sequence[torch.Tensor]) -> VGGWeights:
    """Apply per-filter scales; dead filters (mean 0) keep their scale."""
    scales = [torch.where(m > 1e-8, m, torch.ones_like(m)) for m in means]
    convs = []
    previous = torch.ones(3)
    for (weight, bias), scale in zip(weights.convs, scales, strict=True):
        new_weight = weight * previous.view(1, -1, 1, 1) / scale.view(-1, 1, 1, 1)
        convs.append((new_weight.contiguous(), (bias / scale).contiguous()))
        previous = scale
    return VGGWeights(convs, weights.preprocessing, source=f"{weights.source}, mean-activation normalized")


def calibration_key(weights: VGGWeights, images: Sequence[bytes], pooling: str, size: int) -> str:
    h = hashlib.sha256(f"{weights.digest}|{pooling}|{size}".encode())
    for data in images:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:24]


def normalize_weights(
    weights: VGGWeights,
    calibration: Sequence[ImageLike],
    pooling: str = "avg",
    size: int = 256,
    cache: Path | None = None,
) -> VGGWeights:
    """Normalized copy of ``weights``; the per-filter means are cached on disk by
    weights digest, image contents, pooling and calibration size."""
    pil_images = [load_image(item) for item in calibration]
    key = calibration_key(weights, [img.tobytes() for img in pil_images], pooling, size)
    path = (cache or cache_dir() / "normalization") / f"{key}.pt"
    means: list[torch.Tensor] | None = None
    if path.is_file():
        loaded = _torch_load(path)
        if isinstance(loaded, list) and len(loaded) == len(weights.convs):
            means = loaded
    if means is None:
        tensors = [to_tensor(resize(img, *output_size(*img.size, size))) for img in pil_images]
        means = mean_activations(weights, tensors, pooling)
        buffer = io.BytesIO()
        torch.save(means, buffer)
        write_atomic(path, buffer.getvalue())
    normalized = rescale(weights, means)
    normalized.source += f" on {len(pil_images)} calibration images at {size}px (cache {path.name})"
    return normalized
