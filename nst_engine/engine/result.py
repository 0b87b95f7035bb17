"""What a synthesis hands back: the image, its statistics, and the PNG metadata that
makes the file reproducible on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.images import save_png
from nst_engine.engine.stats import SynthesisStats
from nst_engine.engine.weights import VGGWeights


@dataclass
class SynthesisResult:
    image: torch.Tensor  # (1, 3, H, W) on CPU, in [0, 1]
    stats: SynthesisStats
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """PNG with the full parameter set and weight source as text chunks."""
        return save_png(self.image, path, self.metadata)


def png_metadata(
    config: SynthesisConfig,
    weights: VGGWeights,
    content_id: str,
    style_ids: Sequence[str],
    stats: SynthesisStats,
) -> dict[str, Any]:
    """Text chunks of the output PNG: every parameter, the weights, the inputs' ids and
    the final losses."""
    return {
        "Software": "nst-engine",
        "nst:params": config.to_params(),
        "nst:weights": weights.source,
        "nst:weights_digest": weights.digest,
        "nst:content_id": content_id,
        "nst:style_ids": list(style_ids),
        "nst:iterations": stats.iterations,
        "nst:loss_evaluations": stats.loss_evaluations,
        "nst:final_losses": {
            "content": stats.final_content_loss,
            "style": stats.final_style_loss,
            "total": stats.final_total_loss,
        },
    }
