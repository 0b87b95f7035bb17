"""Optical flow between consecutive frames and where it can be trusted (Ruder, Dosovitskiy,
Brox, "Artistic style transfer for videos", GCPR 2016, Sec. 3).

Flow is OpenCV's DIS (Kroeger et al., ECCV 2016): classical, no weights to download,
tens of milliseconds a frame pair on a CPU, next to the seconds a frame's synthesis takes.
Flow fields follow ``warp.py``'s convention: (N, 2, H, W), (x, y) in pixels, ``w(p)`` the
displacement from p to its content in the other frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from nst_engine.engine.warp import lands_inside, warp

#: DIS's most accurate preset (finest scale, more iterations): its sub-pixel error on
#: textured regions is several times lower than FAST's, and its time stays far below a
#: frame's synthesis; a wrong flow costs the temporal loss its meaning.
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM

# Ruder et al. 2016, eq. 5: p is disoccluded where |w̃ + ŵ|² > 0.01 (|w̃|² + |ŵ|²) + 0.5,
# w̃ the forward flow warped by the backward flow ŵ (the two should cancel).
DISOCCLUSION_RELATIVE = 0.01
DISOCCLUSION_ABSOLUTE = 0.5  # px²
# Ruder et al. 2016, eq. 6: p is on a motion boundary where |∇û|² + |∇v̂|² > 0.01 |ŵ|² + 0.002.
MOTION_BOUNDARY_RELATIVE = 0.01
MOTION_BOUNDARY_ABSOLUTE = 0.002


def _gray(frame: torch.Tensor) -> np.ndarray:
    """An RGB frame (3, H, W) or (1, 3, H, W) in [0, 1] as the 8-bit grey image DIS reads
    (contiguous: DIS asserts it)."""
    rgb = frame.detach().reshape(3, *frame.shape[-2:]).float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(cv2.cvtColor((rgb * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY))


def dis_flow(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The flow (1, 2, H, W) from ``source`` to ``target`` (RGB frames in [0, 1] of one
    size): ``source(p) ≈ target(p + w(p))``, on ``source``'s device."""
    if source.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"frames differ in size: {tuple(source.shape[-2:])} and {tuple(target.shape[-2:])}")
    # a new DIS per call: the object keeps state between calls and is not thread-safe
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    flow = dis.calc(_gray(source), _gray(target), None)  # (H, W, 2) float32, (x, y)
    return torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0).to(source.device)


def _squared_norm(field: torch.Tensor) -> torch.Tensor:
    """|·|² over the channels, (N, 1, H, W)."""
    return field.square().sum(dim=1, keepdim=True)


def _squared_gradient(flow: torch.Tensor) -> torch.Tensor:
    """|∇u|² + |∇v|² (N, 1, H, W) by forward differences, 0 across the last row and column."""
    dx = torch.zeros_like(flow)
    dy = torch.zeros_like(flow)
    dx[..., :, :-1] = flow[..., :, 1:] - flow[..., :, :-1]
    dy[..., :-1, :] = flow[..., 1:, :] - flow[..., :-1, :]
    return _squared_norm(dx) + _squared_norm(dy)


def consistency(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights c (N, 1, H, W) in {0, 1} over the current frame: 0 where it is
    disoccluded (eq. 5), on a motion boundary (eq. 6), or where the backward flow leaves
    the previous frame (nothing there to warp; the paper does not say); else 1.

    ``forward`` is the flow from the previous frame to the current one (previous frame's
    pixels), ``backward`` from the current to the previous (current frame's pixels)."""
    forward_warped = warp(forward, backward)  # w̃(p) = w(p + ŵ(p))
    disoccluded = _squared_norm(forward_warped + backward) > (
        DISOCCLUSION_RELATIVE * (_squared_norm(forward_warped) + _squared_norm(backward))
        + DISOCCLUSION_ABSOLUTE
    )
    boundary = _squared_gradient(backward) > (
        MOTION_BOUNDARY_RELATIVE * _squared_norm(backward) + MOTION_BOUNDARY_ABSOLUTE
    )
    trusted = ~(disoccluded | boundary) & lands_inside(backward)
    return trusted.to(backward.dtype)


@dataclass(frozen=True)
class FrameFlow:
    """What frame i's synthesis needs from frames i−1 and i: the backward flow to warp
    i−1's stylization by, the forward flow, the consistency weights c, and the seconds
    the two flows and the check took (a row of the results)."""

    backward: torch.Tensor
    forward: torch.Tensor
    weights: torch.Tensor
    seconds: float


def frame_flow(previous: torch.Tensor, current: torch.Tensor) -> FrameFlow:
    """Both flows between two content frames (RGB, [0, 1], one size) and their
    consistency weights, timed."""
    start = time.perf_counter()
    backward = dis_flow(current, previous)
    forward = dis_flow(previous, current)
    weights = consistency(forward, backward)
    return FrameFlow(backward, forward, weights, time.perf_counter() - start)
