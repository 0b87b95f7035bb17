"""The driver's loop: ``Scheduler`` waits on Ray for workers starting and calls coming
back, and hands each event to a small handler; what the handlers decide comes from
``autoscaling`` (pool size) and ``retry`` (an attempt's outcome), the state they change
is ``pool``'s, the rows they make go through ``recording``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

from nst_engine.distributed.autoscaling import Stall, resize, stall, start_budget
from nst_engine.distributed.budget import BudgetGuard
from nst_engine.distributed.metrics import RunMetrics
from nst_engine.distributed.nodes import ExcludedNode, NodeLedger, node_fault
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.pool import MAX_BATCH, Call, Lane, Pool, Worker
from nst_engine.distributed.progress import Progress, ProgressBoard, read_board
from nst_engine.distributed.protocol import Attempt, Outcome
from nst_engine.distributed.recording import Recorder, RunSummary
from nst_engine.distributed.retry import Action, decide
from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import NSTError, one_line
from nst_engine.planning.items import WorkItem
from nst_engine.results.cost import Spending
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable
from nst_engine.storage.roots import OutputRoot

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # longest wait for a Ray event; also the progress callback's period
#: Worker time one call aims at: items shorter than this travel several to a call, so
#: Ray's round trip and the driver's bookkeeping are paid per call, not per item.
BATCH_SECONDS = 0.5


class WorkerStartError(NSTError):
    """No worker of a lane started within ``worker_start_timeout`` (say ``--gpus`` on a
    cluster where no GPU node joins): the run stops rather than wait forever or quietly
    render somewhere else."""


class OutputRootFull(NSTError):
    """The output root took no more writes (an item's image failed with ENOSPC or EDQUOT):
    the run stopped handing out work, and says why in one line."""


def call_size(lane: Lane, workers: int, worker: Worker | None = None) -> int:
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
    if not lane.batched or lane.chained:  # a shot's frame: one a call (``Scheduler.call_limit``)
        return 1
    if lane.call_size is not None:
        return lane.call_size(lane.queue[0][0])
    together = int(worker.info.get("max_batch", 1)) if worker is not None else 1
    by_time = 1 if lane.item_seconds is None else int(BATCH_SECONDS / max(lane.item_seconds, 1e-6))
    wanted = max(by_time, 2 * together if together > 1 else 1)
    held = worker.items if worker is not None else 0
    share = -(-(len(lane.queue) + lane.in_flight_items) // max(1, workers)) - held
    return max(0, min(wanted, lane.max_batch, share, len(lane.queue)))


class Scheduler:
    """Hands work items to Ray actor workers and records one result row per attempt.

    Rules: each worker holds at most its lane's ``max_in_flight`` calls, so it never
    idles between items; calls carry several items when items are short
    (``call_size``); an attempt's outcome settles its row, its retry and its worker's
    fate (``retry.decide``): bad input, out-of-memory and an image that cannot be
    written are final at once (a full output root also stops the run handing out work,
    ``stop_handing_out``), a lost worker's attempts and transient failures are retried
    up to ``max_attempts``, and a worker is retired after ``max_worker_failures``
    failures, or when it dies or fails to start, and replaced while the lane has work
    (``autoscaling.start_budget``); a node whose device faults and worker deaths reach
    ``max_node_failures`` is excluded for the rest of the run (``nodes``, ``node_failed``:
    its workers released, none placed there again); when
    no worker of a lane is ready for ``worker_start_timeout`` seconds its queued items
    fail, or, when none ever was, the run stops with ``WorkerStartError``; when all have
    died and no replacement is left, its queued items fail (``autoscaling.stall``).

    The pool follows the cluster (``balance``, every tick, by ``autoscaling.resize``): a
    lane requests as many workers as its queue can use, up to ``max_workers``, at once,
    whether or not a node with their resources is up; a worker that becomes ready mid-run
    gets work at the next dispatch; as the queue shortens, requests beyond what it can
    still use are withdrawn, and once it is empty idle workers are released
    (``ray.kill``), so their nodes can scale down while the last items finish.

    ``run`` is the loop around ``ray.wait``; each event has a handler: ``worker_ready``
    (incl. a failed start), ``call_done`` (each attempt settled, or the call lost with its
    worker), ``tick`` (lease check, pool size, stalled lanes, progress callback). A lane
    or worker can be added at any time (``add_lane``, ``start_worker``).

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

    #: ``call_size``, where callers and tests have always found it
    batch_size = staticmethod(call_size)

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
        spending: Spending | None = None,
        on_exclude: Callable[[list[ExcludedNode]], None] | None = None,
    ) -> None:
        self.weights = weights
        self.root = root
        self.options = options
        self.store = store or ResultTable(root)
        self.summary = summary or RunSummary()
        spending = spending or Spending()
        self.metrics = RunMetrics(run_kind, spending.prices)  # Prometheus, through Ray: every row, the pool
        counted = self.metrics.counting(on_row)
        self.recorder = Recorder(self.store, self.summary, run_kind, counted, redo_reasons)
        self.run_kind = run_kind
        self.warmup = warmup
        self.started = started if started is not None else time.time()
        self.on_progress = on_progress
        self.worker_class = worker_class  # RenderWorker's constructor, ready() and render()
        self.pool = Pool()
        self.board = ProgressBoard.remote() if on_progress is not None else None
        self.last_report = 0.0  # when the progress callback and the pool's metrics last ran
        self.full: str | None = None  # why the output root takes no more writes
        self.not_started = 0  # items the stop took from the queues
        self.budget = BudgetGuard(spending)  # --price, --budget
        self.nodes = NodeLedger(options.max_node_failures)  # faults per node, and the nodes excluded
        self.on_exclude = on_exclude  # called with every node excluded so far, at each exclusion

    # ------------------------------------------------------------------ set-up

    def add_lane(self, lane: Lane) -> Lane:
        """Request ``lane``'s workers (as many as its queue can use, within its bounds)
        and schedule its queue; ``balance`` resizes the pool from then on."""
        if not 0 <= lane.min_workers <= lane.max_workers or lane.max_workers < 1:
            raise ValueError(f"lane {lane.name}: need 0 <= min_workers <= max_workers, max_workers >= 1")
        lane.starts_left = start_budget(lane.max_workers, self.options.max_worker_failures)
        lane.last_ready = time.time()
        self.pool.lanes.append(lane)
        self.balance(lane)
        return lane

    def start_worker(self, lane: Lane) -> Worker:
        """Request one more worker for ``lane`` (pending until a node takes it)."""
        # calls of several items run side by side on their worker (threads), so a later
        # call's items join the batch an earlier one opened; one more thread for ready()
        limit = lane.max_in_flight or self.options.max_in_flight
        if lane.chained:  # up to its max_batch calls, each a shot's frame (``call_limit``)
            limit = max(limit, self.options.max_batch or MAX_BATCH)
        remote = ray.remote(self.worker_class).options(
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=limit + 1 if lane.batched else 1,
            **self.placement(lane),
        )
        handle = remote.remote(
            self.weights,
            self.root.uri,
            lane.device,
            lane.threads,
            self.board,
            checkpoint_every=self.options.checkpoint_every,
            max_batch=self.options.max_batch if lane.batched else 1,
            memory_share=lane.memory_share,
        )
        return self.pool.add_worker(lane, handle, handle.ready.remote())

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        """Until every lane's queue is empty and nothing is in flight; then stop all workers."""
        try:
            while self.pool.has_work():
                self.dispatch()
                self.tick()  # after dispatch: the pool is sized for what is still queued
                for ref in self._wait():
                    self._handle(ref)
            self.fail_stranded()
        except KeyboardInterrupt:
            self.collect_finished()
            raise
        finally:
            self.shutdown()
        if self.summary.budget_left is not None:
            self.summary.budget_left = self.not_started
        if self.full is not None:
            left = f"{self.not_started} more item{'' if self.not_started == 1 else 's'} left to do"
            raise OutputRootFull(
                f"the output root is full, so the run stopped: {self.full}; {left}; "
                "free space there and run again (finished images are kept)"
            )
        return self.summary

    def _wait(self) -> list[Any]:
        """Every event already there, in one call; else the first within a tick."""
        refs = self.pool.refs()
        if not refs:
            time.sleep(TICK_SECONDS / 10)
            return []
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not done:
            done, _ = ray.wait(refs, num_returns=1, timeout=TICK_SECONDS)
        return done

    def _handle(self, ref: Any) -> None:
        if ref in self.pool.starting:
            self.worker_ready(ref)
        elif ref in self.pool.in_flight:
            self.call_done(ref)

    def collect_finished(self) -> None:
        """Record the calls already back when the run is stopped (Ctrl-C, SIGTERM): their
        images are written, so their rows belong in this run's results, not to the next
        run's recovery."""
        with contextlib.suppress(RayError, KeyboardInterrupt):
            refs = list(self.pool.in_flight)
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                self.call_done(ref)

    def dispatch(self) -> None:
        """Hand queued items to ready workers of their lane in calls of ``call_size``
        items: one call to each free worker, least loaded first, before any worker's next,
        so the tail is spread over every worker. A worker that holds its share already
        (its first call took the whole queue) keeps its other slots empty: items sent there
        would only be taken from a worker that could run them sooner."""
        spent = self.budget.spent(self.pool)  # once a pass, not per call: O(workers) each
        for lane in self.pool.lanes:
            if not lane.queue:
                continue
            live = lane.live_workers()
            free = sorted((w for w in live if w.in_flight < self.call_limit(w)), key=lambda w: w.items)
            while free and lane.queue:
                served = []
                for worker in free:
                    count = call_size(lane, len(live), worker) if lane.queue else 0
                    if count and worker.in_flight and self.budget.unknown(worker.info.get("device_kind")):
                        continue  # no cost to project from yet: a call per worker until one is back
                    if count and not (count := self._affordable(worker, count, spent)):
                        self.stop_at_budget()
                        return
                    if count and self.send(worker, count):
                        served.append(worker)
                # a share only shrinks as others are served: a worker that got none is done
                free = [w for w in served if w.in_flight < self.call_limit(w)]

    def call_limit(self, worker: Worker) -> int:
        """Calls ``worker`` may hold at once: its lane's ``max_in_flight``. On a lane of
        video shots, as many frames as the worker runs at once (its ``max_batch``), each
        a call of its own: a shot's next frame is released as the frame before finishes,
        so frames of shots at the same step meet in one batch, and a shot queued behind
        another on a busy worker would wait there while another worker could take it."""
        lane = worker.lane
        if lane.chained:
            return max(1, worker.max_batch) if lane.batched else 1
        return lane.max_in_flight or self.options.max_in_flight

    def _affordable(self, worker: Worker, count: int, spent: float) -> int:
        """How many of ``count`` items ``worker`` may get within the run's budget."""
        return self.budget.affordable(self.pool, worker.info.get("device_kind", "unknown"), count, spent)

    def send(self, worker: Worker, count: int) -> bool:
        """One remote call to ``worker`` with up to ``count`` queued items
        (``Lane.hand_out``); False when none of them is for it."""
        lane = worker.lane
        items = lane.hand_out(worker, count)
        if not items:
            return False
        args = (self.started, self.run_kind, self.warmup)
        if lane.batched:
            ref = worker.handle.render_batch.remote(items, *args)
        else:
            ref = worker.handle.render.remote(*items[0], *args)
        self.pool.call_sent(ref, Call(items, worker, batched=lane.batched))
        return True

    # ------------------------------------------------------------------ events

    def worker_ready(self, ref: Any) -> None:
        """A worker finished starting (weights loaded), or failed to."""
        worker = self.pool.starting.pop(ref)
        try:
            info = ray.get(ref)
        except RayError as exc:
            self.retire(worker, f"failed to start: {_start_error(exc)}")
            return
        if worker.dead:  # withdrawn (surplus) while its ready() was on the way
            return
        if info.get("node_id") in self.nodes.excluded:  # requested before its node was excluded
            self.release(worker)
            return
        self.pool.mark_ready(worker, info)
        self.summary.workers += 1
        self.summary.peak_workers = max(self.summary.peak_workers, self.pool.live)

    def call_done(self, ref: Any) -> None:
        """A call came back with an ``Attempt`` per item; or it was lost with its worker,
        and all its attempts with it."""
        call = self.pool.call_back(ref)
        try:
            returned = ray.get(ref)
        except RayError as exc:  # the worker died (actor, node or task lost)
            error = f"worker lost: {type(exc).__name__}"
            for item, number in call.items:
                row = make_row(item, "retried", number, error=error, run_kind=self.run_kind)
                self.settle(call.worker, item, number, Attempt(row, Outcome.LOST))
            # its other calls are lost too: ray.wait reports them as they fail
            return
        attempts: list[Attempt] = returned if call.batched else [returned]
        for (item, number), attempt in zip(call.items, attempts, strict=True):
            call.worker.lane.learn_item_seconds(attempt.row.get("total_seconds"))
            self.budget.learn(attempt.row.get("device_type"), attempt.row.get("device_seconds"))
            self.settle(call.worker, item, number, attempt)

    def settle(self, worker: Worker, item: WorkItem, number: int, attempt: Attempt) -> None:
        """Attempt ``number`` at ``item`` on ``worker``: recorded, requeued, its lane
        stopped and its worker retired as the retry policy decides."""
        lane = worker.lane
        released = worker.dead  # by the driver, before this attempt came back
        decision = decide(
            attempt.outcome,
            attempt=number,
            max_attempts=self.options.max_attempts,
            worker_failures=worker.failures,
            max_worker_failures=self.options.max_worker_failures,
            stop_on=lane.stop_on,
        )
        if decision.worker_failed:
            worker.failures += 1
        self.recorder.settle(lane, item, number, attempt.row, decision)
        if decision.action is Action.RETRY:
            lane.put_back(item, number + 1)
        elif decision.action is Action.OK:
            lane.release(item.item_id, worker)  # the next frame of its shot may start, there
        else:
            self.recorder.fail(lane, [(f, 1) for f in lane.cut_off(item.item_id)], chain_broken(item))
        if decision.stop_lane:
            lane.clear()
        if decision.stop_run or self.full is not None:  # a retry put back after the stop too
            self.stop_handing_out(attempt.row["error"])
        elif self.summary.budget_left is not None:  # as is one put back after the budget's stop
            self.stop_at_budget()
        if decision.retire:
            error = attempt.row["error"]  # a lost worker's says so ("worker lost: ...")
            lost = attempt.outcome is Outcome.LOST
            self.retire(worker, error if lost else f"{worker.failures} failures, last: {error}")
        if node_fault(attempt.outcome, released=released):
            self.node_failed(worker, attempt.row["error"] or attempt.outcome.value)

    def node_failed(self, worker: Worker, error: str) -> None:
        """Count a fault against ``worker``'s node; past ``max_node_failures`` the node is
        excluded for the rest of the run: every worker of ours there released (their
        calls come back lost, retried elsewhere, and count against no node) and no new one
        placed there (``placement``)."""
        node_id = worker.info.get("node_id")
        if not node_id:  # a worker that did not say where it runs
            return
        excluded = self.nodes.fault(node_id, worker.info.get("hostname", "?"), error)
        if excluded is None:
            return
        log.warning("node excluded for the rest of the run: %s", excluded.describe())
        self.summary.excluded_nodes.append(excluded)
        for other in list(self.pool.workers.values()):
            if not other.dead and other.info.get("node_id") == node_id:
                self.release(other)
        if self.on_exclude is not None:
            self.on_exclude(list(self.summary.excluded_nodes))

    def placement(self, lane: Lane) -> dict[str, Any]:
        """``lane``'s actor options, with a label selector that keeps a new worker off
        every excluded node (merged with a selector the lane has of its own). Workers
        requested before an exclusion may still land there: ``worker_ready`` releases them."""
        avoid = self.nodes.label_selector()
        if not avoid:
            return lane.resources
        return {**lane.resources, "label_selector": {**lane.resources.get("label_selector", {}), **avoid}}

    def stop_handing_out(self, error: str) -> None:
        """Hand out no more work (the output root is full): the queued items stay to do,
        for a rerun; the calls in flight come back and are recorded; ``run`` then raises
        ``OutputRootFull`` with ``error`` (the first such item's)."""
        self._drop_queues()
        if self.full is None:  # said once, by run: the first item's error names the cause
            self.full = error

    def stop_at_budget(self) -> None:
        """Hand out no more work: the next item's projected spend would pass the run's
        ``--budget``. The queued items stay to do (counted in ``summary.budget_left``);
        the calls in flight come back and are recorded; idle workers are released."""
        self._drop_queues()
        self.summary.budget_left = self.not_started

    def fail_stranded(self) -> None:
        """Frames still waiting when nothing else is left: the frame before them neither
        finished nor failed here (a bug, were it to happen): recorded as failed, not lost."""
        for lane in self.pool.lanes:
            stranded = [(item, 1) for item in lane.waiting.values()]
            lane.clear()
            self.recorder.fail(lane, stranded, "not started: the frame before it never finished; run again")

    def _drop_queues(self) -> None:
        for lane in self.pool.lanes:
            self.not_started += lane.clear()

    def retire(self, worker: Worker, reason: str) -> None:
        """Retire ``worker`` (died, failed to start, or failed too often); ``balance``
        replaces it while its lane has work and starts left."""
        if worker.dead:
            return
        log.warning("worker %s retired: %s", worker.info.get("actor_id", worker.key), reason)
        self.release(worker)

    def tick(self) -> None:
        """Time-driven checks: the output root is still this run's (its lease), each
        lane's pool resized (``balance``), lanes that can get no worker, and, once a tick,
        the progress callback and the pool's metrics."""
        self.store.guard()
        now = time.time()
        for lane in self.pool.lanes:
            self.balance(lane)
            self.check_stall(lane, now)
        if now - self.last_report > TICK_SECONDS:  # tick runs every event: report once a tick
            self.last_report = now
            self.metrics.pool_state(self.pool)  # walks every worker (the spend)
            if self.on_progress is not None:
                self.on_progress(self.progress())

    def check_stall(self, lane: Lane, now: float) -> None:
        """Fail ``lane``'s queue, or stop the run, when it can get no worker (``stall``)."""
        load = lane.load()
        if load.live:
            lane.last_ready = now
            return
        timeout = self.options.worker_start_timeout
        verdict = stall(load, lane.ever_ready, now - lane.last_ready, timeout)
        # when the nodes that could take the workers were excluded, the message says so
        excluded = "".join(f"; excluded: {node.describe()}" for node in self.summary.excluded_nodes)
        if verdict is Stall.NO_WORKERS:
            self.recorder.fail_queue(lane, "every worker failed" + excluded)
        elif verdict is Stall.TIMED_OUT:
            self.recorder.fail_queue(lane, _start_timeout_message(lane, timeout) + excluded)
        elif verdict is Stall.NEVER_STARTED:
            raise WorkerStartError(_start_timeout_message(lane, timeout) + excluded)

    # ------------------------------------------------------------------ the pool

    def balance(self, lane: Lane) -> None:
        """Size ``lane``'s pool to its queue as ``autoscaling.resize`` says: new requests,
        the newest pending requests withdrawn, idle workers released."""
        live, pending = lane.live_workers(), lane.pending_workers()
        plan = resize(lane.load())
        for _ in range(plan.start):
            self.start_worker(lane)
        for worker in pending[len(pending) - plan.withdraw :]:
            self.release(worker)
            self.summary.cancelled += 1
        if plan.release_idle:
            for worker in live:
                if not worker.in_flight:
                    if lane.in_flight_items:  # others still work: this one's node can go now
                        self.summary.released += 1
                    self.release(worker)

    def release(self, worker: Worker) -> None:
        """Stop ``worker`` (its in-flight attempts come back as lost), or withdraw its
        request when no node has taken it yet."""
        self.pool.drop(worker)
        with contextlib.suppress(RayError):
            ray.kill(worker.handle, no_restart=True)

    def shutdown(self) -> None:
        for worker in self.pool.workers.values():
            self.release(worker)
        self.summary.held = self.pool.held(time.time())  # every worker released: the bill's
        self.metrics.finished(self.pool)
        if self.board is not None:
            with contextlib.suppress(RayError):
                ray.kill(self.board)

    def progress(self) -> Progress:
        return Progress(
            total=self.summary.total,
            done=self.summary.rendered,
            failed=len(self.summary.failed),
            skipped=self.summary.skipped,
            elapsed=time.time() - self.started,
            workers=read_board(self.board),
            excluded_nodes=[node.describe() for node in self.summary.excluded_nodes],
        )


def chain_broken(item: WorkItem) -> str:
    """Why the frames after ``item`` in its shot were not rendered (it failed for good)."""
    where = f"frame {item.frame.index} of {item.frame.clip}" if item.frame else item.item_id
    return f"not started: {where} failed, and this frame continues from it; run again to render them"


def _start_error(exc: BaseException) -> str:
    """Why a worker's constructor failed: Ray's error says first that the actor died and
    only at its end what the constructor raised, so the last line is the one to show."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else one_line(exc)


def _start_timeout_message(lane: Lane, timeout: float) -> str:
    """Why a lane has no worker: its requests wait for a node nobody brings up."""
    pending = len(lane.pending_workers())
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
