"""Every knob of one synthesis, as a frozen, validated value.

``SynthesisConfig`` is the one description of the engine's parameters: each field has a
type with its constraints, a default and its help text (``metadata["help"]``, which is
also the JSON Schema's description). The front ends derive from it: ``nst stylize``
builds one option per field, a manifest accepts the same names under ``params`` (its
schema generated from these fields), and the results record ``to_params()``. Choice
fields are ``StrEnum`` types, so they compare equal to (and serialize as) their plain
strings.

It is a pydantic dataclass: building one (``dataclasses.replace`` included) validates it,
so an invalid configuration cannot exist. Plain values from YAML, JSON, CSV or a command
line become a field's type on the way in (``"1e-3"``, ``"conv1_1,conv2_1"``, ``" BF16 "``).
Every problem raises ``ConfigError(message, field=name)`` (an :class:`InvalidConfig`
holding all of them) with the field's name, never a front end's spelling of it: the CLI
shows ``--ratio: ...``, a manifest ``demo.yaml:12: params.ratio: ...``.
"""

from __future__ import annotations

from dataclasses import asdict, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs, ErrorDetails, PydanticCustomError

from nst_engine.engine.choices import ColorMode, Optimizer, Pooling, Precision, parse_choice
from nst_engine.engine.images import MAX_SIDE
from nst_engine.engine.optimize import OptimizerSettings
from nst_engine.engine.vgg import LAYER_NAMES, deepest, min_side
from nst_engine.errors import ConfigError
from nst_engine.storage.uris import is_uri, refuse_credentials
from nst_engine.validation import NOTHING, message

#: Weight γ of the temporal loss of a video frame (Ruder et al. 2016, eq. 7), relative: the
#: term weighs γ × the α-weighted content loss (eq. 1) of the frame's start (the warped
#: previous frame), so γ reads "how many content losses a mean squared departure of 1
#: ([0, 1] pixels, over the trusted pixels) costs", the same on any network and size (an
#: absolute γ = 30 was ~1e-12 of VGG-19's objective at 128²). Measured on VGG-19 at 128²
#: (BENCHMARKS.md, "Video: temporal coherence", 12 frames, later frames at half the
#: iterations): 100 cuts the warm start's warping error 4.4× and keeps every later frame's
#: style and content losses within 1.02× of independent frames'; 300 cuts it 13× at up to
#: 1.09×; 1000 costs 1.31× style. The tiny random test network needs ~30× less
#: (tests/test_video_chain.py): its start is far from its content optimum.
TEMPORAL_WEIGHT = 100.0

#: Fields added after item ids were first issued, with the value that reproduces the
#: outputs from before them (``SynthesisConfig.to_params`` leaves them out then).
LATER_FIELDS: dict[str, Any] = {
    "scales": 1,
    "scale_factor": 2.0,
    "scale_iterations": None,
    "temporal_weight": TEMPORAL_WEIGHT,  # no image item reads it
}

#: Fields that change how the loss gradient is computed, not the image (beyond float
#: rounding): left out of ``SynthesisConfig.to_params``, so they never change an item's id.
HOW_FIELDS = ("tile",)

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYERS = ("conv4_2",)
INITS = ("noise", "content", "style")


class InvalidConfig(ConfigError):
    """Every problem of one configuration; as a ``ConfigError`` it is the first of them,
    so a caller that shows one line shows that one, and a manifest lists them all."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        super().__init__(problems[0].message, field=problems[0].field)


# ---------------------------------------------------------------------------- field types


def _split(value: Any) -> Any:
    """A list may be one comma-separated string (a CLI option, a CSV cell)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _known_layers(value: Any) -> Any:
    """All unknown layer names in one message, rather than one error per list item."""
    if isinstance(value, list | tuple):
        unknown = [str(name) for name in value if name not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"unknown layer {', '.join(unknown)}; choose from {', '.join(LAYER_NAMES)}")
    return value


