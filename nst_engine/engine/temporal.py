"""The short-term temporal loss of Ruder, Dosovitskiy, Brox ("Artistic style transfer for
videos", GCPR 2016, eq. 7), a ``losses.Term`` like the paper's other terms, so that it
joins the objective's single autograd node with a weight of its own.
"""

from __future__ import annotations

import torch

from nst_engine.engine.flow import FrameFlow
from nst_engine.engine.losses import Term
from nst_engine.engine.warp import warp


def _per_pixel_count(image: torch.Tensor) -> int:
    """D of eq. 7: pixels × channels of one image."""
    return image[0].numel()


class TemporalLoss(Term):
    """(1/D) Σ_k c_k (x_k − ω_k)² per image (eq. 7): ω the previous stylized frame warped
    into this one (``warp.warp`` by the backward flow), c the consistency weights
    (``flow.consistency``, (B, 1, H, W), shared by the channels), D = pixels × channels, so
    the weight means the same at any resolution. ∂/∂x = (2/D) c (x − ω)."""

    def __init__(self, warped: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", warped.detach().float())
        self.register_buffer("weights", weights.detach().float())

    def raw(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff = image - self.target
        weighted = diff * self.weights
        return torch.einsum("bchw,bchw->b", weighted, diff) / _per_pixel_count(image), weighted

    def slope(self, image: torch.Tensor) -> float:
        return 2.0 / _per_pixel_count(image)

    def gradient(
        self, weighted: torch.Tensor, image: torch.Tensor, coefficient: torch.Tensor
    ) -> torch.Tensor:
        return weighted * coefficient.view(-1, 1, 1, 1)


def warping_error(current: torch.Tensor, previous: torch.Tensor, flow: FrameFlow) -> torch.Tensor:
    """Eq. 7 between two consecutive stylized frames (B,): how far ``current`` departs from
    ``previous`` carried along the content's flow, over the pixels the check trusts; the
    measure of temporal consistency (0 for a perfectly coherent pair)."""
    with torch.no_grad():
        loss = TemporalLoss(warp(previous, flow.backward), flow.weights)
        return loss.raw(current)[0]
