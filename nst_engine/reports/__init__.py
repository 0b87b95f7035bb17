"""Reports over result tables: scaling fits, plots and the static HTML report.

Reports know the result schema (``nst_engine.results.store``), never Ray: they read a
results table written by any run, on any machine, after the fact. This module loads and
checks the table and picks the rows a report shows; ``html`` writes the pages and
``plots`` the figures. Heavy imports (matplotlib, PIL) stay inside ``build_report`` so
that importing ``nst_engine.reports.scaling`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from nst_engine.reports.scaling import DeviceFit

#: Columns every report reads; a table without them was not written by ``nst render``.
REQUIRED_COLUMNS = (
    "item_id",
    "status",
    "error",
    "attempt",
    "content_path",
    "style_name",
    "style_paths",
    "output_path",
    "size",
    "height",
    "width",
    "pixels",
    "iterations",
    "iterations_requested",
    "stop_reason",
    "final_content_loss",
    "final_style_loss",
    "final_total_loss",
    "total_losses",
    "seconds_per_iteration",
    "synthesis_seconds",
    "device_name",
    "device_type",
    "peak_memory_bytes",
    "finished_at",
)
#: The scalar columns the gallery and tables need (loss curves are fetched only for plotted rows).
ROW_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c != "total_losses")
MAX_LOSS_CURVES = 8
EARLIEST = datetime.min.replace(tzinfo=UTC)


class ReportError(Exception):
    """Input a report cannot be made from; the message names the file and says why."""


@dataclass
class Results:
    """A loaded results table plus the rows a report shows, as plain dicts."""

    source: Path  # the results.parquet (or the folder holding only parts)
    root: Path  # the output root: ``output_path`` is relative to it
    table: pa.Table  # every row, with the required columns in their schema types
    latest_ok: list[dict[str, Any]]  # one row per item: its latest ok attempt
    ok_rows: list[dict[str, Any]]  # every ok attempt (each a timing measurement)
    failures: list[dict[str, Any]]  # every failed attempt
    counts: dict[str, int] = field(default_factory=dict)  # rows per status


@dataclass
class ReportSummary:
    """What ``build_report`` wrote; the CLI prints it and tests check it."""

    index: Path
    items: int
    pages: int
    plots: list[str]
    thumbs_created: int
    thumbs_reused: int


def find_results(path: Path) -> tuple[Path, Path]:
    """(results.parquet or folder, output root) for a file or a folder holding one."""
    from nst_engine.results.store import PARTS_DIR, RESULTS_FILE

    if path.is_dir():
        if not (path / RESULTS_FILE).is_file() and not (path / PARTS_DIR).is_dir():
            raise ReportError(f"{path}: no {RESULTS_FILE} in this folder")
        return (path / RESULTS_FILE if (path / RESULTS_FILE).is_file() else path), path
    if not path.is_file():
        raise ReportError(f"{path}: file not found")
    return path, path.parent


def _read(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise ReportError(f"{path}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc}") from None


def _checked(table: pa.Table, path: Path) -> pa.Table:
    """``table`` with the required columns cast to their schema types, or a ReportError."""
    from nst_engine.results.store import SCHEMA

    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ReportError(f"{path}: not an nst results table: missing columns {shown}")
    for name in REQUIRED_COLUMNS:
        expected = SCHEMA.field(name).type
        column = table.column(name)
        if column.type != expected:
            try:
                column = column.cast(expected)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ReportError(
                    f"{path}: column {name} has type {column.type}, expected {expected}"
                ) from None
            table = table.set_column(table.column_names.index(name), name, column)
    return table


def load_results(path: Path) -> Results:
    """Read and check a results table (plus parts of a running or killed run beside it)."""
    from nst_engine.results.store import PARTS_DIR

    source, root = find_results(path)
    files = [source] if source.is_file() else []
    parts = root / PARTS_DIR
    if parts.is_dir():
        files += sorted(parts.glob("*.parquet"))
    tables = [_checked(_read(f), f) for f in files]
    if not tables:
        raise ReportError(f"{path}: no results in this folder")
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ReportError(f"{path}: parts do not share one schema: {exc}") from None
    return pick_rows(table, source, root)


def pick_rows(table: pa.Table, source: Path, root: Path) -> Results:
    """Pick the rows each part of the report shows (status counts, latest ok per item, failures)."""
    rows = table.select(list(ROW_COLUMNS)).to_pylist()
    for index, row in enumerate(rows):
        row["_row"] = index  # to fetch list columns (loss curves) for a few rows later
    counts = {status: 0 for status in ("ok", "failed", "skipped", "retried")}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ok_rows = [r for r in rows if r["status"] == "ok"]
    latest: dict[str, dict[str, Any]] = {}
    for row in ok_rows:
        seen = latest.get(row["item_id"])
        if seen is None or _when(row) >= _when(seen):
            latest[row["item_id"]] = row
    gallery = sorted(
        latest.values(), key=lambda r: (r["content_path"] or "", r["style_name"] or "", r["size"] or 0)
    )
    failures = sorted((r for r in rows if r["status"] == "failed"), key=_when)
    return Results(source, root, table, gallery, ok_rows, failures, counts)


def _when(row: dict[str, Any]) -> datetime:
    """When an attempt finished; rows without a time sort first."""
    return row["finished_at"] or EARLIEST


def loss_curve_rows(results: Results, limit: int = MAX_LOSS_CURVES) -> list[dict[str, Any]]:
    """Up to ``limit`` items worth a loss curve: the largest per device, then the most recent."""
    chosen: dict[str, dict[str, Any]] = {}
    by_device: dict[str, list[dict[str, Any]]] = {}
    for row in results.latest_ok:
        by_device.setdefault(row["device_name"] or "unknown", []).append(row)
    for _device, rows in sorted(by_device.items()):
        largest = max(rows, key=lambda r: (r["pixels"] or 0, _when(r)))
        chosen.setdefault(largest["item_id"], largest)
    for row in sorted(results.latest_ok, key=_when, reverse=True):
        if len(chosen) >= limit:
            break
        chosen.setdefault(row["item_id"], row)
    picked = list(chosen.values())[:limit]
    curves = results.table.column("total_losses").take([r["_row"] for r in picked]).to_pylist()
    return [{**row, "total_losses": curve or []} for row, curve in zip(picked, curves, strict=True)]


def device_fits(table: pa.Table) -> dict[str, DeviceFit]:
    """device_name -> scaling fit, when ``nst_engine.reports.scaling`` is there and can fit."""
    try:
        from nst_engine.reports.scaling import fit_devices
    except ImportError:
        return {}
    try:
        return {fit.device: fit for fit in fit_devices(table)}
    except ValueError:  # too few points to fit
        return {}


def format_fit(fit: DeviceFit) -> str:
    """The fit's k with its interval, as the scaling module writes it."""
    try:
        from nst_engine.reports.scaling import format_k
    except ImportError:
        return f"k = {fit.k:.2f} [{fit.k_low:.2f}, {fit.k_high:.2f}]"
    return format_k(fit)


def build_report(results_path: Path, out_dir: Path, page_size: int = 60) -> ReportSummary:
    """Write the static report for ``results_path`` into ``out_dir``; returns what it wrote."""
    from nst_engine.reports import html, plots

    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    results = load_results(results_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = device_fits(results.table)
    figures = plots.write_plots(results, fits, out_dir / plots.PLOTS_DIR)
    return html.write_pages(results, fits, figures, out_dir, page_size)
