"""Ray overhead, two ways.

1. Per-item overhead: wall time of a 12-item manifest through `nst render`, divided by the
   sum of the same items' synthesis times run directly through the engine in one process.
   The manifest: 2 contents (Tübingen, The Scream) × 3 styles × 2 sizes, same parameters.
   Both sides use all cores (one CPU worker with every thread on the Ray side).

2. Driver throughput (``--throughput N``): N tiny items (distinct generated images, random
   narrow VGG, 32 px, 2 iterations) through ``run_render`` on an embedded Ray with 2 CPU
   workers of 1 thread. The items cost milliseconds each, so items/s measures the driver
   and the Ray round trips, not the engine: it is the number a cluster of many GPUs
   would be limited by. Also prints the driver's own CPU seconds per item.

Run: .venv/bin/python benchmarks/ray_overhead.py [--sizes 192,256] [--iterations 60]
     .venv/bin/python benchmarks/ray_overhead.py --throughput 1000
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

import numpy as np
import torch
import yaml
from PIL import Image

from nst_engine.engine import Stylizer, load_weights
from nst_engine.engine.stats import cpu_model
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.table import read_results


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


def tiny_manifest(folder: Path, items: int) -> Path:
    """``items`` distinct items: a grid of contents × styles of small generated images
    (ids hash image contents, so every image differs)."""
    styles = max(1, int(items**0.5))
    contents = -(-items // styles)
    rng = np.random.default_rng(0)
    paths = {"c": [], "s": []}
    for kind, count in (("c", contents), ("s", styles)):
        for i in range(count):
            path = folder / f"{kind}{i}.png"
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
            paths[kind].append(str(path))
    manifest = {
        "name": "throughput",
        "output": str(folder / "out"),
        "contents": paths["c"],
        "styles": paths["s"],
        "sizes": [32],
        "params": {"iterations": 2},
        "weights": {"source": "random"},
    }
    path = folder / "throughput.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def throughput(count: int) -> dict:
    """Items/s of ``count`` tiny items through ``run_render`` (2 workers of 1 thread)."""
    import ray

    from nst_engine.distributed.options import PoolOptions
    from nst_engine.distributed.runtime import connect
    from nst_engine.distributed.scheduler import run_render
    from nst_engine.storage.roots import OutputRoot

    with tempfile.TemporaryDirectory() as tmp:
        plan = load_manifest(tiny_manifest(Path(tmp), count))
        start = time.perf_counter()
        items = expand(plan)[:count]
        planning = time.perf_counter() - start
        connect(num_cpus=2)
        try:
            cpu, start = time.process_time(), time.perf_counter()
            options = PoolOptions(threads_per_actor=1)
            summary = run_render(items, plan.weights, OutputRoot(plan.output), options)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        finally:
            ray.shutdown()
        table = read_results(str(Path(tmp) / "out"), ["status", "started_at", "finished_at"]).to_pylist()
    ok = [r for r in table if r["status"] == "ok"]
    first = min(r["started_at"] for r in ok)
    last = max(r["finished_at"] for r in ok)
    steady = (last - first).total_seconds()
    return {
        "items": len(items),
        "rendered": summary.rendered,
        "failed": len(summary.failed),
        "planning_s": round(planning, 2),
        "wall_s": round(wall, 2),
        "items_per_s": round(len(items) / wall, 1),
        "items_per_s_first_to_last_item": round(len(ok) / steady, 1) if steady else None,
        "driver_cpu_ms_per_item": round(1000 * cpu / len(items), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="192,256")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--throughput", type=int, metavar="N", help="measure driver items/s on N tiny items")
    args = parser.parse_args()
    if args.throughput:
        result = throughput(args.throughput)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.node()} | {cpu_model()} | torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), sizes, args.iterations)
        load, direct = engine_direct(manifest)
        start = time.perf_counter()
        threads = str(os.cpu_count() or 1)  # the render default is min(cores, 4) per worker
        cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q"]
        cmd += ["--workers", "1", "--threads-per-actor", threads]
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
