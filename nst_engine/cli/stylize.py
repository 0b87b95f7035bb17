"""``nst stylize``: one content image, one or more styles, one PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nst_engine.cli.app import app, err, fail
from nst_engine.engine import NSTError, Stylizer, SynthesisConfig, SynthesisResult, load_image
from nst_engine.engine.config import CONTENT_LAYERS, STYLE_LAYERS
from nst_engine.engine.files import write_atomic
from nst_engine.engine.optimize import IterationRecord
from nst_engine.engine.weights_spec import WeightsSpec


def _check_writable(path: Path, option: str) -> None:
    """Fail before a long synthesis, not after it, when a result cannot be written."""
    if path.is_dir():
        raise fail(f"{option} {path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{option} {path}: cannot create folder {path.parent} ({exc.strerror or exc})") from None


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise fail(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(help="Content photo.", show_default=False)],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG file.")] = Path("stylized.png"),
    size: Annotated[int, typer.Option(help="Longer side of the output in pixels (aspect ratio kept).")] = 512,
    iterations: Annotated[int, typer.Option(help="Optimizer iterations.")] = 500,
    ratio: Annotated[
        float, typer.Option(help="Content/style weight ratio alpha/beta (paper: 1e-2 ... 1e-5).")
    ] = 1e-3,
    init: Annotated[
        str, typer.Option(help="Start image: noise (paper), content, style, or an image file.")
    ] = "noise",
    seed: Annotated[int, typer.Option(help="Seed for the noise start image.")] = 0,
    optimizer: Annotated[str, typer.Option(help="lbfgs (paper) or adam.")] = "lbfgs",
    history_size: Annotated[int, typer.Option(help="L-BFGS history size.")] = 100,
    line_search: Annotated[bool, typer.Option(help="Strong-Wolfe line search for L-BFGS.")] = False,
    learning_rate: Annotated[
        float | None, typer.Option(help="Step scale (default 1.0 for L-BFGS, 0.02 for Adam).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Stop when the relative loss change is below this.")
    ] = 1e-9,
    pooling: Annotated[str, typer.Option(help="avg (paper's choice for synthesis) or max.")] = "avg",
    content_layers: Annotated[str, typer.Option(help="Comma-separated content layers.")] = ",".join(
        CONTENT_LAYERS
    ),
    content_layer_weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights per content layer.")
    ] = None,
    style_layers: Annotated[str, typer.Option(help="Comma-separated style layers.")] = ",".join(STYLE_LAYERS),
    style_layer_weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights per style layer (default 1/n each).")
    ] = None,
    style_weights: Annotated[
        str | None, typer.Option(help="Comma-separated blend weights, one per style image.")
    ] = None,
    style_scale: Annotated[
        float | None,
        typer.Option(help="Style size relative to the content (default: resized to the content's size)."),
    ] = None,
    color: Annotated[str, typer.Option(help="Colour preservation: none, histogram or luminance.")] = "none",
    tv_weight: Annotated[float, typer.Option(help="Total-variation weight (paper: 0).")] = 0.0,
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
    precision: Annotated[str, typer.Option(help="fp32, or tf32 on CUDA GPUs (faster).")] = "fp32",
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
        config = SynthesisConfig(
            size=size,
            iterations=iterations,
            ratio=ratio,
            content_layers=_names(content_layers),
            content_layer_weights=_floats(content_layer_weights, "--content-layer-weights"),
            style_layers=_names(style_layers),
            style_layer_weights=_floats(style_layer_weights, "--style-layer-weights"),
            style_weights=_floats(style_weights, "--style-weights"),
            style_scale=style_scale,
            optimizer=optimizer,
            history_size=history_size,
            learning_rate=learning_rate,
            line_search=line_search,
            tolerance=tolerance,
            init=init,
            seed=seed,
            pooling=pooling,
            color=color,
            tv_weight=tv_weight,
            precision=precision,
        ).validate()
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
        result = _run(stylizer, content_image, style_images, config, output, snapshot_every, quiet)
    except NSTError as exc:
        raise fail(str(exc)) from None
    stats = result.stats
    try:
        result.save(output)
        if stats_json is not None:
            write_atomic(
                stats_json, json.dumps({"params": config.to_params(), **stats.to_dict()}, indent=2).encode()
            )
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    err.print(
        escape(
            f"wrote {output} ({stats.width}x{stats.height}, {stats.iterations} iterations, "
            f"{stats.loss_evaluations} loss evaluations, {stats.synthesis_seconds:.1f} s, "
            f"{stats.seconds_per_iteration:.3f} s/iteration, stop: {stats.stop_reason})"
        ),
        soft_wrap=True,
    )


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
