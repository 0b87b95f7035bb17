"""The result table: one Parquet row per item attempt, and the one way to read it.

Writing scales with the run, not with its items:

* **Buffered appends.** A run's store keeps rows in memory and writes them as one part
  file under ``results.parts/`` every ``flush_rows`` rows or once its oldest row is
  ``flush_seconds`` old, and when the run ends (also on an error or Ctrl-C). A part file
  is written atomically (temporary sibling, then rename).
* **Tiered compaction.** Parts carry a level in their name (``L0-…`` as flushed). When a
  level holds ``compact_at`` files, exactly those are merged into one file of the next
  level, streamed batch by batch (never the whole table in memory), so a 100k-item run
  keeps at most ``compact_at`` files per level and rewrites each row only a few times.
  At the end of a run every part and the old ``results.parquet`` are merged (streamed)
  into a new ``results.parquet``.
* **Crash safety.** A merged file names its sources in its Parquet metadata
  (``nst:merged``); readers ignore a part that a newer file already holds, so a crash
  between a merge and the deletion of its sources counts no row twice. Rows still in the
  buffer when the driver is killed are not lost for finished items: the worker writes
  the image (with ``nst:item_id`` in its PNG text) before it returns the row, and the
  next run finds an image with the item's id but no ok row and records it as ok from
  the image's metadata (``check_done``) instead of rendering it again.

What is done, and what a rerun trusts, is ``results.resume``.

All files are plain Parquet: pyarrow, pandas and DuckDB read ``results.parquet``
directly (and ``results.parts/`` as a dataset).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import posixpath
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from nst_engine.errors import NSTError, one_line
from nst_engine.results.schema import SCHEMA, columns, to_table
from nst_engine.results.summary import SUMMARY_COLUMNS, SUMMARY_KEY, TableSummary, legacy_summary
from nst_engine.storage.files import TMP_PREFIX
from nst_engine.storage.roots import OutputRoot
from nst_engine.storage.uris import redact

log = logging.getLogger(__name__)
RESULTS_FILE = "results.parquet"
PARTS_DIR = "results.parts"
#: What makes a Parquet file an nst result table (older tables may lack newer columns).
IDENTITY_COLUMNS = ("item_id", "status")
#: Parquet metadata key of a merged file: the names of the files merged into it.
MERGED_KEY = b"nst:merged"

#: A run's buffer: one part file per this many rows ...
FLUSH_ROWS = 1000
#: ... or once the oldest buffered row is this old (seconds), whichever comes first.
FLUSH_SECONDS = 10.0
#: Files of one level merged into one file of the next level.
COMPACT_AT = 64
#: Rows per row group of a merged file (bounds a merge's memory, good for readers).
ROW_GROUP_ROWS = 10_000

_LEVEL = re.compile(r"^L(\d+)-")


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
        raise ResultsError(redact(f"{location}: cannot read results there ({one_line(exc)})")) from None
    files = _unmerged(root, files)
    if not files:
        return SCHEMA.empty_table().select(names)
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


def _unmerged(root: OutputRoot, paths: list[str]) -> list[str]:
    """``paths`` checked as result tables, less the parts that a merged file among them
    already holds (left behind by a crash between a merge and its deletions)."""
    return list(_unmerged_footers(root, paths))


def _unmerged_footers(root: OutputRoot, paths: list[str]) -> dict[str, dict[bytes, bytes]]:
    """``_unmerged``'s files, each with its footer's key-value metadata (one read each)."""
    footers = {path: _footer(root, path) for path in paths}
    merged: set[str] = set()
    for metadata in footers.values():
        merged |= _sources_in(metadata)
    return {p: m for p, m in footers.items() if posixpath.basename(p) not in merged}


def result_footers(location: str | OutputRoot) -> dict[str, dict[bytes, bytes]]:
    """The footer metadata of every file that holds rows of the result table at
    ``location`` (an output root), read without a byte of the rows: what ``nst status``
    reads (``summary``)."""
    root = locate(location)
    try:
        files = _result_files(root, location if isinstance(location, str) else root.uri)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ResultsError(redact(f"{location}: cannot read results there ({one_line(exc)})")) from None
    return _unmerged_footers(root, files)


def files_summary(root: OutputRoot, footers: dict[str, dict[bytes, bytes]]) -> TableSummary:
    """The summed summary of the result files ``footers`` names (full path -> footer
    metadata): each footer's own, or, for a file written before summaries, one made from
    the columns it needs, its rows attributed to the runs of ``runs.parquet`` by time
    (read once, and only when there is such a file)."""
    total = TableSummary()
    starts: list[tuple[datetime, str]] | None = None
    for path, metadata in footers.items():
        if raw := metadata.get(SUMMARY_KEY):
            total = total.merged(TableSummary.from_json(raw))
            continue
        if starts is None:
            from nst_engine.results.runs import read_runs  # runs.py builds on this module

            starts = [(r["started_at"], r["run_id"]) for r in read_runs(root).to_pylist()]
        dataset = ds.dataset([path], schema=SCHEMA, format="parquet", filesystem=root.filesystem)
        total = total.merged(legacy_summary(dataset.to_table(columns=list(SUMMARY_COLUMNS)), starts))
    return total


def _merged_sources(root: OutputRoot, path: str) -> set[str]:
    """Names of the files merged into ``path``; raises when ``path`` is no result table."""
    return _sources_in(_footer(root, path))


def _sources_in(metadata: dict[bytes, bytes]) -> set[str]:
    raw = metadata.get(MERGED_KEY)
    return set(json.loads(raw)) if raw else set()


def _footer(root: OutputRoot, path: str) -> dict[bytes, bytes]:
    """The key-value metadata of result file ``path``; raises when ``path`` is no result
    table (say so rather than reading it as rows of nulls)."""
    shown = root.display_full(path)
    try:
        schema = pq.read_schema(path, filesystem=root.filesystem)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ResultsError(f"{shown}: not a Parquet file ({one_line(exc)}){_recovery(root, path)}") from None
    missing = [c for c in IDENTITY_COLUMNS if c not in schema.names]
    if missing:
        raise ResultsError(
            f"{shown}: not an nst results table: missing columns {', '.join(missing)}{_recovery(root, path)}"
        )
    return schema.metadata or {}


def _recovery(root: OutputRoot, path: str) -> str:
    """What to do about a damaged table file of an output root (its ``results.parquet`` or
    a part), as the end of its error; "" for any other file (one named by the user).

    Moving it aside loses no finished item: the next run reads the rows left, finds the
    images whose rows are gone and records them as ok from their PNG text
    (``results.resume``), rendering none again; the file moved keeps the old rows (their
    timings) for whoever wants them. Renamed to end in ``.damaged``, it is no table's any
    more (only ``*.parquet`` names are read)."""
    base = posixpath.dirname(root.full_path(RESULTS_FILE))
    relative = posixpath.relpath(path, base)
    if relative != RESULTS_FILE and posixpath.dirname(relative) != PARTS_DIR:
        return ""
    shown = root.display_full(path)
    move = f"mv {shlex.quote(shown)} {shlex.quote(shown + '.damaged')}" if root.is_local else None
    aside = f"({move})" if move else f"(rename it to {posixpath.basename(path)}.damaged)"
    return (
        f"; move it aside {aside} and run nst render again: it recovers every finished item "
        "from its image, rendering none again"
    )


def where_rows_are(root: OutputRoot) -> str:
    """Where ``root``'s result rows are now, for a summary: its ``results.parquet`` when
    that holds them all; else the root, with the part files that hold (some of) them
    (a run stopped before its final merge leaves them; the next run merges them) and how
    to read them. Never a file that does not exist."""
    folder = posixpath.dirname(root.display(RESULTS_FILE))
    try:
        merged = root.exists(RESULTS_FILE)
        parts = len(root.list_files(PARTS_DIR, ".parquet"))
    except (OSError, ValueError, pa.ArrowException):  # a summary line never fails a run
        return folder
    if not parts:
        return root.display(RESULTS_FILE) if merged else f"none yet in {folder}"
    held = f"{RESULTS_FILE} and " if merged else ""
    return (
        f"{folder} ({held}{parts} part file{'s' if parts > 1 else ''} in {PARTS_DIR}/, merged into "
        f"{RESULTS_FILE} by the next run; read_results({folder!r}) reads them all now)"
    )


def _level(name: str) -> int:
    """Compaction level of a part file (parts written before levels existed count as 0)."""
    match = _LEVEL.match(posixpath.basename(name))
    return int(match.group(1)) if match else 0


def _part_name(level: int) -> str:
    return f"{PARTS_DIR}/L{level}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


@contextlib.contextmanager
def _atomic_stream(root: OutputRoot, relative: str) -> Iterator[pa.NativeFile]:
    """An output stream whose file appears at ``relative`` only once it is complete: it is
    written under a ``.nst-tmp-`` sibling (removed by the next run if the writer dies) and
    renamed into place; on an error the temporary is deleted."""
    fs = root.filesystem
    target = root.full_path(relative)
    folder = posixpath.dirname(target)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(target)}")
    try:
        with fs.open_output_stream(tmp) as stream:
            yield stream
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def merge_files(root: OutputRoot, sources: Sequence[str], target: str) -> int:
    """Stream the rows of ``sources`` (paths relative to ``root``) into one new file
    ``target``, atomically, in row groups of ``ROW_GROUP_ROWS``; returns the rows written.

    Memory stays at about a row group whatever the size of the sources. The target's
    metadata names the sources that are parts, so that readers ignore any of them left
    behind if the caller dies before deleting them; its summary is the sum of the
    sources' (``summary``)."""
    paths = [root.full_path(s) for s in sources]
    dataset = ds.dataset(paths, schema=SCHEMA, format="parquet", filesystem=root.filesystem)
    parts = sorted(posixpath.basename(s) for s in sources if s.startswith(f"{PARTS_DIR}/"))
    summary = files_summary(root, {p: _footer(root, p) for p in paths})
    schema = SCHEMA.with_metadata({MERGED_KEY: json.dumps(parts).encode(), SUMMARY_KEY: summary.to_json()})
    rows = 0
    with _atomic_stream(root, target) as stream, pq.ParquetWriter(stream, schema) as writer:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in dataset.to_batches(batch_size=ROW_GROUP_ROWS):
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending, SCHEMA), row_group_size=ROW_GROUP_ROWS)
                rows += pending_rows
                pending, pending_rows = [], 0
        if pending_rows or rows == 0:  # an empty merge still writes a valid (empty) table
            writer.write_table(pa.Table.from_batches(pending, SCHEMA), row_group_size=ROW_GROUP_ROWS)
            rows += pending_rows
    return rows


