"""The driver: plans nothing and renders nothing, only hands items to workers.

``Scheduler`` is the one scheduler of the project: ``nst render`` runs one lane of
identical workers over a largest-first queue; ``nst bench scaling`` runs one lane per
device type, each with its own smallest-first queue (``distributed/bench.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from nst_engine.distributed.options import MAX_DEFAULT_THREADS, PoolOptions
from nst_engine.distributed.worker import OUT_OF_MEMORY, ProgressBoard, RenderWorker
from nst_engine.engine.errors import one_line
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.items import WorkItem
from nst_engine.results.schema import make_row
from nst_engine.results.storage import OutputRoot
from nst_engine.results.store import ResultStore

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # longest wait for a Ray event; also the progress callback's period


@dataclass
class RunSummary:
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: list[tuple[WorkItem, str]] = field(default_factory=list)
    retried: int = 0
    workers: int = 0
    wall_seconds: float = 0.0


@dataclass
class Progress:
    """What the live view shows; passed to the progress callback about twice a second."""

    total: int
    done: int
    failed: int
    skipped: int
    elapsed: float
    workers: dict[str, tuple[str, int, int, float]]  # actor -> (item label, iteration, total, loss)


def alive_node_cpus() -> list[int]:
    """CPUs of each live node of the connected cluster (at least one entry)."""
    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    cpus = [c for c in cpus if c > 0]
    return cpus or [max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))]


def cpu_worker_threads(requested: int | None = None, node_cpus: list[int] | None = None) -> int:
    """Torch threads of one CPU worker, for ``nst render`` and ``nst bench scaling`` alike:
    ``requested``, else min(largest node's cores, 4).

    Four, because a worker must fit on one node and torch's intra-op threads scale well
    only to a few cores on these convolutions: more workers of four threads render more
    items per hour than fewer wide ones. The benchmark measures the same worker shape, so
    ``nst estimate`` predicts what a render worker will take.
    """
    if requested:
        return requested
    return max(1, min(max(node_cpus or alive_node_cpus()), MAX_DEFAULT_THREADS))


def pool_shape(options: PoolOptions, items: int) -> tuple[int, dict[str, float], int | None]:
    """(number of workers, Ray resources per worker, torch threads per worker)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and options.use_gpus is not False:
        return max(1, min(gpus, items)), {"num_gpus": 1, "num_cpus": 1}, None
    # a worker must fit on one node: size threads by the largest node, count by every node
    node_cpus = alive_node_cpus()
    threads = cpu_worker_threads(options.threads_per_actor, node_cpus)
    count = options.cpu_actors or max(1, sum(c // threads for c in node_cpus))
    return max(1, min(count, items)), {"num_cpus": threads, "num_gpus": 0}, threads


def skip_done(items: list[WorkItem], store: ResultStore, root: OutputRoot, force: bool) -> tuple[list, list]:
    """(items to render, items already done: an ok row and the output file exist)."""
    if force:
        return items, []
    done = store.completed()
    todo, skipped = [], []
    for item in items:
        if item.item_id in done and root.exists(item.output_path):
            skipped.append(item)
        else:
            todo.append(item)
    return todo, skipped


def _start_error(exc: BaseException) -> str:
    """Why a worker's constructor failed: Ray's error says first that the actor died and
    only at its end what the constructor raised, so the last line is the one to show."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else one_line(exc)


def is_out_of_memory(row: dict[str, Any]) -> bool:
    """A failed row whose attempt ran out of memory at its size (see ``RenderWorker``)."""
    return row.get("status") == "failed" and (row.get("error") or "").startswith(OUT_OF_MEMORY)


@dataclass
class Lane:
    """Workers of one shape and the queue they draw from.

    ``resources`` are the Ray actor options that place a worker (``num_cpus``,
    ``num_gpus``, custom resources); ``stop_when`` is a per-lane rule: once it holds for
    a final row, the lane's remaining items are dropped (the benchmark stops growing a
    device at its first out-of-memory size)."""

    name: str
    resources: dict[str, Any]
    device: str  # cpu | cuda
    threads: int | None  # torch threads (CPU workers)
    workers: int  # how many to start
    items: list[WorkItem]  # in the order they are handed out
    max_in_flight: int | None = None  # items on one worker (default: PoolOptions.max_in_flight)
    stop_when: Callable[[dict[str, Any]], bool] | None = None
    queue: deque[tuple[WorkItem, int]] = field(init=False)  # (item, attempt)
    replacements_left: int = field(init=False, default=0)
    last_ready: float = field(init=False, default_factory=time.time)

    def __post_init__(self) -> None:
        self.queue = deque((item, 1) for item in self.items)

    def take(self) -> tuple[WorkItem, int]:
        """The next (item, attempt) to hand out."""
        return self.queue.popleft()

    def put_back(self, item: WorkItem, attempt: int) -> None:
        """An item to retry: it goes first, so retries do not wait behind the whole queue."""
        self.queue.appendleft((item, attempt))


@dataclass
class _Worker:
    key: int
    lane: Lane
    handle: Any
    ready_ref: Any
    ready: bool = False
    dead: bool = False
    in_flight: int = 0
    failures: int = 0
    info: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.ready and not self.dead


@dataclass(frozen=True)
class _Attempt:
    item: WorkItem
    number: int
    worker: _Worker


class Scheduler:
    """Hands work items to Ray actor workers and records one result row per attempt.

    Rules: each worker holds at most its lane's ``max_in_flight`` items, so it never
    idles between items; an attempt lost with its worker or node, or failed by a
    transient error, is recorded as ``retried`` and queued again (first) for any worker
    of the lane, up to ``max_attempts``; bad input and out-of-memory are final at once;
    a worker is retired after ``max_worker_failures`` transient failures, or when it dies
    or fails to start, and a replacement is started (up to ``max_worker_failures``
    replacements per initial worker); when no worker of a lane is ready for
    ``worker_start_timeout`` seconds, or all have died, its queued items fail.

    State lives in fields (``lanes``, ``workers``, ``starting`` and ``in_flight`` refs,
    ``summary``, ``store``, clocks); each event has a method: ``worker_ready`` (incl. a
    failed start), ``item_done`` (ok, failed, retryable failure, or the worker lost),
    ``worker_lost`` and ``tick`` (start timeouts, progress callback); ``run`` is the loop
    around ``ray.wait`` that feeds them. A new lane or worker can be added at any time
    (``add_lane``, ``start_worker``).

    Why hand-written rather than Ray Data ``map_batches`` or ``ray.util.ActorPool``:
    the result table holds one row per attempt, retried and lost attempts included,
    which Ray Data's internal task retries never surface, and it retries on its own
    terms (max_retries on any error, or errors dropped as errored blocks) where bad input
    and out-of-memory must not be retried but a lost node must, on another worker.
    ``ActorPool`` keeps one item per actor (no ``max_in_flight`` pipelining), raises a
    lost actor's error to the caller and hands that actor out again rather than
    resubmitting the item elsewhere, knows no start-up failure or timeout, and has no
    retire-and-replace. Neither keeps a largest-first order, per-lane rules such
    as the benchmark's stop-at-first-OOM, or a live progress board of what each worker
    is doing. The loop is small; these rules are the point of it.
    """

    def __init__(
        self,
        weights: WeightsSpec,
        root: OutputRoot,
        options: PoolOptions = PoolOptions(),
        *,
        store: ResultStore | None = None,
        summary: RunSummary | None = None,
        run_kind: str = "render",
        warmup: int = 0,
        started: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_row: Callable[[Lane, dict[str, Any]], None] | None = None,
        worker_class: type = RenderWorker,
    ) -> None:
        self.weights = weights
        self.root = root
        self.options = options
        self.store = store or ResultStore(root)
        self.summary = summary or RunSummary()
        self.run_kind = run_kind
        self.warmup = warmup
        self.started = started if started is not None else time.time()
        self.on_progress = on_progress
        self.on_row = on_row
        self.worker_class = worker_class  # RenderWorker's constructor, ready() and render()
        self.lanes: list[Lane] = []
        self.workers: dict[int, _Worker] = {}  # every worker started, retired ones included
        self._keys = itertools.count()
        self.starting: dict[Any, _Worker] = {}  # ready() ref -> worker
        self.in_flight: dict[Any, _Attempt] = {}  # render() ref -> attempt
        self.board = ProgressBoard.remote() if on_progress is not None else None
        self.last_progress = 0.0

    # ------------------------------------------------------------------ set-up

    def add_lane(self, lane: Lane) -> Lane:
        """Start ``lane.workers`` workers for ``lane`` and schedule its queue."""
        lane.replacements_left = lane.workers * self.options.max_worker_failures
        lane.last_ready = time.time()
        self.lanes.append(lane)
        for _ in range(lane.workers):
            self.start_worker(lane)
        self.summary.workers += lane.workers
        return lane

    def start_worker(self, lane: Lane) -> _Worker:
        remote = ray.remote(self.worker_class).options(max_restarts=0, max_task_retries=0, **lane.resources)
        handle = remote.remote(self.weights, self.root.uri, lane.device, lane.threads, self.board)
        worker = _Worker(next(self._keys), lane, handle, handle.ready.remote())
        self.workers[worker.key] = worker
        self.starting[worker.ready_ref] = worker
        return worker

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        """Until every lane's queue is empty and nothing is in flight; then stop all workers."""
        try:
            while self._has_work():
                self.dispatch()
                refs = [*self.in_flight, *self.starting]
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=TICK_SECONDS)
                else:
                    done = []
                    time.sleep(TICK_SECONDS / 10)
                for ref in done:
                    if ref in self.starting:
                        self.worker_ready(ref)
                    else:
                        self.item_done(ref)
                self.tick()
        finally:
            self.shutdown()
        return self.summary

    def dispatch(self) -> None:
        """Hand queued items to ready workers of their lane, least loaded first."""
        for worker in sorted(self.workers.values(), key=lambda w: w.in_flight):
            lane = worker.lane
            limit = lane.max_in_flight or self.options.max_in_flight
            while worker.live and worker.in_flight < limit and lane.queue:
                item, attempt = lane.take()
                ref = worker.handle.render.remote(item, attempt, self.started, self.run_kind, self.warmup)
                self.in_flight[ref] = _Attempt(item, attempt, worker)
                worker.in_flight += 1

    # ------------------------------------------------------------------ events

    def worker_ready(self, ref: Any) -> None:
        """A worker finished starting (weights loaded), or failed to."""
        worker = self.starting.pop(ref)
        try:
            worker.info = ray.get(ref)
        except RayError as exc:
            self.worker_lost(worker, f"failed to start: {_start_error(exc)}")
            return
        worker.ready = True
        worker.lane.last_ready = time.time()

    def item_done(self, ref: Any) -> None:
        """An attempt came back: ok, failed for good, failed retryably, or lost with its worker."""
        attempt = self.in_flight.pop(ref)
        worker, item = attempt.worker, attempt.item
        worker.in_flight -= 1
        try:
            row, retryable = ray.get(ref)
        except RayError as exc:  # the worker died (actor, node or task lost)
            error = f"worker lost: {type(exc).__name__}"
            row = make_row(item, "retried", attempt.number, error=error, run_kind=self.run_kind)
            self._retry_or_fail(worker.lane, item, attempt.number, row)
            # its other items are lost too: ray.wait reports them as they fail
            self.worker_lost(worker, f"died: {type(exc).__name__}")
            return
        if row["status"] == "ok":
            self._record(worker.lane, row)
            self.summary.rendered += 1
        elif retryable:
            worker.failures += 1
            self._retry_or_fail(worker.lane, item, attempt.number, row)
            if worker.failures >= self.options.max_worker_failures:
                self.worker_lost(worker, f"{worker.failures} failures, last: {row['error']}")
        else:
            self._record(worker.lane, row)
            self.summary.failed.append((item, row["error"]))

    def worker_lost(self, worker: _Worker, reason: str) -> None:
        """Retire ``worker`` (died, failed to start, or failed too often) and start a
        replacement while its lane has work and replacements left."""
        if worker.dead:
            return
        log.warning("worker %s retired: %s", worker.info.get("actor_id", worker.key), reason)
        self.release(worker)
        lane = worker.lane
        if lane.replacements_left > 0 and self._lane_busy(lane):
            lane.replacements_left -= 1
            self.start_worker(lane)

    def tick(self) -> None:
        """Time-driven checks: lanes with no worker that could start, drained lanes'
        workers released, and the progress callback."""
        now = time.time()
        for lane in self.lanes:
            mine = [w for w in self.workers.values() if w.lane is lane and not w.dead]
            if any(w.live for w in mine):
                lane.last_ready = now
                if not self._lane_busy(lane):
                    for worker in mine:  # drained: free its devices for other lanes
                        self.release(worker)
            elif lane.queue and not self._lane_in_flight(lane):
                if not mine:
                    self._fail_queue(lane, "every worker failed")
                elif now - lane.last_ready > self.options.worker_start_timeout:
                    timeout = self.options.worker_start_timeout
                    self._fail_queue(lane, f"no worker could start within {timeout:.0f} s")
        if self.on_progress is not None and now - self.last_progress > TICK_SECONDS:
            self.last_progress = now
            self.on_progress(self.progress())

    # ------------------------------------------------------------------ helpers

    def progress(self) -> Progress:
        snapshot: dict[str, tuple[str, int, int, float]] = {}
        if self.board is not None:
            try:
                snapshot = ray.get(self.board.snapshot.remote(), timeout=2)
            except (GetTimeoutError, RayError):
                snapshot = {}
        return Progress(
            total=self.summary.total,
            done=self.summary.rendered,
            failed=len(self.summary.failed),
            skipped=self.summary.skipped,
            elapsed=time.time() - self.started,
            workers=snapshot,
        )

    def release(self, worker: _Worker) -> None:
        """Stop ``worker`` (its in-flight attempts come back as lost)."""
        worker.dead = True
        self.starting.pop(worker.ready_ref, None)
        with contextlib.suppress(RayError):
            ray.kill(worker.handle, no_restart=True)

    def shutdown(self) -> None:
        for worker in self.workers.values():
            self.release(worker)
        if self.board is not None:
            with contextlib.suppress(RayError):
                ray.kill(self.board)

    def _record(self, lane: Lane, row: dict[str, Any]) -> None:
        self.store.append([row])
        if self.on_row is not None:
            self.on_row(lane, row)
        if row["status"] != "retried" and lane.stop_when is not None and lane.stop_when(row):
            lane.queue.clear()

    def _retry_or_fail(self, lane: Lane, item: WorkItem, attempt: int, row: dict[str, Any]) -> None:
        """An attempt that may succeed elsewhere: record it as retried and requeue the item,
        or, once its attempts are used up, record the item as failed."""
        if attempt < self.options.max_attempts:
            row["status"] = "retried"
            self._record(lane, row)
            self.summary.retried += 1
            lane.put_back(item, attempt + 1)
        else:
            row.update(status="failed", error=f"gave up after {attempt} attempts: {row['error']}")
            self._record(lane, row)
            self.summary.failed.append((item, row["error"]))

    def _fail_queue(self, lane: Lane, message: str) -> None:
        while lane.queue:
            item, attempt = lane.take()
            self._record(lane, make_row(item, "failed", attempt, error=message, run_kind=self.run_kind))
            self.summary.failed.append((item, message))

    def _lane_in_flight(self, lane: Lane) -> int:
        return sum(w.in_flight for w in self.workers.values() if w.lane is lane)

    def _lane_busy(self, lane: Lane) -> bool:
        return bool(lane.queue) or self._lane_in_flight(lane) > 0

    def _has_work(self) -> bool:
        return bool(self.in_flight) or any(lane.queue for lane in self.lanes)


def run_render(
    items: list[WorkItem],
    weights: WeightsSpec,
    root: OutputRoot,
    options: PoolOptions = PoolOptions(),
    *,
    force: bool = False,
    run_kind: str = "render",
    on_progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Render ``items`` on the connected Ray cluster; rows go to ``root``'s result table."""
    started = time.time()
    store = ResultStore(root)
    root.remove_stale_temporaries()
    summary = RunSummary(total=len(items))
    todo, skipped = skip_done(items, store, root, force)
    summary.skipped = len(skipped)
    store.append([make_row(i, "skipped", 0, run_kind=run_kind) for i in skipped])
    bad = [i for i in todo if i.input_error]
    store.append([make_row(i, "failed", 1, error=i.input_error, run_kind=run_kind) for i in bad])
    summary.failed += [(i, i.input_error or "") for i in bad]
    todo = [i for i in todo if not i.input_error]
    if todo:
        scheduler = Scheduler(
            weights,
            root,
            options,
            store=store,
            summary=summary,
            run_kind=run_kind,
            started=started,
            on_progress=on_progress,
        )
        count, resources, threads = pool_shape(options, len(todo))
        scheduler.add_lane(
            Lane(
                name="render",
                resources=resources,
                device="cuda" if resources.get("num_gpus") else "cpu",
                threads=threads,
                workers=count,
                # largest first (shorter tail); the sort is stable: equal sizes keep manifest order
                items=sorted(todo, key=lambda i: -i.pixels_estimate),
            )
        )
        scheduler.run()
    store.compact()
    summary.wall_seconds = time.time() - started
    return summary
