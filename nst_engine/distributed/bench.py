"""The scaling benchmark on Ray: the same synthesis at growing sizes on every distinct
device type of the cluster (each GPU model, and CPU), one worker per type.

A device stops growing at its first out-of-memory size; that row is recorded as
failed with the reason and the run goes on elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.items import WorkItem
from nst_engine.results.storage import OutputRoot
from nst_engine.results.store import ResultStore


@dataclass(frozen=True)
class DeviceSlot:
    """One device type and the Ray resources that place a worker on it."""

    label: str
    device: str  # cpu | cuda
    options: dict[str, Any]


def device_slots(include: set[str], cpu_threads: int | None = None) -> list[DeviceSlot]:
    """Every distinct device type in the cluster, filtered by ``include`` ({'cpu', 'gpu'})."""
    resources = ray.cluster_resources()
    slots = []
    if "gpu" in include and resources.get("GPU", 0) >= 1:
        types = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
        for kind in types or ["GPU"]:
            extra = {"resources": {f"accelerator_type:{kind}": 0.001}} if types else {}
            slots.append(DeviceSlot(kind, "cuda", {"num_gpus": 1, "num_cpus": 1, **extra}))
    if "cpu" in include:
        threads = cpu_threads or max(1, min(int(resources.get("CPU", 1)), 8))
        slots.append(DeviceSlot(f"CPU x{threads}", "cpu", {"num_cpus": threads, "num_gpus": 0}))
    return slots


def run_scaling(
    items: list[WorkItem],
    weights: WeightsSpec,
    root: OutputRoot,
    slots: list[DeviceSlot],
    warmup: int,
    on_row: Callable[[DeviceSlot, dict], None] | None = None,
) -> list[dict]:
    """Run ``items`` smallest first on one worker per slot, all slots at once."""
    store = ResultStore(root)
    started = time.time()
    ordered = sorted(items, key=lambda i: i.pixels_estimate)
    workers = {}
    for slot in slots:
        remote = ray.remote(RenderWorker).options(max_restarts=0, **slot.options)
        threads = slot.options["num_cpus"] if slot.device == "cpu" else None
        workers[slot.label] = remote.remote(weights, root.uri, slot.device, threads)
    position = {slot.label: 0 for slot in slots}
    pending = {
        workers[s.label].render.remote(ordered[0], 1, started, "bench", warmup): s for s in slots if ordered
    }
    rows = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        slot = pending.pop(done[0])
        try:
            row, _ = ray.get(done[0])
        except ray.exceptions.RayError as exc:
            row = {"status": "failed", "error": f"worker lost: {type(exc).__name__}"}
            rows.append(row)
            if on_row:
                on_row(slot, row)
            continue
        store.append([row])
        rows.append(row)
        if on_row:
            on_row(slot, row)
        out_of_memory = row["status"] == "failed" and (row.get("error") or "").startswith("out of memory")
        position[slot.label] += 1
        if not out_of_memory and position[slot.label] < len(ordered):
            ref = workers[slot.label].render.remote(
                ordered[position[slot.label]], 1, started, "bench", warmup
            )
            pending[ref] = slot
    for worker in workers.values():
        ray.kill(worker)
    store.compact()
    return rows
