"""The scaling benchmark on Ray: the same synthesis at growing sizes on every distinct
device type of the cluster (each GPU model, and CPU), one worker per type.

It runs on the render ``Scheduler``: one lane per device slot (that slot's resources,
one worker, its own queue smallest first, one item per call and one call in flight so
items do not share the device), with the same retry rules as ``nst render`` (a lost worker's attempt is
recorded as retried, or failed once its attempts are used up). A lane stops growing at
its first out-of-memory size; that row is recorded as failed with the reason and the
run goes on on the other devices.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.scheduler import (
    Lane,
    Scheduler,
    cpu_worker_threads,
    is_out_of_memory,
)
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

    @property
    def threads(self) -> int | None:
        return int(self.options["num_cpus"]) if self.device == "cpu" else None


def device_slots(include: set[str], cpu_threads: int | None = None) -> list[DeviceSlot]:
    """Every distinct device type in the cluster, filtered by ``include`` ({'cpu', 'gpu'}).
    The CPU worker has ``cpu_worker_threads(cpu_threads)`` threads, as a render worker."""
    resources = ray.cluster_resources()
    slots = []
    if "gpu" in include and resources.get("GPU", 0) >= 1:
        types = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
        for kind in types or ["GPU"]:
            extra = {"resources": {f"accelerator_type:{kind}": 0.001}} if types else {}
            slots.append(DeviceSlot(kind, "cuda", {"num_gpus": 1, "num_cpus": 1, **extra}))
    if "cpu" in include:
        threads = cpu_worker_threads(cpu_threads)
        slots.append(DeviceSlot(f"CPU x{threads}", "cpu", {"num_cpus": threads, "num_gpus": 0}))
    return slots


def run_scaling(
    items: list[WorkItem],
    weights: WeightsSpec,
    root: OutputRoot,
    slots: list[DeviceSlot],
    warmup: int,
    on_row: Callable[[DeviceSlot, dict], None] | None = None,
    options: PoolOptions | None = None,
    worker_class: type = RenderWorker,
) -> list[dict]:
    """Run ``items`` smallest first on one worker per slot, all slots at once; returns
    every row written (retried attempts included)."""
    store = ResultStore(root)
    rows: list[dict] = []
    by_lane = {slot.label: slot for slot in slots}

    def record(lane: Lane, row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(by_lane[lane.name], row)

    scheduler = Scheduler(
        weights,
        root,
        options or PoolOptions(),
        store=store,
        run_kind="bench",
        warmup=warmup,
        started=time.time(),
        on_row=record,
        worker_class=worker_class,
    )
    scheduler.summary.total = len(items) * len(slots)
    ordered = sorted(items, key=lambda i: i.pixels_estimate)
    if ordered:
        for slot in slots:
            scheduler.add_lane(
                Lane(
                    name=slot.label,
                    resources=slot.options,
                    device=slot.device,
                    threads=slot.threads,
                    min_workers=1,
                    max_workers=1,
                    items=ordered,
                    max_in_flight=1,
                    max_batch=1,  # each size measured alone, in its own call
                    stop_when=is_out_of_memory,
                )
            )
        scheduler.run()
    store.compact()
    return rows
