"""The typer application and the one way the CLI reports errors."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape

from nst_engine.errors import NSTError, one_line

app = typer.Typer(
    help="Neural style transfer after Gatys, Ecker & Bethge (CVPR 2016): one image, or batches on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, emoji=False, highlight=False)

#: The manifest argument and output-root option of every command that takes a manifest.
ManifestArgument = Annotated[
    Path, typer.Argument(help="Manifest: YAML, JSON, CSV or Parquet.", show_default=False)
]
OutputOption = Annotated[
    str | None, typer.Option("--output", "-o", help="Output root (folder or s3://, gs://, file:// URI).")
]

#: What reading or writing an output root or input location raises besides ``NSTError``: an
#: unusable URI (``ValueError``), storage that refuses (``OSError``), pyarrow's own errors.
STORAGE_ERRORS = (OSError, ValueError, pa.ArrowException)

#: The CLI's flags for fields that are not spelled ``--field-name``.
FLAG_NAMES = {"source": "--weights", "preprocessing": "--weights-preprocessing"}


def flag(field: str) -> str:
    """The CLI's spelling of an engine parameter: ``style_layers`` -> ``--style-layers``."""
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def message(problem: str | BaseException) -> str:
    """What the CLI prints for a problem: the text as given; an ``NSTError`` as written
    for people, with its parameter spelled as a flag; any other exception as one line."""
    if isinstance(problem, str):
        return problem
    if isinstance(problem, NSTError):
        return f"{flag(problem.field)}: {problem.message}" if problem.field else str(problem)
    return one_line(problem)


def fail(problem: str | BaseException, code: int = 2) -> typer.Exit:
    """Print ``error: ...`` (no markup, no emoji codes) and return the exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message(problem))}", soft_wrap=True)
    return typer.Exit(code)


#: The last stopping signal this process received (SIGINT unless a handler saw SIGTERM).
_received = {"signal": signal.SIGINT}


def stop_on_sigterm() -> None:
    """Make SIGTERM stop a command the way Ctrl-C does (a ``KeyboardInterrupt`` in the main
    thread: rows flushed, a summary, how to go on) instead of killing it at once or, once
    Ray's core is loaded, running its handler's C++ stack dump; call again after
    ``ray.init``. The signal is remembered because Ray's calls re-raise whatever
    interrupts them as a plain ``KeyboardInterrupt``."""

    def terminate(signum: int, _frame: object) -> None:
        _received["signal"] = signal.Signals(signum)
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, terminate)


def stopped_by() -> str:
    """How a stopped command says why."""
    return "terminated (SIGTERM)" if _received["signal"] == signal.SIGTERM else "interrupted (Ctrl-C)"


def exit_code() -> int:
    """128 + the signal's number, as shells report a command a signal stopped: 130, 143."""
    return 128 + _received["signal"]
