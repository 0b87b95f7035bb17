"""Temporal coherence of stylized video with the real VGG-19 (issue 21, after Ruder,
Dosovitskiy, Brox, "Artistic style transfer for videos", GCPR 2016).

A short clip is made from the shipped samples: the Tübingen photo panned and slowly
zoomed, a patch of The Scream moving across it as an object, and a cut halfway to a pan
over The Shipwreck (so two shots). It is stylized (The Starry Night, embedded weights)
as independent frames (each from new noise, seed + frame index, with the first frame's
iterations), as the chain with the warm start only (temporal weight 0), and as the
chain with the temporal loss at several weights and later-frame iteration shares.

Measured per configuration: the mean warping error (``temporal.warping_error``, eq. 7)
between consecutive stylized frames over the pixels the content flow's consistency check
trusts, within shots only (the same flows for every configuration); each later frame's
final style and content losses as ratios to the independent frame's (median, max); the
seconds of a shot's first frame and of later frames (synthesis, flow excluded); and
the flow's seconds. The issue's targets are checked per row: warping error ≤ 1/3 of the
independent frames', style and content losses at most 10 % above (lower is better), later
frames ≤ 1/2 the first's time. Writes the clip (mp4), a strip of frames, and a plot of the
warping error per pair.

Run: PYTHONPATH=.:<cv2 and av> .venv/bin/python benchmarks/video_coherence.py \\
         --size 128 --frames 12 --iterations 100 --weights 30,100,300,1000 --shares 0.5
(weights relative: γ content losses of a frame's start per unit of eq. 7, ``config.TEMPORAL_WEIGHT``)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from engine_speed import machine_line  # benchmarks/ is the script's folder, on sys.path
from PIL import Image

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
from nst_engine.engine.config import TEMPORAL_WEIGHT
from nst_engine.engine.flow import FrameFlow, frame_flow
from nst_engine.engine.stats import SynthesisStats
from nst_engine.engine.temporal import warping_error
from nst_engine.engine.video import ITERATIONS_AFTER_FIRST_SHARE, content_frame, stylize_shot
from nst_engine.engine.weights_spec import sample_images
from nst_engine.storage.video import write_mp4

#: The issue's targets, as fractions of the independent frames' (or the first frame's).
WARPING_TARGET = 1 / 3
LOSS_TOLERANCE = 0.10
LATER_TIME_TARGET = 0.5

PAN_PX = 2  # per frame, at the output size: a slow pan
ZOOM_PER_FRAME = 0.01  # the crop window shrinks by this share a frame: a slow zoom in
OBJECT_SHARE = 0.3  # the moving patch's side, as a share of the frame's
FRAME_RATE = 12


# --- the clip ---------------------------------------------------------------------------


def _pan(photo: Image.Image, size: int, index: int, zoom: bool) -> Image.Image:
    """Frame ``index`` of a pan (and zoom) over ``photo``: a square crop window that moves
    right by PAN_PX output pixels a frame and shrinks by ZOOM_PER_FRAME, resized to ``size``."""
    side = min(photo.size) * 0.8 * ((1 - ZOOM_PER_FRAME) ** index if zoom else 1.0)
    scale = side / size  # photo pixels per output pixel
    left = index * PAN_PX * scale + (min(photo.size) * 0.8 - side) / 2
    top = (photo.height - side) / 2
    box = (left, top, left + side, top + side)
    return photo.resize((size, size), Image.Resampling.LANCZOS, box=box)


def make_clip(size: int, frames: int) -> tuple[list[Image.Image], int]:
    """The clip's frames and the index of the cut: shot 1 pans and zooms over the photo with
    a patch moving across it; shot 2 pans over a painting."""
    samples = {p.stem: Image.open(p).convert("RGB") for p in sample_images()}
    patch_side = max(8, round(size * OBJECT_SHARE))
    patch = samples["the_scream"].resize((patch_side, patch_side), Image.Resampling.LANCZOS)
    cut = frames // 2
    clip = []
    for index in range(frames):
        if index < cut:
            frame = _pan(samples["tubingen"], size, index, zoom=True)
            step = (size - patch_side) / max(1, cut - 1)  # across the frame within the shot
            frame.paste(patch, (round(index * step), round(size * 0.55)))
        else:
            frame = _pan(samples["shipwreck"], size, index - cut, zoom=False)
        clip.append(frame)
    return clip, cut


# --- stylizing ----------------------------------------------------------------------------


@dataclass
class Run:
    """One configuration's stylized frames and what each cost."""

    name: str
    images: list[torch.Tensor]
    stats: list[SynthesisStats]
    seconds: list[float]  # per frame, synthesis (flow excluded)
    firsts: list[bool]  # the frame was synthesized as a shot's first
    flow_seconds: list[float]
    cuts: list[int]  # frames the chain started a shot at (found from the flow), after 0
    weight: float | None = None
    share: float | None = None


