"""VGG-19 feature network: the 16 conv and 5 pooling layers, no classifier.

A layer name such as ``conv4_2`` denotes that layer's rectified response, as in
the paper's Caffe model where ReLU runs in place on the conv output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nst_engine.engine.choices import Pooling, parse_choice
from nst_engine.errors import ConfigError

#: Convolutions per block of VGG-19; a pooling layer closes each block.
BLOCK_DEPTHS = (2, 2, 4, 4, 4)
#: Output channels of each block of the ImageNet VGG-19.
VGG19_WIDTHS = (64, 128, 256, 512, 512)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, depth in enumerate(BLOCK_DEPTHS, start=1):
        names += [f"conv{block}_{i}" for i in range(1, depth + 1)]
        names.append(f"pool{block}")
    return tuple(names)


#: All layer names in network order.
LAYER_NAMES = _layer_names()
CONV_NAMES = tuple(name for name in LAYER_NAMES if name.startswith("conv"))


def conv_shapes(widths: Sequence[int] = VGG19_WIDTHS) -> list[tuple[int, int, int, int]]:
    """Weight shapes (out, in, 3, 3) of the 16 convolutions for the given block widths."""
    shapes = []
    in_channels = 3
    for depth, width in zip(BLOCK_DEPTHS, widths, strict=True):
        for _ in range(depth):
            shapes.append((width, in_channels, 3, 3))
            in_channels = width
    return shapes


def check_layers(layers: Iterable[str], field: str | None = None) -> None:
    """Raise ``ConfigError`` for names that are not VGG-19 layers; ``field`` is the parameter."""
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown layer {', '.join(unknown)}; choose from {', '.join(LAYER_NAMES)}", field=field
        )


@dataclass(frozen=True)
class Preprocessing:
    """How a weight source expects its input; the engine optimises RGB images in [0, 1]."""

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


#: Caffe / Keras VGG: BGR, 0-255, mean subtracted (B, G, R order).
CAFFE = Preprocessing("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68))
#: torchvision: RGB, 0-1, ImageNet mean and std.
TORCHVISION = Preprocessing(
    "torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
PREPROCESSINGS = {p.name: p for p in (CAFFE, TORCHVISION)}


class InputTransform(nn.Module):
    """Maps an RGB [0, 1] image to what the weights were trained on."""

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__()
        order = [2, 1, 0] if prep.bgr else [0, 1, 2]
        std = torch.tensor(prep.std)
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("gain", (prep.scale / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("offset", (torch.tensor(prep.mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.index_select(1, self.order) * self.gain - self.offset


class VGG19Features(nn.Module):
    """Frozen VGG-19 conv stack that stops at the deepest layer a loss needs."""

    def __init__(
        self,
        convs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        preprocessing: Preprocessing,
        pooling: str = "avg",
        last_layer: str = "conv5_1",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        try:
            pooling = parse_choice(Pooling, pooling)
        except ValueError as exc:
            raise ConfigError(f"{exc}, got {pooling!r}", field="pooling") from None
        check_layers([last_layer])
        self.pooling = pooling
        # NHWC activations are faster for oneDNN and cuDNN convolutions; the input
        # image stays NCHW so optimizers can view its gradient as one flat vector.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.preprocess = InputTransform(preprocessing)
        self.names: list[str] = []
        self.layers = nn.ModuleList()
        conv_iter = iter(convs)
        for name in LAYER_NAMES[: LAYER_NAMES.index(last_layer) + 1]:
            if name.startswith("conv"):
                weight, bias = next(conv_iter)
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                self.layers.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            else:
                pool = nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2)
                self.layers.append(pool)
            self.names.append(name)
        self.requires_grad_(False)
        self.eval()
        self.to(memory_format=self.memory_format)

    @property
    def last_layer(self) -> str:
        return self.names[-1]

    def forward(self, image: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Responses of ``layers`` to an RGB [0, 1] image batch."""
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(image).contiguous(memory_format=self.memory_format)
        for name, layer in zip(self.names, self.layers, strict=True):
            x = layer(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        missing = wanted - out.keys()
        if missing:
            raise ConfigError(
                f"layers {sorted(missing)} are deeper than this network's last layer {self.last_layer}"
            )
        return out


def deepest(layers: Iterable[str]) -> str:
    """The deepest of ``layers`` in network order."""
    return max(layers, key=LAYER_NAMES.index)


def min_side(last_layer: str) -> int:
    """Pixels per position of ``last_layer``'s response (2 to the poolings up to and
    including it), which is also the smallest image side that still has one position there."""
    pools = sum(1 for name in LAYER_NAMES[: LAYER_NAMES.index(last_layer) + 1] if name.startswith("pool"))
    return 2**pools


def reach(last_layer: str) -> int:
    """Pixels beyond its own cell (``min_side`` wide) on each side that a response at
    ``last_layer`` depends on: each 3×3 convolution adds one position of its layer, that
    is the layer's stride in pixels; 2×2 poolings aligned on their cells add none."""
    total, stride = 0, 1
    for name in LAYER_NAMES[: LAYER_NAMES.index(last_layer) + 1]:
        if name.startswith("conv"):
            total += stride
        else:
            stride *= 2
    return total


def check_side(height: int, width: int, layers: Iterable[str], field: str, cause: object, what: str) -> None:
    """Refuse an image on which the deepest of ``layers`` would see no position;
    ``cause`` is the value of ``field`` that made the image this small."""
    layer = deepest(layers)
    if min(height, width) < min_side(layer):
        raise ConfigError(
            f"{cause} gives a {width}x{height} {what}; layer {layer} "
            f"needs at least {min_side(layer)} pixels on the shorter side",
            field=field,
        )
