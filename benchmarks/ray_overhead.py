"""Ray overhead: wall time of a 12-item manifest through `nst render`, divided by the
sum of the same items' synthesis times run directly through the engine in one process.

The manifest: 2 contents (Tübingen, The Scream) × 3 styles × 2 sizes, same parameters.
Both sides use all cores (one CPU worker with every thread on the Ray side).

Run: .venv/bin/python benchmarks/ray_overhead.py [--sizes 192,256] [--iterations 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from nst_engine.engine import Stylizer, load_weights
from nst_engine.engine.stats import cpu_model
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.store import read_results


def write_manifest(folder: Path, sizes: list[int], iterations: int) -> Path:
    samples = Path(__file__).resolve().parents[1] / "nst_engine" / "samples"
    manifest = {
        "name": "overhead",
        "output": str(folder / "out"),
        "contents": [str(samples / "tubingen.jpg"), str(samples / "the_scream.jpg")],
        "styles": [str(samples / f"{s}.jpg") for s in ("starry_night", "shipwreck", "the_scream")],
        "sizes": sizes,
        "params": {"iterations": iterations},
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def engine_direct(manifest: Path) -> tuple[float, list[float]]:
    """(seconds to load weights, per-item synthesize() wall times) in this process."""
    start = time.perf_counter()
    stylizer = Stylizer(load_weights("embedded"), device="cpu")
    load = time.perf_counter() - start
    times = []
    for item in expand(load_manifest(manifest)):
        start = time.perf_counter()
        stylizer.synthesize(item.content_path, list(item.style_paths), item.config)
        times.append(time.perf_counter() - start)
    return load, times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="192,256")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.node()} | {cpu_model()} | torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), sizes, args.iterations)
        load, direct = engine_direct(manifest)
        start = time.perf_counter()
        threads = str(os.cpu_count() or 1)  # the render default is min(cores, 4) per worker
        cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q"]
        cmd += ["--cpu-actors", "1", "--threads-per-actor", threads]
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        table = read_results(str(Path(tmp) / "out"), ["status", "total_seconds"]).to_pylist()
    worker = sum(r["total_seconds"] for r in table if r["status"] == "ok")
    result = {
        "items": len(direct),
        "sizes": sizes,
        "iterations": args.iterations,
        "engine_sum_s": sum(direct),
        "engine_weights_load_s": load,
        "ray_wall_s": wall,
        "ray_worker_item_sum_s": worker,
        "overhead_ratio": wall / sum(direct),
        "ratio_excluding_startup": worker / sum(direct),
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n| items | sizes | iterations | engine sum s | nst render wall s | ratio | worker item-time sum s "
        f"| ratio excl. start-up |\n|---|---|---|---|---|---|---|---|\n"
        f"| {len(direct)} | {args.sizes} | {args.iterations} | {sum(direct):.1f} | {wall:.1f} "
        f"| {result['overhead_ratio']:.3f} | {worker:.1f} | {result['ratio_excluding_startup']:.3f} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
