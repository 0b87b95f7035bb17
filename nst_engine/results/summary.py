"""A result file's summary, per run, in its Parquet footer: what ``nst status`` reads
instead of the rows.

Every file of the result table (each part as flushed, each merged file) carries the
counts of its rows in its key-value metadata (``nst:summary``, JSON), keyed by the run
that wrote them; a merged file carries the sum of its sources'. So the status of a render
costs one footer per file (``O(parts written)``), never a read of its rows. A file written
before summaries existed is summarised from just the columns below, its rows attributed
to runs by their finish time (``legacy_summary``).

Kept small, since it is read for every file: at most ``TOP_ERRORS`` failure reasons (the
rest counted as ``other``), ``MAX_NAMES`` node ids and host names, the ok items of the
last ``MINUTES_KEPT`` minutes of each run, and the frames of at most ``MAX_CLIPS`` clips
as ranges of frame indices per shot (a shot's chain finishes in order: mostly one range).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: Parquet metadata key of a result file's summary.
SUMMARY_KEY = b"nst:summary"
#: The columns a summary is made from.
SUMMARY_COLUMNS = (
    "status",
    "attempt",
    "error",
    "device_type",
    "device_name",
    "node_id",
    "hostname",
    "total_seconds",
    "device_seconds",
    "finished_at",
    "output_path",
    "frame",
    "shot",
)
#: Failure reasons kept by count (the rest add up in ``other_errors``) ...
TOP_ERRORS = 20
#: ... each cut to this many characters.
ERROR_CHARS = 120
#: Distinct node ids and host names kept per run (a cap, not a sample).
MAX_NAMES = 1000
#: A node id is kept by its first this many hex digits (48 bits: enough to count a
#: cluster's nodes apart; a whole Ray id is 56), so a footer of 1,000 nodes stays small.
NODE_ID_CHARS = 12
#: Minutes of ok items kept per run, the latest ones: enough for a throughput.
MINUTES_KEPT = 60
#: Stylized clips (frames folders) kept per run, the first by name (a cap, not a sample) ...
MAX_CLIPS = 100
#: ... and ranges of ok frames kept per shot (more only after failures out of order).
MAX_RANGES = 50

#: One clip's frames in a run: shot -> sorted disjoint [first, last] ranges of ok frame
#: indices, and the failed attempts; JSON as it is (shots' keys become strings).
Ranges = list[list[int]]


@dataclass
class ClipRows:
    """The frame rows of one stylized clip (its frames folder), in one or more files."""

    shots: dict[int, Ranges] = field(default_factory=dict)
    failed: int = 0

    @property
    def done(self) -> int:
        """Distinct frames with an ok row."""
        return sum(shot_done(r) for r in self.shots.values())

    def merged(self, other: ClipRows) -> ClipRows:
        keys = sorted(set(self.shots) | set(other.shots))
        shots = {k: _ranges(self.shots.get(k, []) + other.shots.get(k, [])) for k in keys}
        return ClipRows(shots, self.failed + other.failed)


def shot_done(ranges: Ranges) -> int:
    """Frames in a shot's ``ranges``."""
    return sum(last - first + 1 for first, last in ranges)


def _ranges(ranges: Ranges) -> Ranges:
    """``ranges`` sorted and joined where they touch or overlap, the first ``MAX_RANGES``."""
    joined: Ranges = []
    for first, last in sorted(ranges):
        if joined and first <= joined[-1][1] + 1:
            joined[-1][1] = max(joined[-1][1], last)
        else:
            joined.append([first, last])
    return joined[:MAX_RANGES]


def _clips(a: dict[str, ClipRows], b: dict[str, ClipRows]) -> dict[str, ClipRows]:
    """Both runs' clips, merged, the first ``MAX_CLIPS`` by name."""
    names = sorted(set(a) | set(b))[:MAX_CLIPS]
    return {n: a[n].merged(b[n]) if n in a and n in b else a.get(n) or b[n] for n in names}


