"""Per-iteration cost of a synthesis against its floor, and against pastiche 1.6.0.

floor: one forward plus input-gradient backward of the frozen VGG-19 truncated at
conv5_1 (the deepest loss layer), at the same resolution and memory format.
pastiche: `pastiche --num-steps A` and `--num-steps B` are timed end to end and the
per-iteration cost is (t_B - t_A) / (B - A), which cancels its start-up.

Run: .venv/bin/python benchmarks/engine_speed.py --sizes 256,512 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
from nst_engine.engine.stats import device_name
from nst_engine.engine.weights_spec import sample_images


def square(src: Path, size: int, dest: Path) -> Path:
    img = Image.open(src).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS).save(dest)
    return dest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(stylizer: Stylizer, size: int, channels_last: bool, repeats: int) -> list[float]:
    network = stylizer.network("avg", "conv5_1", channels_last)
    image = torch.rand(1, 3, size, size, device=stylizer.device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        sync(stylizer.device)
        start = time.perf_counter()
        out = network(image, ["conv5_1"])["conv5_1"]
        torch.autograd.grad(out.sum(), image)
        sync(stylizer.device)
        times.append(time.perf_counter() - start)
    return times[1:]  # first call is warm-up


def pastiche_per_iteration(
    content: Path, style: Path, size: int, steps: tuple[int, int], device: str
) -> float:
    exe = shutil.which("pastiche")
    if exe is None:
        raise SystemExit("pastiche is not installed (pip install pastiche==1.6.0)")
    walls = []
    for n in steps:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                exe,
                "--content",
                str(content),
                "--styles",
                str(style),
                "--num-steps",
                str(n),
                "--pooling",
                "avg",
                "--size",
                str(size),
                "--device",
                device,
                "--random-init",
                "--no-verbose",
                "-o",
                f"{tmp}/out.png",
            ]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
    return (walls[1] - walls[0]) / (steps[1] - steps[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iterations", type=int, default=30, help="synthesis iterations per size")
    parser.add_argument("--repeats", type=int, default=5, help="floor repeats per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32"])
    parser.add_argument("--no-pastiche", action="store_true")
    parser.add_argument("--pastiche-steps", default="2,7")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    weights = load_weights("embedded")
    stylizer = Stylizer(weights, device=args.device)
    device = stylizer.device
    samples = {p.stem: p for p in sample_images()}
    tubingen, starry = samples["tubingen"], samples["starry_night"]
    print(
        f"machine: {platform.node()} | {device_name(device)} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            content = square(tubingen, size, Path(tmp) / f"content{size}.png")
            style = square(starry, size, Path(tmp) / f"style{size}.png")
            config = SynthesisConfig(size=size, iterations=args.iterations, precision=args.precision)
            floor_nchw = floor_seconds(stylizer, size, False, args.repeats)
            floor_nhwc = floor_seconds(stylizer, size, True, args.repeats)
            stats = stylizer.synthesize(content, [style], config).stats
            per_iter = statistics.median(stats.iteration_seconds[1:])
            row = {
                "size": size,
                "floor_nchw_s": statistics.median(floor_nchw),
                "floor_s": statistics.median(floor_nhwc),
                "synthesis_s_per_iter": per_iter,
                "synthesis_mean_s_per_iter": stats.synthesis_seconds / stats.iterations,
                "evaluations_per_iter": (stats.loss_evaluations - 1) / stats.iterations,
                "ratio_to_floor": per_iter / statistics.median(floor_nhwc),
                "peak_memory_mb": stats.peak_memory_bytes / 2**20,
            }
            if not args.no_pastiche:
                steps = tuple(int(s) for s in args.pastiche_steps.split(","))
                row["pastiche_s_per_iter"] = pastiche_per_iteration(content, style, size, steps, str(device))
                row["speedup_vs_pastiche"] = row["pastiche_s_per_iter"] / per_iter
            rows.append(row)
            print(json.dumps(row))
    print()
    print(
        "| size | floor NCHW s | floor s | synthesis s/iter (median) | (mean) | evals/iter "
        "| ratio to floor | pastiche s/iter | speed-up vs pastiche | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        print(
            f"| {r['size']}² | {r['floor_nchw_s']:.3f} | {r['floor_s']:.3f} "
            f"| {r['synthesis_s_per_iter']:.3f} | {r['synthesis_mean_s_per_iter']:.3f} "
            f"| {r['evaluations_per_iter']:.2f} | {r['ratio_to_floor']:.3f} "
            f"| {r.get('pastiche_s_per_iter', nan):.3f} | {r.get('speedup_vs_pastiche', nan):.2f}× "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
