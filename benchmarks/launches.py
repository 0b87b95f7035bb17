"""Operator calls per L-BFGS iteration: a CPU-measurable proxy for GPU kernel launches.

On a GPU, a 256² network pass is a few milliseconds of kernels, and every operator the
host issues costs a launch of several microseconds: what an iteration issues besides the
network decides how much of the GPU sits idle. This counts, with ``torch.profiler``, the
top-level ATen calls of whole iterations (an ATen call made by another one is not
counted again), for ``--batches`` syntheses running together (``Stylizer.batch``; 1:
alone) at each ``--history`` length, and itemises them by the engine's profiler labels:

- network: the VGG forward (``nst.network``) and its backward (autograd nodes other
  than the losses');
- losses: the loss terms (``nst.losses``) and their backward (``_WeightedBackward``,
  and the bf16 casts' ``ToCopyBackward0``);
- evaluation: what holds an evaluation together (``nst.evaluation``: inputs, the
  backward call);
- optimizer: the L-BFGS iteration itself (``nst.optimizer``: directions, trial points,
  accepted steps, the reads);
- other: outside all labels (the synthesis loop, hooks, batch glue).

``launching`` leaves out calls that only make views or metadata (``VIEWS``), which
launch nothing on a GPU. Per batch step: an iteration of every member at once. Also the
host CPU seconds per batch step (on a GPU: launch overhead, as the host waits at two
reads) and the wall seconds.

On a GPU, ``--autotune`` also times cuDNN autotuning against heuristics for the batch
sizes a worker meets: a new shape's first pass and its later passes, each way.

Run: .venv/bin/python benchmarks/launches.py --size 64 --history 5,100 --batches 1,8 --iterations 20
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from engine_speed import machine_line, sync, write_json  # benchmarks/ is the script's folder
from torch.profiler import ProfilerActivity, profile

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights, random_weights
from nst_engine.engine.batch import run_together
from nst_engine.engine.losses import EVALUATION_LABEL, LOSSES_LABEL, NETWORK_LABEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import write_image  # a smooth random image, as the tests use

OPTIMIZER_LABEL = "nst.optimizer"
LABELS = {
    NETWORK_LABEL: "network",
    LOSSES_LABEL: "losses",
    EVALUATION_LABEL: "evaluation",
    OPTIMIZER_LABEL: "optimizer",
}
LOSS_NODES = ("_WeightedBackward", "ToCopyBackward0")
#: Calls that only make a view or read metadata: no kernel on a GPU.
_VIEW_NAMES = (
    "view alias _unsafe_view as_strided transpose t unsqueeze squeeze select slice expand permute "
    "detach detach_ flatten view_as diagonal unbind split chunk narrow numpy_T lift_fresh "
    "resolve_conj resolve_neg empty empty_like empty_strided is_nonzero"
)
VIEWS = frozenset("aten::" + name for name in _VIEW_NAMES.split())
#: Calls that launch only when they copy (their child does).
MAYBE = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::clone", "aten::type_as"})


def category(event: Any) -> str:
    """The part of an iteration a top-level call belongs to (see the module docstring)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("autograd::engine::evaluate_function: "):
            node = parent.name.rsplit(": ", 1)[-1]
            return "losses" if node.startswith(LOSS_NODES) else "network"
        if parent.name in LABELS:
            return LABELS[parent.name]
        parent = parent.cpu_parent
    return "other"


def launches(event: Any) -> bool:
    """Whether a top-level call launches work (a view does not; a no-op ``to`` does not)."""
    if event.name in VIEWS:
        return False
    if event.name in MAYBE:
        return any(child.name.startswith("aten::") for child in event.cpu_children)
    return True


def top_level(events: Any) -> list[Any]:
    """ATen calls not made by another ATen call."""
    return [
        e
        for e in events
        if e.name.startswith("aten::") and (e.cpu_parent is None or not _under_aten(e.cpu_parent))
    ]


def _under_aten(event: Any) -> bool:
    while event is not None:
        if event.name.startswith("aten::"):
            return True
        event = event.cpu_parent
    return False


