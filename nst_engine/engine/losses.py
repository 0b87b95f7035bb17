"""The paper's losses (Gatys et al. 2016, eqs. 1-5), one small module per term.

Every term takes a batch of B images' responses and gives one value per image ([B]):
the images of a batch (``batch.EvaluationBatch``) share one network pass, and their
losses then run as one set of batched kernels too, each image against its own targets.
A lone synthesis is a batch of one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from nst_engine.engine.device import autocast, network_pass, to_device

#: Profiler labels of an evaluation's parts (``benchmarks/launches.py`` counts by them); the
#: backward of the losses is the autograd node ``_WeightedBackward``.
NETWORK_LABEL = "nst.network"
LOSSES_LABEL = "nst.losses"
EVALUATION_LABEL = "nst.evaluation"  # what holds them together: inputs, the backward call


def _full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float32/float64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _flatten(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Features (B, N, H, W) as (B, N, M) matrices (strided views for channels_last
    input), and the 1/(N·M) that normalises their Gram matrices."""
    _, channels, height, width = features.shape
    return features.flatten(2), 1.0 / (channels * height * width)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G / (N·M) for features (B, N, H, W), with M = H·W: (B, N, N).

    Dividing by N·M turns the paper's E_l = 1/(4N²M²) Σ(G−A)² into ¼ Σ(Ĝ−Â)², which
    keeps float32 values small at any resolution without changing the loss.
    """
    with torch.autocast(features.device.type, enabled=False):
        flat, scale = _flatten(_full_precision(features))
        return torch.bmm(flat, flat.transpose(1, 2)) * scale


class Term(nn.Module):
    """One loss term, per image: ``factor`` × ``raw`` of its input, with the gradient
    written out by hand (``gradient``), so that all the terms of an objective are a
    single node of the autograd graph (``_Weighted``): a few batched kernels per term
    and per pass, whatever the batch, rather than autograd's bookkeeping for each."""

    factor = 1.0

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The term without ``factor``, per image (B,), and what its gradient needs."""
        raise NotImplementedError

    def slope(self, x: torch.Tensor) -> float:
        """The constant c in ∂raw/∂x = c·``gradient(…, 1)``, kept out of ``gradient`` so
        that it rides on the weights (``_Weighted``) rather than costing a kernel."""
        raise NotImplementedError

    def gradient(self, saved: Any, x: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        """∂(Σ_b coefficient_b · raw_b)/∂x divided by ``slope``; ``coefficient`` (B,) in
        ``x``'s dtype."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mix = torch.full((1, 1, x.shape[0]), self.factor, dtype=torch.float64, device=x.device)
        return _Weighted.apply((self,), mix, mix * self.slope(x), x)[:, 0].to(x.dtype)


