"""One item's optimisation problem: its size, targets and objective (eq. 7), the image
the optimisation starts from, and how the optimised pixels become the output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from nst_engine.engine import color
from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.images import load_image, output_size, resize, to_tensor
from nst_engine.engine.losses import StyleTransferObjective
from nst_engine.engine.targets import TargetCache
from nst_engine.engine.vgg import check_side, deepest

NOISE_STD = 0.1  # white-noise start: Gaussian around mid-grey


def synthesis_size(content: Image.Image, config: SynthesisConfig) -> tuple[int, int]:
    """(height, width) of the output; refused when the deepest loss layer would see
    less than one position."""
    height, width = output_size(*content.size, config.size)
    check_side(height, width, config.loss_layers, "size", config.size, "image")
    return height, width


@dataclass
class Problem:
    """The objective for one content and its styles at one size, on the cache's device."""

    config: SynthesisConfig
    content: torch.Tensor  # (1, 3, H, W) RGB on the CPU, at the output size
    content_input: torch.Tensor  # what the network sees: the luminance in luminance mode
    styles: list[Image.Image]
    objective: StyleTransferObjective
    device: torch.device

    @classmethod
    def build(
        cls, content: Image.Image, styles: Sequence[Image.Image], config: SynthesisConfig, cache: TargetCache
    ) -> Problem:
        """Content and style targets (the style ones from the cache) and the objective."""
        content_rgb = to_tensor(resize(content, *synthesis_size(content, config)))
        content_input = color.luminance(content_rgb) if config.color == "luminance" else content_rgb
        style_targets = cache.style_targets(styles, content_rgb, config)
        network = cache.network(config.pooling, deepest(config.loss_layers), config.channels_last)
        with torch.no_grad():
            features = cache.features(content_input, config.content_layers, config, network)
            content_targets = {k: v.clone() for k, v in features.items()}
        objective = StyleTransferObjective(
            network,
            content_targets,
            style_targets,
            config.content_weights_by_layer(),
            config.style_weights_by_layer(),
            content_weight=1.0,
            style_weight=1.0 / config.ratio,  # only α/β matters (eq. 7)
            tv_weight=config.tv_weight,
            precision=config.precision,
        )
        return cls(config, content_rgb, content_input, list(styles), objective, cache.device)

    @property
    def height(self) -> int:
        return self.content.shape[-2]

    @property
    def width(self) -> int:
        return self.content.shape[-1]

    def initial_image(self) -> torch.Tensor:
        """The start of the optimisation, on the device."""
        return self._initial_image().to(self.device).contiguous()

    def _initial_image(self) -> torch.Tensor:
        config, height, width = self.config, self.height, self.width
        if config.init == "noise":
            # Gaussian white noise around mid-grey; seeded on the CPU so every device
            # starts from the same image.
            generator = torch.Generator().manual_seed(config.seed)
            return 0.5 + NOISE_STD * torch.randn(1, 3, height, width, generator=generator)
        if config.init == "content":
            return self.content_input.clone()
        source = self.styles[0] if config.init == "style" else load_image(config.init)
        image = to_tensor(resize(source, height, width))
        return color.luminance(image) if config.color == "luminance" else image

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """The output (1, 3, H, W) on the CPU in [0, 1]: in luminance mode the optimised
        luminance with the content's colours."""
        out = image.detach().float().cpu().contiguous().clamp(0, 1)
        if self.config.color == "luminance":
            out = color.combine_luminance(out, self.content)
        return out