def render(stylizer: Stylizer, content: Path, style: Path, config: SynthesisConfig, batch: int) -> list:
    configs = [SynthesisConfig(**{**config.__dict__, "seed": i}) for i in range(batch)]
    if batch == 1:
        return [stylizer.synthesize(content, [style], configs[0])]
    with stylizer.batch(batch) as shared:
        results = run_together(
            [lambda c=c: stylizer.synthesize(content, [style], c, batch=shared) for c in configs], batch
        )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def count(stylizer: Stylizer, content: Path, style: Path, config: SynthesisConfig, batch: int) -> dict:
    """Calls per batch step, by part, for ``batch`` syntheses of ``config`` together."""
    render(stylizer, content, style, config, batch)  # warm: targets cached, cuDNN tuned
    sync(stylizer.device)
    cpu, wall = time.process_time(), time.perf_counter()  # host time without the profiler's
    render(stylizer, content, style, config, batch)
    sync(stylizer.device)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # a batch's members run in threads of their own: every thread is profiled
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], experimental_config=every_thread) as prof:
        results = render(stylizer, content, style, config, batch)
        sync(stylizer.device)
    steps = max(r.stats.iterations for r in results)
    calls = top_level(prof.events())
    by_part: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in calls:
        by_part[category(event)][event.name] += 1
    launching = [e for e in calls if launches(e)]
    parts = {part: sum(counter.values()) / steps for part, counter in by_part.items()}
    launching_parts = collections.Counter(category(e) for e in launching)
    return {
        "history": config.history_size,
        "batch": batch,
        "batch_size_recorded": max(r.stats.batch_size for r in results),
        "steps": steps,
        "evaluations_per_step": statistics.mean(r.stats.loss_evaluations for r in results) / steps,
        "calls_per_step": len(calls) / steps,
        "launching_per_step": len(launching) / steps,
        "calls_by_part": parts,
        "launching_by_part": {part: n / steps for part, n in launching_parts.items()},
        "top_calls_by_part": {
            part: [(name, round(n / steps, 2)) for name, n in counter.most_common(12)]
            for part, counter in by_part.items()
        },
        "host_seconds_per_step": cpu / steps,
        "wall_seconds_per_step": wall / steps,
    }


def autotune(stylizer: Stylizer, size: int, batches: list[int], precision: str) -> list[dict]:
    """cuDNN autotuning against heuristics on a pass of the network at each batch size:
    (first pass, median of the next five), seconds. CUDA only."""
    from nst_engine.engine.device import network_pass

    network = stylizer.cache.network("avg", "conv5_1", True)
    rows = []
    for tuned in (True, False):
        for batch in batches:
            images = torch.rand(batch, 3, size + int(tuned), size, device=stylizer.device)  # a new shape
            times = []
            for _ in range(6):
                sync(stylizer.device)
                start = time.perf_counter()
                with network_pass(stylizer.device, precision, ("autotune", batch, tuned) if tuned else None):
                    x = images.requires_grad_(True)
                    out = network(x, ["conv5_1"])["conv5_1"]
                    torch.autograd.grad(out.float().sum(), x)
                sync(stylizer.device)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "autotune": tuned,
                    "batch": batch,
                    "first_s": times[0],
                    "steady_s": statistics.median(times[1:]),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--history", default="5,100")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights", default="random", help="random (tiny network) or embedded (VGG-19)")
    parser.add_argument("--autotune", action="store_true", help="also time cuDNN autotuning (CUDA)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    weights = random_weights(seed=0) if args.weights == "random" else load_weights(args.weights)
    stylizer = Stylizer(weights, device=args.device)
    print(machine_line(stylizer.device))
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        content = write_image(Path(tmp) / "content.png", args.size, args.size, seed=1)
        style = write_image(Path(tmp) / "style.png", args.size, args.size, seed=2)
        for history in (int(h) for h in args.history.split(",")):
            for batch in batches:
                config = SynthesisConfig(
                    size=args.size,
                    iterations=args.iterations,
                    history_size=history,
                    tolerance=0.0,
                    precision=args.precision,
                )
                row = count(stylizer, content, style, config, batch)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top_calls_by_part"}), flush=True)
    result: dict[str, Any] = {"rows": rows}
    if args.autotune and stylizer.device.type == "cuda":
        result["autotune"] = autotune(stylizer, 256, [1, 7, 32], args.precision)
        print(json.dumps(result["autotune"]))
    print()
    parts = ("network", "losses", "evaluation", "optimizer", "other")
    print("| history | batch | calls/step | launching/step | " + " | ".join(parts) + " | host s/step |")
    print("|" + "---|" * (5 + len(parts)))
    for r in rows:
        cells = " | ".join(f"{r['calls_by_part'].get(p, 0):.1f}" for p in parts)
        print(
            f"| {r['history']} | {r['batch']} | {r['calls_per_step']:.1f} | {r['launching_per_step']:.1f} "
            f"| {cells} | {r['host_seconds_per_step']:.4f} |"
        )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
