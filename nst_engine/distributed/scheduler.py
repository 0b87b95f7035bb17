"""The driver: plans nothing and renders nothing, only hands items to workers.

Largest items go first (shorter tail); each worker holds at most ``max_in_flight``
items so it never idles between items; a worker or node that dies has its items
retried elsewhere up to ``max_attempts``; a worker that keeps failing is retired.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from nst_engine.distributed.worker import ProgressBoard, RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.items import WorkItem
from nst_engine.results.schema import make_row
from nst_engine.results.storage import OutputRoot
from nst_engine.results.store import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolOptions:
    """How many workers, on what, and how hard to retry."""

    use_gpus: bool | None = None  # None: GPUs when the cluster has any
    cpu_actors: int | None = None  # CPU workers (default: one per `threads_per_actor` cores)
    threads_per_actor: int | None = None  # torch threads per CPU worker (default: min(cores, 4))
    max_in_flight: int = 2  # items queued on one worker, including the running one
    max_attempts: int = 3  # attempts per item when workers die or hit transient errors
    max_worker_failures: int = 3  # failures before a worker is retired
    worker_start_timeout: float = 600.0  # give up when no worker is ready for this long


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


@dataclass
class _Worker:
    handle: Any
    ready_ref: Any
    ready: bool = False
    dead: bool = False
    in_flight: int = 0
    failures: int = 0
    info: dict[str, str] = field(default_factory=dict)


def pool_shape(options: PoolOptions, items: int) -> tuple[int, dict[str, float], int | None]:
    """(number of workers, Ray resources per worker, torch threads per worker)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and options.use_gpus is not False:
        return max(1, min(gpus, items)), {"num_gpus": 1, "num_cpus": 1}, None
    # a worker must fit on one node: size threads by the largest node, count by every node
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    node_cpus = [c for c in node_cpus if c > 0] or [max(1, int(resources.get("CPU", os.cpu_count() or 1)))]
    threads = options.threads_per_actor or min(max(node_cpus), 4)
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
    # largest first; Python's sort is stable, so equal sizes keep manifest order
    queue: deque[tuple[WorkItem, int]] = deque((i, 1) for i in sorted(todo, key=lambda i: -i.pixels_estimate))
    if queue:
        _drive(queue, weights, root, options, store, summary, started, run_kind, on_progress)
    store.compact()
    summary.wall_seconds = time.time() - started
    return summary


def _drive(
    queue: deque[tuple[WorkItem, int]],
    weights: WeightsSpec,
    root: OutputRoot,
    options: PoolOptions,
    store: ResultStore,
    summary: RunSummary,
    started: float,
    run_kind: str,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    count, resources, threads = pool_shape(options, len(queue))
    board = ProgressBoard.remote()
    remote_worker = ray.remote(RenderWorker).options(max_restarts=0, max_task_retries=0, **resources)
    device = "cuda" if resources.get("num_gpus") else "cpu"
    workers: dict[int, _Worker] = {}
    replacements_left = count * options.max_worker_failures

    def start_worker() -> None:
        handle = remote_worker.remote(weights, root.uri, device, threads, board)
        workers[len(workers)] = _Worker(handle, handle.ready.remote())

    for _ in range(count):
        start_worker()
    summary.workers = count
    in_flight: dict[Any, tuple[WorkItem, int, int]] = {}  # ref -> (item, attempt, worker key)
    last_ready = time.time()
    last_progress = 0.0

    def retry_or_fail(item: WorkItem, attempt: int, row: dict[str, Any]) -> None:
        """An attempt that may succeed elsewhere: record it as retried and requeue the item,
        or, once its attempts are used up, record the item as failed."""
        if attempt < options.max_attempts:
            row["status"] = "retried"
            store.append([row])
            summary.retried += 1
            queue.appendleft((item, attempt + 1))
        else:
            row.update(status="failed", error=f"gave up after {attempt} attempts: {row['error']}")
            store.append([row])
            summary.failed.append((item, row["error"]))

    def retire(key: int, reason: str) -> None:
        nonlocal replacements_left
        worker = workers[key]
        if worker.dead:
            return
        worker.dead = True
        log.warning("worker %s retired: %s", worker.info.get("actor_id", key), reason)
        with contextlib.suppress(RayError):
            ray.kill(worker.handle, no_restart=True)
        if replacements_left > 0 and (queue or in_flight):
            replacements_left -= 1
            start_worker()

    while queue or in_flight:
        # hand out work to ready workers, least loaded first
        for key, worker in sorted(workers.items(), key=lambda kv: kv[1].in_flight):
            while worker.ready and not worker.dead and worker.in_flight < options.max_in_flight and queue:
                item, attempt = queue.popleft()
                ref = worker.handle.render.remote(item, attempt, started, run_kind)
                in_flight[ref] = (item, attempt, key)
                worker.in_flight += 1
        pending_ready = {w.ready_ref: k for k, w in workers.items() if not w.ready and not w.dead}
        refs = list(in_flight) + list(pending_ready)
        done, _ = ray.wait(refs, num_returns=1, timeout=0.5) if refs else ([], [])
        for ref in done:
            if ref in pending_ready:
                key = pending_ready[ref]
                try:
                    workers[key].info = ray.get(ref)
                    workers[key].ready = True
                    last_ready = time.time()
                except RayError as exc:
                    retire(key, f"failed to start: {exc}")
                continue
            item, attempt, key = in_flight.pop(ref)
            worker = workers[key]
            worker.in_flight -= 1
            try:
                row, retryable = ray.get(ref)
            except RayError as exc:  # the worker died (actor, node or task lost)
                error = f"worker lost: {type(exc).__name__}"
                retry_or_fail(
                    item, attempt, make_row(item, "retried", attempt, error=error, run_kind=run_kind)
                )
                retire(key, f"died: {type(exc).__name__}")
                # its other items are lost too: ray.wait reports them as they fail
                continue
            if row["status"] == "ok":
                store.append([row])
                summary.rendered += 1
            elif retryable:
                worker.failures += 1
                retry_or_fail(item, attempt, row)
                if worker.failures >= options.max_worker_failures:
                    retire(key, f"{worker.failures} failures, last: {row['error']}")
            else:
                store.append([row])
                summary.failed.append((item, row["error"]))
        live = [w for w in workers.values() if w.ready and not w.dead]
        if live:
            last_ready = time.time()
        elif (
            queue
            and not in_flight
            and (
                time.time() - last_ready > options.worker_start_timeout
                or all(w.dead for w in workers.values())
            )
        ):
            while queue:
                item, attempt = queue.popleft()
                message = (
                    "every worker failed"
                    if all(w.dead for w in workers.values())
                    else f"no worker could start within {options.worker_start_timeout:.0f} s"
                )
                store.append([make_row(item, "failed", attempt, error=message, run_kind=run_kind)])
                summary.failed.append((item, message))
        if on_progress is not None and time.time() - last_progress > 0.5:
            last_progress = time.time()
            try:
                snapshot = ray.get(board.snapshot.remote(), timeout=2)
            except (GetTimeoutError, RayError):
                snapshot = {}
            on_progress(
                Progress(
                    total=summary.total,
                    done=summary.rendered,
                    failed=len(summary.failed),
                    skipped=summary.skipped,
                    elapsed=time.time() - started,
                    workers=snapshot,
                )
            )
    for worker in workers.values():
        with contextlib.suppress(RayError):
            ray.kill(worker.handle, no_restart=True)
    with contextlib.suppress(RayError):
        ray.kill(board)
