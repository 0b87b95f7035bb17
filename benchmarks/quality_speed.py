"""Quality against wall time: nst configurations and pastiche 1.6.0, scored by a judge that
is not the engine's objective.

Every run saves snapshots as it goes; each snapshot is scored by an independent scorer:
VGG-19 with max pooling (as the network was trained, where the engine synthesises with
average pooling), the relative content error ‖F(x) − F(photo)‖ / ‖F(photo)‖ at conv4_2 and
the mean relative Gram error ‖G(x) − G(painting)‖ / ‖G(painting)‖ over conv1_1 … conv5_1
(the painting resized to the output's size), each against the photo's and the painting's
own values. Lower is better on both.

Clocks: an nst run's starts at ``synthesize`` (weights already loaded; target extraction
and coarse scales included); pastiche's at its first step, its start-up (weights
dequantised, about 7-12 s) left out: the workspace snapshots' file times, less one step's
median time before the first. Reported: for each configuration, the first time at which
it is at least as good as pastiche after its last step on both measures at once (or
"never" within its run), and a plot of both errors against time.

Run: .venv/bin/python benchmarks/quality_speed.py --size 256 --iterations 500 \\
         --configs single,scales3 --json out/quality.json --plot docs/quality-256.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from engine_speed import square  # benchmarks/ is the script's folder, on sys.path
from PIL import Image

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
from nst_engine.engine.images import load_image, resize, to_tensor
from nst_engine.engine.losses import gram_matrix
from nst_engine.engine.stats import device_name
from nst_engine.engine.vgg import VGG19Features
from nst_engine.engine.weights_spec import sample_images

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


class Scorer:
    """The independent judge: max-pooling VGG-19, relative content and Gram errors."""

    def __init__(self, photo: torch.Tensor, painting: torch.Tensor) -> None:
        weights = load_weights("embedded")
        self.network = VGG19Features(weights.convs, weights.preprocessing, "max", "conv5_1").eval()
        with torch.no_grad():
            self.content = self.network(photo, ["conv4_2"])["conv4_2"]
            self.grams = {k: gram_matrix(v) for k, v in self.network(painting, STYLE_LAYERS).items()}

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> tuple[float, float]:
        features = self.network(image, ["conv4_2", *STYLE_LAYERS])
        content = float((features["conv4_2"] - self.content).norm() / self.content.norm())
        style = statistics.mean(
            float((gram_matrix(features[k]) - g).norm() / g.norm()) for k, g in self.grams.items()
        )
        return content, style


@dataclass
class Curve:
    name: str
    points: list[tuple[float, float, float]]  # (seconds, content error, style error)


def nst_curve(
    stylizer: Stylizer,
    name: str,
    config: SynthesisConfig,
    content: Path,
    style: Path,
    every: int,
    scorer: Scorer,
) -> Curve:
    """Snapshots every ``every`` iterations of the last scale, timed from the call."""
    snapshots: list[tuple[float, torch.Tensor]] = []
    start = time.perf_counter()

    def keep(record, image) -> None:
        if (record.iteration + 1) % every == 0:
            snapshots.append((time.perf_counter() - start, image.detach().clamp(0, 1).clone()))

    stylizer.synthesize(content, [style], config, on_iteration=keep)
    return Curve(name, [(t, *scorer(x)) for t, x in snapshots])


def pastiche_curve(content: Path, style: Path, size: int, steps: int, every: int, scorer: Scorer) -> Curve:
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "pastiche", "--pooling", "avg", "--random-init", "--size", str(size)]
        cmd += [
            "--num-steps",
            str(steps),
            "--workspace",
            work,
            "--workspace-step",
            str(every),
            "--no-verbose",
        ]
        cmd += ["--content", str(content), "--styles", str(style), "--output", str(Path(work) / "out.png")]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        shots = sorted(
            (p for p in Path(work).glob("*.png") if p.name != "out.png"), key=lambda p: p.stat().st_mtime
        )
        times = [p.stat().st_mtime for p in shots]
        step = statistics.median(b - a for a, b in itertools.pairwise(times)) / every
        origin = times[0] - every * step  # its first step, start-up left out
        points = []
        for path, mtime in zip(shots, times, strict=True):
            points.append((mtime - origin, *scorer(to_tensor(load_image(path)))))
    return Curve("pastiche", points)


def time_to_reach(curve: Curve, target: tuple[float, float]) -> float | None:
    """First time at which both errors are at or below ``target``'s."""
    return next((t for t, c, s in curve.points if c <= target[0] and s <= target[1]), None)


