"""Command-line options derived from ``SynthesisConfig``, and CLI spellings of field errors.

Why a generated signature: typer reads a command's options from its function signature
(``inspect.signature`` and the ``Annotated[type, typer.Option(...)]`` annotations). Written
out by hand, ``nst stylize`` repeated every engine field with a copied default and help
text, and drifted from the engine (``channels_last`` never reached the CLI). Instead,
:func:`engine_options` replaces a command's placeholder parameter ``engine`` by one
option per ``dataclasses.fields(SynthesisConfig)`` entry, typed, defaulted and documented
from the field itself, and hands the values back to the command as one dict. A new engine
parameter therefore appears in ``--help`` with no CLI edit.

Mapping from a field to an option:

* ``ratio`` -> ``--ratio``, ``history_size`` -> ``--history-size``;
* ``bool`` -> ``--x/--no-x``;
* a ``StrEnum`` -> its choices, shown by typer as ``[fp32|tf32|bf16]`` and checked by click;
* ``tuple[...]`` -> one comma-separated string, which ``SynthesisConfig`` splits itself;
* ``X | None`` -> an option with no default.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from enum import Enum
from typing import Annotated, Any, Literal

import typer

from nst_engine.cli.app import flag
from nst_engine.engine.config import SynthesisConfig

ENGINE = "engine"
TUPLE_METAVARS = {str: "LAYERS", float: "NUMBERS"}
#: each field's type without its constraints (``Annotated`` removed), e.g. ``tuple[float, ...] | None``
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(SynthesisConfig)


def split_optional(kind: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(kind, False)``."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def option_parameter(f: Field) -> inspect.Parameter:
    """The typer parameter for one ``SynthesisConfig`` field."""
    kind, optional = split_optional(FIELD_TYPES[f.name])
    help_text = f.metadata.get("help")
    if not help_text:
        raise TypeError(f"SynthesisConfig.{f.name} needs metadata={{'help': ...}} for its CLI option")
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    extra: dict[str, Any] = {}
    if getattr(kind, "__origin__", None) is tuple:
        item = kind.__args__[0]
        item = str if typing.get_origin(item) is Literal else item  # layer names
        annotation: Any = str
        help_text = f"{help_text} Comma-separated."
        extra["metavar"] = TUPLE_METAVARS.get(item, "VALUES")
        default = None if default is None else ",".join(str(v) for v in default)
    elif isinstance(kind, type) and issubclass(kind, Enum | bool | int | float | str):
        annotation = kind
    else:
        raise TypeError(f"no command-line form for SynthesisConfig.{f.name}: {kind}")
    if optional:
        annotation = annotation | None
    name = flag(f.name)
    if kind is bool:
        name = f"{name}/--no-{name.removeprefix('--')}"
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(name, help=help_text, **extra)],
    )


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: give ``command`` one option per ``SynthesisConfig`` field.

    ``command`` declares a parameter named ``engine`` where the options belong; it receives
    them as ``engine={field name: value as given}`` (tuples still comma-separated: pass
    the dict to :func:`config_from_options`).
    """
    signature = inspect.signature(command, eval_str=True)
    if ENGINE not in signature.parameters:
        raise TypeError(f"{command.__name__} needs a parameter named {ENGINE!r} for the engine options")
    generated = [option_parameter(f) for f in fields(SynthesisConfig)]
    names = [p.name for p in generated]
    clash = set(names) & set(signature.parameters)
    if clash:
        raise TypeError(f"{command.__name__}: parameters {sorted(clash)} clash with SynthesisConfig fields")
    parameters = []
    for p in signature.parameters.values():
        if p.name == ENGINE:
            parameters += generated
        else:
            parameters.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        engine = {name: kwargs.pop(name) for name in names}
        return command(**kwargs, engine=engine)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": signature.return_annotation
    }
    del wrapper.__wrapped__  # typer must see the new signature, not the command's
    return wrapper


def config_from_options(values: dict[str, Any]) -> SynthesisConfig:
    """A validated config from option values (lists still comma-separated); raises
    ``ConfigError(field=...)``."""
    return SynthesisConfig(**values)
