"""Plumbing at dataset scale: N tiny items through `nst plan` and `nst render`, three runs.

Each item is a distinct 32 px content image (so N distinct ids) × one style, with the tiny
random network and `--iterations` iterations, so the driver, the scheduler and the result
store dominate, not the synthesis. For each N it measures, as a new user would run it:

* planning: `nst plan --json` on a fresh output root (hashes and checks every image),
  and again with the hash cache warm;
* first run: `nst render` wall time and items/s (the driver's throughput);
* reruns: wall time of two reruns of the finished manifest;
* after three runs: result rows, files under the output root's results, and the driver's
  peak RSS (the largest of the render runs, from the child's rusage).

Run: .venv/bin/python benchmarks/plumbing.py --items 1000,10000 [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from nst_engine.results.table import read_results

NST = [sys.executable, "-m", "nst_engine.cli.main"]


def write_dataset(folder: Path, count: int) -> Path:
    """``count`` distinct 32x32 PNGs in ``photos/`` (1,000 per sub-folder), one style."""
    rng = np.random.default_rng(0)
    for n in range(count):
        target = folder / "photos" / f"{n // 1000:04d}" / f"{n:07d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(target)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "style.png")
    return folder


def write_manifest(folder: Path, iterations: int) -> Path:
    manifest = {
        "name": "plumbing",
        "output": str(folder / "out"),
        "contents": ["photos"],
        "styles": ["style.png"],
        "sizes": [32],
        "params": {"iterations": iterations},
        "weights": {"source": "random"},
    }
    path = folder / "plumbing.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def result_files(out: Path) -> int:
    names = ("results.parquet", "results.parts", "runs.parquet", "runs.parts")
    return sum(1 for p in out.rglob("*.parquet") if any(n in p.relative_to(out).parts[0] for n in names))


def measure(count: int, iterations: int, render_args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dataset(Path(tmp), count)
        manifest = str(write_manifest(folder, iterations))
        out = folder / "out"
        plan_cold, _ = timed([*NST, "plan", manifest, "--json"])
        plan_warm, _ = timed([*NST, "plan", manifest, "--json"])
        render = [*NST, "render", manifest, "--quiet", *render_args]
        first, _ = timed(render)
        rerun1, _ = timed(render)
        rerun2, _ = timed(render)
        rows = read_results(str(out), ["item_id"]).num_rows
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB (Linux: KiB)
        return {
            "items": count,
            "plan_cold_s": plan_cold,
            "plan_warm_s": plan_warm,
            "first_run_s": first,
            "items_per_s": count / first,
            "rerun_s": max(rerun1, rerun2),
            "rows_after_3_runs": rows,
            "result_files": result_files(out),
            "driver_peak_mib": peak,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="1000,10000", help="comma-separated N")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument(
        "--threads-per-actor", type=int, help="passed to nst render (default: its own, min(cores, 4))"
    )
    args = parser.parse_args()
    render_args = ["--threads-per-actor", str(args.threads_per_actor)] if args.threads_per_actor else []
    print(f"{os.cpu_count()} cores; 32 px, {args.iterations} iterations, random network; {render_args}")
    print(
        "| N | plan (cold) s | plan (cached) s | first run s | items/s | rerun s | rows after 3 runs "
        "| result files | peak RSS of the largest child MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for count in (int(n) for n in args.items.split(",")):
        m = measure(count, args.iterations, render_args)
        print(
            f"| {count:,} | {m['plan_cold_s']:.1f} | {m['plan_warm_s']:.1f} | {m['first_run_s']:.1f} "
            f"| {m['items_per_s']:.0f} | {m['rerun_s']:.1f} | {m['rows_after_3_runs']:,} "
            f"| {m['result_files']} | {m['driver_peak_mib']:.0f} |",
            flush=True,
        )
        print(json.dumps(m), file=sys.stderr)


if __name__ == "__main__":
    main()