def _choice(kind: type[Enum]) -> Any:
    """An enum field that takes any spelling ``parse_choice`` does (``" BF16 "``) and
    names the choices when given another."""

    def parse(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        try:
            return parse_choice(kind, value)
        except ValueError as exc:
            raise ValueError(f"{exc}, got {value!r}") from None

    return Annotated[kind, BeforeValidator(parse)]


def _not_a_bool(value: Any) -> Any:
    """Pydantic reads ``true`` as 1 where a number is expected; a manifest that says
    ``iterations: true`` has made a mistake, not asked for one iteration."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


NUMBER = BeforeValidator(_not_a_bool)


def _positive_sum(weights: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if weights is not None and sum(weights) <= 0:
        raise ValueError("give non-negative weights with a positive sum")
    return weights


Layer = Literal[LAYER_NAMES]  # type: ignore[valid-type]  # an enum in the schema, for editors
LayerList = tuple[Layer, ...]
SomeLayers = Annotated[LayerList, Field(min_length=1)]
Layers = Annotated[
    LayerList, BeforeValidator(_known_layers), BeforeValidator(_split, json_schema_input_type=LayerList | str)
]
StyleLayers = Annotated[
    SomeLayers,
    BeforeValidator(_known_layers),
    BeforeValidator(_split, json_schema_input_type=SomeLayers | str),
]
# Every number has bounds, so that what validates also runs and is recorded: the result
# columns are int64 and float64 (results.schema), and the engine computes in float32.

#: float32's largest finite value (``torch.finfo(torch.float32).max``): the engine's tensors
#: are float32 (bfloat16 has the same range), where a larger weight or ratio is infinity.
FLOAT32_MAX = 3.4028234663852886e38
#: The most iterations per scale: L-BFGS converges in hundreds to a few thousand, and each
#: iteration adds four numbers to its row's per-iteration columns (3.2 MB per row here).
MAX_ITERATIONS = 100_000
#: The longest L-BFGS history: two image-sized vectors per entry (6 GB at 512 px here).
MAX_HISTORY = 1_000
#: The most coarse-to-fine scales, and the largest factor between two: 32 scales of
#: factor 1.25 span 16 384 px to 16 px; a scale 16 times coarser gives its finer neighbour
#: no useful start. Bounded also so that ``scale_factor ** scales`` stays a float.
MAX_SCALES = 32
MAX_SCALE_FACTOR = 16.0
#: The largest style scale: the style gets ``style_scale²`` times the content's pixels.
MAX_STYLE_SCALE = 16.0
#: The seed column's range (int64), all of which torch's generator takes.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Weight = Annotated[float, Field(ge=0, le=FLOAT32_MAX, allow_inf_nan=False), NUMBER]
Weights = Annotated[
    tuple[Weight, ...], BeforeValidator(_split, json_schema_input_type=tuple[Weight, ...] | str)
]
#: the longer side of an output in pixels; a manifest's ``sizes`` are these too
Size = Annotated[int, Field(gt=0, le=MAX_SIDE), NUMBER]
Iterations = Annotated[int, Field(ge=0, le=MAX_ITERATIONS), NUMBER]
Positive = Annotated[float, Field(gt=0, le=FLOAT32_MAX, allow_inf_nan=False), NUMBER]
NonNegative = Annotated[float, Field(ge=0, le=FLOAT32_MAX, allow_inf_nan=False), NUMBER]


def knob(default: Any, help: str) -> Any:
    """A field and its help text, said once: ``metadata["help"]`` for the CLI's options,
    ``description`` (a key pydantic reads from a dataclass field) for the JSON Schema."""
    return field(default=default, metadata={"help": help, "description": help})


def _refuse(name: str, problem: str) -> PydanticCustomError:
    """A problem of several fields together, charged to field ``name``."""
    return PydanticCustomError("config", "{message}", {"field": name, "message": problem})


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SynthesisConfig:
    """Every knob of one synthesis; all but ``HOW_FIELDS`` change the output image."""

    size: Size = knob(512, "Longer side of the output in pixels (aspect ratio kept).")
    iterations: Iterations = knob(500, f"Optimizer iterations (at most {MAX_ITERATIONS:,}).")
    ratio: Positive = knob(
        1e-3, "Content/style weight ratio alpha/beta (paper: 1e-2 ... 1e-5; finite in float32)."
    )
    content_layers: Layers = knob(CONTENT_LAYERS, "Content layers (paper: conv4_2).")
    content_layer_weights: Weights | None = knob(None, "Weight per content layer (default 1 each).")
    style_layers: StyleLayers = knob(STYLE_LAYERS, "Style layers (paper: conv1_1 ... conv5_1).")
    style_layer_weights: Weights | None = knob(
        None, "Weight per style layer (default 1/n each, the paper's w_l)."
    )
    style_weights: Annotated[Weights | None, AfterValidator(_positive_sum)] = knob(
        None, "Blend weights, one per style image (default equal)."
    )
    style_scale: Annotated[float, Field(gt=0, le=MAX_STYLE_SCALE, allow_inf_nan=False), NUMBER] | None = knob(
        None,
        "Style size relative to the content (default: the content's size, as in the paper; "
        f"at most {MAX_STYLE_SCALE:g}: the style gets its square times the content's pixels).",
    )
    optimizer: _choice(Optimizer) = knob(Optimizer.LBFGS, "L-BFGS (paper) or Adam.")
    history_size: Annotated[int, Field(ge=1, le=MAX_HISTORY), NUMBER] = knob(
        100, f"L-BFGS history size (at most {MAX_HISTORY:,}: two image-sized vectors per entry)."
    )
    learning_rate: Positive | None = knob(None, "Step scale (default 1.0 for L-BFGS, 0.02 for Adam).")
    line_search: bool = knob(False, "Strong-Wolfe line search for L-BFGS.")
    tolerance: NonNegative = knob(1e-9, "Stop when the relative loss change is below this.")
    init: str = knob("noise", "Start image: noise (paper), content, style, or an image file.")
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX), NUMBER] = knob(
        0, "Seed for the noise start image (a 64-bit integer, as the results record it)."
    )
    pooling: _choice(Pooling) = knob(
        Pooling.AVG, "Average pooling (the paper's choice for synthesis) or max."
    )
    color: _choice(ColorMode) = knob(
        ColorMode.NONE, "Colour preservation: none (paper), histogram or luminance."
    )
    tv_weight: NonNegative = knob(0.0, "Total-variation weight (paper: 0).")
    precision: _choice(Precision) = knob(
        Precision.FP32,
        "fp32; tf32: TF32 tensor cores on CUDA GPUs (faster); bf16: convolutions in bfloat16.",
    )
    channels_last: bool = knob(True, "NHWC activations (faster convolutions with oneDNN and cuDNN).")
    scales: Annotated[int, Field(ge=1, le=MAX_SCALES), NUMBER] = knob(
        1,
        "Coarse-to-fine scales (1: the paper's single-scale synthesis); each coarser one is "
        f"scale_factor times smaller, and its result, upsampled, starts the next (at most {MAX_SCALES}).",
    )
    scale_factor: Annotated[float, Field(gt=1, le=MAX_SCALE_FACTOR, allow_inf_nan=False), NUMBER] = knob(
        2.0, f"Size ratio between neighbouring scales (at most {MAX_SCALE_FACTOR:g})."
    )
    scale_iterations: Iterations | None = knob(
        None, "Iterations at each coarser scale (default: iterations)."
    )
    temporal_weight: NonNegative = knob(
        TEMPORAL_WEIGHT,
        "Video frames after a shot's first: weight of the temporal loss (Ruder et al. 2016, eq. 7) "
        "that keeps a frame near the previous stylized frame warped by the optical flow, relative to "
        "the content loss of that warped frame: γ content losses per unit of mean squared departure "
        "([0, 1] pixels, where the flow is trusted), so one value fits any network and size; "
        "0: warm start only. Images ignore it.",
    )
    tile: Annotated[int, Field(ge=0, le=MAX_SIDE), NUMBER] | None = knob(
        None,
        "Tile side in px for images beyond the device's memory: the loss gradient is then "
        "computed tile by tile, exactly (default: auto, tiles only where the image would not fit; "
        f"0: never tile; at most {MAX_SIDE:,}, the largest size).",
    )

    @field_validator("init")
    @classmethod
    def _init_is_known_or_a_file(cls, init: str) -> str:
        # a URI (s3://...) is checked where it is read: planning hashes it, a worker decodes it;
        # one with credentials is refused first, as every location is (never echoed)
        refuse_credentials(init)
        if init not in INITS and not is_uri(init) and not Path(init).is_file():
            raise ValueError(f"{init}: not one of {', '.join(INITS)} and not an image file; check the path")
        return init

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """What no single field can say: the fields are valid one by one when this runs."""
        for name, layers, weights in (
            ("content_layer_weights", self.content_layers, self.content_layer_weights),
            ("style_layer_weights", self.style_layers, self.style_layer_weights),
        ):
            if weights is not None and len(weights) != len(layers):
                raise _refuse(name, f"give {len(layers)} weights, one per layer, got {len(weights)}")
        smallest, layer = self.scale_size(self.scales - 1), deepest(self.loss_layers)
        if self.scales > 1 and smallest < min_side(layer):  # one scale: synthesis_size checks
            raise _refuse(
                "scales",
                f"{self.scales} scales of factor {self.scale_factor:g} from {self.size} px start at "
                f"{smallest} px, below the {min_side(layer)} px that {layer} needs; use fewer scales",
            )
        grid = min_side(layer)
        if self.tile and (self.tile < grid or self.tile % grid):
            raise _refuse(
                "tile",
                f"must be 0 (never tile) or a multiple of {grid} px (the {layer} grid), got {self.tile}",
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _as_config_error(cls, values: Any, handler: Any) -> Any:
        """Callers see ``ConfigError`` naming the field, whatever pydantic found (declared
        last, so it wraps the validators above as well as the fields)."""
        try:
            return handler(values)
        except ValidationError as exc:
            raise InvalidConfig([_problem(error, values) for error in exc.errors()]) from None

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


def _problem(error: ErrorDetails, values: Any) -> ConfigError:
    """One pydantic error as ``ConfigError(message, field=name)``."""
    ctx = error.get("ctx") or {}
    if error["type"] == "config":  # from _refuse()
        return ConfigError(ctx["message"], field=ctx["field"])
    name = str(error["loc"][0]) if error["loc"] else None
    whole = _given(values, name) if name and len(error["loc"]) > 1 else NOTHING
    return ConfigError(message(error, whole=whole), field=name)


def _given(values: Any, name: str) -> Any:
    """The value given for field ``name``, as given (before any conversion)."""
    if isinstance(values, ArgsKwargs):
        names = list(SynthesisConfig.__dataclass_fields__)
        given = dict(zip(names, values.args, strict=False)) | (values.kwargs or {})
        return given.get(name, NOTHING)
    return values.get(name, NOTHING) if isinstance(values, dict) else NOTHING


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
