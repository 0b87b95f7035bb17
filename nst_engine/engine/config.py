"""Every knob of one synthesis, as a frozen, validated value.

``SynthesisConfig`` is the one description of the engine's parameters: each field has a
type, a default and its help text (``metadata["help"]``). The front ends derive from it:
``nst stylize`` builds one option per field, a manifest accepts the same names under
``params``, and the results record ``to_params()``. Choice fields are ``StrEnum`` types,
so they compare equal to (and serialize as) their plain strings.

Plain values from YAML, JSON, CSV or a command line become a field's type through
:func:`coerce`; :meth:`SynthesisConfig.validate` checks the ranges. Both raise
``ConfigError(message, field=name)`` with the field's name, never a front end's spelling
of it: the CLI shows ``--ratio: ...``, a manifest ``demo.yaml:12: params.ratio: ...``.
"""

from __future__ import annotations

import contextlib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from nst_engine.engine.choices import ColorMode, Optimizer, Pooling, Precision, parse_choice
from nst_engine.engine.images import output_size
from nst_engine.engine.optimize import OptimizerSettings
from nst_engine.engine.vgg import check_layers, deepest, min_side
from nst_engine.errors import ConfigError
from nst_engine.storage.uris import is_uri

#: Fields added after item ids were first issued, with the value that reproduces the
#: outputs from before them (``SynthesisConfig.to_params`` leaves them out then).
LATER_FIELDS: dict[str, Any] = {"scales": 1, "scale_factor": 2.0, "scale_iterations": None}

#: Fields that change how the loss gradient is computed, not the image (beyond float
#: rounding): left out of ``SynthesisConfig.to_params``, so they never change an item's id.
HOW_FIELDS = ("tile",)

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYERS = ("conv4_2",)
INITS = ("noise", "content", "style")


