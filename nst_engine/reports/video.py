"""The report's video table: per stylized clip, how its frames went.

A stylized clip is a source clip × style × size, its frames in one folder (its rows'
``output_path``'s folder), next to its mp4. The figures are the ones the issue's
targets are about (Ruder et al. 2016): a shot's first frame is a full synthesis, later
ones start from the frame before warped by the flow and should take a fraction of its
time, at the cost of the flow.
"""

from __future__ import annotations

import posixpath
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nst_engine.reports.selection import Results
from nst_engine.storage.video import clip_of_folder


@dataclass(frozen=True)
class ClipSummary:
    """One stylized clip's frames: counts and means over their latest ok rows."""

    clip: str  # the stylized clip's mp4, relative to the output root
    source: str  # the clip rendered (content_path)
    style: str
    size: int
    ok: int  # frames done
    failed: int  # frames with a failed attempt and none ok
    shots: int  # shots with a frame done
    first_seconds: float | None  # mean synthesis seconds of a shot's first frame
    later_seconds: float | None  # ... and of the frames after it
    flow_seconds: float | None  # mean flow seconds of the later frames
    temporal_loss: float | None  # mean final_temporal_loss of the later frames

    @property
    def ratio(self) -> float | None:
        """Later frames' time over first frames' (the issue's target: at most 0.5)."""
        if self.first_seconds and self.later_seconds is not None:
            return self.later_seconds / self.first_seconds
        return None


def clip_of(output_path: str) -> str:
    """The stylized clip a frame at ``output_path`` belongs to (its folder's mp4)."""
    return clip_of_folder(posixpath.dirname(output_path))


def clip_summaries(results: Results) -> list[ClipSummary]:
    """One ``ClipSummary`` per stylized clip with a frame row, by clip; none for images."""
    ok: dict[str, list[dict[str, Any]]] = {}
    for row in results.latest_ok:
        if row["frame"] is not None:
            ok.setdefault(clip_of(row["output_path"] or ""), []).append(row)
    done = {r["item_id"] for r in results.latest_ok}
    failed: dict[str, set[str]] = {}
    for row in results.failures:
        if row["frame"] is not None and row["item_id"] not in done:
            failed.setdefault(clip_of(row["output_path"] or ""), set()).add(row["item_id"])
    return [_summary(clip, ok.get(clip, []), len(failed.get(clip, ()))) for clip in sorted({*ok, *failed})]


def _summary(clip: str, rows: list[dict[str, Any]], failed: int) -> ClipSummary:
    firsts: dict[int, int] = {}  # shot -> its first frame done
    for row in rows:
        firsts[row["shot"]] = min(row["frame"], firsts.get(row["shot"], row["frame"]))
    first = [r for r in rows if firsts[r["shot"]] == r["frame"]]
    later = [r for r in rows if firsts[r["shot"]] != r["frame"]]
    any_row = rows[0] if rows else {}
    return ClipSummary(
        clip=clip,
        source=any_row.get("content_path") or "",
        style=any_row.get("style_name") or "",
        size=any_row.get("size") or 0,
        ok=len(rows),
        failed=failed,
        shots=len(firsts),
        first_seconds=_mean(r["synthesis_seconds"] for r in first),
        later_seconds=_mean(r["synthesis_seconds"] for r in later),
        flow_seconds=_mean(r["flow_seconds"] for r in later),
        temporal_loss=_mean(r["final_temporal_loss"] for r in later),
    )


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None
