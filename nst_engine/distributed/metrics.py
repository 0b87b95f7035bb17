"""Prometheus metrics of a render, through Ray's metrics API (``ray.util.metrics``).

Every metric is defined here once (``METRICS``: name, meaning, tags, buckets); the
driver and the workers call the small functions below. Ray records each value in the
process that makes it and its metrics agent exports them all on the node's metrics port
(``ray_`` prefixed, counters with ``_total``), where Ray's dashboard and any Prometheus
that scrapes the cluster read them (cluster/prometheus.yml, cluster/README.md).

Tags stay few-valued (lane, status, device kind, run kind): a tag per item or per run
would make a new time series each time and swamp Prometheus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from nst_engine.results.cost import Prices

if TYPE_CHECKING:
    import torch

    from nst_engine.distributed.pool import Lane, Pool

#: what Ray puts before an application metric's name in its export
EXPORT_PREFIX = "ray_"


@dataclass(frozen=True)
class Metric:
    """One metric as ``ray.util.metrics`` creates it and as Prometheus sees it."""

    name: str
    kind: str  # counter, gauge or histogram
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()  # histogram buckets' upper bounds

    @property
    def exported(self) -> str:
        """The name Prometheus sees: Ray's prefix; a counter's ``_total``; a histogram's
        series add ``_bucket``, ``_sum`` and ``_count`` to it."""
        return EXPORT_PREFIX + self.name + ("_total" if self.kind == "counter" else "")


ITEMS = Metric(
    "nst_items",
    "counter",
    "Attempts recorded by the driver, by status: ok, retried (lost or transient) or failed",
    ("status", "lane", "device_kind", "run_kind"),
)
ITEM_SECONDS = Metric(
    "nst_item_seconds",
    "histogram",
    "Worker seconds of one attempt (the row's total_seconds), ok or failed",
    ("status", "device_kind", "run_kind"),
    (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ITERATION_SECONDS = Metric(
    "nst_iteration_seconds",
    "histogram",
    "Median seconds per optimisation iteration of one rendered item (after warm-up)",
    ("device_kind", "run_kind"),
    (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Metric(
    "nst_queue_depth", "gauge", "Items queued in a lane, not yet handed to a worker", ("lane", "run_kind")
)
WORKERS = Metric(
    "nst_workers",
    "gauge",
    "Workers of a lane by state: pending (requested, not ready) or live",
    ("state", "lane", "run_kind"),
)
DEVICE_MEMORY = Metric(
    "nst_device_memory_bytes",
    "gauge",
    "A GPU worker's device memory after its last item: allocated now, or the peak allocated",
    ("measure", "device_kind"),
)
DEVICE_SECONDS = Metric(
    "nst_device_seconds",
    "gauge",
    "Device-seconds the run's workers have held so far, busy or idle, per device kind (results.cost)",
    ("device_kind", "run_kind"),
)
COST = Metric(
    "nst_cost",
    "gauge",
    "The run's held device time priced at its --price, in that currency (0 with no price)",
    ("device_kind", "run_kind"),
)
METRICS = (ITEMS, ITEM_SECONDS, ITERATION_SECONDS, QUEUE_DEPTH, WORKERS, DEVICE_MEMORY, DEVICE_SECONDS, COST)

_made: dict[str, Any] = {}
_lock = threading.Lock()  # a worker's syntheses finish in threads of their own


def _instrument(metric: Metric) -> Any:
    """This process's Ray metric for ``metric``, made at first use (Ray metrics need a
    connected Ray); None without one, so recording is then a no-op."""
    if not ray.is_initialized():
        return None
    made = _made.get(metric.name)
    if made is None:
        from ray.util import metrics as ray_metrics

        with _lock:
            made = _made.get(metric.name)
            if made is None:
                if metric.kind == "counter":
                    made = ray_metrics.Counter(metric.name, metric.description, metric.tag_keys)
                elif metric.kind == "gauge":
                    made = ray_metrics.Gauge(metric.name, metric.description, metric.tag_keys)
                else:
                    made = ray_metrics.Histogram(
                        metric.name, metric.description, list(metric.boundaries), metric.tag_keys
                    )
                _made[metric.name] = made
    return made


def _record(metric: Metric, method: str, value: float, **tags: str) -> None:
    instrument = _instrument(metric)
    if instrument is not None:
        getattr(instrument, method)(value, tags=tags)


def device_kind(device: torch.device | str) -> str:
    """``cuda`` or ``cpu``: the device type, as the rows' ``device_type`` and ``--price``
    name it (``results.cost.DEVICE_KINDS``)."""
    return getattr(device, "type", str(device).split(":")[0])


def lane_device_kind(lane: Lane) -> str:
    """A lane's device kind from the resources that place its workers (for rows that
    name none: a queued item failed for want of a worker)."""
    return "cuda" if lane.resources.get("num_gpus") else "cpu"


def record_spend(
    device_kind: str, device_seconds: float, cost: float | None, run_kind: str = "render"
) -> None:
    """The run's device seconds and cost so far on ``device_kind`` (cost None: no price, 0)."""
    _record(DEVICE_SECONDS, "set", float(device_seconds), device_kind=device_kind, run_kind=run_kind)
    _record(COST, "set", float(cost or 0.0), device_kind=device_kind, run_kind=run_kind)