@dataclass(frozen=True)
class SynthesisConfig:
    """Every knob of one synthesis; all but ``HOW_FIELDS`` change the output image."""

    size: int = field(
        default=512, metadata={"help": "Longer side of the output in pixels (aspect ratio kept)."}
    )
    iterations: int = field(default=500, metadata={"help": "Optimizer iterations."})
    ratio: float = field(
        default=1e-3, metadata={"help": "Content/style weight ratio alpha/beta (paper: 1e-2 ... 1e-5)."}
    )
    content_layers: tuple[str, ...] = field(
        default=CONTENT_LAYERS, metadata={"help": "Content layers (paper: conv4_2)."}
    )
    content_layer_weights: tuple[float, ...] | None = field(
        default=None, metadata={"help": "Weight per content layer (default 1 each)."}
    )
    style_layers: tuple[str, ...] = field(
        default=STYLE_LAYERS, metadata={"help": "Style layers (paper: conv1_1 ... conv5_1)."}
    )
    style_layer_weights: tuple[float, ...] | None = field(
        default=None, metadata={"help": "Weight per style layer (default 1/n each, the paper's w_l)."}
    )
    style_weights: tuple[float, ...] | None = field(
        default=None, metadata={"help": "Blend weights, one per style image (default equal)."}
    )
    style_scale: float | None = field(
        default=None,
        metadata={
            "help": "Style size relative to the content (default: the content's size, as in the paper)."
        },
    )
    optimizer: Optimizer = field(default=Optimizer.LBFGS, metadata={"help": "L-BFGS (paper) or Adam."})
    history_size: int = field(default=100, metadata={"help": "L-BFGS history size."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Step scale (default 1.0 for L-BFGS, 0.02 for Adam)."}
    )
    line_search: bool = field(default=False, metadata={"help": "Strong-Wolfe line search for L-BFGS."})
    tolerance: float = field(
        default=1e-9, metadata={"help": "Stop when the relative loss change is below this."}
    )
    init: str = field(
        default="noise", metadata={"help": "Start image: noise (paper), content, style, or an image file."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the noise start image."})
    pooling: Pooling = field(
        default=Pooling.AVG, metadata={"help": "Average pooling (the paper's choice for synthesis) or max."}
    )
    color: ColorMode = field(
        default=ColorMode.NONE,
        metadata={"help": "Colour preservation: none (paper), histogram or luminance."},
    )
    tv_weight: float = field(default=0.0, metadata={"help": "Total-variation weight (paper: 0)."})
    precision: Precision = field(
        default=Precision.FP32,
        metadata={
            "help": "fp32; tf32: TF32 tensor cores on CUDA GPUs (faster); bf16: convolutions in bfloat16."
        },
    )
    channels_last: bool = field(
        default=True, metadata={"help": "NHWC activations (faster convolutions with oneDNN and cuDNN)."}
    )
    scales: int = field(
        default=1,
        metadata={
            "help": "Coarse-to-fine scales (1: the paper's single-scale synthesis); each coarser one is "
            "scale_factor times smaller, and its result, upsampled, starts the next."
        },
    )
    scale_factor: float = field(default=2.0, metadata={"help": "Size ratio between neighbouring scales."})
    scale_iterations: int | None = field(
        default=None, metadata={"help": "Iterations at each coarser scale (default: iterations)."}
    )
    tile: int | None = field(
        default=None,
        metadata={
            "help": "Tile side in px for images beyond the device's memory: the loss gradient is then "
            "computed tile by tile, exactly (default: auto, tiles only where the image would not fit; "
            "0: never tile)."
        },
    )

    def __post_init__(self) -> None:
        # plain strings of a choice become its enum member; unknown ones are left for validate()
        for f in fields(self):
            kind = field_type(f.name)
            value = getattr(self, f.name)
            if isinstance(kind, type) and issubclass(kind, Enum) and not isinstance(value, kind):
                with contextlib.suppress(ValueError):
                    object.__setattr__(self, f.name, parse_choice(kind, value))

    def validate(self) -> SynthesisConfig:
        """Raise ``ConfigError`` naming the field; return self for chaining."""
        if self.iterations < 0:
            raise ConfigError(f"must be 0 or more, got {self.iterations}", field="iterations")
        if not (self.ratio > 0 and math.isfinite(self.ratio)):
            raise ConfigError(f"alpha/beta must be a positive number, got {self.ratio}", field="ratio")
        output_size(1, 1, self.size)  # checks the size bounds
        check_layers(self.content_layers, "content_layers")
        check_layers(self.style_layers, "style_layers")
        if not self.style_layers:
            raise ConfigError("give at least one layer", field="style_layers")
        for name, layers, weights in (
            ("content_layer_weights", self.content_layers, self.content_layer_weights),
            ("style_layer_weights", self.style_layers, self.style_layer_weights),
        ):
            if weights is not None and len(weights) != len(layers):
                raise ConfigError(
                    f"give {len(layers)} weights, one per layer, got {len(weights)}", field=name
                )
            if weights is not None and any(w < 0 for w in weights):
                raise ConfigError("weights must not be negative", field=name)
        if self.style_weights is not None and (
            any(w < 0 for w in self.style_weights) or sum(self.style_weights) <= 0
        ):
            raise ConfigError("give non-negative weights with a positive sum", field="style_weights")
        if self.style_scale is not None and not self.style_scale > 0:
            raise ConfigError(f"must be positive, got {self.style_scale}", field="style_scale")
        if self.history_size < 1:
            raise ConfigError(f"must be at least 1, got {self.history_size}", field="history_size")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"must be positive, got {self.learning_rate}", field="learning_rate")
        if self.tolerance < 0:
            raise ConfigError(f"must be 0 or more, got {self.tolerance}", field="tolerance")
        for name in ("optimizer", "pooling", "color", "precision"):
            coerce(name, getattr(self, name))  # an unknown choice names the choices
        # a URI (s3://...) is checked where it is read: planning hashes it, a worker decodes it
        if self.init not in INITS and not is_uri(self.init) and not Path(self.init).is_file():
            raise ConfigError(
                f"{self.init}: not one of {', '.join(INITS)} and not an image file; check the path",
                field="init",
            )
        if self.tv_weight < 0:
            raise ConfigError(f"must be 0 or more, got {self.tv_weight}", field="tv_weight")
        if self.scales < 1:
            raise ConfigError(f"must be at least 1, got {self.scales}", field="scales")
        if not (self.scale_factor > 1 and math.isfinite(self.scale_factor)):
            raise ConfigError(f"must be a number above 1, got {self.scale_factor}", field="scale_factor")
        if self.scale_iterations is not None and self.scale_iterations < 0:
            raise ConfigError(f"must be 0 or more, got {self.scale_iterations}", field="scale_iterations")
        smallest, layer = self.scale_size(self.scales - 1), deepest(self.loss_layers)
        if self.scales > 1 and smallest < min_side(layer):  # one scale: synthesis_size checks
            raise ConfigError(
                f"{self.scales} scales of factor {self.scale_factor:g} from {self.size} px start at "
                f"{smallest} px, below the {min_side(layer)} px that {layer} needs; use fewer scales",
                field="scales",
            )
        grid = min_side(layer)
        if self.tile is not None and self.tile != 0 and (self.tile < grid or self.tile % grid):
            raise ConfigError(
                f"must be 0 (never tile) or a multiple of {grid} px (the {layer} grid), got {self.tile}",
                field="tile",
            )
        return self

    def to_params(self) -> dict[str, Any]:
        """Plain JSON values (lists, strings, numbers): item ids hash this. Fields added
        after ids were first issued are left out while they hold the value that gives the
        earlier outputs (``LATER_FIELDS``), so results rendered before keep their ids."""
        return {
            k: _plain(v)
            for k, v in asdict(self).items()
            if k not in HOW_FIELDS and (k not in LATER_FIELDS or v != LATER_FIELDS[k])
        }

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

    def scale_size(self, k: int) -> int:
        """The longer side ``k`` coarse-to-fine scales below ``size`` (``engine.scales``)."""
        return max(1, round(self.size / self.scale_factor**k))

    @property
    def loss_layers(self) -> tuple[str, ...]:
        return tuple(self.content_layers) + tuple(self.style_layers)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- types and coercion


def field_type(name: str) -> Any:
    """The resolved type of a field, e.g. ``tuple[float, ...] | None``."""
    return _HINTS[name]


def split_optional(kind: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(kind, False)``."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def coerce(name: str, value: Any) -> Any:
    """A plain value (YAML/JSON scalar or list, CSV cell, CLI string) as field ``name``'s type.

    Lists of layers or numbers may also be one comma-separated string; numbers may be
    strings (YAML 1.1 reads ``1e-3`` as text). Raises ``ConfigError(field=name)``.
    """
    if name not in _HINTS:
        raise ConfigError(f"unknown parameter; choose from {', '.join(sorted(_HINTS))}", field=name)
    kind, optional = split_optional(_HINTS[name])
    if value is None:
        if optional:
            return None
        raise ConfigError("needs a value", field=name)
    try:
        return _coerce(kind, value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{exc}, got {value!r}", field=name) from None


def _coerce(kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise TypeError("expected a list of layer names" if item is str else "expected a list of numbers")
        if item is str:
            return tuple(str(v).strip() for v in items if str(v).strip())
        try:
            return tuple(_number(v) for v in items if not (isinstance(v, str) and not v.strip()))
        except (TypeError, ValueError):
            raise ValueError("expected a list of numbers") from None
    if isinstance(kind, type) and issubclass(kind, Enum):
        return parse_choice(kind, value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            number = _number(value)
        except (TypeError, ValueError):
            raise ValueError("expected a whole number") from None
        if not (math.isfinite(number) and number == int(number)):
            raise ValueError("expected a whole number")
        return int(number)
    if kind is float:
        return _number(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError("expected text")
        return value
    raise TypeError(f"no conversion to {kind}")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError("expected a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError("expected a number") from None


_HINTS: dict[str, Any] = {
    name: kind
    for name, kind in typing.get_type_hints(SynthesisConfig).items()
    if name in {f.name for f in fields(SynthesisConfig)}
}