class ResultTable:
    """Appends rows under an output root and compacts them.

    By default each ``append`` is written at once (what a small tool or a test wants);
    a run passes ``flush_rows`` / ``flush_seconds`` (``FLUSH_ROWS``, ``FLUSH_SECONDS``)
    to buffer, and must ``flush`` (or ``compact``) when it ends."""

    def __init__(
        self,
        root: OutputRoot,
        *,
        flush_rows: int = 1,
        flush_seconds: float = 0.0,
        compact_at: int = COMPACT_AT,
        guard: Callable[[], None] | None = None,
        run_id: str | None = None,
    ) -> None:
        if flush_rows < 1 or compact_at < 2:
            raise ValueError("flush_rows must be >= 1 and compact_at >= 2")
        self.root = root
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.compact_at = compact_at
        #: called before every write; raises when this run may no longer write the root
        #: (its lease was taken over, see ``storage.lease``)
        self.guard = guard or (lambda: None)
        #: the run whose rows these are, named in each file's summary (``summary``)
        self.run_id = run_id
        self._buffer: list[dict[str, Any]] = []
        self._oldest = 0.0  # time.monotonic() of the oldest buffered row
        self._cleaned = False  # leftovers of a crashed merge removed (see _parts)

    # ------------------------------------------------------------------ writing

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer ``rows``; write the buffer when it holds ``flush_rows`` rows or its
        oldest row is ``flush_seconds`` old (checked here, as rows arrive: a row that waits
        longer is covered by recovery from its image, see the module's docstring)."""
        rows = list(rows)
        if not rows:
            return
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer += rows
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._oldest >= self.flush_seconds:
            try:
                self.flush()
            except OSError as exc:  # a storage hiccup mid-run: keep the rows, try again later
                log.warning(
                    "results: could not write %d buffered rows yet (%s)", len(self._buffer), one_line(exc)
                )
                self._oldest = time.monotonic()

    @property
    def buffered(self) -> int:
        """Rows appended but not yet written."""
        return len(self._buffer)

    def flush(self) -> None:
        """Write the buffered rows as one atomic part file, then merge a full level."""
        if not self._buffer:
            return
        self.guard()
        table = to_table(self._buffer)
        summary = TableSummary.of_rows(table, self.run_id)
        table = table.replace_schema_metadata({SUMMARY_KEY: summary.to_json()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
        self.root.write_bytes(_part_name(0), buffer.getvalue())
        self._buffer = []
        try:
            self.compact_levels()
        except OSError as exc:  # the rows are written; merging is only an optimisation
            log.warning("results: incremental compaction failed (%s); the next run merges", one_line(exc))

    def compact_levels(self) -> int:
        """Merge each level that holds ``compact_at`` or more files into one file of the
        next level (exactly the files merged are deleted); returns how many were merged."""
        merged = 0
        level = 0
        while True:
            parts = self._parts()
            mine = [p for p in parts if _level(p) == level]
            if len(mine) >= self.compact_at:
                merged += self._merge(mine, _part_name(level + 1))
            elif not any(_level(p) > level for p in parts):
                return merged
            level += 1

    def compact(self) -> int:
        """Flush, then merge every part and results.parquet into a new results.parquet
        (streamed, atomic), then delete the merged parts; returns how many parts."""
        self.flush()
        parts = self._parts()
        if not parts:
            return 0
        sources = ([RESULTS_FILE] if self.root.exists(RESULTS_FILE) else []) + parts
        return self._merge(sources, RESULTS_FILE) - (1 if sources[0] == RESULTS_FILE else 0)

    def _parts(self) -> list[str]:
        """Part files. The first call of a store also deletes parts that a merged file
        already holds (a crash between a merge and its deletions left them), so they are
        never merged twice; later calls only list (this store deletes what it merges)."""
        parts = self.root.list_files(PARTS_DIR, ".parquet")
        if self._cleaned:
            return parts
        files = ([RESULTS_FILE] if self.root.exists(RESULTS_FILE) else []) + parts
        merged: set[str] = set()
        for name in files:
            merged |= _merged_sources(self.root, self.root.full_path(name))
        for name in parts:
            if posixpath.basename(name) in merged:
                self.root.delete(name)
        self._cleaned = True
        return [p for p in parts if posixpath.basename(p) not in merged]

    def _merge(self, sources: list[str], target: str) -> int:
        """Merge ``sources`` into ``target``, then delete the sources that are parts
        (exactly those listed, even if more arrive meanwhile); returns len(sources)."""
        self.guard()
        merge_files(self.root, sources, target)
        for name in sources:
            if name != target:
                self.root.delete(name)
        return len(sources)
