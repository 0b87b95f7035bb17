"""What a render would do, before it starts: ``nst plan`` and the line ``nst render``
prints first.

The plan lives here, at the reports layer, because it puts together the three things
below it: the work items (planning), what the output root already holds (the result
store's ``check_done``, the same check a render makes) and the predicted time from
earlier runs' scaling fits (``reports.scaling``). It starts no Ray and writes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa

from nst_engine.engine.config import SynthesisConfig
from nst_engine.planning.items import WorkItem
from nst_engine.reports.scaling import FIT_COLUMNS, DeviceFit, fit_devices
from nst_engine.results.resume import DoneCheck, check_done, reason_kind
from nst_engine.results.table import ResultsError, ResultTable, read_results
from nst_engine.storage.errors import storage_problem


@dataclass(frozen=True)
class DevicePrediction:
    """Predicted synthesis time of a plan's items to render on one worker of a device,
    from that device's fit (set-up time not included, as in ``nst estimate``)."""

    device: str  # device_name: the GPU or CPU model
    device_type: str  # cuda or cpu
    seconds: float
    largest_square: int | None  # side of the largest square image that fits its memory
    sizes_too_large: list[int]  # sizes with an item predicted not to fit in memory, even tiled
    #: size -> tile side (the smallest over its items' aspect ratios), for sizes whose
    #: items will not fit whole and render in tiles
    sizes_tiled: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BadInput:
    item_id: str
    label: str
    error: str


@dataclass(frozen=True)
class VideoPlan:
    """The frames among a plan's items: ``clips`` source clips, stylized into ``outputs``
    clips (one per style and size), in ``shots`` chains of ``frames`` frames."""

    clips: int
    outputs: int
    shots: int  # over the stylized clips: a shot is rendered once per style and size
    frames: int
    done: int  # frames done or recovered
    to_render: int

    def text(self) -> str:
        """``2 clips (4 stylized), 7 shots, 420 frames (300 to render)``."""
        stylized = f" ({self.outputs} stylized)" if self.outputs != self.clips else ""
        return (
            f"{_count(self.clips, 'clip')}{stylized}, {_count(self.shots, 'shot')}, "
            f"{_count(self.frames, 'frame')} ({self.to_render} to render)"
        )


def video_plan(items: Sequence[WorkItem], check: DoneCheck) -> VideoPlan | None:
    """The ``VideoPlan`` of ``items`` split by ``check``; None when no item is a frame."""
    frames = [i.frame for i in items if i.frame is not None]
    if not frames:
        return None
    todo = sum(1 for i in check.todo if i.frame is not None and not i.input_error)
    done = sum(1 for i in (*check.done, *check.recovered) if i.frame is not None)
    return VideoPlan(
        clips=len({f.clip for f in frames}),
        outputs=len({f.clip_output for f in frames}),
        shots=len({(f.clip_output, f.shot) for f in frames}),
        frames=len(frames),
        done=done,
        to_render=todo,
    )


