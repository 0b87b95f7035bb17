"""The runs table: one row per render run, so that a rerun records itself without a row
per item.

``runs.parquet`` in the output root holds one row per run (written when the run starts,
with state ``running``, and rewritten when it ends), with the counts of its summary. A
run whose driver was killed keeps state ``running``. The file is small (a row per run),
so each write reads it, replaces the run's row and writes it back atomically.
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import typing
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nst_engine import __version__
from nst_engine.engine.stats import stat as run_field  # a field with its column's meaning
from nst_engine.errors import one_line
from nst_engine.results.schema import COLUMNS
from nst_engine.results.table import ResultsError, locate
from nst_engine.storage.roots import OutputRoot

RUNS_FILE = "runs.parquet"
_RESULT_MEANINGS = {c.name: c.meaning for c in COLUMNS}
#: States of a run: ``running`` until it ends (forever, if its driver was killed);
#: ``budget`` when it stopped handing out items at its ``--budget``.
RUN_STATES = ("running", "finished", "interrupted", "budget")


@dataclass
class RunRecord:
    """One run of ``nst render`` (or of ``run_render`` from Python): its columns, defined once."""

    run_id: str = run_field("unique id of the run")
    manifest_name: str | None = run_field("name of the manifest (null for a run with no items)")
    run_kind: str = run_field(_RESULT_MEANINGS["run_kind"])  # as in the result table
    state: str = run_field(
        "running, finished, interrupted (an error, Ctrl-C or SIGTERM) or budget (stopped at its --budget)"
    )
    started_at: datetime = run_field("run start (UTC)")
    finished_at: datetime | None = run_field("run end (UTC), null while running", default=None)
    total: int = run_field("items in the run", default=0)
    rendered: int = run_field("items rendered (ok) in this run", default=0)
    skipped: int = run_field("items already done (recovered ones included)", default=0)
    recovered: int = run_field(
        "items whose image was found without its row (driver killed) and recorded as ok", default=0
    )
    failed: int = run_field("items that failed in this run", default=0)
    retried: int = run_field("attempts lost or failed transiently and retried", default=0)
    workers: int = run_field("workers started", default=0)
    excluded_nodes: str | None = run_field(
        "nodes excluded for the run after repeated device faults or worker deaths: a JSON list "
        "of {node_id, hostname, reason}; null when none (written as each is excluded)",
        default=None,
    )
    wall_seconds: float | None = run_field("wall time of the run", default=None)
    prices: str | None = run_field("prices per device-hour (--price), e.g. cuda=2.5/h", default=None)
    budget: str | None = run_field("--budget: money (40) or device-hours (12h); null: none", default=None)
    budget_left: int | None = run_field(
        "items not handed out because the next would have passed the budget (null: not reached)", default=None
    )
    device_seconds_held: float | None = run_field(
        "device-seconds its workers held, busy or idle (GPUs, or CPU cores of CPU workers)", default=None
    )
    device_seconds_busy: float | None = run_field(
        "device-seconds of its attempts (the sum of the rows' device_seconds)", default=None
    )
    cost: float | None = run_field("device-seconds held, priced (null without prices)", default=None)
    bill: str | None = run_field(
        "JSON, per device kind: held_seconds, busy_seconds, price_per_hour, cost", default=None
    )
    hostname: str = run_field("host of the driver", default_factory=socket.gethostname)
    nst_version: str = run_field("nst-engine version of the driver", default=__version__)

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_UTC = pa.timestamp("us", tz="UTC")
_ARROW_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(),
    str | None: pa.string(),
    int: pa.int64(),
    int | None: pa.int64(),
    float | None: pa.float64(),
    datetime: _UTC,
    datetime | None: _UTC,
}
_HINTS = typing.get_type_hints(RunRecord)
RUNS_SCHEMA = pa.schema(
    [pa.field(f.name, _ARROW_TYPES[_HINTS[f.name]]) for f in dataclasses.fields(RunRecord)]
)


def read_runs(location: str | OutputRoot) -> pa.Table:
    """The runs table of an output root (or of the root of its ``results.parquet``);
    empty when no run has been recorded there."""
    root = locate(location)
    try:
        if not root.exists(RUNS_FILE):
            return RUNS_SCHEMA.empty_table()
        # by path on the root's filesystem, not from bytes in a Python buffer: a process
        # that had read it from bytes was seen to abort at exit under load ("terminate
        # called without an active exception", nst status beside a render)
        table = pq.read_table(root.full_path(RUNS_FILE), filesystem=root.filesystem)
        missing = [n for n in RUNS_SCHEMA.names if n not in table.column_names]
        for name in missing:  # a column added after the file was written reads as null
            table = table.append_column(
                RUNS_SCHEMA.field(name), pa.nulls(table.num_rows, RUNS_SCHEMA.field(name).type)
            )
        return table.select(RUNS_SCHEMA.names).cast(RUNS_SCHEMA)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ResultsError(
            f"{root.display(RUNS_FILE)}: cannot read the runs table ({one_line(exc)})"
        ) from None


def encode_excluded(nodes: list[Any]) -> str | None:
    """The ``excluded_nodes`` column of ``nodes`` (dataclasses or dicts with ``node_id``,
    ``hostname`` and ``reason``): JSON, or None when no node was excluded."""
    if not nodes:
        return None
    return json.dumps([n if isinstance(n, dict) else dataclasses.asdict(n) for n in nodes])


def decode_excluded(text: str | None) -> list[dict[str, str]]:
    """The nodes an ``excluded_nodes`` column names (none for null, a run from before it)."""
    return json.loads(text) if text else []


def new_run_id() -> str:
    """A new run's id: taken before the run writes rows, so that their files name it."""
    return uuid.uuid4().hex


class RunLog:
    """Records runs in an output root's ``runs.parquet``."""

    def __init__(self, root: OutputRoot) -> None:
        self.root = root

    def start(
        self,
        manifest_name: str | None,
        run_kind: str = "render",
        total: int = 0,
        *,
        run_id: str | None = None,
        skipped: int = 0,
        recovered: int = 0,
        **known: Any,
    ) -> RunRecord:
        """Record a run as ``running`` now (so a killed run leaves a trace) and return it.
        ``run_id`` is the id its result rows' summaries name (``new_run_id``); ``skipped``
        and ``recovered``, known before the run renders, let ``nst status`` count what is
        left of a run that is still going (or died); ``known``: other fields set from
        the start (its ``prices`` and ``budget``)."""
        record = RunRecord(
            run_id=run_id or new_run_id(),
            manifest_name=manifest_name,
            run_kind=run_kind,
            state="running",
            started_at=datetime.now(UTC),
            total=total,
            skipped=skipped,
            recovered=recovered,
            **known,
        )
        self.write(record)
        return record

    def finish(self, record: RunRecord, state: str = "finished", **counts: Any) -> RunRecord:
        """Record the end of ``record``'s run with its ``counts`` (fields of ``RunRecord``)."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        record = dataclasses.replace(record, state=state, finished_at=datetime.now(UTC), **counts)
        if record.wall_seconds is None:
            record.wall_seconds = (record.finished_at - record.started_at).total_seconds()
        self.write(record)
        return record

    def write(self, record: RunRecord) -> None:
        """Replace (or add) ``record``'s row, atomically."""
        runs = read_runs(self.root)
        runs = runs.filter(pc.field("run_id") != record.run_id)
        table = pa.concat_tables([runs, pa.Table.from_pylist([record.to_row()], schema=RUNS_SCHEMA)])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.root.write_bytes(RUNS_FILE, buffer.getvalue())
