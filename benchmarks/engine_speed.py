"""Per-iteration cost of a synthesis against its floor, and against pastiche 1.6.0.

floor: one forward plus input-gradient backward of the frozen VGG-19 truncated at
conv5_1 (the deepest loss layer), at the same resolution, memory format and precision.
nst: `nst stylize` in a fresh process; s/iter is the median iteration (after the first).
pastiche: `pastiche --num-steps 2` and `--num-steps N` are timed end to end; its
per-iteration cost is (t_N - t_2) / (N - 2), which cancels its start-up.
Both also report the wall time of the whole N-iteration run, start-up included.

Run: .venv/bin/python benchmarks/engine_speed.py --sizes 256,512 [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nst_engine.engine import Stylizer, load_weights
from nst_engine.engine.device import autocast, network_pass
from nst_engine.engine.stats import device_name
from nst_engine.engine.weights_spec import sample_images


def square(src: Path, size: int, dest: Path) -> Path:
    img = Image.open(src).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS).save(dest)
    return dest


def machine_line(device: torch.device) -> str:
    """The header line of a benchmark's table: device, torch and Python versions."""
    return f"# {device_name(device)}, torch {torch.__version__}, Python {platform.python_version()}"


def write_json(path: Path | None, rows: object) -> None:
    """``--json``: the rows, also as a file (folders made as needed)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(stylizer: Stylizer, size: int, channels_last: bool, repeats: int, precision: str) -> float:
    """The network's forward and input-gradient backward in ``precision``, with the
    engine's own kernel switches (``device.network_pass``): cuDNN's TF32 is on by default
    in PyTorch, so an fp32 floor timed without them would be a TF32 one."""
    network = stylizer.cache.network("avg", "conv5_1", channels_last)
    image = torch.rand(1, 3, size, size, device=stylizer.device, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        sync(stylizer.device)
        start = time.perf_counter()
        with network_pass(stylizer.device, precision, ("floor", size, channels_last, precision)):
            with autocast(stylizer.device, precision):
                out = network(image, ["conv5_1"])["conv5_1"]
            torch.autograd.grad(out.float().sum(), image)
        sync(stylizer.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # first call is warm-up


def nst_run(
    content: Path, style: Path, size: int, iterations: int, precision: str, device: str, out: Path
) -> tuple[float, dict]:
    """End-to-end ``nst stylize`` in a fresh process (as pastiche is run): wall seconds and stats."""
    cmd = [
        sys.executable,
        "-m",
        "nst_engine.cli.main",
        "stylize",
        str(content),
        str(style),
        "-o",
        str(out),
        "--size",
        str(size),
        "--iterations",
        str(iterations),
        "--tolerance",
        "0",
        "--precision",
        precision,
        "--device",
        device,
        "-q",
        "--stats-json",
        str(out.with_suffix(".json")),
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads(out.with_suffix(".json").read_text())


def psnr(a: Path, b: Path) -> float:
    x = torch.from_numpy(np.asarray(Image.open(a), dtype=np.float64))
    y = torch.from_numpy(np.asarray(Image.open(b), dtype=np.float64))
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def pastiche_timings(
    content: Path, style: Path, size: int, iterations: int, device: str
) -> tuple[float, float]:
    """(seconds per iteration, wall seconds of a run of ``iterations`` steps)."""
    steps = (2, iterations)
    if importlib.util.find_spec("pastiche") is None:
        raise SystemExit("pastiche is not installed (pip install pastiche==1.6.0)")
    walls = []
    for n in steps:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pastiche",
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
    return (walls[1] - walls[0]) / (steps[1] - steps[0]), walls[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iterations", type=int, default=30, help="synthesis iterations per size")
    parser.add_argument("--repeats", type=int, default=5, help="floor repeats per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32, tf32 (CUDA), bf16")
    parser.add_argument("--no-pastiche", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    weights = load_weights("embedded")
    stylizer = Stylizer(weights, device=args.device)
    device = stylizer.device
    samples = {p.stem: p for p in sample_images()}
    print(
        f"machine: {platform.node()} | {device_name(device)} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | {args.iterations} iterations"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            content = square(samples["tubingen"], size, Path(tmp) / f"content{size}.png")
            style = square(samples["starry_night"], size, Path(tmp) / f"style{size}.png")
            pastiche = (math.nan, math.nan)
            if not args.no_pastiche:
                pastiche = pastiche_timings(content, style, size, args.iterations, str(device))
            images = {}
            for precision in args.precisions.split(","):
                floor_nchw = floor_seconds(stylizer, size, False, args.repeats, precision)
                floor = floor_seconds(stylizer, size, True, args.repeats, precision)
                images[precision] = Path(tmp) / f"nst{size}{precision}.png"
                wall, stats = nst_run(
                    content, style, size, args.iterations, precision, str(device), images[precision]
                )
                per_iter = statistics.median(stats["iteration_seconds"][1:])
                row = {
                    "size": size,
                    "precision": precision,
                    "floor_nchw_s": floor_nchw,
                    "floor_s": floor,
                    "s_per_iter": per_iter,
                    "evaluations_per_iter": (stats["loss_evaluations"] - 1) / stats["iterations"],
                    "ratio_to_floor": per_iter / floor,
                    "wall_s": wall,
                    "final_loss": stats["final_total_loss"],
                    "peak_memory_mb": stats["peak_memory_bytes"] / 2**20,
                    "pastiche_s_per_iter": pastiche[0],
                    "pastiche_wall_s": pastiche[1],
                    "speedup_per_iter": pastiche[0] / per_iter,
                    "speedup_wall": pastiche[1] / wall,
                }
                if precision != "fp32" and "fp32" in images:
                    fp32 = next(r for r in rows if r["size"] == size and r["precision"] == "fp32")
                    row["loss_vs_fp32"] = row["final_loss"] / fp32["final_loss"]
                    row["psnr_vs_fp32_db"] = psnr(images["fp32"], images[precision])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| size | precision | floor NCHW s | floor s | s/iter | evals/iter | ratio to floor "
        "| pastiche s/iter | speed-up per iter | wall s (nst / pastiche) | speed-up wall "
        "| final loss vs fp32 | PSNR vs fp32 "
        "| peak MiB |"
    )
    print("|" + "---|" * 14)
    for r in rows:
        print(
            f"| {r['size']}² | {r['precision']} | {r['floor_nchw_s']:.3f} | {r['floor_s']:.3f} "
            f"| {r['s_per_iter']:.3f} | {r['evaluations_per_iter']:.2f} | {r['ratio_to_floor']:.3f} "
            f"| {r['pastiche_s_per_iter']:.3f} | {r['speedup_per_iter']:.2f}× "
            f"| {r['wall_s']:.1f} / {r['pastiche_wall_s']:.1f} | {r['speedup_wall']:.2f}× "
            f"| {r.get('loss_vs_fp32', 1.0):.3f} | {r.get('psnr_vs_fp32_db', math.inf):.1f} dB "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
