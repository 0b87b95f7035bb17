"""Entry point of the ``nst`` command: registers every sub-command on the app."""
# ruff: noqa: I001  (import order is the order of the commands in --help)

import os
import sys
from typing import NoReturn

import typer

from nst_engine.cli import stylize  # noqa: F401
from nst_engine.cli import stylize_video  # noqa: F401
from nst_engine.cli import render  # noqa: F401
from nst_engine.cli import plan  # noqa: F401
from nst_engine.cli import jobs  # noqa: F401
from nst_engine.cli import report  # noqa: F401
from nst_engine.cli import bench  # noqa: F401
from nst_engine.cli import schema  # noqa: F401
from nst_engine.cli.app import app, exit_code, fail, stop_on_signals, stopped_by

__all__ = ["app", "main"]


def main() -> None:
    """The ``nst`` command. A usage error (unknown option, a value that is not one of the
    choices) is one ``error:`` line with exit code 2 like every other error, rather than
    click's boxed usage text. (typer bundles its own click and exposes only
    ``TyperException`` publicly, so the kinds are told apart by name.)"""
    stop_on_signals()
    try:
        code = app(prog_name="nst", standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C or SIGTERM (click wraps them in Abort)
        code = fail(stopped_by(), exit_code()).exit_code
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `nst`: the help text
            exc.show()
            sys.exit(exc.exit_code)
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        code = fail(f"{exc.format_message()}{hint}", exc.exit_code).exit_code
    end(code if isinstance(code, int) else 0)


def end(code: int) -> NoReturn:
    """Exit with ``code``; at once (``os._exit``, the output flushed) when Ray's shutdown
    was left running (``runtime.shutdown_unfinished``: slow, or cut short by a second
    Ctrl-C), since finalizing the interpreter under it crashed the process. The run's
    rows, record and lease are settled by then, and the watchdog has killed whatever
    was left of the embedded cluster."""
    runtime = sys.modules.get("nst_engine.distributed.runtime")  # loaded only with Ray
    if runtime is not None and runtime.shutdown_unfinished():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
