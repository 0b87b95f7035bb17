"""What a worker keeps between items: the feature networks on its device, and the style
targets (blended Gram matrices) of recently used styles."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch
from PIL import Image

from nst_engine.engine import color
from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.device import autocast, network_pass
from nst_engine.engine.images import resize, to_tensor
from nst_engine.engine.losses import StyleTargets, gram_matrix
from nst_engine.engine.vgg import VGG19Features, check_side, deepest
from nst_engine.engine.weights import VGGWeights


def image_digest(img: Image.Image) -> str:
    """A short id of an image's pixels (its mode and size included)."""
    h = hashlib.sha256(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


def style_size(style: Image.Image, height: int, width: int, style_scale: float | None) -> tuple[int, int]:
    """The paper resizes the style to the content's size; ``style_scale`` instead keeps
    the style's aspect ratio with ``style_scale²`` times the content's pixel count."""
    if style_scale is None:
        return height, width
    sw, sh = style.size
    factor = style_scale * math.sqrt(height * width / (sw * sh))
    return max(1, round(sh * factor)), max(1, round(sw * factor))


class TargetCache:
    """VGG-19 networks and style targets on one device, reused across items.

    Style targets are kept (least recently used first out) by everything that changes
    their numbers (``_key``), so a style used across a dataset is extracted once per
    precision and size.
    """

    def __init__(self, weights: VGGWeights, device: torch.device, size: int = 32) -> None:
        self.weights = weights
        self.device = device
        self.size = size
        self.hits = 0
        self._networks: dict[tuple[str, str, bool], VGG19Features] = {}
        self._targets: OrderedDict[Hashable, StyleTargets] = OrderedDict()
        # the syntheses of a batch (``batch.EvaluationBatch``) build their targets from
        # threads of their own: one network per variant, one extraction per style
        self._lock = threading.RLock()

    def network(self, pooling: str, last_layer: str, channels_last: bool) -> VGG19Features:
        """The network up to ``last_layer``, built once per variant."""
        key = (pooling, last_layer, channels_last)
        with self._lock:
            return self._network(key)

    def _network(self, key: tuple[str, str, bool]) -> VGG19Features:
        pooling, last_layer, channels_last = key
        if key not in self._networks:
            net = VGG19Features(
                self.weights.convs, self.weights.preprocessing, pooling, last_layer, channels_last
            )
            self._networks[key] = net.to(self.device)
        return self._networks[key]

    def features(
        self,
        image: torch.Tensor,
        layers: Sequence[str],
        config: SynthesisConfig,
        network: VGG19Features | None = None,
    ) -> dict[str, torch.Tensor]:
        """Responses of ``layers`` to a CPU image (1, 3, H, W), on the device, computed in
        ``config.precision`` as the synthesis's own passes are (by ``network``, default
        the one that ends at the deepest of ``layers``)."""
        network = network or self.network(config.pooling, deepest(layers), config.channels_last)
        image = image.to(self.device).contiguous()
        with network_pass(self.device, config.precision, None), autocast(self.device, config.precision):
            return network(image, layers)

    @torch.no_grad()
    def style_targets(
        self, styles: Sequence[Image.Image], content: torch.Tensor, config: SynthesisConfig
    ) -> StyleTargets:
        """The blended Gram matrices (eq. 3) of ``styles`` for a content image ``content``."""
        with self._lock:
            return self._style_targets(styles, content, config)

    def _style_targets(
        self, styles: Sequence[Image.Image], content: torch.Tensor, config: SynthesisConfig
    ) -> StyleTargets:
        key = self._key(styles, content, config)
        if key in self._targets:
            self._targets.move_to_end(key)
            self.hits += 1
            return self._targets[key]
        weights = config.style_weights or tuple(1.0 for _ in styles)
        per_style = []
        for style in styles:
            features = self.features(self._style_input(style, content, config), config.style_layers, config)
            per_style.append({k: gram_matrix(v) for k, v in features.items()})
        targets = StyleTargets.blend(per_style, weights)
        self._targets[key] = targets
        while len(self._targets) > self.size:
            self._targets.popitem(last=False)
        return targets

    def _key(self, styles: Sequence[Image.Image], content: torch.Tensor, config: SynthesisConfig) -> Hashable:
        """Everything that changes a target's numbers, so an item's targets never depend
        on what this worker ran before it (precision and memory format change rounding)."""
        height, width = content.shape[-2:]
        return (
            tuple(image_digest(s) for s in styles),
            tuple(config.style_weights or (1.0,) * len(styles)),
            height,
            width,
            config.style_scale,
            config.style_layers,
            config.pooling,
            config.color,
            config.precision,
            config.channels_last,
            str(self.device),
            self.weights.digest,  # normalised weights have their own digest
            self.weights.preprocessing.name,
            # colour modes adapt the style to the content's colours
            hashlib.sha256(content.cpu().numpy().tobytes()).hexdigest() if config.color != "none" else None,
        )

    @staticmethod
    def _style_input(style: Image.Image, content: torch.Tensor, config: SynthesisConfig) -> torch.Tensor:
        """The style image at its synthesis size, in the colours the colour mode asks for."""
        height, width = style_size(style, *content.shape[-2:], config.style_scale)
        check_side(height, width, config.style_layers, "style_scale", config.style_scale, "style image")
        tensor = to_tensor(resize(style, height, width))
        if config.color == "histogram":
            return color.match_histogram(tensor, content)
        if config.color == "luminance":
            return color.match_luminance(color.luminance(tensor), color.luminance(content))
        return tensor
