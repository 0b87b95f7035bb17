"""Items per second: syntheses one at a time against several per device (batched).

Each configuration renders the same ``--items`` syntheses (the shipped Tübingen photo
cropped square, as The Starry Night, one noise seed per item) with the real VGG-19,
in one process that holds the weights: ``B=1`` one after the other, ``B=k`` through an
``EvaluationBatch`` of at most k members (``nst render --max-batch k``). Reported: wall
seconds, items/s, the speed-up over B=1 measured in the same run, the peak memory of the
configuration, and the largest loss difference to the B=1 run of the same item (batched
items must behave as if alone). On a GPU, the memory model's own admission may hold a
batch below k; ``batch`` is what the rows recorded.

``--workers 2,4`` also renders the same items with that many processes sharing the
device, each holding its own weights and rendering one item at a time (what
``nst render --workers-per-gpu N`` gives, without Ray's part): the alternative to
batching for items that do not share a shape. Timing starts once every process has
loaded and warmed up.

Run (CPU):  .venv/bin/python benchmarks/batching.py --sizes 64,128,256 --batches 1,2,4 \\
                --items 4 --iterations 10
Run (GPU):  .venv/bin/python benchmarks/batching.py --device cuda --sizes 256,512 --batches 1,4,8,16,32 \\
                --items 32 --iterations 500 --precision tf32 --workers 2,4 --json $OUT/batching.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from engine_speed import machine_line, square, write_json  # benchmarks/ is the script's folder, on sys.path

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
from nst_engine.engine.batch import run_together
from nst_engine.engine.stats import PeakMemory, device_name
from nst_engine.engine.weights_spec import sample_images


def render(
    stylizer: Stylizer, content: Path, style: Path, configs: list[SynthesisConfig], batch: int
) -> dict:
    """Wall time, peak memory and each item's final loss and recorded batch size."""
    if stylizer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with PeakMemory(stylizer.device) as memory:
        if batch <= 1:
            results = [stylizer.synthesize(content, [style], c) for c in configs]
        else:
            with stylizer.batch(batch) as shared:
                outcomes = run_together(
                    [lambda c=c: stylizer.synthesize(content, [style], c, batch=shared) for c in configs],
                    batch,
                )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            results = outcomes
    if stylizer.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {
        "wall_seconds": wall,
        "items_per_second": len(configs) / wall,
        "peak_memory_bytes": memory.peak,
        "losses": [r.stats.final_total_loss for r in results],
        "batch_sizes": [r.stats.batch_size for r in results],
    }


def _worker(device: str, content: Path, style: Path, configs: list[SynthesisConfig], ready, done) -> None:
    """One process of ``--workers``: load, warm up, wait for the others, render its share."""
    stylizer = Stylizer(load_weights("embedded"), device=device)
    stylizer.synthesize(content, [style], replace(configs[0], iterations=2))
    ready.wait()
    done.put([stylizer.synthesize(content, [style], c).stats.final_total_loss for c in configs])


def render_in_processes(
    device: str, content: Path, style: Path, configs: list[SynthesisConfig], workers: int
) -> dict:
    """Wall time of ``workers`` processes sharing the device, items dealt round-robin."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    ready, done = context.Barrier(workers + 1), context.Queue()
    shares = [configs[i::workers] for i in range(workers)]
    processes = [
        context.Process(target=_worker, args=(device, content, style, share, ready, done)) for share in shares
    ]
    for process in processes:
        process.start()
    ready.wait()
    start = time.perf_counter()
    losses = [done.get() for _ in processes]
    wall = time.perf_counter() - start
    for process in processes:
        process.join()
    return {
        "wall_seconds": wall,
        "items_per_second": len(configs) / wall,
        "workers": workers,
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (median kept)")
    parser.add_argument("--workers", default="", help="also N processes sharing the device, e.g. 2,4")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    weights = load_weights("embedded")
    stylizer = Stylizer(weights, device=args.device)
    samples = {p.stem: p for p in sample_images()}
    rows = []
    print(machine_line(stylizer.device))
    print("| size | B | batch recorded | wall s | items/s | vs B=1 | peak MiB | max rel. loss diff vs B=1 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        style = square(samples["starry_night"], 512, Path(tmp) / "style.png")
        for size in [int(s) for s in args.sizes.split(",")]:
            content = square(samples["tubingen"], size, Path(tmp) / f"content{size}.png")
            base = SynthesisConfig(size=size, iterations=args.iterations, precision=args.precision)
            configs = [replace(base, seed=seed) for seed in range(args.items)]
            render(stylizer, content, style, configs[:1], 1)  # warm-up: targets, cuDNN choices
            alone = None
            for batch in [int(b) for b in args.batches.split(",")]:
                runs = [render(stylizer, content, style, configs, batch) for _ in range(args.repeats)]
                run = sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
                alone = alone or run
                diff = max(abs(a - b) / abs(a) for a, b in zip(alone["losses"], run["losses"], strict=True))
                row = {
                    "size": size,
                    "batch": batch,
                    "batch_recorded": max(run["batch_sizes"]),
                    **{k: v for k, v in run.items() if k not in ("losses", "batch_sizes")},
                    "speedup": run["items_per_second"] / alone["items_per_second"],
                    "max_relative_loss_difference": diff,
                    "device": device_name(stylizer.device),
                    "iterations": args.iterations,
                    "items": args.items,
                    "precision": args.precision,
                    "wall_seconds_runs": [r["wall_seconds"] for r in runs],
                }
                rows.append(row)
                wall = statistics.median(row["wall_seconds_runs"])
                print(
                    f"| {size}² | {batch} | {row['batch_recorded']} | {wall:.2f} "
                    f"| {row['items_per_second']:.3f} | {row['speedup']:.2f}× "
                    f"| {row['peak_memory_bytes'] / 2**20:.0f} | {diff:.1e} |",
                    flush=True,
                )
            for workers in [int(w) for w in args.workers.split(",") if w]:
                run = render_in_processes(args.device, content, style, configs, workers)
                speedup = run["items_per_second"] / alone["items_per_second"]
                rows.append({**run, "size": size, "speedup": speedup, "device": device_name(stylizer.device)})
                print(
                    f"| {size}² | {workers} processes | 1 | {run['wall_seconds']:.2f} "
                    f"| {run['items_per_second']:.3f} | {speedup:.2f}× | | |",
                    flush=True,
                )
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
