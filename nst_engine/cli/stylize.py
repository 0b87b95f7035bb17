"""``nst stylize``: one content image, one or more styles, one PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nst_engine.cli.app import app, err, fail
from nst_engine.cli.options import config_from_options, engine_options
from nst_engine.engine import NSTError, Stylizer, SynthesisConfig, SynthesisResult, load_image
from nst_engine.engine.memory import is_out_of_memory
from nst_engine.engine.optimize import IterationRecord
from nst_engine.engine.problem import synthesis_size
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import one_line
from nst_engine.storage.files import probe_writable, write_atomic


def _check_writable(path: Path, option: str) -> None:
    """Fail before a long synthesis, not after it, when a result cannot be written: the
    folder is created and a file as long-named as the result's temporary one written,
    renamed and deleted there (creating the folder alone passes a read-only one)."""
    if path.is_dir():
        raise fail(f"{option} {path}: is a directory; give a file name")
    try:
        probe_writable(str(path.parent), name=f"{option} {path}: folder {path.parent}", like=path.name)
    except NSTError as exc:
        raise fail(exc) from None


@app.command()
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
    if output.suffix.lower() != ".png":
        raise fail(f"--output {output}: must end in .png (the parameters are stored as PNG text)")
    if snapshot_every < 0:
        raise fail(f"--snapshot-every must be 0 (off) or a positive number, got {snapshot_every}")
    if threads is not None and threads < 1:
        raise fail(f"--threads must be at least 1, got {threads}")
    _check_writable(output, "--output")
    if stats_json is not None:
        _check_writable(stats_json, "--stats-json")
    try:
        config = config_from_options(engine or {})
        # decode the images first: a bad file should fail before weights load
        content_image = load_image(content)
        style_images = [load_image(path) for path in styles]
        spec = WeightsSpec(
            source=weights,
            preprocessing=weights_preprocessing,
            normalize=normalize,
            calibration=tuple(str(p) for p in calibration or ()),
            allow_download=allow_download,
        )
        loaded, load_seconds = spec.load()
        stylizer = Stylizer(loaded, device=device, threads=threads, load_seconds=load_seconds)
        err.print(f"weights: {escape(loaded.source)}", soft_wrap=True)
        err.print(f"device: {stylizer.device}")
        _print_tiling(stylizer, content_image, config)
        result = _run(stylizer, content_image, style_images, config, output, snapshot_every, quiet)
    except NSTError as exc:
        raise fail(exc) from None
    except (MemoryError, RuntimeError) as exc:  # too large even in tiles, or an allocation failed
        if not is_out_of_memory(exc):
            raise
        raise fail(f"out of memory: {one_line(exc) or 'an allocation failed'}") from None
    stats = result.stats
    try:
        result.save(output)
        if stats_json is not None:
            write_atomic(
                stats_json, json.dumps({"params": config.to_params(), **stats.to_dict()}, indent=2).encode()
            )
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
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


def _print_tiling(stylizer: Stylizer, content: Image.Image, config: SynthesisConfig) -> None:
    """Say so when the output is computed in tiles, and why."""
    height, width = synthesis_size(content, config)
    placement = stylizer.place(height, width, config)
    if placement.tile:
        why = "--tile" if config.tile else "the whole image would not fit in memory"
        tiles = placement.tiles(height, width)
        err.print(f"tiled: {width}x{height} in {placement.tile} px tiles, {tiles} per evaluation ({why})")


def _run(
    stylizer: Stylizer,
    content: Image.Image,
    styles: list[Image.Image],
    config: SynthesisConfig,
    output: Path,
    snapshot_every: int,
    quiet: bool,
) -> SynthesisResult:
    snapshot_path = None
    if snapshot_every:

        def snapshot_path(i: int) -> Path:
            return output.with_name(f"{output.stem}.iter{i:05d}.png")

    with Progress(
        TextColumn("[bold]stylizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[rate]:.2f} it/s"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("stylize", total=config.iterations, loss=float("nan"), rate=0.0)

        def on_iteration(record: IterationRecord, _image: object) -> None:
            progress.update(
                task, advance=1, loss=record.total, rate=1.0 / record.seconds if record.seconds else 0.0
            )

        return stylizer.synthesize(
            content,
            styles,
            config,
            on_iteration=on_iteration,
            snapshot_every=snapshot_every,
            snapshot_path=snapshot_path,
        )
