"""The driver: plans nothing and renders nothing, only hands items to workers.

``Scheduler`` is the one scheduler of the project: ``nst render`` runs one lane of
identical workers over a largest-first queue, its pool between MIN and MAX workers
following the cluster (``pool_shape``, ``Scheduler.balance``); ``nst bench scaling`` runs
one lane per device type, each with its own smallest-first queue (``distributed/bench.py``).
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

from nst_engine.distributed.checkpoints import remove_checkpoints
from nst_engine.distributed.options import MAX_DEFAULT_THREADS, PoolOptions
from nst_engine.distributed.runtime import autoscaler_max_resources
from nst_engine.distributed.worker import OUT_OF_MEMORY, ProgressBoard, RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import NSTError, one_line
from nst_engine.planning.items import WorkItem
from nst_engine.results.resume import DoneCheck, check_done
from nst_engine.results.runs import RunLog
from nst_engine.results.schema import make_row
from nst_engine.results.table import FLUSH_ROWS, FLUSH_SECONDS, ResultTable
from nst_engine.storage.roots import OutputRoot

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # longest wait for a Ray event; also the progress callback's period
#: Worker time one call aims at: items shorter than this travel several to a call, so
#: Ray's round trip and the driver's bookkeeping are paid per call, not per item.
BATCH_SECONDS = 0.5
#: Items per call at most: bounds what a lost worker takes down with it (all retried).
MAX_BATCH = 64
#: Weight of the newest item in a lane's running mean of worker seconds per item.
ITEM_SECONDS_WEIGHT = 0.2


class WorkerStartError(NSTError):
    """No worker of a lane started within ``worker_start_timeout`` (say ``--gpus`` on a
    cluster where no GPU node joins): the run stops rather than wait forever or quietly
    render somewhere else."""


@dataclass
class RunSummary:
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: list[tuple[WorkItem, str]] = field(default_factory=list)
    retried: int = 0
    workers: int = 0  # workers that started (were ready) during the run
    peak_workers: int = 0  # most workers ready at once
    released: int = 0  # idle workers released while others still worked (their nodes may go)
    cancelled: int = 0  # worker requests withdrawn before a node took them
    wall_seconds: float = 0.0
    #: set when the run was stopped (Ctrl-C, or SIGTERM as the CLI raises it) before its end
    interrupted: KeyboardInterrupt | None = None


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


@dataclass(frozen=True)
class PoolShape:
    """What ``run_render`` asks Ray for: MIN..MAX workers of one shape."""

    min_workers: int
    max_workers: int
    resources: dict[str, Any]  # Ray actor options of one worker
    device: str  # what the worker's Stylizer is given (auto: cuda when its torch sees one)
    threads: int | None  # torch threads (CPU workers)
    memory_share: float = 1.0  # part of its device's memory a worker plans on (1/N of a shared GPU)


def pool_shape(options: PoolOptions, items: int) -> PoolShape:
    """The render pool, from what the cluster has now and what its autoscaler may add.

    GPU workers when ``use_gpus`` is True, or (None) when the cluster has a GPU now or its
    autoscaler may bring one up: a GPU group that scales from zero nodes is the normal
    way to pay for GPUs, and must not turn a render into a CPU render. ``use_gpus=True``
    never falls back to CPU: the workers wait for a GPU node (``WorkerStartError`` after
    ``worker_start_timeout``). Their device is ``auto``: the GPU Ray assigned, or the CPU
    when torch sees none (a ``num_gpus`` node without CUDA, as in the tests); the rows'
    ``device`` columns say which.

    Default bounds (``workers`` / ``cpu_actors`` override them): GPU workers MIN = GPUs
    present, MAX = the most GPUs the autoscaler may bring up (at least MIN, at least 1),
    each times ``workers_per_gpu`` (workers sharing a GPU ask Ray for a fraction of it,
    and plan on that fraction of its memory: ``memory_share``);
    CPU workers MIN = the workers of ``threads`` CPUs that fit on the live nodes, MAX =
    as many as fit in the autoscaler's CPUs. MAX is capped at ``items``: a worker that
    could get no item is never requested.
    """
    present = ray.cluster_resources()
    ceiling = autoscaler_max_resources() or {}
    gpus_now, gpus_max = int(present.get("GPU", 0)), int(ceiling.get("GPU", 0))
    use_gpus = options.use_gpus if options.use_gpus is not None else bool(gpus_now or gpus_max)
    if use_gpus:
        share = options.workers_per_gpu  # workers that share one GPU, each with 1/share of it
        default = (gpus_now * share, max(gpus_now, gpus_max, 1) * share)
        resources: dict[str, Any] = {"num_gpus": 1 / share if share > 1 else 1, "num_cpus": 1}
        device, threads, memory_share = "auto", None, 1 / share
    else:
        # a worker must fit on one node: size threads by the largest node, count by every node
        node_cpus = alive_node_cpus()
        threads = cpu_worker_threads(options.threads_per_actor, node_cpus)
        fit_now = max(1, sum(c // threads for c in node_cpus))
        default = (fit_now, max(fit_now, int(ceiling.get("CPU", 0)) // threads))
        resources, device, memory_share = {"num_cpus": threads, "num_gpus": 0}, "cpu", 1.0
    low, high = options.worker_range or default
    high = max(1, min(high, items))
    return PoolShape(min(low, high), high, resources, device, threads, memory_share)


def skip_done(
    items: list[WorkItem],
    store: ResultTable,
    force: bool,
    run_kind: str = "render",
    check: DoneCheck | None = None,
) -> DoneCheck:
    """Which items are already done (``resume.check_done``: one read of the ok rows,
    one listing of the output root, or ``check`` when the caller's plan made it already);
    items whose image survived a killed driver without its row are recorded as ok now
    rather than rendered again, and so are images verified for rows from before
    ``output_bytes`` (once). Nothing else is recorded for items already done: the run's
    record counts them; items whose image failed verification are in ``todo``, with
    ``redo`` saying why (the scheduler puts it on their rows)."""
    if force:
        return DoneCheck(todo=list(items))
    check = check or check_done(store, items, run_kind)
    store.append(check.rows)
    return check


def _start_error(exc: BaseException) -> str:
    """Why a worker's constructor failed: Ray's error says first that the actor died and
    only at its end what the constructor raised, so the last line is the one to show."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else one_line(exc)


def _start_timeout_message(lane: Lane, timeout: float) -> str:
    """Why a lane has no worker: its requests wait for a node nobody brings up."""
    pending = sum(1 for w in lane.members.values() if not w.ready)
    asked = ", ".join(f"{k.removeprefix('num_')}={v}" for k, v in lane.resources.items() if v)
    if lane.resources.get("num_gpus"):
        what, other = "GPU node", "--no-gpus renders on CPU"
    else:
        what, other = f"node with {lane.resources.get('num_cpus', 1)} free CPUs", "--workers asks for fewer"
    return (
        f"no {what} joined within {timeout:.0f} s; is the autoscaler running? {pending} worker(s) "
        f"asking for {asked} still pending (ray status lists the demand); "
        f"--worker-start-timeout waits longer, {other}"
    )


def is_out_of_memory(row: dict[str, Any]) -> bool:
    """A failed row whose attempt ran out of memory at its size (see ``RenderWorker``)."""
    return row.get("status") == "failed" and (row.get("error") or "").startswith(OUT_OF_MEMORY)


@dataclass
class Lane:
    """Workers of one shape, ``min_workers`` to ``max_workers`` of them, and the queue
    they draw from.

    ``resources`` are the Ray actor options that place a worker (``num_cpus``,
    ``num_gpus``, custom resources); ``stop_when`` is a per-lane rule: once it holds for
    a final row, the lane's remaining items are dropped (the benchmark stops growing a
    device at its first out-of-memory size). ``max_batch`` 1 sends each item alone
    through the worker's ``render``; above 1, items travel in ``render_batch`` calls sized
    by the lane's measured seconds per item and its workers' batches
    (``Scheduler.batch_size``), and a worker runs its calls side by side, so a later call's
    items join the batch an earlier one opened (``RenderWorker``)."""

    name: str
    resources: dict[str, Any]
    device: str  # cpu, cuda, or auto (cuda when the worker's torch sees one)
    threads: int | None  # torch threads (CPU workers)
    min_workers: int  # kept requested while items are queued
    max_workers: int  # requested at most
    items: list[WorkItem]  # in the order they are handed out
    max_in_flight: int | None = None  # calls on one worker (default: PoolOptions.max_in_flight)
    max_batch: int = MAX_BATCH  # items per call at most
    memory_share: float = 1.0  # part of its device's memory a worker plans on (PoolShape)
    stop_when: Callable[[dict[str, Any]], bool] | None = None
    #: items per call when the item at the queue's head decides it (the scaling bench's
    #: batches of a set size); None: ``Scheduler.batch_size`` sizes the calls
    call_size: Callable[[WorkItem], int] | None = None
    queue: deque[tuple[WorkItem, int]] = field(init=False)  # (item, attempt)
    members: dict[int, _Worker] = field(init=False, default_factory=dict)  # requested, not retired
    starts_left: int = field(init=False, default=0)  # worker starts this lane may still make
    last_ready: float = field(init=False, default_factory=time.time)
    ever_ready: bool = field(init=False, default=False)
    in_flight_items: int = field(init=False, default=0)
    item_seconds: float | None = field(init=False, default=None)  # running mean, worker time

    def __post_init__(self) -> None:
        self.queue = deque((item, 1) for item in self.items)

    def take(self) -> tuple[WorkItem, int]:
        """The next (item, attempt) to hand out."""
        return self.queue.popleft()

    def put_back(self, item: WorkItem, attempt: int) -> None:
        """An item to retry: it goes first, so retries do not wait behind the whole queue."""
        self.queue.appendleft((item, attempt))

    def hand_out(self, worker: _Worker, count: int) -> list[tuple[WorkItem, int]]:
        """Up to ``count`` queued items for one call to ``worker``, counted as in flight:
        the next one and those after it of the same ``batch_key`` (the queue keeps them
        together), so the worker can run them in one batch."""
        items = [self.take()]
        key = items[0][0].batch_key
        while len(items) < count and self.queue and self.queue[0][0].batch_key == key:
            items.append(self.take())
        worker.in_flight += 1
        worker.items += len(items)
        self.in_flight_items += len(items)
        return items


@dataclass
class _Worker:
    key: int
    lane: Lane
    handle: Any
    ready_ref: Any
    ready: bool = False
    dead: bool = False
    in_flight: int = 0  # calls
    items: int = 0  # items of those calls
    failures: int = 0
    info: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.ready and not self.dead


@dataclass(frozen=True)
class _Call:
    """One remote call in flight: ``render`` of one item, or ``render_batch`` of several."""

    items: list[tuple[WorkItem, int]]  # (item, attempt number)
    worker: _Worker
    batched: bool


class Scheduler:
    """Hands work items to Ray actor workers and records one result row per attempt.

    Rules: each worker holds at most its lane's ``max_in_flight`` calls, so it never
    idles between items; a call carries one item, or several when the lane's items are
    short or its workers batch (``batch_size``, a fair share per worker); an attempt
    lost with its worker or node, or failed by a transient error, is recorded as
    ``retried`` and queued again (first) for any worker of the lane, up to
    ``max_attempts``; bad input and out-of-memory are final at once; a worker is retired
    after ``max_worker_failures`` transient failures, or when it dies or fails to start,
    and replaced while the lane has work (up to ``max_worker_failures`` replacements per
    worker of ``max_workers``); when no worker of a lane is ready for
    ``worker_start_timeout`` seconds its queued items fail, or, when none ever was, the
    run stops with ``WorkerStartError``; when all have died and no replacement is left,
    its queued items fail.

    The pool follows the cluster (``balance``, every tick): a lane requests as many
    workers as its queue can use, up to ``max_workers``, at once, whether or not a node
    with their resources is up: a pending actor is how Ray's autoscaler (cluster
    launcher, KubeRay) learns to add nodes, and all of them at once let it add them in
    one step. A worker that becomes ready mid-run gets work at the next dispatch. As the
    queue shortens, requests beyond what it can still use are withdrawn (never below
    ``min_workers`` while items are queued); once it is empty, every request no node
    took is withdrawn and idle workers are released (``ray.kill``), so their nodes can
    scale down while the last items finish.

    State lives in fields (``lanes``, ``workers``, ``starting`` and ``in_flight`` refs,
    ``summary``, ``store``, clocks); each event has a method: ``worker_ready`` (incl. a
    failed start), ``item_done`` (ok, failed, retryable failure, or the worker lost),
    ``worker_lost`` and ``tick`` (pool size, start timeouts, progress callback); ``run``
    is the loop around ``ray.wait`` that feeds them, every finished call it finds at once.
    A new lane or worker can be added at any time (``add_lane``, ``start_worker``).

    Why hand-written rather than Ray Data ``map_batches`` or ``ray.util.ActorPool``:
    the result table holds one row per attempt, retried and lost attempts included,
    which Ray Data's internal task retries never surface, and it retries on its own
    terms (max_retries on any error, or errors dropped as errored blocks) where bad input
    and out-of-memory must not be retried but a lost node must, on another worker.
    ``ActorPool`` keeps one item per actor (no ``max_in_flight`` pipelining), raises a
    lost actor's error to the caller and hands that actor out again rather than
    resubmitting the item elsewhere, knows no start-up failure or timeout, and has no
    retire-and-replace nor a size that follows the cluster. Neither keeps a
    largest-first order, per-lane rules such as the benchmark's stop-at-first-OOM, or a
    live progress board of what each worker is doing. The loop is small; these rules are
    the point of it.
    """

    def __init__(
        self,
        weights: WeightsSpec,
        root: OutputRoot,
        options: PoolOptions = PoolOptions(),
        *,
        store: ResultTable | None = None,
        summary: RunSummary | None = None,
        run_kind: str = "render",
        warmup: int = 0,
        started: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_row: Callable[[Lane, dict[str, Any]], None] | None = None,
        worker_class: type = RenderWorker,
        redo_reasons: dict[str, str] | None = None,
    ) -> None:
        self.weights = weights
        self.root = root
        self.options = options
        self.store = store or ResultTable(root)
        self.summary = summary or RunSummary()
        self.run_kind = run_kind
        self.warmup = warmup
        self.started = started if started is not None else time.time()
        self.on_progress = on_progress
        self.on_row = on_row
        self.worker_class = worker_class  # RenderWorker's constructor, ready() and render()
        self.redo_reasons = redo_reasons or {}  # item_id -> why its ok row was not trusted
        self.lanes: list[Lane] = []
        self.workers: dict[int, _Worker] = {}  # every worker started, retired ones included
        self._keys = itertools.count()
        self.starting: dict[Any, _Worker] = {}  # ready() ref -> worker
        self.in_flight: dict[Any, _Call] = {}  # render() / render_batch() ref -> call
        self.live_workers = 0  # ready and not retired, all lanes
        self.board = ProgressBoard.remote() if on_progress is not None else None
        self.last_progress = 0.0

    # ------------------------------------------------------------------ set-up

    def add_lane(self, lane: Lane) -> Lane:
        """Request ``lane``'s workers (as many as its queue can use, within its bounds)
        and schedule its queue; ``balance`` resizes the pool from then on."""
        if not 0 <= lane.min_workers <= lane.max_workers or lane.max_workers < 1:
            raise ValueError(f"lane {lane.name}: need 0 <= min_workers <= max_workers, max_workers >= 1")
        lane.starts_left = lane.max_workers * (1 + self.options.max_worker_failures)
        lane.last_ready = time.time()
        self.lanes.append(lane)
        self.balance(lane)
        return lane

    def start_worker(self, lane: Lane) -> _Worker:
        # calls of several items run side by side on their worker (threads), so a later
        # call's items join the batch an earlier one opened; one more thread for ready()
        limit = lane.max_in_flight or self.options.max_in_flight
        concurrency = limit + 1 if lane.max_batch > 1 else 1
        remote = ray.remote(self.worker_class).options(
            max_restarts=0, max_task_retries=0, max_concurrency=concurrency, **lane.resources
        )
        handle = remote.remote(
            self.weights,
            self.root.uri,
            lane.device,
            lane.threads,
            self.board,
            checkpoint_every=self.options.checkpoint_every,
            max_batch=self.options.max_batch if lane.max_batch > 1 else 1,
            memory_share=lane.memory_share,
        )
        worker = _Worker(next(self._keys), lane, handle, handle.ready.remote())
        self.workers[worker.key] = worker
        lane.members[worker.key] = worker
        lane.starts_left -= 1
        self.starting[worker.ready_ref] = worker
        return worker

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        """Until every lane's queue is empty and nothing is in flight; then stop all workers."""
        try:
            while self._has_work():
                self.dispatch()
                self.tick()  # after dispatch: the pool is sized for what is still queued
                refs = [*self.in_flight, *self.starting]
                if refs:
                    # everything already back in one call, else wait for the first
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                    if not done:
                        done, _ = ray.wait(refs, num_returns=1, timeout=TICK_SECONDS)
                else:
                    done = []
                    time.sleep(TICK_SECONDS / 10)
                for ref in done:
                    if ref in self.starting:
                        self.worker_ready(ref)
                    else:
                        self.item_done(ref)
        except KeyboardInterrupt:
            self.collect_finished()
            raise
        finally:
            self.shutdown()
        return self.summary

    def collect_finished(self) -> None:
        """Record the calls already back when the run is stopped (Ctrl-C, SIGTERM): their
        images are written, so their rows belong in this run's results, not to the next
        run's recovery."""
        with contextlib.suppress(RayError, KeyboardInterrupt):
            done, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
            for ref in done:
                self.item_done(ref)

    def dispatch(self) -> None:
        """Hand queued items to ready workers of their lane in calls of ``batch_size``
        items: one call to each free worker, least loaded first, before any worker's next,
        so the tail is spread over every worker. A worker that holds its share already
        (its first call took the whole queue) keeps its other slots empty: items sent there
        would only be taken from a worker that could run them sooner."""
        for lane in self.lanes:
            if not lane.queue:
                continue
            limit = lane.max_in_flight or self.options.max_in_flight
            live = [w for w in lane.members.values() if w.live]
            free = sorted((w for w in live if w.in_flight < limit), key=lambda w: w.items)
            while free and lane.queue:
                served = []
                for worker in free:
                    count = self.batch_size(lane, len(live), worker) if lane.queue else 0
                    if count:
                        self.send(worker, count)
                        served.append(worker)
                # a share only shrinks as others are served: a worker that got none is done
                free = [w for w in served if w.in_flight < limit]

    @staticmethod
    def batch_size(lane: Lane, workers: int, worker: _Worker | None = None) -> int:
        """Items for ``worker``'s next call; 0 when it holds its fair share already.

        Enough for ``BATCH_SECONDS`` of worker time at the lane's measured seconds per item
        (1 until an item has come back), and for a worker that runs several syntheses at
        once (its ``max_batch``, from ``ready``) twice that many, so the items that finish
        first are replaced by queued ones of the same shape; at most ``lane.max_batch``.
        And no more than the worker's fair share: the lane's queued and in-flight items
        spread over its ``workers`` live workers, less the items ``worker`` holds. A share
        per worker, not per call slot: a lone worker's call takes all it can batch (a share
        per slot split three items for a batch of three into calls of two and one), and the
        tail is still spread over every worker."""
        if lane.max_batch <= 1:
            return 1
        if lane.call_size is not None:
            return lane.call_size(lane.queue[0][0])
        together = int(worker.info.get("max_batch", 1)) if worker is not None else 1
        by_time = 1 if lane.item_seconds is None else int(BATCH_SECONDS / max(lane.item_seconds, 1e-6))
        wanted = max(by_time, 2 * together if together > 1 else 1)
        held = worker.items if worker is not None else 0
        share = -(-(len(lane.queue) + lane.in_flight_items) // max(1, workers)) - held
        return max(0, min(wanted, lane.max_batch, share, len(lane.queue)))

    def send(self, worker: _Worker, count: int) -> None:
        """One remote call to ``worker`` with up to ``count`` queued items (``Lane.hand_out``)."""
        lane = worker.lane
        items = lane.hand_out(worker, count)
        args = (self.started, self.run_kind, self.warmup)
        if lane.max_batch <= 1:
            ref = worker.handle.render.remote(*items[0], *args)
        else:
            ref = worker.handle.render_batch.remote(items, *args)
        self.in_flight[ref] = _Call(items, worker, batched=lane.max_batch > 1)

    # ------------------------------------------------------------------ events

    def worker_ready(self, ref: Any) -> None:
        """A worker finished starting (weights loaded), or failed to."""
        worker = self.starting.pop(ref)
        try:
            worker.info = ray.get(ref)
        except RayError as exc:
            self.worker_lost(worker, f"failed to start: {_start_error(exc)}")
            return
        if worker.dead:  # withdrawn (surplus) while its ready() was on the way
            return
        worker.ready = True
        lane = worker.lane
        lane.last_ready, lane.ever_ready = time.time(), True
        self.summary.workers += 1
        self.live_workers += 1
        self.summary.peak_workers = max(self.summary.peak_workers, self.live_workers)

    def item_done(self, ref: Any) -> None:
        """A call came back: for each of its attempts ok, failed for good, failed
        retryably; or the call was lost with its worker, and all its attempts with it."""
        call = self.in_flight.pop(ref)
        worker, lane = call.worker, call.worker.lane
        worker.in_flight -= 1
        worker.items -= len(call.items)
        lane.in_flight_items -= len(call.items)
        try:
            results = ray.get(ref)
        except RayError as exc:  # the worker died (actor, node or task lost)
            error = f"worker lost: {type(exc).__name__}"
            for item, number in call.items:
                row = make_row(item, "retried", number, error=error, run_kind=self.run_kind)
                self._retry_or_fail(lane, item, number, row)
            # its other calls are lost too: ray.wait reports them as they fail
            self.worker_lost(worker, f"died: {type(exc).__name__}")
            return
        for (item, number), (row, retryable) in zip(
            call.items, results if call.batched else [results], strict=True
        ):
            self._learn_item_seconds(lane, row)
            if row["status"] == "ok":
                self._record(lane, row)
                self.summary.rendered += 1
            elif retryable:
                worker.failures += 1
                self._retry_or_fail(lane, item, number, row)
                if worker.failures >= self.options.max_worker_failures:
                    self.worker_lost(worker, f"{worker.failures} failures, last: {row['error']}")
            else:
                self._record(lane, row)
                self.summary.failed.append((item, row["error"]))

    def worker_lost(self, worker: _Worker, reason: str) -> None:
        """Retire ``worker`` (died, failed to start, or failed too often); ``balance``
        replaces it while its lane has work and starts left."""
        if worker.dead:
            return
        log.warning("worker %s retired: %s", worker.info.get("actor_id", worker.key), reason)
        self.release(worker)

    def tick(self) -> None:
        """Time-driven checks: each lane's pool resized (``balance``), lanes with no
        worker that could start, and the progress callback."""
        self.store.guard()  # the output root is still this run's (its lease)
        now = time.time()
        for lane in self.lanes:
            self.balance(lane)
            if any(w.live for w in lane.members.values()):
                lane.last_ready = now
            elif lane.queue and not lane.in_flight_items:
                if not lane.members:
                    self._fail_queue(lane, "every worker failed")
                elif now - lane.last_ready > self.options.worker_start_timeout:
                    message = _start_timeout_message(lane, self.options.worker_start_timeout)
                    if not lane.ever_ready:
                        raise WorkerStartError(message)
                    self._fail_queue(lane, message)
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

    def balance(self, lane: Lane) -> None:
        """Size ``lane``'s pool to its queue (see the class docstring).

        Called after ``dispatch``, so a non-empty queue means every live worker is full or
        holds its share: the lane wants its live workers plus one per queued item, within
        ``min_workers``..``max_workers``; it requests what is missing (within its starts
        left) and withdraws the newest requests beyond that (a short queue needs fewer
        new nodes). With an empty queue it wants only its busy workers: every request no
        node took is withdrawn and idle workers are released."""
        live = [w for w in lane.members.values() if w.live]
        pending = [w for w in lane.members.values() if not w.ready]
        if lane.queue:
            wanted = min(lane.max_workers, max(lane.min_workers, len(live) + len(lane.queue)))
            missing = wanted - len(live) - len(pending)
            for _ in range(min(missing, lane.starts_left)):
                self.start_worker(lane)
            for worker in pending[max(0, len(pending) + missing) :] if missing < 0 else []:
                self.release(worker)
                self.summary.cancelled += 1
            return
        for worker in pending:
            self.release(worker)
            self.summary.cancelled += 1
        for worker in live:
            if not worker.in_flight:
                if lane.in_flight_items:  # others still work: this one's node can go now
                    self.summary.released += 1
                self.release(worker)

    def release(self, worker: _Worker) -> None:
        """Stop ``worker`` (its in-flight attempts come back as lost), or withdraw its
        request when no node has taken it yet."""
        if worker.live:
            self.live_workers -= 1
        worker.dead = True
        worker.lane.members.pop(worker.key, None)
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
        """Append ``row``, with why its item is done again when it had an ok row (every
        attempt's row passes here, from a worker or made by the scheduler)."""
        if (reason := self.redo_reasons.get(row["item_id"])) is not None:
            row["redo_reason"] = reason
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

    @staticmethod
    def _learn_item_seconds(lane: Lane, row: dict[str, Any]) -> None:
        """Fold a row's worker time into the lane's running mean (for ``batch_size``)."""
        seconds = row.get("total_seconds")
        if seconds is None:
            return
        if lane.item_seconds is None:
            lane.item_seconds = float(seconds)
        else:
            lane.item_seconds += ITEM_SECONDS_WEIGHT * (float(seconds) - lane.item_seconds)

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
    done: DoneCheck | None = None,
    still_ours: Callable[[], None] | None = None,
) -> RunSummary:
    """Render ``items`` on the connected Ray cluster; rows go to ``root``'s result table
    (buffered, see ``results.table``) and the run itself to its runs table. ``done`` is
    the plan's split of ``items`` into done and to do, if the caller made one.
    ``still_ours`` (the output root's lease check) raises once this run may no longer
    write there: checked before every write of results and once per scheduler tick, so
    the run stops (its unwritten rows are rebuilt from the images by the next run).
    Ctrl-C or SIGTERM (as a ``KeyboardInterrupt``) returns the summary, ``interrupted`` set."""
    started = time.time()
    store = ResultTable(root, flush_rows=FLUSH_ROWS, flush_seconds=FLUSH_SECONDS, guard=still_ours)
    root.remove_stale_temporaries()
    summary = RunSummary(total=len(items))
    check = skip_done(items, store, force, run_kind, done)
    todo = check.todo
    if force:  # redone from the start, not from an earlier run's checkpoint
        remove_checkpoints(root, [i.item_id for i in todo])
    summary.skipped = len(check.done) + len(check.recovered)
    runs = RunLog(root)
    record, state = None, "interrupted"
    try:
        record = runs.start(items[0].manifest_name if items else None, run_kind, len(items))
        _render_todo(todo, weights, root, options, store, summary, run_kind, started, on_progress, check.redo)
        store.compact()
        state = "finished"
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: rows flushed below, then the summary
        summary.interrupted = stop
    finally:
        try:
            store.flush()  # on an error or Ctrl-C too: no row received is lost
        finally:  # and the run is recorded as it ended, even if that flush failed
            summary.wall_seconds = time.time() - started
            if record is not None and _may_write(store):
                runs.finish(
                    record,
                    state,
                    rendered=summary.rendered,
                    skipped=summary.skipped,
                    recovered=len(check.recovered),
                    failed=len(summary.failed),
                    retried=summary.retried,
                    workers=summary.workers,
                    wall_seconds=summary.wall_seconds,
                )
    return summary


def queue_order(item: WorkItem) -> tuple[int, tuple]:
    """Largest first (a shorter tail), and items that can share a batch side by side, so
    a call (``Lane.hand_out``) can carry a whole batch: by the output's pixels, equal for
    every item of a ``batch_key``, then by key. Not by ``pixels_estimate``: it truncates
    where the output's shape rounds, so two contents of one shape (1000x800 and 1000x801
    at 512) could sort apart with another shape between them."""
    height, width = item.shape
    return -(height * width or item.pixels_estimate), item.batch_key


def _may_write(store: ResultTable) -> bool:
    """Whether this run may still write its output root (its lease is still its own)."""
    try:
        store.guard()
    except NSTError:  # LeaseLostError: the root is another run's now
        return False
    return True


def _render_todo(
    todo: list[WorkItem],
    weights: WeightsSpec,
    root: OutputRoot,
    options: PoolOptions,
    store: ResultTable,
    summary: RunSummary,
    run_kind: str,
    started: float,
    on_progress: Callable[[Progress], None] | None,
    redo_reasons: dict[str, str],
) -> None:
    """``run_render``'s work: record bad inputs as failed, render the rest (the rows of
    items done again carry their ``redo_reasons``)."""
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
            redo_reasons=redo_reasons,
        )
        scheduler.add_lane(render_lane(todo, pool_shape(options, len(todo))))
        scheduler.run()


def render_lane(todo: list[WorkItem], shape: PoolShape) -> Lane:
    """``nst render``'s one lane: ``shape``'s workers over ``todo`` in ``queue_order``."""
    return Lane(
        name="render",
        resources=shape.resources,
        device=shape.device,
        threads=shape.threads,
        min_workers=shape.min_workers,
        max_workers=shape.max_workers,
        memory_share=shape.memory_share,
        # the sort is stable: otherwise equal items keep manifest order
        items=sorted(todo, key=queue_order),
    )
