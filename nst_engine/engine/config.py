"""Every knob of one synthesis, as a frozen, validated value."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nst_engine.engine import color
from nst_engine.engine.errors import ConfigError
from nst_engine.engine.images import output_size
from nst_engine.engine.optimize import OptimizerSettings
from nst_engine.engine.vgg import check_layers

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYERS = ("conv4_2",)
INITS = ("noise", "content", "style")
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class SynthesisConfig:
    """Every knob of one synthesis; all of it changes the output image."""

    size: int = 512
    iterations: int = 500
    ratio: float = 1e-3  # α/β of the paper
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    content_layer_weights: tuple[float, ...] | None = None  # default 1 each
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None  # default 1/len each (the paper's w_l)
    style_weights: tuple[float, ...] | None = None  # blend of several style images
    style_scale: float | None = None  # None: style resized to the content's size (paper)
    optimizer: str = "lbfgs"
    history_size: int = 100
    learning_rate: float | None = None
    line_search: bool = False
    tolerance: float = 1e-9
    init: str = "noise"  # noise | content | style | path to an image
    seed: int = 0
    pooling: str = "avg"
    color: str = "none"  # none | histogram | luminance
    tv_weight: float = 0.0
    precision: str = "fp32"  # fp32 | tf32 (CUDA only) | bf16 (convolutions in bfloat16)
    channels_last: bool = True

    def validate(self) -> SynthesisConfig:
        """Raise ``ConfigError`` naming the option; return self for chaining."""
        if self.iterations < 0:
            raise ConfigError(f"--iterations must be 0 or more, got {self.iterations}")
        if not (self.ratio > 0 and math.isfinite(self.ratio)):
            raise ConfigError(f"--ratio (alpha/beta) must be a positive number, got {self.ratio}")
        output_size(1, 1, self.size)  # checks the size bounds
        check_layers(self.content_layers, "--content-layers")
        check_layers(self.style_layers, "--style-layers")
        if not self.style_layers:
            raise ConfigError("--style-layers needs at least one layer")
        for option, layers, weights in (
            ("--content-layer-weights", self.content_layers, self.content_layer_weights),
            ("--style-layer-weights", self.style_layers, self.style_layer_weights),
        ):
            if weights is not None and len(weights) != len(layers):
                raise ConfigError(f"{option}: give {len(layers)} weights, one per layer, got {len(weights)}")
            if weights is not None and any(w < 0 for w in weights):
                raise ConfigError(f"{option}: weights must not be negative")
        if self.style_weights is not None and (
            any(w < 0 for w in self.style_weights) or sum(self.style_weights) <= 0
        ):
            raise ConfigError("--style-weights must be non-negative with a positive sum")
        if self.style_scale is not None and not self.style_scale > 0:
            raise ConfigError(f"--style-scale must be positive, got {self.style_scale}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise ConfigError(f"--optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.history_size < 1:
            raise ConfigError(f"--history-size must be at least 1, got {self.history_size}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.tolerance < 0:
            raise ConfigError(f"--tolerance must be 0 or more, got {self.tolerance}")
        if self.pooling not in ("avg", "max"):
            raise ConfigError(f"--pooling must be 'avg' or 'max', got {self.pooling!r}")
        if self.color not in color.COLOR_MODES:
            raise ConfigError(f"--color must be one of {', '.join(color.COLOR_MODES)}, got {self.color!r}")
        if self.init not in INITS and not Path(self.init).is_file():
            raise ConfigError(
                f"--init {self.init}: not one of {', '.join(INITS)} and not an image file; check the path"
            )
        if self.tv_weight < 0:
            raise ConfigError(f"--tv-weight must be 0 or more, got {self.tv_weight}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self

    def to_params(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(
            name=self.optimizer,
            iterations=self.iterations,
            history_size=self.history_size,
            learning_rate=self.learning_rate,
            line_search=self.line_search,
            tolerance=self.tolerance,
        )

    def content_weights_by_layer(self) -> dict[str, float]:
        weights = self.content_layer_weights or (1.0,) * len(self.content_layers)
        return dict(zip(self.content_layers, weights, strict=True))

    def style_weights_by_layer(self) -> dict[str, float]:
        """The paper's w_l = 1/(number of style layers) unless given."""
        weights = self.style_layer_weights or (1.0 / len(self.style_layers),) * len(self.style_layers)
        return dict(zip(self.style_layers, weights, strict=True))

    @property
    def loss_layers(self) -> tuple[str, ...]:
        return tuple(self.content_layers) + tuple(self.style_layers)
