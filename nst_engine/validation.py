"""Pydantic's validation errors as the one-line problems people read.

Configurations, manifests and job files are pydantic models: pydantic finds every problem
at once, with its location (``loc``: keys and list indices). This module says each one the
way the project always has (``must be positive, got -1``, ``unknown field; use a, b``),
so that a front end only adds where: ``--ratio: ...`` or ``demo.yaml:12: params.ratio: ...``.
What a model wants said about its own keys lives on it (:class:`Section`), found from an
error's location by :func:`section_at`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Discriminator, Tag
from pydantic_core import ErrorDetails

from nst_engine.storage.uris import redact

#: Tags of the "text or mapping" unions (:func:`text_or`): they appear in an error's
#: location, where a person expects only keys and indices, so :func:`path_of` drops them.
TEXT, MAPPING = "(text)", "(mapping)"
NOTHING: Any = object()  # no value given (``None`` is a value)

#: Errors that say a value has the wrong form, as opposed to being out of range.
FORM_ERRORS = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "int_parsing_size": "expected a whole number of a usable size",  # beyond 64 bits
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must not be blank",
    "too_short": "must not be empty",
}
#: Errors that say a value is out of range, and how to say it from the limit.
BOUNDS: dict[str, Callable[[Any], str]] = {
    "greater_than": lambda v: "must be positive" if v in (0, "0") else f"must be above {v}",
    "greater_than_equal": lambda v: "must be 0 or more" if v in (0, "0") else f"must be at least {v}",
    "less_than": lambda v: f"must be below {v}",
    "less_than_equal": lambda v: f"must be at most {v}",
}
NUMBER_ERRORS = {
    "int_type",
    "int_parsing",
    "int_from_float",
    "int_parsing_size",
    "float_type",
    "float_parsing",
}


class Section(BaseModel):
    """A mapping in a user's file: unknown keys are refused, each named with the keys it takes."""

    model_config = ConfigDict(extra="forbid")

    #: the problem of an unknown key; ``{keys}``: the keys this mapping takes
    unknown: ClassVar[str] = "unknown field; use {keys}"
    #: keys that belong elsewhere -> where, said instead of ``unknown``
    moved: ClassVar[dict[str, str]] = {}
    #: field -> what to give, said when its value is missing, has the wrong form or is out of range
    expected: ClassVar[dict[str, str]] = {}


def text_or(model: type[BaseModel], problem: str, text: Any = str) -> Any:
    """The type "a string (of type ``text``), or a mapping validated by ``model``" (a path
    or a full entry): a tagged union, so a bad mapping reports its own fields rather than
    also failing as a string, and anything else is ``problem``."""

    def form(value: Any) -> str | None:
        return TEXT if isinstance(value, str) else MAPPING if isinstance(value, dict) else None

    return Annotated[
        Annotated[text, Tag(TEXT)] | Annotated[model, Tag(MAPPING)],
        Discriminator(form, custom_error_type="form", custom_error_message=problem),
    ]


def path_of(error: ErrorDetails) -> tuple[str | int, ...]:
    """Where an error lies, as keys and list indices (``("params", "ratio")``)."""
    return tuple(part for part in error["loc"] if part not in (TEXT, MAPPING))


def message(error: ErrorDetails, root: type[BaseModel] | None = None, whole: Any = NOTHING) -> str:
    """One line about ``error``, without its location. ``root``: the model validated, whose
    sections say how their keys are named; ``whole``: the value of the parameter the error
    lies inside (a list of numbers), given when the error is about one of its items. A
    value shown (``got ...``) never shows a credential a URI in it carries."""
    return redact(_message(error, root, whole))


def _message(error: ErrorDetails, root: type[BaseModel] | None, whole: Any) -> str:
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    path = path_of(error)
    owner = section_at(root, path[:-1]) if root is not None and path else None
    key = path[-1] if path else None
    if kind == "extra_forbidden":
        if owner is None:
            return "unknown field"
        return owner.moved.get(str(key)) or owner.unknown.format(keys=", ".join(sorted(owner.model_fields)))
    if (
        owner is not None
        and key in owner.expected
        and (kind in FORM_ERRORS or kind in BOUNDS or kind == "missing")
    ):
        said = owner.expected[str(key)]
        return said if kind == "missing" else f"{said}, got {given!r}"
    if kind == "missing":
        return "needs a value"
    if kind == "unexpected_keyword_argument":
        return "unknown parameter"
    if whole is not NOTHING:  # one item of a list-valued parameter
        if kind in NUMBER_ERRORS:
            return f"expected a list of numbers, got {whole!r}"
        return f"each value {_message(error, None, NOTHING)}"
    return _said(kind, ctx, given, error["msg"])


def _said(kind: str, ctx: dict[str, Any], given: Any, fallback: str) -> str:
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])  # our own validators' words
    if kind in FORM_ERRORS:
        return f"{FORM_ERRORS[kind]}, got {given!r}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {given!r}"
    if kind in BOUNDS:
        limit = next(iter(ctx.values()))
        return f"{BOUNDS[kind](f'{limit:g}' if isinstance(limit, float) else limit)}, got {given!r}"
    return fallback  # our own PydanticCustomError types, and anything new: pydantic's words


def section_at(root: type[BaseModel], path: tuple[str | int, ...]) -> type[Section] | None:
    """The :class:`Section` model that validates the mapping at ``path`` under ``root``,
    found by following field types (lists, tuples, unions, ``Annotated``) down the path."""
    kinds: list[Any] = [root]
    for part in path:
        kinds = [inner for kind in kinds for member in _members(kind) for inner in _step(member, part)]
    found = [m for kind in kinds for m in _members(kind) if isinstance(m, type) and issubclass(m, Section)]
    return found[0] if found else None


def _members(kind: Any) -> Iterator[Any]:
    """The types a value of ``kind`` may have: unions opened, ``Annotated`` unwrapped."""
    origin = typing.get_origin(kind)
    if origin is Annotated:
        yield from _members(typing.get_args(kind)[0])
    elif origin is typing.Union or isinstance(kind, types.UnionType):
        for arg in typing.get_args(kind):
            yield from _members(arg)
    else:
        yield kind


def _step(kind: Any, part: str | int) -> Iterator[Any]:
    """The type of ``kind``'s item or field ``part``."""
    if isinstance(part, int) and typing.get_origin(kind) in (list, tuple):
        yield typing.get_args(kind)[0]
    elif isinstance(part, str) and isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(part)
        if field is not None:
            yield field.annotation