def merged_clips(runs: Iterable[RunRows]) -> dict[str, ClipRows]:
    """The clips of all ``runs``: what is done whichever run did it."""
    total: dict[str, ClipRows] = {}
    for rows in runs:
        total = _clips(total, rows.clips)
    return total


@dataclass
class RunRows:
    """The rows of one run in one or more files."""

    statuses: dict[str, int] = field(default_factory=dict)  # rendered rows only (attempt >= 1)
    recorded: int = 0  # ok rows of attempt 0: done before the run, counted in its ``skipped``
    errors: dict[str, int] = field(default_factory=dict)
    other_errors: int = 0
    devices: dict[str, int] = field(default_factory=dict)  # "device_name (device_type)" -> ok items
    nodes: list[str] = field(default_factory=list)  # node ids, their first NODE_ID_CHARS
    hosts: list[str] = field(default_factory=list)
    worker_seconds: float = 0.0  # sum of total_seconds
    busy: dict[str, float] = field(default_factory=dict)  # device kind -> sum of device_seconds
    first_finished: float | None = None  # epoch seconds
    last_finished: float | None = None
    per_minute: dict[int, int] = field(default_factory=dict)  # epoch minute -> ok items
    clips: dict[str, ClipRows] = field(default_factory=dict)  # frames folder -> its frames

    def merged(self, other: RunRows) -> RunRows:
        """The rows of both (sums, unions, capped as a summary must be)."""
        errors = Counter(self.errors) + Counter(other.errors)
        kept = dict(errors.most_common(TOP_ERRORS))
        minutes = Counter(self.per_minute) + Counter(other.per_minute)
        return RunRows(
            statuses=dict(Counter(self.statuses) + Counter(other.statuses)),
            recorded=self.recorded + other.recorded,
            errors=kept,
            other_errors=self.other_errors + other.other_errors + sum(errors.values()) - sum(kept.values()),
            devices=dict(Counter(self.devices) + Counter(other.devices)),
            nodes=_union(self.nodes, other.nodes),
            hosts=_union(self.hosts, other.hosts),
            worker_seconds=self.worker_seconds + other.worker_seconds,
            busy=dict(Counter(self.busy) + Counter(other.busy)),
            first_finished=_extreme(min, self.first_finished, other.first_finished),
            last_finished=_extreme(max, self.last_finished, other.last_finished),
            per_minute={m: minutes[m] for m in sorted(minutes)[-MINUTES_KEPT:]},
            clips=_clips(self.clips, other.clips),
        )


@dataclass
class TableSummary:
    """The rows of a result file (or of several), by run id ("" for rows of no known run)."""

    runs: dict[str, RunRows] = field(default_factory=dict)

    @classmethod
    def of_rows(cls, table: pa.Table, run_id: str | None) -> TableSummary:
        """The summary of ``table`` (rows with at least ``SUMMARY_COLUMNS``), all of one run."""
        return cls({run_id or "": _run_rows(table)} if table.num_rows else {})

    def merged(self, other: TableSummary) -> TableSummary:
        runs = dict(self.runs)
        for run_id, rows in other.runs.items():
            runs[run_id] = runs[run_id].merged(rows) if run_id in runs else rows
        return TableSummary(runs)

    def to_json(self) -> bytes:
        return json.dumps({k: asdict(v) for k, v in self.runs.items()}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TableSummary:
        runs = {}
        for run_id, fields in json.loads(data).items():
            fields["per_minute"] = {int(m): n for m, n in fields.get("per_minute", {}).items()}
            fields["clips"] = {k: _clip_from_json(v) for k, v in fields.get("clips", {}).items()}
            # a field of another version is left out (or defaults): a summary is never refused
            runs[run_id] = RunRows(**{k: v for k, v in fields.items() if k in _FIELDS})
        return cls(runs)


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRows))


def _clip_from_json(data: dict[str, Any]) -> ClipRows:
    shots = {int(shot): ranges for shot, ranges in data.get("shots", {}).items()}
    return ClipRows(shots, data.get("failed", 0))


def summed(summaries: Iterable[TableSummary]) -> TableSummary:
    total = TableSummary()
    for summary in summaries:
        total = total.merged(summary)
    return total


