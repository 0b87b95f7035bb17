"""Tiled synthesis: the exact loss and gradient of an image too large for the device,
computed tile by tile.

The paper's loss is not a sum over tiles: each style term E_l = ¼ Σ (Ĝ − Â)² squares the
Gram matrix of the whole image. But Ĝ itself is a sum over positions (Ĝ = s Σ_p f_p f_pᵀ,
s = 1/(N·M)), and so is the content loss ½ Σ (F − P)². So one evaluation takes two passes
over the tiles, holding one tile's activations at a time:

1. without gradients, every tile adds the Gram sums of the positions it owns and its
   share of the content loss; Ĝ − Â and the whole image's loss follow;
2. with gradients, every tile runs forward again and back from the gradient of the loss
   with respect to its owned responses, known in closed form once Ĝ − Â is: s·(Ĝ − Â)·F
   for a style layer (as in ``losses._GramDistance``), F − P for a content layer. The
   tiles' input gradients overlap in their halos and add up (the chain rule).

A tile computes its own region plus a halo at least as wide as the deepest loss layer's
reach (``vgg.reach``), and every edge sits on that layer's pooling grid (``vgg.min_side``),
so each owned response is the whole image's: the tiled loss and gradient equal the
untiled ones up to float summation order (``tests/test_tiles.py``), so no seam can form.
The grid still moves by one step per evaluation, so that not even rounding has a fixed seam.
The price: a second forward pass per tile, and the halos' pixels computed twice.

A video frame's temporal loss (Ruder et al. 2016, eq. 7) is a sum over pixels too: each
tile adds it over the pixels it owns, its warped-previous target and consistency weights
cut there like the content target, normalised by the whole image's D, so the shares add up.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.device import autocast, network_pass
from nst_engine.engine.losses import StyleTransferObjective, _full_precision
from nst_engine.engine.memory import MemoryModel, is_out_of_memory, optimizer_state_bytes, release_cached
from nst_engine.engine.vgg import deepest, min_side, reach


def grid_and_halo(layers: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """The pooling grid of the deepest of ``layers`` (tile edges sit on it) and the halo
    around a tile: its reach rounded up to the grid."""
    layer = deepest(layers)
    grid = min_side(layer)
    return grid, math.ceil(reach(layer) / grid) * grid


def _positions(extent: int, stride: int) -> int:
    """Positions along an axis of ``extent`` px at a layer ``stride`` px apart: each
    2×2 pooling floors, as the network's do."""
    while stride > 1:
        extent, stride = extent // 2, stride // 2
    return extent


