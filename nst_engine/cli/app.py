"""The typer application and the one way the CLI reports errors."""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from nst_engine.errors import NSTError, one_line
from nst_engine.results.cost import PRICE_FORM
from nst_engine.signals import watch_signals
from nst_engine.storage.uris import redact

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

#: ``--price``, of the commands that price a render (``nst plan``, ``nst render``).
PriceOption = Annotated[
    str | None,
    typer.Option(
        metavar="KIND=AMOUNT/h,...",
        help=f"Prices per device-hour (a GPU for cuda, a CPU core for cpu): {PRICE_FORM}.",
    ),
]
#: Exit code of a render that stopped handing out items at its ``--budget`` (1: items
#: failed; 2: an error to fix; 130/143: stopped by a signal).
BUDGET_EXIT_CODE = 3

#: The CLI's flags for fields that are not spelled ``--field-name``.
FLAG_NAMES = {"source": "--weights", "preprocessing": "--weights-preprocessing"}


def flag(field: str) -> str:
    """The CLI's spelling of an engine parameter: ``style_layers`` -> ``--style-layers``."""
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def message(problem: str | BaseException) -> str:
    """What the CLI prints for a problem: the text as given; an ``NSTError`` as written
    for people, with its parameter spelled as a flag; any other exception as one line.
    Never a credential: every location is refused with one before it is used, and this
    is the last place a URI holding one could still be shown."""
    if isinstance(problem, str):
        return redact(problem)
    if isinstance(problem, NSTError):
        return redact(f"{flag(problem.field)}: {problem.message}" if problem.field else str(problem))
    return redact(one_line(problem))


def fail(problem: str | BaseException, code: int = 2) -> typer.Exit:
    """Print ``error: ...`` (no markup, no emoji codes) and return the exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message(problem))}", soft_wrap=True)
    return typer.Exit(code)


class Printer:
    """A run's listener (``runs.events.Listener``) that prints its lines on stderr;
    commands override what they show more of."""

    live = False

    def note(self, line: str) -> None:
        err.print(escape(redact(line)), soft_wrap=True)

    def warn(self, line: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(redact(line))}", soft_wrap=True)

    def connected(self, line: str, total: int = 0) -> None:
        stop_on_signals()  # again: ray.init installed its own handler, which dumps a C++ stack
        self.note(line)

    def progress(self, progress: object) -> None:
        pass

    def row(self, where: str, row: dict) -> None:
        pass


P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """The one place a command's errors become exit codes: anything the user must fix
    (``NSTError``, from the run layer or an option) is one ``error:`` line and exit 2; a
    command's other outcomes (1: items failed; 130/143: stopped) it raises itself. A
    Ctrl-C or SIGTERM the command does not handle (before a run, or a second one while a
    stopped run exits) is one line and 130/143 too; typer would exit 130 without a word."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except NSTError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            raise fail(stopped_by(), exit_code()) from None

    return wrapper


#: The last stopping signal this process received (SIGINT unless a handler saw SIGTERM).
_received = {"signal": signal.SIGINT}


#: Seconds a stopped command has to end (rows flushed, the summary, Ray shut down, which
#: takes 2-7 s, bounded by ``runtime.SHUTDOWN_SECONDS``) before it ends at once. A machine
#: loaded enough to starve Ray's own processes was seen to block the driver in Ray's calls
#: before that bound, for good; a render's finished images are safe either way (the next
#: run records them from the images), so the exit never waits longer than this.
EXIT_DEADLINE_SECONDS = 20.0
_deadline: list[threading.Timer] = []
_deadline_lock = threading.Lock()


def stop_on_signals() -> None:
    """Make SIGTERM stop a command the way Ctrl-C does (a ``KeyboardInterrupt`` in the main
    thread: rows flushed, a summary, how to go on) instead of killing it at once or, once
    Ray's core is loaded, running its handler's C++ stack dump; and either signal start
    the exit's deadline (``EXIT_DEADLINE_SECONDS``). Call again after ``ray.init``. The
    signal is remembered because Ray's calls re-raise whatever interrupts them as a plain
    ``KeyboardInterrupt``."""

    def stop(signum: int, _frame: object) -> None:
        _received["signal"] = signal.Signals(signum)
        _start_deadline()
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _watch_signals()


def _start_deadline() -> None:
    """Start the exit's deadline once: a second signal only hurries the same exit."""
    with _deadline_lock:
        if not _deadline:
            _deadline.append(threading.Timer(EXIT_DEADLINE_SECONDS, _exit_now))
            _deadline[0].daemon = True
            _deadline[0].start()


def _watch_signals() -> None:
    """Start the deadline from a thread that the C-level handler wakes, too: a Python
    handler runs only when the main thread gets back to Python, and a main thread blocked
    inside Ray's C++ calls (the very case the deadline is for) never does."""
    watch_signals((signal.SIGINT, signal.SIGTERM), _heard)


def _heard(signum: signal.Signals) -> None:
    """A stopping signal, as the watcher thread hears it."""
    _received["signal"] = signum
    _start_deadline()


def _exit_now() -> None:
    """The deadline passed with the command still ending: say so in one line and end now.
    ``os._exit`` skips what blocks (Ray's exit hooks); the embedded cluster's watchdog
    kills its processes once this one is gone."""
    line = (
        f"error: {stopped_by()}, but the command did not end within {EXIT_DEADLINE_SECONDS:.0f} s "
        "(Ray did not answer), so it ended without waiting; finished images are kept, and "
        "the next run records the ones whose rows were not written\n"
    )
    # straight to the descriptor, no flush: the blocked main thread may hold the streams' locks
    os.write(2, line.encode())
    os._exit(exit_code())


def stopped_by() -> str:
    """How a stopped command says why."""
    return "terminated (SIGTERM)" if _received["signal"] == signal.SIGTERM else "interrupted (Ctrl-C)"


def exit_code() -> int:
    """128 + the signal's number, as shells report a command a signal stopped: 130, 143."""
    return 128 + _received["signal"]
