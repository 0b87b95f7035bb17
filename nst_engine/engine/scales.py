"""Coarse-to-fine synthesis: the paper's method at a few growing sizes, each started from
the last one's result.

The paper optimises white noise at the output size. Most of what L-BFGS does in its first
hundreds of iterations there is to lay out coarse structure, which a smaller image lays
out in a fraction of the time (cost grows linearly with pixels). So with ``scales`` > 1
the synthesis runs the paper's losses at sizes ``size / scale_factor**k`` (k = scales-1
... 1), smallest first, from the paper's white noise; each result, upsampled, is the next
size's start, and the requested size finishes. Style targets are taken at each scale's
own size (the style resized to that scale's content size, as the paper does at one size).
With ``scales`` = 1 nothing here runs: the paper's single-scale method, exactly.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from nst_engine.engine.config import SynthesisConfig


def coarser_scales(config: SynthesisConfig) -> list[SynthesisConfig]:
    """The configs of the scales before the requested size, smallest first (none for
    ``scales`` = 1); building the ``SynthesisConfig`` checked that the smallest is large
    enough."""
    iterations = config.iterations if config.scale_iterations is None else config.scale_iterations
    return [
        replace(config, size=config.scale_size(k), iterations=iterations, scales=1)
        for k in range(config.scales - 1, 0, -1)
    ]


def schedule_text(
    config: SynthesisConfig, height: int, width: int, coarse: list[tuple[int, int, int]]
) -> str:
    """What ran, smallest first: ``WxH:iterations`` per scale (the results' ``scale_schedule``)."""
    parts = [f"{w}x{h}:{n}" for h, w, n in coarse]
    return ",".join([*parts, f"{width}x{height}:{config.iterations}"])


def upsample(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A coarser scale's result as the next scale's start (bilinear, in [0, 1])."""
    if image.shape[-2:] == (height, width):
        return image.clone()
    resized = F.interpolate(image.detach(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.clamp_(0, 1).contiguous()
