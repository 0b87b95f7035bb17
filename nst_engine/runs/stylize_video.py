"""``nst stylize-video`` as a function: one clip as one shot, PNG frames, one mp4.

The frames are chained after Ruder, Dosovitskiy, Brox ("Artistic style transfer for
videos", GCPR 2016): each after the first starts from the previous stylized frame warped
by the optical flow and is kept near it by the temporal loss (``engine.video``). Each
finished frame is a PNG in a frames folder next to the output, written atomically, so a
stopped run resumes: a frame whose PNG exists is not rendered again, and the chain goes
on from the last finished frame's PNG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nst_engine.engine import NSTError, Stylizer, SynthesisConfig, load_image
from nst_engine.engine.flow import frame_flow
from nst_engine.engine.images import save_png, to_tensor
from nst_engine.engine.memory import is_out_of_memory
from nst_engine.engine.targets import image_digest
from nst_engine.engine.temporal import warping_error
from nst_engine.engine.video import (
    ShotFrame,
    content_frame,
    iterations_after_first,
    stylize_shot,
    warm_start,
)
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import one_line
from nst_engine.runs.events import Listener, Silent
from nst_engine.runs.stylize import _check_writable
from nst_engine.storage.video import FRAME_NAME, Clip, VideoFile, Written, open_clip, write_mp4


@dataclass(frozen=True)
class VideoRequest:
    """One clip (a video file or a frame folder/pattern, local or URI) as ``styles``."""

    clip: str
    styles: list[Path]
    output: Path  # the mp4
    config: SynthesisConfig
    weights: WeightsSpec
    rate: str | None = None  # frames per second of a frame folder (a video file has its own)
    frames_dir: Path | None = None  # default: OUT.frames next to the output
    max_frames: int | None = None  # render only the first N frames
    later_iterations: int | None = None  # default: engine.video.iterations_after_first
    device: str = "auto"
    threads: int | None = None

    @property
    def frames_folder(self) -> Path:
        return self.frames_dir or self.output.with_suffix(".frames")

    def frame_path(self, index: int) -> Path:
        return self.frames_folder / FRAME_NAME.format(index)

    def check(self) -> None:
        """Refuse, before any frame is rendered, what could not be done or written."""
        if self.output.suffix.lower() != ".mp4":
            raise NSTError(f"--output {self.output}: must end in .mp4")
        for value, option in ((self.max_frames, "max_frames"), (self.threads, "threads")):
            if value is not None and value < 1:
                raise NSTError(f"must be at least 1, got {value}", field=option)
        if self.later_iterations is not None and self.later_iterations < 0:
            raise NSTError(f"must be 0 or more, got {self.later_iterations}", field="later_iterations")
        _check_writable(self.output, "--output")
        _check_writable(self.frame_path(0), "--frames-dir")


@dataclass(frozen=True)
class FrameDone:
    """One frame of the clip, rendered now or found finished (``rendered`` False)."""

    index: int
    total: int
    rendered: bool
    seconds: float = 0.0  # synthesis
    flow_seconds: float = 0.0
    warping_error: float | None = None  # against the previous stylized frame; None for a chain's first


@dataclass(frozen=True)
class VideoResult:
    """What :func:`stylize_video` did."""

    written: Written
    frames_folder: Path
    rendered: int
    skipped: int
    seconds: float  # synthesis of the rendered frames
    flow_seconds: float
    warping_error: float | None  # mean over the rendered frames that had a previous one


def stylize_video(
    request: VideoRequest,
    listener: Listener | None = None,
    on_frame: Callable[[FrameDone], None] | None = None,
) -> VideoResult:
    """Render ``request``'s missing frames, then encode every frame as the mp4 at the
    source's exact rate with its audio copied; ``on_frame`` sees each frame."""
    listener = listener or Silent()
    request.check()
    clip = open_clip(request.clip, request.rate)
    info = clip.info()
    count = min(info.frames, request.max_frames or info.frames)
    styles = [load_image(path) for path in request.styles]  # a bad style fails before weights load
    done: list[FrameDone] = []
    try:
        for frame in _frames(request, clip, count, styles, listener):
            done.append(frame)
            if on_frame is not None:
                on_frame(frame)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise NSTError(f"out of memory: {one_line(exc) or 'an allocation failed'}") from None
    written = write_mp4(
        (request.frame_path(i) for i in range(count)),
        request.output,
        info.rate,
        audio_from=clip.location if isinstance(clip, VideoFile) else None,
    )
    return _summary(written, request.frames_folder, done)


