"""``nst stylize``: one content image, one or more styles, one PNG."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nst_engine.cli.app import Printer, app, err, reports_errors
from nst_engine.cli.options import config_from_options, engine_options
from nst_engine.engine.optimize import IterationRecord
from nst_engine.engine.weights_spec import WeightsSpec


@app.command()
@reports_errors
@engine_options
def stylize(
    content: Annotated[Path, typer.Argument(help="Content photo.", show_default=False)],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG file.")] = Path("stylized.png"),
    engine: dict[str, Any] | None = None,  # one option per SynthesisConfig field (cli/options.py)
    weights: Annotated[
        str, typer.Option(help="VGG-19 weights: embedded (offline), torchvision, or a .pth state dict.")
    ] = "embedded",
    weights_preprocessing: Annotated[
        str | None,
        typer.Option(help="For a weights file: torchvision (default) or caffe input preprocessing."),
    ] = None,
    allow_download: Annotated[bool, typer.Option(help="Allow downloading torchvision weights.")] = False,
    normalize: Annotated[
        bool, typer.Option(help="Paper's optional weight normalization (mean activation 1 per filter).")
    ] = False,
    calibration: Annotated[
        list[Path] | None, typer.Option(help="Images for --normalize (default: the shipped samples).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's choice).")] = None,
    snapshot_every: Annotated[int, typer.Option(help="Also save every k-th iterate next to the output.")] = 0,
    stats_json: Annotated[
        Path | None, typer.Option(help="Write the run's statistics to this JSON file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Stylize CONTENT in the style of STYLES and write a PNG.

    Example: nst stylize photo.jpg painting.jpg -o out.png --size 512 --iterations 500
    """
    from nst_engine.runs.stylize import StylizeRequest
    from nst_engine.runs.stylize import stylize as run

    request = StylizeRequest(
        content,
        styles,
        output,
        config_from_options(engine or {}),
        WeightsSpec(
            source=weights,
            preprocessing=weights_preprocessing,
            normalize=normalize,
            calibration=tuple(str(p) for p in calibration or ()),
            allow_download=allow_download,
        ),
        device,
        threads,
        snapshot_every,
        stats_json,
    )
    with _progress(request.config.iterations, quiet) as on_iteration:
        stats = run(request, Printer(), on_iteration).stats
    per_iteration = stats.seconds_per_iteration
    err.print(
        escape(
            f"wrote {output} ({stats.width}x{stats.height}, {stats.iterations} iterations, "
            f"{stats.loss_evaluations} loss evaluations, {stats.synthesis_seconds:.1f} s, "
            f"{'n/a' if per_iteration is None else f'{per_iteration:.3f}'} s/iteration, "
            f"stop: {stats.stop_reason})"
        ),
        soft_wrap=True,
    )


@contextlib.contextmanager
def _progress(iterations: int, quiet: bool) -> Iterator[Callable[[IterationRecord], None]]:
    """A progress bar of the iterations, shown from the first one (nothing of it before:
    an input refused before the synthesis is the only line), none when ``quiet``; yields
    what advances it."""
    progress = Progress(
        TextColumn("[bold]stylizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[rate]:.2f} it/s"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    task = progress.add_task("stylize", total=iterations, loss=float("nan"), rate=0.0, start=False)

    def advance(record: IterationRecord) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        rate = 1.0 / record.seconds if record.seconds else 0.0
        progress.update(task, advance=1, loss=record.total, rate=rate)

    try:
        yield advance
    finally:
        if progress.live.is_started:  # stopping one never started prints an empty line
            progress.stop()
