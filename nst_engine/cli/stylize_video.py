"""``nst stylize-video``: one clip, one or more styles, PNG frames and one mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from nst_engine.cli.app import Printer, app, err, reports_errors
from nst_engine.cli.options import config_from_options, engine_options
from nst_engine.engine.weights_spec import WeightsSpec


@app.command("stylize-video")
@reports_errors
@engine_options
def stylize_video(
    clip: Annotated[
        str,
        typer.Argument(help="Video file, or a folder/pattern of frames (with --rate).", show_default=False),
    ],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output mp4 file.")] = Path("stylized.mp4"),
    engine: dict[str, Any] | None = None,  # one option per SynthesisConfig field (cli/options.py)
    rate: Annotated[
        str | None, typer.Option(help="Frames per second of a frame folder (e.g. 24 or 30000/1001).")
    ] = None,
    frames_dir: Annotated[
        Path | None, typer.Option(help="Folder of the stylized PNG frames (default: OUT.frames).")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="Render only the first N frames (to try settings).")
    ] = None,
    later_iterations: Annotated[
        int | None,
        typer.Option(help="Iterations of each frame after the first (default: half of --iterations)."),
    ] = None,
    weights: Annotated[
        str, typer.Option(help="VGG-19 weights: embedded (offline), torchvision, or a .pth state dict.")
    ] = "embedded",
    allow_download: Annotated[bool, typer.Option(help="Allow downloading torchvision weights.")] = False,
    normalize: Annotated[
        bool, typer.Option(help="Paper's optional weight normalization (mean activation 1 per filter).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's choice).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per frame.")] = False,
) -> None:
    """Stylize the frames of CLIP in the style of STYLES, chained by optical flow (Ruder et
    al. 2016), as PNGs and an mp4 at the source's frame rate with its audio. A rerun
    renders only the frames whose PNG is missing.

    Example: nst stylize-video walk.mp4 painting.jpg -o out.mp4 --size 512 --iterations 500
    """
    from nst_engine.runs.stylize_video import FrameDone, VideoRequest
    from nst_engine.runs.stylize_video import stylize_video as run

    request = VideoRequest(
        clip,
        styles,
        output,
        config_from_options(engine or {}),
        WeightsSpec(source=weights, normalize=normalize, allow_download=allow_download),
        rate=rate,
        frames_dir=frames_dir,
        max_frames=max_frames,
        later_iterations=later_iterations,
        device=device,
        threads=threads,
    )

    def frame_line(frame: FrameDone) -> None:
        if quiet:
            return
        if not frame.rendered:
            err.print(f"frame {frame.index + 1}/{frame.total}: done before, kept", soft_wrap=True)
            return
        coherence = "" if frame.warping_error is None else f", warping error {frame.warping_error:.4g}"
        err.print(
            f"frame {frame.index + 1}/{frame.total}: {frame.seconds:.1f} s, "
            f"flow {frame.flow_seconds:.2f} s{coherence}",
            soft_wrap=True,
        )

    result = run(request, Printer(), frame_line)
    written = result.written
    mean = "n/a" if result.warping_error is None else f"{result.warping_error:.4g}"
    err.print(
        escape(
            f"wrote {written.location} ({written.frames} frames at {written.rate} fps, {written.codec}, "
            f"audio {written.audio}; frames in {result.frames_folder}: {result.rendered} rendered, "
            f"{result.skipped} kept; {result.seconds:.1f} s synthesis, {result.flow_seconds:.1f} s flow, "
            f"mean warping error {mean})"
        ),
        soft_wrap=True,
    )