def independent(clip, style: Path, config: SynthesisConfig, stylizer: Stylizer) -> Run:
    """Each frame the paper's synthesis from its own noise (seed + index), as flickering
    frame-by-frame stylization does it."""
    run = Run("independent", [], [], [], [], [], [])
    for index, frame in enumerate(clip):
        start = time.perf_counter()
        result = stylizer.synthesize(frame, [style], dataclasses.replace(config, seed=config.seed + index))
        run.seconds.append(time.perf_counter() - start)
        run.images.append(result.image)
        run.stats.append(result.stats)
        run.firsts.append(True)
        run.flow_seconds.append(0.0)
    return run


def chain(clip, style: Path, config: SynthesisConfig, stylizer: Stylizer, weight: float, share: float) -> Run:
    """``video.stylize_shot`` over the whole clip (cuts found from the flow)."""
    name = "warm start only" if weight == 0 else f"temporal {weight:g}"
    run = Run(f"{name}, later ×{share:g}", [], [], [], [], [], [], weight, share)
    later = max(1, round(config.iterations * share))
    frames = stylize_shot(
        clip,
        [style],
        dataclasses.replace(config, temporal_weight=weight),
        stylizer,
        later_iterations=later,
        temporal=weight > 0,
    )
    start = time.perf_counter()
    for shot_frame in frames:
        elapsed = time.perf_counter() - start
        run.seconds.append(elapsed - shot_frame.flow_seconds)
        run.flow_seconds.append(shot_frame.flow_seconds)
        run.images.append(shot_frame.image)
        run.stats.append(shot_frame.stats)
        run.firsts.append(shot_frame.starts_shot)
        if shot_frame.starts_shot and shot_frame.index > 0:
            run.cuts.append(shot_frame.index)
        start = time.perf_counter()
    return run


# --- measures -------------------------------------------------------------------------------


def pair_errors(run: Run, flows: dict[int, FrameFlow]) -> dict[int, float]:
    """Warping error of each within-shot pair (i−1, i), keyed by i."""
    return {i: float(warping_error(run.images[i], run.images[i - 1], flow)[0]) for i, flow in flows.items()}


def ratios(run: Run, baseline: Run, field: str) -> list[float]:
    """A final loss of each later frame (not a shot's first) over the independent frame's."""
    return [
        getattr(s, field) / getattr(b, field)
        for s, b, first in zip(run.stats, baseline.stats, run.firsts, strict=True)
        if not first
    ]


def _mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def row(run: Run, baseline: Run, errors: dict[int, float], base_error: float) -> str:
    error = statistics.mean(errors.values())
    first = statistics.mean(s for s, f in zip(run.seconds, run.firsts, strict=True) if f)
    later_times = [s for s, f in zip(run.seconds, run.firsts, strict=True) if not f]
    later = statistics.median(later_times) if later_times else float("nan")
    flow = [s for s, f in zip(run.flow_seconds, run.firsts, strict=True) if s > 0]
    cells = [run.name, f"{error:.5f}", f"{error / base_error:.3f}"]
    if run is baseline:
        cells += ["—", "—", f"{first:.1f}", "—", "—", "—", "—"]
        return "| " + " | ".join(cells) + " |"
    style, content = ratios(run, baseline, "final_style_loss"), ratios(run, baseline, "final_content_loss")
    loss_ok = all(r <= 1 + LOSS_TOLERANCE for r in (*style, *content))  # lower is better
    cells += [
        f"{statistics.median(style):.2f} / {max(style):.2f}",
        f"{statistics.median(content):.2f} / {max(content):.2f}",
        f"{first:.1f}",
        f"{later:.1f} ({later / first:.2f})",
        f"{statistics.mean(flow):.3f}" if flow else "—",
        ",".join(map(str, run.cuts)) or "none",
        " ".join(
            _mark(ok)
            for ok in (error <= WARPING_TARGET * base_error, loss_ok, later <= LATER_TIME_TARGET * first)
        ),
    ]
    return "| " + " | ".join(cells) + " |"


