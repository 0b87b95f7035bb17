"""The rows a report shows, read from a result table on any filesystem.

Reports know the result schema, never Ray: they read a table written by any run, on
any machine, after the fact, through the one reader (``read_results``), asking only for
the columns they show. Loss curves (list columns) are read for the few plotted items only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from nst_engine.errors import NSTError, one_line
from nst_engine.reports.scaling import FIT_COLUMNS
from nst_engine.results.schema import STATUSES, columns
from nst_engine.results.table import ResultsError, locate, read_results
from nst_engine.storage.roots import OutputRoot

#: The columns the gallery, the tables and the plots show, and the fits need (loss
#: curves are read apart).
REPORT_COLUMNS = columns(
    *FIT_COLUMNS,
    "item_id",
    "attempt",
    "content_path",
    "style_name",
    "style_paths",
    "output_path",
    "size",
    "height",
    "width",
    "iterations",
    "iterations_requested",
    "stop_reason",
    "final_content_loss",
    "final_style_loss",
    "final_total_loss",
    "synthesis_seconds",
    "finished_at",
    "scale_schedule",
    "coarse_seconds",
    "tile",
    "tiles",
    "frame",
    "shot",
    "flow_seconds",
    "final_temporal_loss",
)
MAX_LOSS_CURVES = 8
EARLIEST = datetime.min.replace(tzinfo=UTC)


class ReportError(NSTError):
    """Input a report cannot be made from; the message names the location and says why."""


@dataclass
class Results:
    """The rows a report shows, as plain dicts."""

    location: str  # what the user named: an output root, its results.parquet, or a URI
    root: OutputRoot  # the output root: ``output_path`` is relative to it
    rows: list[dict[str, Any]]  # every attempt, REPORT_COLUMNS only
    latest_ok: list[dict[str, Any]]  # one row per item: its latest ok attempt
    ok_rows: list[dict[str, Any]]  # every ok attempt (each a timing measurement)
    failures: list[dict[str, Any]]  # every failed attempt
    counts: dict[str, int] = field(default_factory=dict)  # rows per status

    @property
    def source(self) -> str:
        return self.location


def load_results(location: str) -> Results:
    """The rows of the result table at ``location``: an output root (folder or URI such as
    ``file://`` or ``s3://``) or its ``results.parquet``."""
    rows = _read(location, REPORT_COLUMNS).to_pylist()
    if not rows:
        raise ReportError(
            f"{location}: no results.parquet (or results.parts/) here; run 'nst render' or "
            "'nst bench scaling' first, or give the output folder of one"
        )
    return pick_rows(rows, location)


def _read(location: str, names: list[str], where: pc.Expression | None = None) -> pa.Table:
    """``read_results`` with every way a location can fail as one ``ReportError``."""
    try:
        return read_results(location, names, where)
    except ResultsError as exc:
        raise ReportError(str(exc)) from None
    except (OSError, ValueError, pa.ArrowException) as exc:  # unknown scheme, unreachable store
        raise ReportError(f"{location}: cannot read the results ({one_line(exc)})") from None


def pick_rows(rows: list[dict[str, Any]], location: str) -> Results:
    """Pick the rows each part of the report shows (status counts, latest ok per item, failures)."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ok_rows = [r for r in rows if r["status"] == "ok"]
    latest: dict[str, dict[str, Any]] = {}
    for row in ok_rows:
        seen = latest.get(row["item_id"])
        if seen is None or when(row) >= when(seen):
            latest[row["item_id"]] = row
    gallery = sorted(
        latest.values(),
        key=lambda r: (r["content_path"] or "", r["style_name"] or "", r["size"] or 0, r.get("frame") or 0),
    )
    failures = sorted((r for r in rows if r["status"] == "failed"), key=when)
    return Results(location, locate(location), rows, gallery, ok_rows, failures, counts)


def when(row: dict[str, Any]) -> datetime:
    """When an attempt finished; rows without a time sort first."""
    return row["finished_at"] or EARLIEST


def loss_curve_rows(results: Results, limit: int = MAX_LOSS_CURVES) -> list[dict[str, Any]]:
    """Up to ``limit`` items worth a loss curve, the largest per device, then the most
    recent, each with its ``total_losses`` and ``iteration_seconds`` (read for these
    items only)."""
    chosen: dict[str, dict[str, Any]] = {}
    by_device: dict[str, list[dict[str, Any]]] = {}
    for row in results.latest_ok:
        by_device.setdefault(row["device_name"] or "unknown", []).append(row)
    for _device, rows in sorted(by_device.items()):
        largest = max(rows, key=lambda r: (r["pixels"] or 0, when(r)))
        chosen.setdefault(largest["item_id"], largest)
    for row in sorted(results.latest_ok, key=when, reverse=True):
        if len(chosen) >= limit:
            break
        chosen.setdefault(row["item_id"], row)
    picked = list(chosen.values())[:limit]
    if not picked:
        return []
    curves = _read(
        results.location,
        ["item_id", "status", "finished_at", "total_losses", "iteration_seconds"],
        where=pc.field("item_id").isin([r["item_id"] for r in picked]) & (pc.field("status") == "ok"),
    ).to_pylist()
    by_attempt = {(c["item_id"], c["finished_at"]): c for c in curves}
    empty = {"total_losses": [], "iteration_seconds": []}
    return [
        {**r, **{k: v or [] for k, v in by_attempt.get((r["item_id"], r["finished_at"]), empty).items()}}
        for r in picked
    ]
