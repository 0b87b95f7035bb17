"""The typer application and the one way the CLI reports errors."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="Neural style transfer after Gatys, Ecker & Bethge (CVPR 2016): one image, or batches on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, emoji=False, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (no markup, no emoji codes) and return the exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)
