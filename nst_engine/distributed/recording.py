"""Where every attempt's row goes once the retry policy has settled it: the result table
(one row per attempt, retried and lost attempts included), the run's summary, and the
caller's ``on_row``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nst_engine.distributed.nodes import ExcludedNode
from nst_engine.distributed.pool import Lane
from nst_engine.distributed.retry import Action, Decision
from nst_engine.planning.items import WorkItem
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable


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
    excluded_nodes: list[ExcludedNode] = field(default_factory=list)  # bad nodes, in order (nodes.py)
    wall_seconds: float = 0.0
    #: device-seconds per device kind: of the rows (busy), and held by the workers from
    #: ready to released, busy or idle (``Pool.held``, set when the pool shuts down)
    busy: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    #: items not handed out because the run reached its ``--budget`` (None: it did not)
    budget_left: int | None = None
    #: set when the run was stopped (Ctrl-C, or SIGTERM as the CLI raises it) before its end
    interrupted: KeyboardInterrupt | None = None


class Recorder:
    """Appends rows to ``store`` and counts them in ``summary``."""

    def __init__(
        self,
        store: ResultTable,
        summary: RunSummary,
        run_kind: str,
        on_row: Callable[[Lane, dict[str, Any]], None] | None = None,
        redo_reasons: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.summary = summary
        self.run_kind = run_kind
        self.on_row = on_row
        self.redo_reasons = redo_reasons or {}  # item_id -> why its ok row was not trusted

    def record(self, lane: Lane, row: dict[str, Any]) -> None:
        """Append ``row``, with why its item is done again when it had an ok row (every
        attempt's row passes here, from a worker or made by the driver)."""
        if (reason := self.redo_reasons.get(row["item_id"])) is not None:
            row["redo_reason"] = reason
        if row.get("device_seconds") is not None:
            kind = row.get("device_type") or "unknown"
            self.summary.busy[kind] = self.summary.busy.get(kind, 0.0) + row["device_seconds"]
        self.store.append([row])
        if self.on_row is not None:
            self.on_row(lane, row)

    def settle(
        self, lane: Lane, item: WorkItem, attempt: int, row: dict[str, Any], decision: Decision
    ) -> None:
        """Record attempt ``attempt`` at ``item`` with the status ``decision`` gives it."""
        row["status"] = decision.action.value
        if decision.gave_up:
            row["error"] = f"gave up after {attempt} attempts: {row['error']}"
        self.record(lane, row)
        if decision.action is Action.OK:
            self.summary.rendered += 1
        elif decision.action is Action.RETRY:
            self.summary.retried += 1
        else:
            self.summary.failed.append((item, row["error"]))

    def fail_queue(self, lane: Lane, message: str) -> None:
        """Every item still queued or waiting in ``lane`` fails with ``message`` (no worker
        left for them)."""
        items = [*lane.queue, *((item, 1) for item in lane.waiting.values())]
        lane.clear()
        self.fail(lane, items, message)

    def fail(self, lane: Lane, items: list[tuple[WorkItem, int]], message: str) -> None:
        """Each (item, attempt) of ``items``, not handed out, fails with ``message``."""
        for item, attempt in items:
            self.record(lane, make_row(item, "failed", attempt, error=message, run_kind=self.run_kind))
            self.summary.failed.append((item, message))
