"""The result table's columns, defined once: name, Arrow type and meaning.

Three groups, each defined where its values come from: the run and the work item (here),
the synthesis statistics (the fields of ``SynthesisStats``, with their meanings), and the
worker's attempt (here). The Parquet schema, the docs' schema page, the columns that
reports and fits read, and the rows themselves all derive from ``COLUMNS``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from nst_engine import __version__
from nst_engine.engine.stats import SynthesisStats
from nst_engine.planning.items import WorkItem
from nst_engine.storage.uris import redact

STATUSES = ("ok", "failed", "skipped", "retried")

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()
_UTC = pa.timestamp("us", tz="UTC")
#: Python types of ``SynthesisStats`` fields -> Arrow types.
_ARROW_TYPES: dict[Any, pa.DataType] = {
    int: _i64,
    float: _f64,
    float | None: _f64,
    str: _str,
    list[float]: pa.list_(_f64),
    list[str]: pa.list_(_str),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    meaning: str


RUN_COLUMNS = (
    Column("item_id", _str, "content-addressed id of the work (image contents + output-changing parameters)"),
    Column("manifest_name", _str, "name of the manifest"),
    Column("run_kind", _str, "render, or bench for scaling runs"),
    Column(
        "status",
        _str,
        "ok, failed or retried (attempt lost, item retried); tables from before runs.parquet "
        "also hold skipped rows",
    ),
    Column("error", _str, "why the attempt failed, else null"),
    Column(
        "redo_reason",
        _str,
        "why an item with an ok row was rendered again: its image was missing or failed "
        "verification (e.g. image is 0 bytes, image does not decode); null for a first render",
    ),
    Column("attempt", _i64, "1 for the first attempt of an item in this run"),
)
ITEM_COLUMNS = (
    Column("content_path", _str, "content image path or URI"),
    Column(
        "content_hash",
        _str,
        "sha256 of the content file (a video frame: of its clip's digest and its index)",
    ),
    Column("style_name", _str, "style name from the manifest"),
    Column("style_paths", pa.list_(_str), "style image paths or URIs"),
    Column("style_hashes", pa.list_(_str), "sha256 of each style file"),
    Column("style_weights", pa.list_(_f64), "blend weight of each style image"),
    Column("output_path", _str, "where the image is written, relative to the output root"),
    Column("size", _i64, "requested longer side in pixels"),
    Column("params_json", _str, "all engine parameters as JSON"),
    Column("ratio", _f64, "alpha/beta"),
    Column("iterations_requested", _i64, "iterations asked for"),
    Column("optimizer", _str, "lbfgs or adam"),
    Column("pooling", _str, "avg or max"),
    Column("init", _str, "start image"),
    Column("seed", _i64, "noise seed"),
    Column("precision", _str, "fp32, tf32 or bf16"),
    Column("frame", _i64, "a video frame's 0-based index in its clip (content_path); null for an image"),
    Column(
        "shot",
        _i64,
        "a video frame's 0-based shot in its clip: a chain of frames, each started from the one "
        "before; null for an image",
    ),
)
ATTEMPT_COLUMNS = (
    Column("queue_wait_seconds", _f64, "from the run's start until a worker took the item"),
    Column("total_seconds", _f64, "worker time for the attempt: engine_seconds plus writing the image"),
    Column(
        "device_seconds",
        _f64,
        "device-seconds the attempt used: its worker's devices (GPUs, or CPU cores for a CPU "
        "worker) times its time, shared with the syntheses that ran beside it (what prices apply to)",
    ),
    Column(
        "output_bytes",
        _i64,
        "size of the PNG written (ok rows; attempt 0: of the image found); a rerun trusts an "
        "image whose listed size equals it",
    ),
    Column("output_sha256", _str, "sha256 of the PNG bytes written, checked when the image is read"),
    Column(
        "flow_seconds",
        _f64,
        "a video frame after its shot's first: seconds of optical flow (both directions and the "
        "consistency check) between its content frame and the one before",
    ),
    Column("node_id", _str, "Ray node id"),
    Column("actor_id", _str, "Ray actor id"),
    Column("hostname", _str, "worker host name"),
    Column("torch_version", _str, "torch version on the worker"),
    Column("ray_version", _str, "Ray version on the worker"),
    Column("nst_version", _str, "nst-engine version on the worker"),
    Column("started_at", _UTC, "attempt start (UTC)"),
    Column("finished_at", _UTC, "attempt end (UTC)"),
)


def _stats_columns() -> tuple[Column, ...]:
    hints = typing.get_type_hints(SynthesisStats)
    return tuple(
        Column(f.name, _ARROW_TYPES[hints[f.name]], f.metadata["meaning"])
        for f in dataclasses.fields(SynthesisStats)
    )


STATS_COLUMNS = _stats_columns()
COLUMNS: tuple[Column, ...] = (*RUN_COLUMNS, *ITEM_COLUMNS, *STATS_COLUMNS, *ATTEMPT_COLUMNS)
SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COLUMNS])
_ATTEMPT_NAMES = frozenset(c.name for c in ATTEMPT_COLUMNS)


def columns(*names: str) -> list[str]:
    """``names`` checked against the schema, for readers that ask for some columns."""
    unknown = [n for n in names if n not in SCHEMA.names]
    if unknown:
        raise KeyError(f"not result columns: {', '.join(unknown)}")
    return list(names)


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as a table of the result schema; a key that is no column is a bug, not data to drop."""
    rows = list(rows)
    names = set(SCHEMA.names)
    for row in rows:
        if not row.keys() <= names:
            raise KeyError(f"not result columns: {', '.join(sorted(row.keys() - names))}")
    return pa.Table.from_pylist([{n: row.get(n) for n in SCHEMA.names} for row in rows], schema=SCHEMA)


def make_row(
    item: WorkItem,
    status: str,
    attempt: int,
    *,
    stats: SynthesisStats | None = None,
    error: str | None = None,
    run_kind: str = "render",
    **attempt_columns: Any,
) -> dict[str, Any]:
    """One row for an attempt at ``item``: run and item columns, the synthesis statistics
    when it produced any, and ``attempt_columns`` (node_id, timestamps, ...) from the worker.
    Its locations pass through ``redact``: planning refuses a location with a credential,
    and a row, kept for good, is no place to find out that one got past."""
    unknown = set(attempt_columns) - _ATTEMPT_NAMES
    if unknown:
        raise KeyError(f"not attempt columns: {', '.join(sorted(unknown))}")
    config = item.config
    row: dict[str, Any] = {
        "item_id": item.item_id,
        "manifest_name": item.manifest_name,
        "run_kind": run_kind,
        "status": status,
        "error": error,
        "attempt": attempt,
        "content_path": redact(item.content_path),
        "content_hash": item.content_hash,
        "style_name": item.style_name,
        "style_paths": [redact(path) for path in item.style_paths],
        "style_hashes": list(item.style_hashes),
        "style_weights": list(item.style_weights),
        "output_path": item.output_path,
        "size": item.size,
        "params_json": redact(json.dumps(config.to_params(), sort_keys=True)),  # init may be a URI
        "ratio": config.ratio,
        "iterations_requested": config.iterations,
        "optimizer": str(config.optimizer),
        "pooling": str(config.pooling),
        "init": redact(config.init),
        "seed": config.seed,
        "precision": str(config.precision),
        "frame": item.frame.index if item.frame is not None else None,
        "shot": item.frame.shot if item.frame is not None else None,
        "nst_version": __version__,
    }
    row.update(stats.to_dict() if stats is not None else {"pixels": item.pixels_estimate})
    row.update(attempt_columns)
    return row
