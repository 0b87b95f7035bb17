"""Warping images by optical flow, the start image and target of a video frame's
synthesis (Ruder, Dosovitskiy, Brox 2016, Sec. 3).

Sign convention, used by ``flow.py`` too: a flow field ``w`` (N, 2, H, W) holds for each
pixel p of the frame it belongs to the displacement (x, y) in pixels to where p's content
is in the other frame, so ``warp(other, w)(p) = other(p + w(p))``. Frame i's start is frame
i−1's stylization warped by the flow from i to i−1, the *backward* flow ŵ: each pixel of
frame i looks up where its content was one frame earlier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _source_positions(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y (N, H, W), in pixels, of p + w(p) for every pixel p."""
    _, _, height, width = flow.shape
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(1, height, 1)
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, 1, width)
    return xs + flow[:, 0], ys + flow[:, 1]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` (N, C, H, W) sampled at p + ``flow``(p), bilinearly.

    Pixel centres sit at integer positions (``align_corners=True``), so a whole-pixel
    flow moves pixels exactly. Positions past the edge take the nearest edge pixel
    (``padding_mode="border"``) rather than black, which would be a strong wrong start;
    such pixels carry no information, and ``lands_inside`` lets the consistency mask drop
    them from the temporal loss.
    """
    _, _, height, width = flow.shape
    xs, ys = _source_positions(flow)
    # grid_sample wants (x, y) in [-1, 1], -1 and 1 the centres of the edge pixels
    grid = torch.stack((2.0 * xs / max(width - 1, 1) - 1.0, 2.0 * ys / max(height - 1, 1) - 1.0), dim=-1)
    return F.grid_sample(
        image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def lands_inside(flow: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) bool: whether p + ``flow``(p) lies within the other frame."""
    _, _, height, width = flow.shape
    xs, ys = _source_positions(flow)
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    return inside.unsqueeze(1)