def plot(curves: list[Curve], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for curve in curves:
        times = [p[0] for p in curve.points]
        axes[0].plot(times, [p[1] for p in curve.points], label=curve.name)
        axes[1].plot(times, [p[2] for p in curve.points], label=curve.name)
    for axis, title in zip(
        axes, ("relative content error (conv4_2)", "relative Gram error (mean)"), strict=True
    ):
        axis.set(xlabel="wall seconds", title=f"{title}, {size}²", yscale="log")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def configs(names: str, size: int, iterations: int) -> dict[str, SynthesisConfig]:
    """``single`` (the paper), ``scalesN`` (N scales, iterations/5 at each coarser one)."""
    base = SynthesisConfig(size=size, iterations=iterations, tolerance=0)
    out = {}
    for name in names.split(","):
        if name == "single":
            out[name] = base
        elif name.startswith("scales"):
            out[name] = replace(base, scales=int(name[6:]), scale_iterations=max(1, iterations // 5))
        else:
            raise SystemExit(f"--configs: unknown configuration {name!r} (single, scalesN)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--every", type=int, default=25, help="snapshot every this many iterations")
    parser.add_argument("--configs", default="single,scales3")
    parser.add_argument("--no-pastiche", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    samples = {p.stem: p for p in sample_images()}
    stylizer = Stylizer(load_weights("embedded"), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        content = square(samples["tubingen"], args.size, Path(tmp) / "content.png")
        style = square(samples["starry_night"], 512, Path(tmp) / "style.png")
        photo = to_tensor(load_image(content))
        painting = to_tensor(resize(Image.open(style).convert("RGB"), *photo.shape[-2:]))
        scorer = Scorer(photo, painting)
        curves = [
            nst_curve(stylizer, name, config, content, style, args.every, scorer)
            for name, config in configs(args.configs, args.size, args.iterations).items()
        ]
        if not args.no_pastiche:
            curves.append(pastiche_curve(content, style, args.size, args.iterations, args.every, scorer))
    reference = curves[-1].points[-1][1:] if not args.no_pastiche else curves[0].points[-1][1:]
    which = "pastiche" if not args.no_pastiche else curves[0].name
    print(f"# {device_name(stylizer.device)}, {args.size}², {args.iterations} iterations")
    print(f"# target: {which} after its last step")
    print(f"# target: content error {reference[0]:.4f}, Gram error {reference[1]:.4f}")
    print("| configuration | wall s | content error | Gram error | reaches it at | speed-up |")
    print("|---|---|---|---|---|---|")
    target_time = curves[-1].points[-1][0]
    for curve in curves:
        t, c, s = curve.points[-1]
        reach = time_to_reach(curve, reference)
        reached, ratio = (f"{reach:.1f} s", f"{target_time / reach:.2f}×") if reach else ("never", "—")
        print(f"| {curve.name} | {t:.1f} | {c:.4f} | {s:.4f} | {reached} | {ratio} |")
    if args.plot:
        plot(curves, args.plot, args.size)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{"name": c.name, "points": c.points} for c in curves], indent=1))
    if any(math.isnan(p[1]) for c in curves for p in c.points):
        raise SystemExit("a score is NaN")


if __name__ == "__main__":
    main()
