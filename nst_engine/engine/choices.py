"""The engine's choice types: string enums that typer shows as choices, manifests
validate against, and that compare equal to (and serialize as) their plain strings."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class Optimizer(StrEnum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class Pooling(StrEnum):
    AVG = "avg"
    MAX = "max"


class ColorMode(StrEnum):
    """Colour preservation (see ``nst_engine.engine.color``)."""

    NONE = "none"
    HISTOGRAM = "histogram"
    LUMINANCE = "luminance"


class Precision(StrEnum):
    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"


def choices(kind: Any) -> tuple[str, ...]:
    """The allowed values of an enum type (empty for other types)."""
    if isinstance(kind, type) and issubclass(kind, Enum):
        return tuple(str(m.value) for m in kind)
    return ()


def parse_choice(kind: type[E], value: Any) -> E:
    """``value`` as a member of ``kind``; a ``ValueError`` listing the choices otherwise."""
    try:
        return kind(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"expected one of {', '.join(choices(kind))}") from None