def item_rendered(row: dict[str, Any], device: torch.device) -> None:
    """A worker's attempt ended (called by ``RenderWorker.render`` with its row): its
    seconds, its seconds per iteration, and the device's memory. All local calls."""
    kind, run_kind = device_kind(device), row.get("run_kind") or "render"
    if row.get("total_seconds") is not None:
        tags = {"status": row["status"], "device_kind": kind, "run_kind": run_kind}
        _record(ITEM_SECONDS, "observe", row["total_seconds"], **tags)
    if row.get("seconds_per_iteration") is not None:
        seconds = row["seconds_per_iteration"]
        _record(ITERATION_SECONDS, "observe", seconds, device_kind=kind, run_kind=run_kind)
    _device_memory(device)


def _device_memory(device: torch.device) -> None:
    """CUDA's allocator counts its bytes without a device sync, so this is cheap. A CPU
    worker reports nothing here: its process memory is already exported by Ray's own
    per-worker metrics (``ray_component_rss_mb``), and the kernel's would cost a read."""
    if device.type != "cuda":
        return
    import torch

    kind = device_kind(device)
    _record(DEVICE_MEMORY, "set", torch.cuda.memory_allocated(device), measure="allocated", device_kind=kind)
    _record(DEVICE_MEMORY, "set", torch.cuda.max_memory_allocated(device), measure="peak", device_kind=kind)


class RunMetrics:
    """The driver's side for one run: every recorded row counted by status, the pool's
    gauges, and what its workers have held so far, priced (``record_spend``)."""

    def __init__(self, run_kind: str, prices: Prices | None = None) -> None:
        self.run_kind = run_kind
        self.prices = prices or Prices()

    def counting(
        self, on_row: Callable[[Lane, dict[str, Any]], None] | None
    ) -> Callable[[Lane, dict[str, Any]], None]:
        """``on_row`` that also counts the row: the recorder calls it for every row it
        records, settled attempts and queued items failed for want of a worker alike."""

        def counted(lane: Lane, row: dict[str, Any]) -> None:
            self.row_recorded(lane, row)
            if on_row is not None:
                on_row(lane, row)

        return counted

    def row_recorded(self, lane: Lane, row: dict[str, Any]) -> None:
        kind = row.get("device_type") or lane_device_kind(lane)
        tags = {"status": row["status"], "lane": lane.name, "device_kind": kind, "run_kind": self.run_kind}
        _record(ITEMS, "inc", 1, **tags)

    def pool_state(self, pool: Pool) -> None:
        """Each lane's queue depth, its workers by state, and the run's spend so far
        (called every tick)."""
        for lane in pool.lanes:
            live = len(lane.live_workers())
            self._lane_gauges(lane.name, len(lane.queue), live, len(lane.members) - live)
        self._spend(pool)

    def finished(self, pool: Pool) -> None:
        """Gauges back to 0 once the run is over: a driver on a long-lived cluster must not
        leave a queue and workers behind on the dashboard. The spend stays: the bill."""
        for lane in pool.lanes:
            self._lane_gauges(lane.name, 0, 0, 0)
        self._spend(pool)

    def _spend(self, pool: Pool) -> None:
        for kind, seconds in pool.held(time.time()).items():
            cost = self.prices.cost(kind, seconds) if self.prices else None
            record_spend(kind, seconds, cost, self.run_kind)

    def _lane_gauges(self, lane: str, queued: int, live: int, pending: int) -> None:
        _record(QUEUE_DEPTH, "set", queued, lane=lane, run_kind=self.run_kind)
        _record(WORKERS, "set", live, state="live", lane=lane, run_kind=self.run_kind)
        _record(WORKERS, "set", pending, state="pending", lane=lane, run_kind=self.run_kind)
