"""Where a synthesis runs: whole, in tiles, or as a member of a batch, decided in one place.

Every part that must know asks ``place``: the worker (whether a group of items of one
shape opens a batch: not when its items would tile; then how each item runs, which it hands
to the engine), the engine (at each coarse-to-fine scale, and for a synthesis nobody placed),
``nst stylize`` (to say so), ``nst plan`` and ``nst estimate`` (with a device's fitted memory
model standing in for a measured one), so what is predicted is what runs. The one thing
decided later is a tile's size after an evaluation runs out of memory: it is halved
(``tiles.TiledGradient``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.memory import MemoryModel
from nst_engine.engine.tiles import tile_count, tile_for


class How(StrEnum):
    WHOLE = "whole"  # the whole image at once, alone
    BATCHED = "batched"  # the whole image at once, its passes shared with other syntheses
    TILED = "tiled"  # the loss gradient computed tile by tile, alone


@dataclass(frozen=True)
class Placement:
    how: How
    tile: int = 0  # the tile side in px when tiled

    def tiles(self, height: int, width: int) -> int:
        """Tiles per evaluation (0: untiled)."""
        return tile_count(height, width, self.tile)


def place(
    height: int, width: int, config: SynthesisConfig, memory: MemoryModel, batch: bool = False
) -> Placement:
    """How a ``height`` × ``width`` synthesis of ``config`` runs with ``memory``'s budget,
    and ``batch``: whether a batch is there to join.

    An image larger than the config's own ``tile``, or, by default, one whose synthesis
    does not fit the budget whole, runs in tiles (``tiles.tile_for``), and alone: a tiled
    synthesis is too large to share its passes. Any other joins the batch when there is
    one. Raises ``MemoryError`` when not even tiles fit (the optimizer's own state of the
    whole image is larger than the budget)."""
    tile = tile_for(height, width, config, memory)
    if tile:
        return Placement(How.TILED, tile)
    return Placement(How.BATCHED if batch else How.WHOLE)
