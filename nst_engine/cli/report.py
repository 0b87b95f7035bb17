"""``nst report``: a static HTML report (gallery, plots, devices, failures) from a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import app, err, fail


@app.command()
def report(
    results: Annotated[
        Path,
        typer.Argument(help="results.parquet, or the output folder holding it.", show_default=False),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the report.")] = Path("report"),
    page_size: Annotated[int, typer.Option(help="Gallery items per page.")] = 60,
) -> None:
    """Write a static HTML report to open in a browser, and print the path of its index.html.

    Thumbnails stay in the report folder for the next report; results link to full-size images.
    """
    from nst_engine.reports import ReportError, build_report

    if page_size < 1:
        raise fail(f"--page-size must be at least 1, got {page_size}")
    try:
        summary = build_report(results, output, page_size)
    except ReportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{output}: cannot write the report: {exc.strerror or exc}") from None
    err.print(
        f"{summary.items} items on {summary.pages} page(s), {len(summary.plots)} plots, "
        f"{summary.thumbs_created} new thumbnails ({summary.thumbs_reused} reused) -> {escape(str(output))}"
    )
    typer.echo(str(summary.index.resolve()))
