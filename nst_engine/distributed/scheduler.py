"""``nst render`` on Ray: ``run_render`` records what is done already, then renders the
rest in one lane of identical workers over a largest-first queue, its pool between MIN
and MAX workers following the cluster.

The driver plans nothing and renders nothing, only hands items to workers. Its parts:

* ``protocol``: what a worker hands back (an ``Attempt``: a row and its ``Outcome``);
* ``retry``: the one retry policy (retry, fail or record; retire the worker or not);
* ``autoscaling``: how many workers a lane should have (pure functions, no Ray);
* ``pool``: lanes, workers and calls in flight (plain data);
* ``dispatch``: ``Scheduler``, the loop around ``ray.wait`` and its event handlers;
* ``recording``: every attempt's row to the result table, and the run's summary;
* ``cluster``: what the connected cluster offers (``pool_shape``).

``nst bench scaling`` runs the same ``Scheduler`` with one lane per device type
(``distributed/bench.py``). The names other modules import from here stay here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nst_engine.distributed.autoscaling import PoolShape
from nst_engine.distributed.checkpoints import remove_checkpoints
from nst_engine.distributed.cluster import alive_node_cpus, cpu_worker_threads, pool_shape
from nst_engine.distributed.dispatch import OutputRootFull, Scheduler, WorkerStartError
from nst_engine.distributed.nodes import ExcludedNode
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.pool import Lane
from nst_engine.distributed.progress import Progress
from nst_engine.distributed.recording import RunSummary
from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import NSTError
from nst_engine.planning.items import WorkItem
from nst_engine.results.cost import Bill, Spending
from nst_engine.results.resume import DoneCheck, check_done
from nst_engine.results.runs import RunLog, RunRecord, encode_excluded, new_run_id
from nst_engine.results.schema import make_row
from nst_engine.results.table import FLUSH_ROWS, FLUSH_SECONDS, ResultTable
from nst_engine.storage.errors import STORAGE_ERRORS
from nst_engine.storage.roots import OutputRoot

__all__ = [
    "Lane",
    "OutputRootFull",
    "PoolShape",
    "Progress",
    "RunSummary",
    "Scheduler",
    "WorkerStartError",
    "alive_node_cpus",
    "cpu_worker_threads",
    "pool_shape",
    "queue_order",
    "render_lane",
    "run_render",
    "skip_done",
]


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
    spending: Spending = Spending(),
    worker_class: type = RenderWorker,
) -> RunSummary:
    """Render ``items`` on the connected Ray cluster; rows go to ``root``'s result table
    (buffered, see ``results.table``) and the run itself to its runs table. ``done`` is
    the plan's split of ``items`` into done and to do, if the caller made one.
    ``still_ours`` (the output root's lease check) raises once this run may no longer
    write there: checked before every write of results and once per scheduler tick, so
    the run stops (its unwritten rows are rebuilt from the images by the next run).
    Ctrl-C or SIGTERM (as a ``KeyboardInterrupt``) returns the summary, ``interrupted`` set.
    An output root that fills up stops the run with ``OutputRootFull`` (its reason, not
    the failure of the last writes that follow it: what they could not write, the next
    run rebuilds from the images). ``spending``: the run's prices, recorded with its bill,
    and its budget: reached, the run hands out no more items and returns the summary,
    ``budget_left`` set (state ``budget``). ``worker_class``: ``RenderWorker`` or a
    stand-in with its constructor, ``ready`` and ``render`` (tests that make a node fail
    on purpose)."""
    started = time.time()
    run_id = new_run_id()
    store = ResultTable(
        root, flush_rows=FLUSH_ROWS, flush_seconds=FLUSH_SECONDS, guard=still_ours, run_id=run_id
    )
    root.remove_stale_temporaries()
    summary = RunSummary(total=len(items))
    check = skip_done(items, store, force, run_kind, done)
    todo = check.todo
    if force:  # redone from the start, not from an earlier run's checkpoint
        remove_checkpoints(root, [i.item_id for i in todo])
    summary.skipped = len(check.done) + len(check.recovered)
    entry, state = RunEntry(RunLog(root), store), "interrupted"
    ending: contextlib.AbstractContextManager = contextlib.nullcontext()
    try:
        entry.start(**_start_fields(items, run_kind, run_id, summary.skipped, len(check.recovered), spending))
        scheduler = functools.partial(
            Scheduler,
            weights,
            root,
            options,
            store=store,
            summary=summary,
            run_kind=run_kind,
            started=started,
            on_progress=on_progress,
            redo_reasons=check.redo,  # the rows of items done again say why
            spending=spending,
            on_exclude=entry.excluded,
            worker_class=worker_class,
        )
        _render_todo(todo, store, summary, run_kind, scheduler, options)
        store.compact()
        state = "finished" if summary.budget_left is None else "budget"
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: rows flushed below, then the summary
        summary.interrupted = stop
    except OutputRootFull:  # the writes below may well fail too: the reason stays this
        ending = contextlib.suppress(*STORAGE_ERRORS)
        raise
    finally:
        with ending:
            try:
                store.flush()  # on an error or Ctrl-C too: no row received is lost
            finally:  # and the run is recorded as it ended, even if that flush failed
                summary.wall_seconds = time.time() - started
                entry.finish(state, _end_fields(summary, len(check.recovered), spending))
    return summary


@dataclass
class RunEntry:
    """This run's row of ``runs.parquet``: written as it starts (so a killed run leaves a
    trace), when it excludes a node (for a live ``nst status``) and as it ends; never
    once the output root is another run's (its lease lost)."""

    runs: RunLog
    store: ResultTable
    record: RunRecord | None = None

    def start(self, *args: Any, **fields: Any) -> None:
        self.record = self.runs.start(*args, **fields)

    def excluded(self, nodes: list[ExcludedNode]) -> None:
        if self.record is not None and _may_write(self.store):
            with contextlib.suppress(*STORAGE_ERRORS):  # a status nicety: never stops the render
                self.runs.write(dataclasses.replace(self.record, excluded_nodes=encode_excluded(nodes)))

    def finish(self, state: str, fields: dict[str, Any]) -> None:
        if self.record is not None and _may_write(self.store):
            self.runs.finish(self.record, state, **fields)