@dataclass
class RenderPlan:
    """Counts of a render to come: ``items`` = ``done`` + ``recoverable`` + ``to_render``
    + ``len(bad_inputs)``; ``redo`` of ``to_render`` had an ok row whose image is missing
    or failed verification (the rest are new)."""

    manifest: str
    output: str
    items: int
    styles: list[str]
    sizes: list[int]
    done: int  # an ok row and its verified image exist
    recoverable: int  # the image carries the item's id but its row was lost: recorded, not rendered
    to_render: int
    redo: int = 0
    redo_reasons: dict[str, int] = field(default_factory=dict)  # reason (no details) -> items
    verified: bool = False  # every done image was read (--verify-outputs), not trusted by size
    bad_inputs: list[BadInput] = field(default_factory=list)
    predictions: list[DevicePrediction] = field(default_factory=list)
    fits_from: list[str] = field(default_factory=list)  # the result tables the fits came from
    video: VideoPlan | None = None  # None when the manifest has no videos
    #: the split behind the counts, handed to ``run_render`` so a render checks only once
    check: DoneCheck | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The plan as one JSON object (``nst plan --json``); the check's item lists stay out."""
        data = asdict(replace(self, check=None))
        del data["check"]
        return data

    def warnings(self) -> list[str]:
        """One line per device for the sizes predicted to render in tiles, and one for
        those predicted not to fit in memory at all."""
        lines = []
        for p in self.predictions:
            if p.sizes_tiled:
                tiles = ", ".join(
                    f"{size} in {tile} px tiles" for size, tile in sorted(p.sizes_tiled.items())
                )
                lines.append(f"tiled on {p.device} (too large to fit whole): {tiles}")
            if p.sizes_too_large:
                sizes = ", ".join(str(s) for s in p.sizes_too_large)
                fits = f"; largest square that fits: {p.largest_square}²" if p.largest_square else ""
                lines.append(f"size {sizes} will not fit in the memory of {p.device}{fits}")
        return lines

    def one_line(self) -> str:
        """The plan in one line, as ``nst render`` prints it before it starts."""
        bad = len(self.bad_inputs)
        text = (
            f"plan: {self.items} items ({_count(len(self.styles), 'style')}, "
            f"{_count(len(self.sizes), 'size')}): {self.done} done, "
        )
        if self.recoverable:
            text += f"{self.recoverable} recovered from their images, "
        text += f"{self.to_render} to render"
        if self.redo:
            text += f" ({self.redo_text()})"
        text += f", {_count(bad, 'bad input')}"
        if self.video:
            text += f"; {self.video.text()}"
        if self.to_render and self.predictions:
            text += "; predicted " + ", ".join(
                f"{format_duration(p.seconds)} on one {p.device}" for p in self.predictions
            )
        for warning in self.warnings():
            text += f"; {warning}"
        return text

    def redo_text(self) -> str:
        """``3 redo: 2 image is 0 bytes, 1 image missing``."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.redo_reasons.items())
        return f"{self.redo} redo: {reasons}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min 5 s``, ``3 h 20 min``: a predicted time as people read it."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def load_fits(locations: Sequence[str], required: bool = False) -> tuple[list[DeviceFit], list[str]]:
    """Device fits over the fit columns of every results location that has rows, and
    the locations that had some. A location that is not a result table raises
    ``ResultsError``, one that cannot be read ``StorageError``, and one with no rows when the
    locations are ``required`` (asked for by name) ``ResultsError`` too."""
    tables, used = [], []
    for location in locations:
        with storage_problem(f"{location}: cannot read results ({{error}})"):
            table = read_results(location, FIT_COLUMNS)
        if required and not table.num_rows:
            raise ResultsError(f"{location}: no results there; run 'nst bench scaling' (or nst render) first")
        if table.num_rows:
            tables.append(table)
            used.append(location)
    if not tables:
        return [], []
    return fit_devices(pa.concat_tables(tables)), used


def predict(fit: DeviceFit, items: Sequence[WorkItem]) -> DevicePrediction:
    """``fit``'s prediction for rendering ``items`` one after another on one worker."""
    too_large, tiled = set(), {}
    seconds = 0.0
    # a manifest has few distinct shapes and configs: each is priced once, not per item
    priced: dict[tuple[tuple[int, int], SynthesisConfig], tuple[int | None, float]] = {}
    for item in items:
        key = (item.shape, item.config)
        if key not in priced:
            tile = fit.tile(*item.shape, item.config)
            priced[key] = tile, fit.predict_tiled_seconds(*item.shape, item.config, tile)
        tile, item_seconds = priced[key]
        if tile is None:
            too_large.add(item.size)
        elif tile and item.config.tile is None:  # tiles asked for by name need no warning
            tiled[item.size] = min(tile, tiled.get(item.size, tile))
        seconds += item_seconds
    return DevicePrediction(
        device=fit.device,
        device_type=fit.device_type,
        seconds=seconds,
        largest_square=fit.max_square_side(),
        sizes_too_large=sorted(too_large),
        sizes_tiled=tiled,
    )


def make_plan(
    manifest: str,
    items: Sequence[WorkItem],
    store: ResultTable,
    *,
    force: bool = False,
    fits: Sequence[DeviceFit] = (),
    fits_from: Sequence[str] = (),
    verify: bool = False,
) -> RenderPlan:
    """The plan of rendering ``items`` into ``store``'s output root: the same split into
    done and to do that ``run_render`` makes (``resume.check_done``; ``verify``
    reads every done image rather than trusting its size), read-only."""
    bad = [i for i in items if i.input_error]
    # bad inputs land in ``todo`` without any I/O; ``nst render`` reuses this check
    check = DoneCheck(todo=list(items)) if force else check_done(store, items, verify=verify)
    kinds = Counter(reason_kind(r) for r in check.redo.values())
    todo = [i for i in check.todo if not i.input_error]
    return RenderPlan(
        manifest=manifest,
        output=store.root.uri,
        items=len(items),
        styles=sorted({i.style_name for i in items}),
        sizes=sorted({i.size for i in items}),
        done=len(check.done),
        recoverable=len(check.recovered),
        to_render=len(todo),
        redo=len(check.redo),
        redo_reasons=dict(kinds.most_common()),
        verified=verify and not force,
        bad_inputs=[BadInput(i.item_id, i.label, i.input_error or "") for i in bad],
        predictions=[predict(fit, todo) for fit in fits],
        fits_from=list(fits_from),
        video=video_plan(items, check),
        check=check,
    )