def _summary(written: Written, folder: Path, done: list[FrameDone]) -> VideoResult:
    rendered = [f for f in done if f.rendered]
    errors = [f.warping_error for f in rendered if f.warping_error is not None]
    return VideoResult(
        written,
        folder,
        len(rendered),
        len(done) - len(rendered),
        sum(f.seconds for f in rendered),
        sum(f.flow_seconds for f in rendered),
        sum(errors) / len(errors) if errors else None,
    )


def _frames(
    request: VideoRequest, clip: Clip, count: int, styles: list[Image.Image], listener: Listener
) -> Iterator[FrameDone]:
    """Every frame below ``count`` in order: finished ones as found, runs of missing ones
    rendered as chains (from the clip's first frame, or on from the finished frame before)."""
    stylizer: Stylizer | None = None
    index = 0
    while index < count:
        if request.frame_path(index).exists():
            yield FrameDone(index, count, rendered=False)
            index += 1
            continue
        stop = index
        while stop < count and not request.frame_path(stop).exists():
            stop += 1
        if stylizer is None:
            stylizer = _stylizer(request, listener)
        chain = _chain(request, clip, index, stop, styles, stylizer)
        yield from _save(request, chain, count)
        index = stop


def _stylizer(request: VideoRequest, listener: Listener) -> Stylizer:
    loaded, load_seconds = request.weights.load()
    stylizer = Stylizer(loaded, device=request.device, threads=request.threads, load_seconds=load_seconds)
    listener.note(f"weights: {loaded.source}")
    listener.note(f"device: {stylizer.device}")
    return stylizer


def _chain(
    request: VideoRequest, clip: Clip, start: int, stop: int, styles: list[Image.Image], stylizer: Stylizer
) -> Iterator[tuple[ShotFrame, torch.Tensor | None]]:
    """Frames ``start``..``stop`` − 1 stylized as one chain, each with the stylized frame
    before it (for the warping error): from the shot's start with ``stylize_shot``, or on
    from frame ``start − 1``'s PNG."""
    if start == 0:
        frames = (frame.image() for frame in clip.frames(0, stop))
        shot = stylize_shot(
            frames, styles, request.config, stylizer, later_iterations=request.later_iterations
        )
        previous = None
        for made in shot:
            yield made, previous
            previous = made.image
        return
    yield from _resumed(request, clip, start, stop, styles, stylizer)


def _resumed(
    request: VideoRequest,
    clip: Clip,
    start: int,
    stop: int,
    styles: Sequence[Image.Image],
    stylizer: Stylizer,
) -> Iterator[tuple[ShotFrame, torch.Tensor | None]]:
    """The later-frame step of ``engine.video.stylize_shot``, continued from frame
    ``start − 1``'s PNG as the previous stylized frame. (stylize_shot always begins a
    chain; a ``previous=`` argument there would let this go.)"""
    config = request.config
    later = dataclasses.replace(
        config,
        iterations=iterations_after_first(config)
        if request.later_iterations is None
        else request.later_iterations,
    )
    style_ids = [image_digest(s) for s in styles]
    decoded = clip.frames(start - 1, stop)
    before = content_frame(next(decoded).image(), config)
    stylized = to_tensor(load_image(request.frame_path(start - 1)))
    if stylized.shape[-2:] != before.shape[-2:]:  # an earlier run at another --size: no chain
        found, wanted = stylized.shape[-2:], before.shape[-2:]
        raise NSTError(
            f"{request.frame_path(start - 1)}: is {found[1]}x{found[0]}, not {wanted[1]}x{wanted[0]} "
            "as these settings make; give another --frames-dir or delete the folder"
        )
    for frame in decoded:
        image = frame.image()
        content = content_frame(image, config)
        flow = frame_flow(before, content)
        previous = warm_start(flow, stylized)
        result = stylizer.synthesize(image, list(styles), later, style_ids=style_ids, previous=previous)
        yield ShotFrame(frame.index, result.image, result.stats, flow), stylized
        before, stylized = content, result.image


def _save(
    request: VideoRequest, chain: Iterator[tuple[ShotFrame, torch.Tensor | None]], count: int
) -> Iterator[FrameDone]:
    """Each stylized frame written as its PNG (atomically: a frame is finished or absent)."""
    params = request.config.to_params()
    for made, previous in chain:
        save_png(made.image, request.frame_path(made.index), {"Software": "nst-engine", "nst:params": params})
        error = None
        if previous is not None and made.flow is not None:
            error = float(warping_error(made.image, previous, made.flow))
        yield FrameDone(made.index, count, True, made.stats.synthesis_seconds, made.flow_seconds, error)


__all__ = ["FRAME_NAME", "FrameDone", "VideoRequest", "VideoResult", "stylize_video"]