# --- pictures -------------------------------------------------------------------------------


def _pil(image: torch.Tensor) -> Image.Image:
    array = image.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255 + 0.5).astype(np.uint8), "RGB")


def strip(rows: list[list[Image.Image]], path: Path) -> None:
    """Rows of frames, side by side, 2 px apart."""
    size = rows[0][0].size[0]
    sheet = Image.new("RGB", (len(rows[0]) * (size + 2), len(rows) * (size + 2)), "white")
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            sheet.paste(image, (c * (size + 2), r * (size + 2)))
    sheet.save(path)


def plot(runs: list[Run], errors: list[dict[int, float]], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for run, err in zip(runs, errors, strict=True):
        axis.plot(list(err), list(err.values()), marker="o", label=run.name)
    axis.set(
        xlabel="frame i (pair i−1 → i, within shots)",
        ylabel="warping error (eq. 7, trusted pixels)",
        yscale="log",
        title=f"Temporal coherence, VGG-19, {size}²",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# --- main ---------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=100, help="a shot's first frame (and independent)")
    parser.add_argument("--weights", type=_floats, default=[30.0, TEMPORAL_WEIGHT, 300.0])
    parser.add_argument(
        "--shares",
        type=_floats,
        default=[ITERATIONS_AFTER_FIRST_SHARE, 1.0],
        help="later-frame iteration shares: every weight (and the warm start) at the first; "
        "the default weight at the others",
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "nst-video-coherence")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    clip, cut = make_clip(args.size, args.frames)
    write_mp4([np.asarray(f) for f in clip], args.out / "clip.mp4", FRAME_RATE)
    style = next(p for p in sample_images() if p.stem == "starry_night")
    config = SynthesisConfig(size=args.size, iterations=args.iterations)
    stylizer = Stylizer(load_weights("embedded"), device="cpu")

    contents = [content_frame(f, config) for f in clip]
    flows = {i: frame_flow(contents[i - 1], contents[i]) for i in range(1, len(clip)) if i != cut}

    baseline = independent(clip, style, config, stylizer)
    runs = [baseline]
    first, *others = args.shares
    for weight in [0.0, *args.weights]:
        runs.append(chain(clip, style, config, stylizer, weight, first))
    for share in others:
        runs.append(chain(clip, style, config, stylizer, TEMPORAL_WEIGHT, share))
    errors = [pair_errors(run, flows) for run in runs]
    base_error = statistics.mean(errors[0].values())

    print(machine_line(stylizer.device))
    print(
        f"# {args.frames} frames at {args.size}², cut at frame {cut}; {args.iterations} iterations "
        "for independent frames and each shot's first; style The Starry Night"
    )
    print(
        f"# targets: warping error ≤ {WARPING_TARGET:.2f}× independent; later frames' style and "
        f"content losses at most {LOSS_TOLERANCE:.0%} above independent; later frame ≤ "
        f"{LATER_TIME_TARGET:.1f}× the first's time"
    )
    print(
        "| configuration | warping error | × independent | style ratio med / max "
        "| content ratio med / max | first s | later s (× first) | flow s | cuts found "
        "| targets: warp, losses, time |"
    )
    print("|---" * 10 + "|")
    for run, err in zip(runs, errors, strict=True):
        print(row(run, baseline, err, base_error))

    default = next(
        (r for r in runs if r.weight == TEMPORAL_WEIGHT and r.share == ITERATIONS_AFTER_FIRST_SHARE), runs[-1]
    )
    shown = range(1, min(cut, 5))
    strip(
        [
            [clip[i] for i in shown],
            [_pil(baseline.images[i]) for i in shown],
            [_pil(default.images[i]) for i in shown],
        ],
        args.out / "strip.png",
    )
    write_mp4([np.asarray(_pil(x)) for x in default.images], args.out / "stylized.mp4", FRAME_RATE)
    write_mp4([np.asarray(_pil(x)) for x in baseline.images], args.out / "independent.mp4", FRAME_RATE)
    plot(runs, errors, args.out / "warping.png", args.size)
    print(f"# strip (content, independent, {default.name}): {args.out / 'strip.png'}")
    print(f"# plot: {args.out / 'warping.png'}; clips: {args.out}/clip.mp4, independent.mp4, stylized.mp4")


if __name__ == "__main__":
    main()