def _per_image(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) coefficients shaped to scale a (B, ...) tensor."""
    return coefficient.view(-1, *([1] * (like.dim() - 1)))


class ContentLoss(Term):
    """½ Σ (F − P)² against the content image's response P (eq. 1), per image;
    ∂/∂F = F − P."""

    factor = 0.5

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", _full_precision(target.detach()))

    def raw(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff = features - self.target
        return torch.einsum("bchw,bchw->b", diff, diff), diff

    def slope(self, features: torch.Tensor) -> float:
        return 2.0

    def gradient(self, diff: torch.Tensor, features: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        return diff * _per_image(coefficient, diff)


class StyleLoss(Term):
    """E_l = 1/(4N²M²) Σ (G − A)² against a target Gram matrix (eq. 4), per image:
    ``target_gram`` is (N, N) for all images, or (B, N, N), one per image.

    With Ĝ = s·F Fᵀ (s = 1/(N·M), ``gram_matrix``) E_l = ¼ Σ (Ĝ − Â)², and
    ∂E_l/∂F = s (Ĝ − Â) F because Ĝ − Â is symmetric: one matrix product where autograd
    would spend two on F Fᵀ.
    """

    factor = 0.25

    def __init__(self, target_gram: torch.Tensor) -> None:
        super().__init__()
        target = _full_precision(target_gram.detach())
        self.register_buffer("target", target if target.dim() == 3 else target.unsqueeze(0))

    def raw(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        flat, scale = _flatten(features)
        flat_t = flat.transpose(1, 2)  # (B, M, N): contiguous for channels_last features
        # Ĝ − Â in one kernel: −1·Â + s·F Fᵀ
        diff = torch.baddbmm(self.target, flat, flat_t, beta=-1.0, alpha=scale)
        return torch.einsum("bij,bij->b", diff, diff), (diff, flat_t)

    def slope(self, features: torch.Tensor) -> float:
        return 4.0 * _flatten(features)[1]  # ∂Σ(Ĝ − Â)²/∂F = 4s·(Ĝ − Â)·F

    def gradient(
        self, saved: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor, coefficient: torch.Tensor
    ) -> torch.Tensor:
        diff, flat_t = saved
        # (Fᵀ D)ᵀ = D F for symmetric D, laid out like ``flat`` (channels_last friendly)
        weighted = diff * _per_image(coefficient, diff)
        return torch.bmm(flat_t, weighted).transpose(1, 2).view_as(features)


class TotalVariationLoss(Term):
    """Σ squared differences of neighbouring pixels, per image; an image prior the paper
    did not use."""

    def raw(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dy = image[..., 1:, :] - image[..., :-1, :]
        dx = image[..., :, 1:] - image[..., :, :-1]
        return dy.square().sum(dim=(1, 2, 3)) + dx.square().sum(dim=(1, 2, 3)), image

    def slope(self, image: torch.Tensor) -> float:
        return 2.0

    def gradient(self, image: torch.Tensor, _: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        weight = _per_image(coefficient, image)
        dy = (image[..., 1:, :] - image[..., :-1, :]) * weight
        dx = (image[..., :, 1:] - image[..., :, :-1]) * weight
        grad = torch.zeros_like(image)
        grad[..., 1:, :] += dy
        grad[..., :-1, :] -= dy
        grad[..., :, 1:] += dx
        grad[..., :, :-1] -= dx
        return grad


class _Weighted(torch.autograd.Function):
    """Rows r of Σ_t mix[r, t, b] · raw_t(x_t)_b for terms t and images b, as (B, R):
    one node of the autograd graph for all of an objective's terms. ``mix`` (R, T, B)
    holds each term's ``factor`` times each image's weights (float64: exact as given);
    ``slopes`` is ``mix`` times each term's ``slope``, what the backward weighs by."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        terms: Sequence[Term],
        mix: torch.Tensor,
        slopes: torch.Tensor,
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        raws, saved = zip(*(term.raw(x) for term, x in zip(terms, inputs, strict=True)), strict=True)
        ctx.terms, ctx.saved, ctx.inputs, ctx.slopes = terms, saved, inputs, slopes  # type: ignore[attr-defined]
        return (mix * torch.stack(raws)).sum(dim=1).t()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        terms, saved, inputs = ctx.terms, ctx.saved, ctx.inputs  # type: ignore[attr-defined]
        # (T, B), in the terms' dtype in one cast
        coefficients = (ctx.slopes * grad.t().unsqueeze(1)).sum(dim=0).to(inputs[0].dtype)  # type: ignore[attr-defined]
        grads = [
            term.gradient(s, x, c) for term, s, x, c in zip(terms, saved, inputs, coefficients, strict=True)
        ]
        return None, None, None, *grads


@dataclass
class StyleTargets:
    """Target Gram matrices per layer, (1, N, N) each, already blended over the style images.

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
    """One evaluation of the objective over B images: ``table`` (B, 4) holds each
    image's (total, content, style, tv) and carries the graph."""

    table: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.table[:, 0]

    @property
    def content(self) -> torch.Tensor:
        return self.table[:, 1]

    @property
    def style(self) -> torch.Tensor:
        return self.table[:, 2]

    @property
    def tv(self) -> torch.Tensor:
        return self.table[:, 3]

    def stacked(self) -> torch.Tensor:
        """(B, 4), detached, for one read."""
        return self.table.detach()

    def values(self) -> Values:
        """The one image's (total, content, style, tv) as floats, in one device sync."""
        ((total, content, style, tv),) = self.table.tolist()
        return total, content, style, tv


