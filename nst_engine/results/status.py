"""Where a render stands, from its output root alone: ``nst status OUTPUT_ROOT``.

It reads the lease (is the driver alive?), ``runs.parquet`` (the latest run: its start,
items, and those done before it) and only the footers of the result files (their
``summary``), so it costs one small read per file written, works from any machine that
can read the root, and never reads a row. Counts are the latest run's, but for a
render with videos: a clip's frames done are any run's (from the footers' frame ranges),
and whether its mp4 exists is one more small read for each of the first ``CLIPS_CHECKED``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from nst_engine.errors import NSTError
from nst_engine.results.cost import parse_prices
from nst_engine.results.runs import RUNS_FILE, decode_excluded, read_runs
from nst_engine.results.summary import MAX_CLIPS, ClipRows, RunRows, merged_clips, shot_done
from nst_engine.results.table import files_summary, locate, result_footers
from nst_engine.storage.lease import read_holder
from nst_engine.storage.roots import OutputRoot

#: Clips whose encoded mp4 ``nst status`` looks for (one small read each); the rest are counted.
CLIPS_CHECKED = 10


@dataclass
class ClipStatus:
    """A stylized clip's frames done, by any run, from the footers: its clip's frame
    count is not in the rows, so no total; ``encoded`` (its mp4 exists, which it does once
    all its frames did) says it is complete, when checked (None: not checked)."""

    clip: str  # the stylized clip, relative to the output root
    frames_done: int
    failed: int  # failed attempts
    shots: dict[int, int]  # shot -> frames done
    encoded: bool | None


#: Throughput is over the last this many minutes that have ok rows (or since the start).
THROUGHPUT_MINUTES = 5


class NoRenderError(NSTError):
    """An output root where no render has been recorded."""


@dataclass
class RenderStatus:
    """The latest run of an output root: ``total`` = ``skipped`` + ``rendered`` +
    ``failed`` + ``to_go``."""

    output: str
    run_id: str
    manifest: str | None
    state: str  # running, died, finished or interrupted
    started_at: datetime
    finished_at: datetime | None
    total: int
    skipped: int  # done before this run (recovered ones included)
    rendered: int  # ok in this run
    failed: int
    retried: int
    to_go: int
    per_minute: float | None  # ok items per minute, recently
    eta_seconds: float | None
    worker_seconds: float  # the attempts' worker time (total_seconds)
    device_seconds: float  # the attempts' device-seconds (device_seconds), all kinds
    busy: dict[str, float]  # device kind -> the attempts' device-seconds
    prices: str | None  # the run's --price
    #: the attempts' device-seconds priced, while the run goes; once it ended, its bill
    #: (what its workers held, busy and idle); None without prices
    cost: float | None
    cost_basis: str  # "items" or "bill": which of the two ``cost`` is
    cost_per_item: float | None  # the attempts' cost per item rendered
    budget: str | None
    budget_left: int | None  # items it did not hand out, at its budget
    workers: int  # distinct Ray nodes seen
    hosts: list[str]
    devices: dict[str, int]  # device -> ok items
    failures: dict[str, int]  # reason -> items (``other`` for the rest)
    lease: str | None  # who holds the root now, or None
    files_read: int = 0  # footers read
    #: nodes the run stopped using (``runs.parquet``'s ``excluded_nodes``): node_id, hostname, reason
    excluded_nodes: list[dict[str, str]] = field(default_factory=list)
    #: stylized clips with a frame row, the first ``MAX_CLIPS`` by name (none for images)
    clips: list[ClipStatus] = field(default_factory=list)
    clips_capped: bool = False  # more clips than ``MAX_CLIPS``: the footers keep the first only

    @property
    def done(self) -> int:
        return self.skipped + self.rendered

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["done"] = self.done
        return data


def render_status(location: str | OutputRoot) -> RenderStatus:
    """The status of the latest render in ``location`` (a folder or URI)."""
    root = locate(location)
    runs = read_runs(root)
    if not runs.num_rows:
        raise NoRenderError(
            f"{root.uri}: no render recorded there (no {RUNS_FILE}); check the output root, "
            "or start one with nst render"
        )
    run = max(runs.to_pylist(), key=lambda r: r["started_at"])
    footers = result_footers(root)
    summary = files_summary(root, footers)
    rows = summary.runs.get(run["run_id"]) or RunRows()
    clips = merged_clips(summary.runs.values())
    holder = read_holder(root)
    # a driver on this machine killed (SIGKILL, OOM) is dead at once, not after STALE_SECONDS
    alive = holder is not None and not holder.stale() and not holder.gone()
    state = run["state"]
    if state == "running" and not alive:
        state = "died"
    rendered = rows.statuses.get("ok", 0)
    failed = rows.statuses.get("failed", 0)
    to_go = max(0, run["total"] - run["skipped"] - rendered - failed)
    rate = _per_minute(rows, run["started_at"].timestamp())
    failures = dict(rows.errors, **({"other": rows.other_errors} if rows.other_errors else {}))
    return RenderStatus(
        output=root.uri,
        run_id=run["run_id"],
        manifest=run["manifest_name"],
        state=state,
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        total=run["total"],
        skipped=run["skipped"],
        rendered=rendered,
        failed=failed,
        retried=rows.statuses.get("retried", 0),
        to_go=to_go,
        per_minute=rate,
        eta_seconds=to_go / rate * 60 if rate and state == "running" else None,
        worker_seconds=rows.worker_seconds,
        device_seconds=sum(rows.busy.values()),
        busy=rows.busy,
        **_cost(run, rows, rendered),
        workers=len(rows.nodes),
        hosts=rows.hosts,
        devices=rows.devices,
        failures=failures,
        lease=holder.describe() if alive and holder else None,
        files_read=len(footers),
        excluded_nodes=decode_excluded(run["excluded_nodes"]),
        clips=clip_statuses(root, clips),
        clips_capped=len(clips) >= MAX_CLIPS,
    )


def clip_statuses(root: OutputRoot, clips: dict[str, ClipRows]) -> list[ClipStatus]:
    """Each clip's frames done per shot; whether the mp4 exists for the first
    ``CLIPS_CHECKED`` (a read each)."""
    if not clips:
        return []
    from nst_engine.storage.video import clip_of_folder  # PyAV: only for a render with videos

    found = []
    for n, (folder, rows) in enumerate(clips.items()):
        clip = clip_of_folder(folder)
        encoded = root.exists(clip) if n < CLIPS_CHECKED else None
        shots = {shot: shot_done(ranges) for shot, ranges in rows.shots.items()}
        found.append(ClipStatus(clip, rows.done, rows.failed, shots, encoded))
    return found


def _cost(run: dict[str, Any], rows: RunRows, rendered: int) -> dict[str, Any]:
    """The cost fields of ``RenderStatus``, priced at the run's own ``--price``."""
    prices = parse_prices(run["prices"]) if run["prices"] else None
    items = prices.total(rows.busy) if prices else None
    billed = run["state"] != "running" and run["cost"] is not None
    return {
        "prices": run["prices"],
        "cost": run["cost"] if billed else items,
        "cost_basis": "bill" if billed else "items",
        "cost_per_item": items / rendered if items is not None and rendered else None,
        "budget": run["budget"],
        "budget_left": run["budget_left"],
    }


def _per_minute(rows: RunRows, started: float) -> float | None:
    """Ok items per minute over the last ``THROUGHPUT_MINUTES`` minutes with ok rows
    (from the run's start if that is shorter); None before the first."""
    if not rows.per_minute:
        return None
    last = max(rows.per_minute)
    first = max(last - THROUGHPUT_MINUTES + 1, math.floor(started / 60))
    items = sum(n for minute, n in rows.per_minute.items() if minute >= first)
    # the window ends with the last ok row, not at the end of its minute
    end = (rows.last_finished or time.time()) / 60
    return items / max(end - max(first, started / 60), 1 / 60)