@dataclass(frozen=True)
class Span:
    """One axis of a tile, in pixels of the whole image: ``[start, stop)`` is computed
    (halo included), ``[own_start, own_stop)`` is owned (its responses count); the image
    is ``extent`` px long on this axis."""

    start: int
    stop: int
    own_start: int
    own_stop: int
    extent: int

    @property
    def pixels(self) -> slice:
        return slice(self.start, self.stop)

    def owned(self, stride: int) -> slice:
        """The owned positions of the whole image's response at a layer of ``stride``."""
        stop = _positions(self.extent, stride) if self.own_stop == self.extent else self.own_stop // stride
        return slice(self.own_start // stride, stop)

    def owned_here(self, stride: int) -> slice:
        """The same positions in the tile's own response."""
        owned, base = self.owned(stride), self.start // stride
        return slice(owned.start - base, owned.stop - base)


def spans(extent: int, tile: int, halo: int, offset: int) -> list[Span]:
    """Owned regions cut at ``offset`` + k·``tile`` (multiples of the grid when these
    are), each widened by ``halo`` where it does not meet the image's edge."""
    edges = [0, *(c for c in range(offset % tile, extent, tile) if c > 0), extent]
    return [Span(max(0, a - halo), min(extent, b + halo), a, b, extent) for a, b in itertools.pairwise(edges)]


class TiledGradient:
    """An ``optimize.Gradient``: the objective's loss terms (1, 4) and flat gradient
    (1, n) at one image (1, 3, H, W), computed in tiles of ``tile`` px (a multiple of the
    grid). Tiles never autotune cuDNN: their shapes move with the grid."""

    def __init__(self, objective: StyleTransferObjective, tile: int) -> None:
        self.grid, self.halo = grid_and_halo(objective.layers)
        if tile < self.grid or tile % self.grid:
            raise ValueError(f"a tile must be a positive multiple of {self.grid} px, got {tile}")
        self.tile = tile
        self.evaluations = 0

    def tiles(self, height: int, width: int) -> list[tuple[Span, Span]]:
        """The next evaluation's tiles: the grid moves one step per evaluation."""
        offset = (self.evaluations * self.grid) % self.tile
        rows = spans(height, self.tile, self.halo, offset)
        cols = spans(width, self.tile, self.halo, offset)
        return [(r, c) for r in rows for c in cols]

    def __call__(
        self, objective: StyleTransferObjective, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One evaluation; when it runs out of memory, again in tiles half as wide (any
        tile size gives the same result) until even one grid step does not fit."""
        while True:
            try:
                return self._evaluate(objective, image)
            except (RuntimeError, MemoryError) as exc:
                smaller = self.tile // 2 // self.grid * self.grid
                if not is_out_of_memory(exc) or smaller < self.grid:
                    raise
            # out of the handler: the failed pass's tensors are gone with its traceback
            self.tile = smaller
            release_cached(image.device)

    def _evaluate(
        self, objective: StyleTransferObjective, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.detach()
        tiles = self.tiles(*image.shape[-2:])
        self.evaluations += 1
        with network_pass(image.device, objective.precision, None):
            sums, content = self._sums(objective, image, tiles)
            slopes, style = _style(objective, sums, image.shape[-2:])
            grad = torch.zeros_like(image)
            temporal = image.new_zeros(())
            for rows, cols in tiles:
                grad[..., rows.pixels, cols.pixels] += self._tile_gradient(
                    objective, image, rows, cols, slopes
                )
                if objective.temporal_loss is not None:
                    share, share_grad = _temporal_share(objective.temporal_loss, image, rows, cols)
                    temporal += share
                    grad[..., rows.owned(1), cols.owned(1)] += objective.temporal_weight * share_grad
        tv = image.new_zeros(())
        if objective.tv_weight:
            with torch.enable_grad():
                x = image.detach().requires_grad_(True)
                tv = objective.tv_loss(x).sum()
                (tv_grad,) = torch.autograd.grad(tv, x)
            grad.add_(tv_grad, alpha=objective.tv_weight)
        total = objective.content_weight * content + objective.style_weight * style
        total = total + objective.tv_weight * tv.detach() + objective.temporal_weight * temporal
        return torch.stack([total, content, style, tv.detach()]).view(1, 4), grad.reshape(1, -1)

    def content_loss(self, objective: StyleTransferObjective, image: torch.Tensor) -> torch.Tensor:
        """α·L_content (eq. 1) of the whole ``image``, pass 1 alone (no gradients): what a
        video frame's relative temporal weight is scaled by (``synthesis._temporal_term``)."""
        with network_pass(image.device, objective.precision, None):
            _, content = self._sums(objective, image.detach(), self.tiles(*image.shape[-2:]))
        return objective.content_weight * content

    def _owned(
        self, objective: StyleTransferObjective, x: torch.Tensor, rows: Span, cols: Span
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per loss layer, the tile's responses (for backward), and the owned part of them
        in float32 with the matching part of the content target (None for style only)."""
        owned = {}
        with autocast(x.device, objective.precision):
            features = objective.network(x, objective.layers)
        for name, f in features.items():
            stride = min_side(name)
            mine = _full_precision(f[..., rows.owned_here(stride), cols.owned_here(stride)])
            target = None
            if name in objective.content_losses:
                target = objective.content_losses[name].target[..., rows.owned(stride), cols.owned(stride)]
            owned[name] = (f, mine, target)
        return owned

    def _sums(
        self, objective: StyleTransferObjective, image: torch.Tensor, tiles: list[tuple[Span, Span]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Pass 1: Σ_p f_p f_pᵀ per style layer over all owned positions, and the content
        loss Σ_l w_l ½ Σ (F − P)²."""
        sums: dict[str, torch.Tensor] = {}
        content = image.new_zeros(())
        with torch.no_grad():
            for rows, cols in tiles:
                x = image[..., rows.pixels, cols.pixels]
                for name, (_, mine, target) in self._owned(objective, x, rows, cols).items():
                    if name in objective.style_losses:
                        flat = mine.flatten(2).squeeze(0)
                        sums[name] = sums[name] + flat @ flat.T if name in sums else flat @ flat.T
                    if target is not None:
                        weight = objective.content_layer_weights[name]
                        content += weight * 0.5 * (mine - target).pow(2).sum()
        return sums, content

    def _tile_gradient(
        self,
        objective: StyleTransferObjective,
        image: torch.Tensor,
        rows: Span,
        cols: Span,
        slopes: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Pass 2 for one tile: forward with gradients, backward from the closed-form
        gradient with respect to its owned responses (zero in the halo)."""
        with torch.enable_grad():
            x = image[..., rows.pixels, cols.pixels].detach().requires_grad_(True)
            outputs, grads = [], []
            for name, (f, mine, target) in self._owned(objective, x, rows, cols).items():
                with torch.no_grad():
                    owned_grad = torch.zeros_like(mine)
                    if name in slopes:
                        flat = mine.flatten(2).squeeze(0)
                        owned_grad += objective.style_weight * (slopes[name] @ flat).view_as(mine)
                    if target is not None:
                        weight = objective.content_weight * objective.content_layer_weights[name]
                        owned_grad += weight * (mine - target)
                    full = torch.zeros_like(f)  # in f's memory format
                    full[..., rows.owned_here(min_side(name)), cols.owned_here(min_side(name))] = owned_grad
                outputs.append(f)
                grads.append(full)
            torch.autograd.backward(outputs, grads)
        return x.grad


def _temporal_share(
    term: torch.nn.Module, image: torch.Tensor, rows: Span, cols: Span
) -> tuple[torch.Tensor, torch.Tensor]:
    """A tile's share of the temporal loss (1/D) Σ_k c_k (x_k − ω_k)² (Ruder et al. 2016,
    eq. 7; ``temporal.TemporalLoss``'s ``target`` ω and ``weights`` c) over the pixels it
    owns, D the whole image's pixels × channels, and its gradient (2/D) c (x − ω) there:
    pixel-wise, so it needs no halo, and the owned regions' shares sum to the whole."""
    owned = (..., rows.owned(1), cols.owned(1))
    diff = image[owned] - term.target[owned].to(image.dtype)
    weighted = diff * term.weights[owned].to(image.dtype)
    count = image[0].numel()
    return (weighted * diff).sum() / count, weighted * (2.0 / count)


def _style(
    objective: StyleTransferObjective, sums: dict[str, torch.Tensor], size: torch.Size
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The style loss Σ_l w_l ¼ Σ (Ĝ − Â)², and per layer w_l·s·(Ĝ − Â): the matrix that
    turns a tile's owned responses F into the loss's gradient with respect to them."""
    slopes: dict[str, torch.Tensor] = {}
    style = next(iter(sums.values())).new_zeros(())
    for name, weight in objective.style_layer_weights.items():
        stride = min_side(name)
        scale = 1.0 / (sums[name].shape[0] * _positions(size[0], stride) * _positions(size[1], stride))
        diff = sums[name] * scale - objective.style_losses[name].target[0]
        style = style + weight * 0.25 * diff.pow(2).sum()
        slopes[name] = (weight * scale) * diff
    return slopes, style


#: Cost of a tiled evaluation per pixel computed (``tile_areas``), relative to an untiled
#: one: pass 1 adds a forward pass, and each tile its own slicing and Gram products.
#: Measured on 2 CPU cores (``benchmarks/tiles.py``): 1.5-2.2 at 256²-512², about 2.1 at 2048×1536.
TILED_PASS_COST = 2.0


def tile_areas(height: int, width: int, tile: int, layers: tuple[str, ...]) -> list[int]:
    """Pixels each tile of the grid at its first position computes, halo included."""
    _, halo = grid_and_halo(layers)
    rows, cols = spans(height, tile, halo, 0), spans(width, tile, halo, 0)
    return [(r.stop - r.start) * (c.stop - c.start) for r in rows for c in cols]


def tile_count(height: int, width: int, tile: int) -> int:
    """Tiles of the grid at its first position (a moved grid has one more row or column)."""
    return math.ceil(height / tile) * math.ceil(width / tile) if tile else 0


def tile_for(height: int, width: int, config: SynthesisConfig, memory: MemoryModel) -> int:
    """The tile side for a ``height`` × ``width`` synthesis of ``config`` (0: untiled): the
    config's own ``tile`` where the image is larger than it; else, by ``memory``'s budget,
    0 when the image fits whole and the largest grid multiple whose tile, halo included,
    fits beside the optimizer's state of the whole image. Raises ``MemoryError`` when not
    even one grid step fits."""
    if config.tile is not None:
        return config.tile if max(height, width) > config.tile else 0
    pixels, settings = height * width, config.optimizer_settings()
    if memory.budget <= 0 or memory.need(pixels, settings) <= memory.budget:
        return 0  # a budget of 0: free memory unknown, so no reason to tile
    grid, halo = grid_and_halo(config.loss_layers)
    state = optimizer_state_bytes(settings, pixels)
    side = math.isqrt(max(0, int((memory.budget - state) / memory.activation_bytes_per_pixel)))
    tile = (side - 2 * halo) // grid * grid
    if tile < grid:
        raise MemoryError(
            f"a {width}x{height} synthesis does not fit even in tiles: its optimizer keeps "
            f"{state / 2**20:,.0f} MiB of the {memory.budget / 2**20:,.0f} MiB available; "
            "lower history_size or size"
        )
    return tile