class StyleTransferObjective(nn.Module):
    """α·L_content + β·L_style (+ λ·TV) (eq. 7) for B images at once, each with its own
    targets and weights, over one frozen feature network run in ``precision``.

    One item's objective has B = 1 (``Problem.build``); ``stack`` joins the objectives of a
    batch's items of one shape into one whose every term is one batched kernel.
    """

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
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.network = network
        self.precision = precision
        self.content_losses = nn.ModuleDict({k: ContentLoss(v) for k, v in content_targets.items()})
        self.style_losses = nn.ModuleDict({k: StyleLoss(v) for k, v in style_targets.grams.items()})
        # one item's weights, as given (the tiled evaluation reads them)
        self.content_layer_weights = dict(content_layer_weights)
        self.style_layer_weights = dict(style_layer_weights)
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        self.tv_loss = TotalVariationLoss()
        # a video frame's pull towards the previous stylized frame (``with_temporal``)
        self.temporal_loss: Term | None = None
        self.temporal_weight = 0.0
        self.layers = sorted(set(self.content_losses) | set(self.style_losses))
        self.items = 1
        # per image: its layer weights (0 where it has no such layer) and α, β, λ
        self._set_weights([self])

    def with_temporal(self, term: Term, weight: float) -> StyleTransferObjective:
        """This objective plus γ·``term`` in its total (Ruder et al. 2016, eq. 8: the
        paper's loss plus the temporal loss of eq. 7), ``term`` a ``temporal.TemporalLoss``
        over the image. The term is a column of ``mix`` that only the total row weighs;
        its value is read from the term itself. Weight 0 leaves every iterate as it was
        without the term (it adds exact zeros)."""
        self.temporal_loss = term.to(self.mix.device)
        self.temporal_weight = weight
        self._set_weights([self])
        return self

    def _set_weights(self, parts: Sequence[StyleTransferObjective]) -> None:
        """``mix`` (4, T, B): how each image's (total, content, style, tv) weigh the raw
        terms (content layers, style layers, then TV when an image uses it, then the
        temporal term when one has it), each term's factor included; 0 for a layer an
        image has no loss at. float64: the weights are exact as given, and (4, T, B)
        costs nothing."""
        self.any_tv = any(p.tv_weight for p in parts)
        self.any_temporal = any(p.temporal_loss is not None for p in parts)
        rows: list[list[list[float]]] = [[], [], [], []]  # (4, T, B)
        for name, term in self.content_losses.items():
            per_image = [term.factor * p.content_layer_weights.get(name, 0.0) for p in parts]
            rows[0].append([w * p.content_weight for w, p in zip(per_image, parts, strict=True)])
            rows[1].append(per_image)
            rows[2].append([0.0] * len(parts))
            rows[3].append([0.0] * len(parts))
        for name, term in self.style_losses.items():
            per_image = [term.factor * p.style_layer_weights.get(name, 0.0) for p in parts]
            rows[0].append([w * p.style_weight for w, p in zip(per_image, parts, strict=True)])
            rows[1].append([0.0] * len(parts))
            rows[2].append(per_image)
            rows[3].append([0.0] * len(parts))
        if self.any_tv:
            rows[0].append([p.tv_weight for p in parts])
            rows[1].append([0.0] * len(parts))
            rows[2].append([0.0] * len(parts))
            rows[3].append([1.0 if p.tv_weight else 0.0 for p in parts])
        if self.any_temporal:  # in the total only: no row of its own (``LossTerms``)
            rows[0].append([p.temporal_weight if p.temporal_loss is not None else 0.0 for p in parts])
            for row in rows[1:]:
                row.append([0.0] * len(parts))
        device = next(iter(self.style_losses.values())).target.device  # type: ignore[union-attr]
        flat = [w for row in rows for term in row for w in term]
        mix = to_device(flat, device, torch.float64).view(4, len(rows[0]), len(parts))
        self.register_buffer("mix", mix, persistent=False)
        self._slopes_by_shape: dict[tuple, torch.Tensor] = {}

    @classmethod
    def stack(cls, parts: Sequence[StyleTransferObjective]) -> StyleTransferObjective:
        """One objective over the images of ``parts`` (single-image objectives on one
        network and device, in one precision), in that order: their targets stacked, a
        layer one of them lacks weighted 0 for it."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        content = sorted(set().union(*(p.content_losses for p in parts)))
        style = sorted(set().union(*(p.style_losses for p in parts)))

        def stacked(layer: str, losses: str) -> torch.Tensor:
            targets = [
                getattr(p, losses)[layer].target if layer in getattr(p, losses) else None for p in parts
            ]
            like = next(t for t in targets if t is not None)
            return torch.cat([t if t is not None else torch.zeros_like(like) for t in targets])

        joined = cls.__new__(cls)
        nn.Module.__init__(joined)
        joined.network = first.network
        joined.precision = first.precision
        joined.content_losses = nn.ModuleDict({k: ContentLoss(stacked(k, "content_losses")) for k in content})
        joined.style_losses = nn.ModuleDict({k: StyleLoss(stacked(k, "style_losses")) for k in style})
        joined.tv_loss = first.tv_loss
        joined.temporal_loss = _stacked_temporal(parts)
        joined.temporal_weight = 0.0  # per image only, in ``mix``
        joined.layers = sorted(set(content) | set(style))
        joined.items = len(parts)
        joined.content_layer_weights = joined.style_layer_weights = {}  # per image only
        joined._set_weights(parts)
        return joined.to(first.mix.device)

    def evaluate(self, images: torch.Tensor, tune: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms (B, 4) and flat gradients (B, n) at ``images`` (B, 3, H, W), on the
        device: one forward and backward, launched holding the process's kernel switches
        (``device.network_pass``), the backward outside autocast. ``tune``: a shape worth
        cuDNN's autotuning (one that recurs), else its heuristics."""
        x = images.detach().requires_grad_(True)
        shape = (tuple(x.shape), x.dtype, str(self.precision), getattr(self.network, "memory_format", None))
        shape = shape if tune else None
        with (
            network_pass(x.device, self.precision, shape),
            torch.enable_grad(),
            record_function(EVALUATION_LABEL),
        ):
            terms = self(x)
            (grad,) = torch.autograd.grad(terms.total.sum(), x)
        return terms.stacked(), grad.reshape(len(x), -1)

    def forward(self, images: torch.Tensor) -> LossTerms:
        """The terms for ``images`` (B, 3, H, W); the network's forward in ``precision``."""
        with autocast(images.device, self.precision), record_function(NETWORK_LABEL):
            features = self.network(images, self.layers)
        with record_function(LOSSES_LABEL):
            return self.losses(images, features)

    def losses(self, images: torch.Tensor, features: Mapping[str, torch.Tensor]) -> LossTerms:
        """Losses in float32 whatever the network ran in (Gram sums need the range), as
        one node of the autograd graph."""
        terms: list[Term] = [*self.content_losses.values(), *self.style_losses.values()]
        inputs = [_full_precision(features[k]) for k in (*self.content_losses, *self.style_losses)]
        if self.any_tv:
            terms.append(self.tv_loss)
            inputs.append(images)
        if self.any_temporal:
            terms.append(self.temporal_loss)
            inputs.append(images)
        return LossTerms(_Weighted.apply(tuple(terms), self.mix, self._slopes(terms, inputs), *inputs))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._slopes_by_shape = {}  # made for the old device or dtype
        return super()._apply(fn, recurse)

    def _slopes(self, terms: Sequence[Term], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mix`` times each term's ``slope`` at these input shapes, made once per shape."""
        shapes = tuple(tuple(x.shape[1:]) for x in inputs)  # the same for any count of images
        if shapes not in self._slopes_by_shape:
            factors = [t.slope(x) for t, x in zip(terms, inputs, strict=True)]
            scale = to_device(factors, self.mix.device, torch.float64).view(1, -1, 1)
            self._slopes_by_shape[shapes] = self.mix * scale
        return self._slopes_by_shape[shapes]

    def rows(self, index: Sequence[int]) -> StyleTransferObjective:
        """The objective of the images at ``index`` of this one (a stacked objective):
        their targets and weights selected on the device, no host copy, no restacking."""
        where = to_device(list(index), self.mix.device)
        picked = copy.copy(self)
        nn.Module.__init__(picked)  # its own modules and buffers, set below
        picked.network, picked.tv_loss = self.network, self.tv_loss
        picked.content_losses = nn.ModuleDict(
            {k: ContentLoss(v.target.index_select(0, where)) for k, v in self.content_losses.items()}
        )
        picked.style_losses = nn.ModuleDict(
            {k: StyleLoss(v.target.index_select(0, where)) for k, v in self.style_losses.items()}
        )
        if self.temporal_loss is not None:
            picked.temporal_loss = _picked_temporal(self.temporal_loss, where)
        picked.items = len(index)
        picked.register_buffer("mix", self.mix.index_select(2, where), persistent=False)
        picked._slopes_by_shape = {k: v.index_select(2, where) for k, v in self._slopes_by_shape.items()}
        return picked


def _stacked_temporal(parts: Sequence[StyleTransferObjective]) -> Term | None:
    """The temporal terms of ``parts`` as one over their images (None when none has one):
    an image without one gets zero targets and weights, and 0 in ``mix`` besides."""
    terms = [p.temporal_loss for p in parts]
    like = next((t for t in terms if t is not None), None)
    if like is None:
        return None
    targets = [t.target if t is not None else torch.zeros_like(like.target) for t in terms]
    weights = [t.weights if t is not None else torch.zeros_like(like.weights) for t in terms]
    return type(like)(torch.cat(targets), torch.cat(weights))


def _picked_temporal(term: Term, where: torch.Tensor) -> Term:
    """``term`` (a stacked ``TemporalLoss``) for the images at ``where`` only."""
    return type(term)(term.target.index_select(0, where), term.weights.index_select(0, where))
