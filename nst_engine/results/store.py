"""The result table: one Parquet row per item attempt, and the one way to read it.

Rows are written as they complete, each batch as its own small part file under
``results.parts/`` (so a crash loses no completed row), and compacted into
``results.parquet`` at the end of a run. Both are plain Parquet: pyarrow, pandas and
DuckDB read ``results.parquet`` directly (and ``results.parts/`` as a dataset).
"""

from __future__ import annotations

import io
import posixpath
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from nst_engine.engine.errors import NSTError, one_line
from nst_engine.results.schema import SCHEMA, columns, to_table
from nst_engine.results.storage import OutputRoot

RESULTS_FILE = "results.parquet"
PARTS_DIR = "results.parts"
#: What makes a Parquet file an nst result table (older tables may lack newer columns).
IDENTITY_COLUMNS = ("item_id", "status")


class ResultsError(NSTError):
    """A results location that holds no readable nst result table."""


def locate(location: str | OutputRoot) -> OutputRoot:
    """The output root of a results location: the root itself (a folder or URI), or the
    folder of a ``.parquet`` file in it."""
    if isinstance(location, OutputRoot):
        return location
    text = str(location).rstrip("/")
    if text.endswith(".parquet"):
        text = posixpath.dirname(text) or "."
    return OutputRoot(text)


def read_results(
    location: str | OutputRoot,
    column_names: Sequence[str] | None = None,
    where: pc.Expression | None = None,
) -> pa.Table:
    """Rows of the result table at ``location`` (any pyarrow filesystem), with only
    ``column_names`` read (all by default) in their schema types; tables written before a
    column existed read it as null.

    ``location`` is an output root (its ``results.parquet`` plus the parts of running or
    killed runs; an empty table when there are none yet) or one ``.parquet`` file.
    """
    root = locate(location)
    names = columns(*column_names) if column_names is not None else SCHEMA.names
    try:
        files = _result_files(root, location if isinstance(location, str) else root.uri)
    except (OSError, ValueError, pa.ArrowException) as exc:  # unknown scheme, unreachable store
        raise ResultsError(f"{location}: cannot read results there ({one_line(exc)})") from None
    if not files:
        return SCHEMA.empty_table().select(names)
    for path in files:
        _check_identity(root, path)
    try:
        dataset = ds.dataset(files, schema=SCHEMA, format="parquet", filesystem=root.filesystem)
        return dataset.to_table(columns=names, filter=where)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ResultsError(
            f"{location}: a results file does not fit the result schema ({one_line(exc)})"
        ) from None


def _result_files(root: OutputRoot, location: str) -> list[str]:
    """Full paths of the result files at ``location`` (see ``read_results``)."""
    name = posixpath.basename(location.rstrip("/"))
    if name.endswith(".parquet"):
        if not root.exists(name):
            raise ResultsError(f"{location}: file not found")
        if name != RESULTS_FILE:
            return [root.full_path(name)]
    files = [RESULTS_FILE] if root.exists(RESULTS_FILE) else []
    return [root.full_path(f) for f in files + root.list_files(PARTS_DIR, ".parquet")]


def _check_identity(root: OutputRoot, path: str) -> None:
    """A file without the identity columns is not a result table: say so rather than
    reading it as rows of nulls."""
    shown = root.display_full(path)
    try:
        names = pq.read_schema(path, filesystem=root.filesystem).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise ResultsError(f"{shown}: not a Parquet file ({one_line(exc)})") from None
    missing = [c for c in IDENTITY_COLUMNS if c not in names]
    if missing:
        raise ResultsError(f"{shown}: not an nst results table: missing columns {', '.join(missing)}")


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

    def completed(self) -> dict[str, str]:
        """item_id -> output path of every item with an ok row (three columns read)."""
        ok = read_results(self.root, ["item_id", "output_path"], where=pc.field("status") == "ok")
        return dict(zip(ok["item_id"].to_pylist(), ok["output_path"].to_pylist(), strict=True))

    def compact(self) -> int:
        """Merge parts into results.parquet (atomically), then delete the merged parts."""
        parts = self.root.list_files(PARTS_DIR, ".parquet")
        if not parts:
            return 0
        files = ([RESULTS_FILE] if self.root.exists(RESULTS_FILE) else []) + parts
        # exactly the parts deleted below, even if more arrive meanwhile
        dataset = ds.dataset(
            [self.root.full_path(f) for f in files],
            schema=SCHEMA,
            format="parquet",
            filesystem=self.root.filesystem,
        )
        buffer = io.BytesIO()
        pq.write_table(dataset.to_table(), buffer)
        self.root.write_bytes(RESULTS_FILE, buffer.getvalue())
        for part in parts:
            self.root.delete(part)
        return len(parts)
