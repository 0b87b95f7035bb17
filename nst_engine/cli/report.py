"""``nst report``: a static HTML report (gallery, plots, devices, failures) from a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import app, err, reports_errors
from nst_engine.errors import NSTError, one_line


@app.command()
@reports_errors
def report(
    results: Annotated[
        str,
        typer.Argument(
            help="Output root (folder, file:// or s3:// URI) or its results.parquet.", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the report.")] = Path("report"),
    page_size: Annotated[int, typer.Option(min=1, help="Gallery items per page.")] = 60,
) -> None:
    """Write a static HTML report to open in a browser, and print the path of its index.html.

    Thumbnails stay in the report folder for the next report; results link to full-size images.
    """
    from nst_engine.reports.build import build_report

    try:
        summary = build_report(results, output, page_size)
    except OSError as exc:
        raise NSTError(f"{output}: cannot write the report: {one_line(exc)}") from None
    err.print(
        f"{summary.items} items on {summary.pages} page(s), {len(summary.plots)} plots, "
        f"{summary.thumbs_created} new thumbnails ({summary.thumbs_reused} reused) -> {escape(str(output))}"
    )
    typer.echo(str(summary.index.resolve()))
