"""The result table: one Parquet row per item attempt.

Rows are written as they complete, each as its own small part file under
``results.parts/`` (so a crash loses no completed row), and compacted into
``results.parquet`` at the end of a run. Both are plain Parquet: pyarrow, pandas and
DuckDB read ``results.parquet`` directly (and ``results.parts/`` as a dataset).
"""

from __future__ import annotations

import io
import json
import statistics
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nst_engine import __version__
from nst_engine.engine.stats import SynthesisStats
from nst_engine.planning.items import WorkItem
from nst_engine.planning.storage import OutputRoot

RESULTS_FILE = "results.parquet"
PARTS_DIR = "results.parts"
STATUSES = ("ok", "failed", "skipped", "retried")

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()

#: Column name, type, meaning (the README's schema table is generated from this).
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("item_id", _str, "content-addressed id of the work (image contents + output-changing parameters)"),
    ("manifest_name", _str, "name of the manifest"),
    ("run_kind", _str, "render, or bench for scaling runs"),
    ("status", _str, "ok, failed, skipped (already done) or retried (attempt lost, item retried)"),
    ("error", _str, "why the attempt failed, else null"),
    ("attempt", _i64, "1 for the first attempt of an item in this run"),
    ("content_path", _str, "content image path"),
    ("content_hash", _str, "sha256 of the content file"),
    ("style_name", _str, "style name from the manifest"),
    ("style_paths", pa.list_(_str), "style image paths"),
    ("style_hashes", pa.list_(_str), "sha256 of each style file"),
    ("style_weights", pa.list_(_f64), "blend weight of each style image"),
    ("output_path", _str, "where the image was written"),
    ("size", _i64, "requested longer side in pixels"),
    ("height", _i64, "output height in pixels"),
    ("width", _i64, "output width in pixels"),
    ("pixels", _i64, "height × width (estimated from the content's aspect ratio for failed items)"),
    ("params_json", _str, "all engine parameters as JSON"),
    ("ratio", _f64, "alpha/beta"),
    ("iterations_requested", _i64, "iterations asked for"),
    ("optimizer", _str, "lbfgs or adam"),
    ("pooling", _str, "avg or max"),
    ("init", _str, "start image"),
    ("seed", _i64, "noise seed"),
    ("precision", _str, "fp32, tf32 or bf16"),
    ("iterations", _i64, "iterations run"),
    ("loss_evaluations", _i64, "loss evaluations (>= iterations + 1 with L-BFGS)"),
    ("stop_reason", _str, "iterations, converged, no_progress, diverged or cancelled"),
    ("final_content_loss", _f64, "content loss of the output"),
    ("final_style_loss", _f64, "style loss of the output"),
    ("final_total_loss", _f64, "total loss of the output"),
    ("iteration_seconds", pa.list_(_f64), "wall time of each iteration"),
    ("total_losses", pa.list_(_f64), "loss curve: total loss at the start of each iteration"),
    ("content_losses", pa.list_(_f64), "content loss at the start of each iteration"),
    ("style_losses", pa.list_(_f64), "style loss at the start of each iteration"),
    ("warmup_iterations", _i64, "iterations left out of the per-iteration statistics"),
    ("seconds_per_iteration", _f64, "median of iteration_seconds after the warm-up iterations"),
    ("seconds_per_iteration_p25", _f64, "25th percentile of iteration_seconds after warm-up"),
    ("seconds_per_iteration_p75", _f64, "75th percentile of iteration_seconds after warm-up"),
    ("setup_seconds", _f64, "weights load (first item of a worker) + target extraction"),
    ("synthesis_seconds", _f64, "optimisation time"),
    ("queue_wait_seconds", _f64, "from the run's start until a worker took the item"),
    ("total_seconds", _f64, "worker time for the item: decode, setup, synthesis, write"),
    ("device", _str, "torch device, e.g. cuda:0 or cpu"),
    ("device_type", _str, "cuda or cpu"),
    ("device_name", _str, "GPU or CPU model"),
    ("peak_memory_bytes", _i64, "CUDA peak allocated (GPU) or peak RSS during the item (CPU)"),
    ("peak_memory_kind", _str, "cuda_peak_allocated or cpu_peak_rss"),
    ("device_memory_bytes", _i64, "total memory of the GPU, or RAM of the machine for CPU"),
    ("weights_source", _str, "where the VGG-19 weights came from"),
    ("node_id", _str, "Ray node id"),
    ("actor_id", _str, "Ray actor id"),
    ("hostname", _str, "worker host name"),
    ("torch_version", _str, "torch version on the worker"),
    ("ray_version", _str, "Ray version on the worker"),
    ("nst_version", _str, "nst-engine version on the worker"),
    ("started_at", pa.timestamp("us", tz="UTC"), "attempt start (UTC)"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "attempt end (UTC)"),
]
SCHEMA = pa.schema([pa.field(name, kind) for name, kind, _ in COLUMNS])


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = [{name: row.get(name) for name in SCHEMA.names} for row in rows]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class ResultStore:
    """Appends rows as part files under an output root and compacts them."""

    def __init__(self, root: OutputRoot) -> None:
        self.root = root

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` now, atomically, as one part file."""
        if not rows:
            return
        buffer = io.BytesIO()
        pq.write_table(to_table(rows), buffer)
        name = f"{PARTS_DIR}/part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        self.root.write_bytes(name, buffer.getvalue())

    def _part_files(self) -> list[str]:
        return self.root.list_files(PARTS_DIR, ".parquet")

    def read(self, parts: list[str] | None = None) -> pa.Table:
        """All rows: the compacted file plus parts left by running or killed runs."""
        tables = []
        if self.root.exists(RESULTS_FILE):
            tables.append(pq.read_table(io.BytesIO(self.root.read_bytes(RESULTS_FILE))))
        for part in self._part_files() if parts is None else parts:
            tables.append(pq.read_table(io.BytesIO(self.root.read_bytes(part))))
        if not tables:
            return SCHEMA.empty_table()
        return pa.concat_tables([t.select(SCHEMA.names).cast(SCHEMA) for t in tables])

    def completed(self) -> dict[str, str]:
        """item_id -> output path of every item with an ok row."""
        table = self.read()
        if table.num_rows == 0:
            return {}
        ok = table.filter(pa.compute.equal(table["status"], "ok"))
        return dict(zip(ok["item_id"].to_pylist(), ok["output_path"].to_pylist(), strict=True))

    def compact(self) -> int:
        """Merge parts into results.parquet (atomically), then delete the merged parts."""
        parts = self._part_files()
        if not parts:
            return 0
        table = self.read(parts)  # exactly the parts deleted below, even if more arrive
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.root.write_bytes(RESULTS_FILE, buffer.getvalue())
        for part in parts:
            self.root.delete(part)
        return len(parts)


def iteration_quartiles(seconds: list[float], warmup: int) -> dict[str, float | None]:
    """Median and quartiles of per-iteration times after ``warmup`` (at least one kept)."""
    kept = sorted(seconds[min(warmup, max(len(seconds) - 1, 0)) :])
    if not kept:
        return {
            "seconds_per_iteration": None,
            "seconds_per_iteration_p25": None,
            "seconds_per_iteration_p75": None,
        }
    quartiles = statistics.quantiles(kept, n=4, method="inclusive") if len(kept) > 1 else [kept[0]] * 3
    return {
        "seconds_per_iteration": statistics.median(kept),
        "seconds_per_iteration_p25": quartiles[0],
        "seconds_per_iteration_p75": quartiles[2],
    }


def make_row(
    item: WorkItem,
    status: str,
    attempt: int,
    *,
    stats: SynthesisStats | None = None,
    error: str | None = None,
    run_kind: str = "render",
    warmup: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One row for ``item``; ``extra`` fills worker columns (node_id, timestamps, ...)."""
    config = item.config
    row: dict[str, Any] = {
        "item_id": item.item_id,
        "manifest_name": item.manifest_name,
        "run_kind": run_kind,
        "status": status,
        "error": error,
        "attempt": attempt,
        "content_path": item.content_path,
        "content_hash": item.content_hash,
        "style_name": item.style_name,
        "style_paths": list(item.style_paths),
        "style_hashes": list(item.style_hashes),
        "style_weights": list(item.style_weights),
        "output_path": item.output_path,
        "size": item.size,
        "params_json": json.dumps(config.to_params(), sort_keys=True),
        "ratio": config.ratio,
        "iterations_requested": config.iterations,
        "optimizer": config.optimizer,
        "pooling": config.pooling,
        "init": config.init,
        "seed": config.seed,
        "precision": config.precision,
        "nst_version": __version__,
    }
    if stats is None:
        row["pixels"] = item.pixels_estimate
    else:
        row.update(
            height=stats.height,
            width=stats.width,
            pixels=stats.pixels,
            iterations=stats.iterations,
            loss_evaluations=stats.loss_evaluations,
            stop_reason=stats.stop_reason,
            final_content_loss=stats.final_content_loss,
            final_style_loss=stats.final_style_loss,
            final_total_loss=stats.final_total_loss,
            iteration_seconds=stats.iteration_seconds,
            total_losses=stats.total_losses,
            content_losses=stats.content_losses,
            style_losses=stats.style_losses,
            warmup_iterations=min(warmup, max(stats.iterations - 1, 0)),
            **iteration_quartiles(stats.iteration_seconds, warmup),
            setup_seconds=stats.setup_seconds,
            synthesis_seconds=stats.synthesis_seconds,
            device=stats.device,
            device_type=stats.device_type,
            device_name=stats.device_name,
            peak_memory_bytes=stats.peak_memory_bytes,
            peak_memory_kind=stats.peak_memory_kind,
            device_memory_bytes=stats.device_memory_bytes,
            weights_source=stats.weights_source,
            torch_version=stats.torch_version,
        )
    row.update(extra)
    return row