def _start_fields(
    items: list[WorkItem], run_kind: str, run_id: str, skipped: int, recovered: int, spending: Spending
) -> dict[str, Any]:
    """The ``RunRecord`` fields known at the run's start (``RunLog.start``'s arguments)."""
    return {
        "manifest_name": items[0].manifest_name if items else None,
        "run_kind": run_kind,
        "total": len(items),
        "run_id": run_id,
        "skipped": skipped,
        "recovered": recovered,
        "prices": spending.prices.text() or None,
        "budget": spending.budget.text() if spending.budget else None,
    }


def _end_fields(summary: RunSummary, recovered: int, spending: Spending) -> dict[str, Any]:
    """The ``RunRecord`` fields known at the run's end: its counts, its bill, the nodes it
    excluded."""
    bill = Bill(spending.prices, summary.held, summary.busy)
    return {
        "rendered": summary.rendered,
        "skipped": summary.skipped,
        "recovered": recovered,
        "failed": len(summary.failed),
        "retried": summary.retried,
        "workers": summary.workers,
        "wall_seconds": summary.wall_seconds,
        "excluded_nodes": encode_excluded(summary.excluded_nodes),
        "budget_left": summary.budget_left,
        "device_seconds_held": sum(summary.held.values()),
        "device_seconds_busy": sum(summary.busy.values()),
        "cost": bill.cost,
        "bill": bill.to_json(),
    }


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
    store: ResultTable,
    summary: RunSummary,
    run_kind: str,
    make_scheduler: Callable[[], Scheduler],
    options: PoolOptions,
) -> None:
    """``run_render``'s work: record bad inputs as failed, render the rest with the
    scheduler ``make_scheduler`` makes (only when there is a rest: it starts Ray actors)."""
    bad = [i for i in todo if i.input_error]
    store.append([make_row(i, "failed", 1, error=i.input_error, run_kind=run_kind) for i in bad])
    summary.failed += [(i, i.input_error or "") for i in bad]
    todo = [i for i in todo if not i.input_error]
    if todo:
        scheduler = make_scheduler()
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
