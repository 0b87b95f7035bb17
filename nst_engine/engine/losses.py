"""The paper's losses (Gatys et al. 2016, eqs. 1-5), one small module per term."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def _full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float32/float64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _flatten(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Features (1, N, H, W) as an (N, M) matrix (a strided view for channels_last input),
    and the 1/(N·M) that normalises its Gram matrix."""
    _, channels, height, width = features.shape
    return features.flatten(2).squeeze(0), 1.0 / (channels * height * width)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G / (N·M) for features (1, N, H, W), with M = H·W.

    Dividing by N·M turns the paper's E_l = 1/(4N²M²) Σ(G−A)² into ¼ Σ(Ĝ−Â)², which
    keeps float32 values small at any resolution without changing the loss.
    """
    with torch.autocast(features.device.type, enabled=False):
        flat, scale = _flatten(_full_precision(features))
        return (flat @ flat.T) * scale


class ContentLoss(nn.Module):
    """½ Σ (F − P)² against the content image's response P (eq. 1)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", _full_precision(target.detach()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 0.5 * (features - self.target).pow(2).sum()


class _GramDistance(torch.autograd.Function):
    """¼ Σ (Ĝ − Â)² with Ĝ = s·F Fᵀ, differentiated by hand.

    dL/dF = s (Ĝ − Â) F because Ĝ − Â is symmetric: one matrix product in the
    backward pass where autograd would spend two on F Fᵀ.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, flat: torch.Tensor, target: torch.Tensor, scale: float
    ) -> torch.Tensor:
        diff = (flat @ flat.T) * scale - target
        ctx.save_for_backward(flat, diff)
        ctx.scale = scale
        return 0.25 * diff.pow(2).sum()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        flat, diff = ctx.saved_tensors
        # (Fᵀ D)ᵀ = D F for symmetric D, laid out like ``flat`` (channels_last friendly)
        grad = (flat.T @ diff).T * (ctx.scale * grad_out)
        return grad, None, None


class StyleLoss(nn.Module):
    """E_l = 1/(4N²M²) Σ (G − A)² against a target Gram matrix (eq. 4)."""

    def __init__(self, target_gram: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", _full_precision(target_gram.detach()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat, scale = _flatten(features)
        return _GramDistance.apply(flat, self.target, scale)


class TotalVariationLoss(nn.Module):
    """Σ squared differences of neighbouring pixels; an image prior the paper did not use."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dy = image[..., 1:, :] - image[..., :-1, :]
        dx = image[..., :, 1:] - image[..., :, :-1]
        return dy.pow(2).sum() + dx.pow(2).sum()


@dataclass
class StyleTargets:
    """Target Gram matrices per layer, already blended over the style images.

    Σ_s w_s ‖G − A_s‖² = ‖G − Σ_s w_s A_s‖² + const when Σ w_s = 1, so blending the
    targets gives the same gradients as summing one loss per style, at one style's cost.
    """

    grams: dict[str, torch.Tensor]

    @classmethod
    def blend(cls, per_style: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> StyleTargets:
        total = float(sum(weights))
        grams: dict[str, torch.Tensor] = {}
        for layer in per_style[0]:
            grams[layer] = sum(w / total * g[layer] for g, w in zip(per_style, weights, strict=True))
        return cls(grams)


#: One evaluation's loss terms as floats: (total, content, style, tv).
Values = tuple[float, float, float, float]


@dataclass
class LossTerms:
    """One evaluation of the objective; ``total`` carries the graph."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """(total, content, style, tv) as one detached tensor: a batch reads all in one sync."""
        return torch.stack([t.detach() for t in (self.total, self.content, self.style, self.tv)])

    def values(self) -> Values:
        """(total, content, style, tv) as floats, in one device sync."""
        total, content, style, tv = self.stacked().tolist()
        return total, content, style, tv


class StyleTransferObjective(nn.Module):
    """α·L_content + β·L_style (+ λ·TV) for a fixed feature network and targets (eq. 7)."""

    def __init__(
        self,
        network: nn.Module,
        content_targets: Mapping[str, torch.Tensor],
        style_targets: StyleTargets,
        content_layer_weights: Mapping[str, float],
        style_layer_weights: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.content_losses = nn.ModuleDict({k: ContentLoss(v) for k, v in content_targets.items()})
        self.style_losses = nn.ModuleDict({k: StyleLoss(v) for k, v in style_targets.grams.items()})
        self.content_layer_weights = dict(content_layer_weights)
        self.style_layer_weights = dict(style_layer_weights)
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        self.tv_loss = TotalVariationLoss()
        self.layers = sorted(set(self.content_losses) | set(self.style_losses))

    def forward(self, image: torch.Tensor) -> LossTerms:
        return self.losses(image, self.network(image, self.layers))  # in bf16 under --precision bf16

    def losses(self, image: torch.Tensor, features: Mapping[str, torch.Tensor]) -> LossTerms:
        """The terms for ``image`` (1, 3, H, W) given the network's responses to it: one
        image's slice of a batch's responses too (``batch.EvaluationBatch``)."""
        with torch.autocast(image.device.type, enabled=False):
            return self._losses(image, {k: _full_precision(features[k]) for k in self.layers})

    def _losses(self, image: torch.Tensor, features: dict[str, torch.Tensor]) -> LossTerms:
        """Losses in float32 whatever the network ran in: Gram sums need the range."""
        zero = image.new_zeros(())
        content = sum(
            (w * self.content_losses[k](features[k]) for k, w in self.content_layer_weights.items()), zero
        )
        style = sum(
            (w * self.style_losses[k](features[k]) for k, w in self.style_layer_weights.items()), zero
        )
        tv = self.tv_loss(image) if self.tv_weight else zero
        total = self.content_weight * content + self.style_weight * style
        if self.tv_weight:
            total = total + self.tv_weight * tv
        return LossTerms(total=total, content=content, style=style, tv=tv)
