"""The scaling benchmark on Ray: the same synthesis at growing sizes on every distinct
device type of the cluster (each GPU model, and CPU), one worker per type.

It runs on the render ``Scheduler``: one lane per device slot (that slot's resources,
one worker, its own queue smallest first, one item per call, or one batch of a chosen
size per call (``--batches``), and one call in flight so calls do not share the device),
with the same retry rules as ``nst render`` (a lost worker's attempt is recorded as
retried, or failed once its attempts are used up). A lane stops growing at
its first out-of-memory size; that row is recorded as failed with the reason and the
run goes on on the other devices.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ray

from nst_engine.distributed.cluster import cpu_worker_threads
from nst_engine.distributed.dispatch import Scheduler
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.pool import Lane
from nst_engine.distributed.protocol import Outcome
from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.items import ID_LENGTH, WorkItem
from nst_engine.results.table import ResultTable
from nst_engine.storage.roots import OutputRoot


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


def batched_items(items: list[WorkItem], batches: list[int]) -> tuple[list[WorkItem], dict[str, int]]:
    """Each size's item alone, then for each batch size B > 1 a set of B syntheses of it
    (seeds 0..B-1) to run together; smallest size first. Returns the items in order and
    each item's batch size (by item id): what ``run_scaling`` sends as one call."""
    ordered: list[WorkItem] = []
    batch_of: dict[str, int] = {}
    for item in sorted(items, key=lambda i: i.pixels_estimate):
        ordered.append(item)
        batch_of[item.item_id] = 1
        for size in sorted({b for b in batches if b > 1}):
            for seed in range(size):
                ident = hashlib.sha256(f"{item.item_id}|batch {size}|{seed}".encode()).hexdigest()[:ID_LENGTH]
                folder, _, name = item.output_path.rpartition("/")
                ordered.append(
                    replace(
                        item,
                        item_id=ident,
                        config=replace(item.config, seed=seed),
                        output_path=f"{folder}/batch{size}/{seed}_{name}".lstrip("/"),
                    )
                )
                batch_of[ident] = size
    return ordered, batch_of


def run_scaling(
    items: list[WorkItem],
    weights: WeightsSpec,
    root: OutputRoot,
    slots: list[DeviceSlot],
    warmup: int,
    on_row: Callable[[DeviceSlot, dict], None] | None = None,
    options: PoolOptions | None = None,
    worker_class: type = RenderWorker,
    batches: list[int] | None = None,
) -> list[dict]:
    """Run ``items`` smallest first on one worker per slot, all slots at once; returns
    every row written (retried attempts included). With ``batches`` (sizes > 1), each
    size is also run as a batch of each of those many syntheses at once, in one call
    (``batched_items``); their rows record ``batch_size``, and ``items_per_second`` reads
    the throughput off them."""
    store = ResultTable(root)
    rows: list[dict] = []
    by_lane = {slot.label: slot for slot in slots}

    def record(lane: Lane, row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(by_lane[lane.name], row)

    ordered, batch_of = batched_items(items, batches or [1])
    largest = max(batch_of.values(), default=1)
    scheduler = Scheduler(
        weights,
        root,
        replace(options or PoolOptions(), max_batch=largest),
        store=store,
        run_kind="bench",
        warmup=warmup,
        started=time.time(),
        on_row=record,
        worker_class=worker_class,
    )
    scheduler.summary.total = len(ordered) * len(slots)
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
                    # each size measured alone, in its own call; a batch in one call
                    max_batch=largest,
                    call_size=lambda item: batch_of[item.item_id],
                    stop_on=frozenset({Outcome.OUT_OF_MEMORY}),
                )
            )
        scheduler.run()
    store.compact()
    return rows


def items_per_second(rows: list[dict], batch_of: dict[str, int]) -> dict[tuple[str, int, int], float]:
    """(device, pixels, batch size) -> items per second: a batch's ok rows over the wall
    time from its first start to its last end (a lone item: one over its own)."""
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for row in rows:
        if row["status"] == "ok" and row["item_id"] in batch_of:
            key = (row["device_name"], int(row["pixels"]), batch_of[row["item_id"]])
            groups.setdefault(key, []).append(row)
    rates = {}
    for key, group in groups.items():
        wall = (max(r["finished_at"] for r in group) - min(r["started_at"] for r in group)).total_seconds()
        rates[key] = len(group) / wall if wall > 0 else float("nan")
    return rates