def legacy_summary(table: pa.Table, runs: Sequence[tuple[datetime, str]]) -> TableSummary:
    """The summary of rows written before summaries existed: each row belongs to the
    latest of ``runs`` (start time, id) that started before it finished; a row with no
    finish time (a bad input's) to the latest run."""
    starts = sorted(runs)
    if not starts or not table.num_rows:
        return TableSummary.of_rows(table, None)
    finished = table.column("finished_at").to_pylist()
    owners = [_owner(starts, when) for when in finished]
    owner_column = pa.array(owners)
    return summed(
        TableSummary.of_rows(table.filter(pc.equal(owner_column, run_id)), run_id) for run_id in set(owners)
    )


def _owner(starts: list[tuple[datetime, str]], when: datetime | None) -> str:
    if when is None:
        return starts[-1][1]
    before = [run_id for started, run_id in starts if started <= when]
    return before[-1] if before else starts[0][1]


def _run_rows(table: pa.Table) -> RunRows:
    """One run's ``RunRows`` of ``table``."""
    data = table.select(list(SUMMARY_COLUMNS)).to_pydict()
    rows = RunRows()
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    minutes: Counter[int] = Counter()
    busy: Counter[str] = Counter()
    finished = []
    rows.clips = _clip_rows(data)
    for i, status in enumerate(data["status"]):
        if status == "ok" and data["attempt"][i] == 0:  # recorded from its image, not rendered
            rows.recorded += 1
            continue
        statuses[status] += 1
        rows.worker_seconds += data["total_seconds"][i] or 0.0
        if data["device_seconds"][i] is not None:
            busy[data["device_type"][i] or "unknown"] += data["device_seconds"][i]
        if status == "failed":
            errors[(data["error"][i] or "unknown")[:ERROR_CHARS]] += 1
        when = data["finished_at"][i]
        if when is not None:
            finished.append(when.timestamp())
        if status == "ok":
            devices[_device(data["device_name"][i], data["device_type"][i])] += 1
            if when is not None:
                minutes[int(when.timestamp() // 60)] += 1
    rows.statuses = dict(statuses)
    rows.errors = dict(errors.most_common(TOP_ERRORS))
    rows.other_errors = sum(errors.values()) - sum(rows.errors.values())
    rows.devices = dict(devices)
    rows.busy = dict(busy)
    rows.nodes = _union([n[:NODE_ID_CHARS] for n in data["node_id"] if n], [])
    rows.hosts = _union([h for h in data["hostname"] if h], [])
    rows.first_finished = min(finished) if finished else None
    rows.last_finished = max(finished) if finished else None
    rows.per_minute = {m: minutes[m] for m in sorted(minutes)[-MINUTES_KEPT:]}
    return rows


def _clip_rows(data: dict[str, list[Any]]) -> dict[str, ClipRows]:
    """The frame rows of ``data`` (a frame's folder is its clip's), ok ones as ranges per
    shot (recorded ones too: their frames are done), capped as ``_clips`` caps."""
    frames: dict[str, dict[int, Ranges]] = {}
    failed: Counter[str] = Counter()
    for i, index in enumerate(data["frame"]):
        if index is None or not data["output_path"][i]:
            continue
        folder = posixpath.dirname(data["output_path"][i])
        shots = frames.setdefault(folder, {})
        if data["status"][i] == "ok":
            shots.setdefault(data["shot"][i] or 0, []).append([index, index])
        elif data["status"][i] == "failed":
            failed[folder] += 1
    clips = {
        folder: ClipRows({k: _ranges(r) for k, r in sorted(shots.items())}, failed[folder])
        for folder, shots in frames.items()
    }
    return _clips(clips, {})


def _device(name: str | None, kind: str | None) -> str:
    return f"{name or 'unknown'} ({kind or 'unknown'})"


def _union(a: list[str], b: list[str]) -> list[str]:
    return sorted(set(a) | set(b))[:MAX_NAMES]


def _extreme(pick: Any, a: float | None, b: float | None) -> float | None:
    known = [x for x in (a, b) if x is not None]
    return pick(known) if known else None
