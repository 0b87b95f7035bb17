"""The report's figures as PNG files, drawn on matplotlib's Agg canvas.

No pyplot: figures are plain objects on an Agg canvas, so nothing needs a display and no
global figure state leaks between reports.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nst_engine.reports.scaling import DeviceFit, format_k
from nst_engine.reports.selection import Results, loss_curve_rows
from nst_engine.storage.files import write_atomic

PLOTS_DIR = "plots"
MIB = 1024**2
PIXELS = "pixels (height × width)"


@dataclass(frozen=True)
class Plot:
    """A written figure: file name under ``plots/`` and what it shows."""

    file: str
    title: str


def _text(value: object) -> str:
    """Result text as a literal label ('$' would start matplotlib's math mode)."""
    return str(value).replace("$", r"\$")


def _series(rows: list[dict[str, Any]], column: str, scale: float = 1.0) -> dict[str, tuple[list, list]]:
    """device_name -> (pixels, values) for rows where both are positive (log axes)."""
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        pixels, value = row["pixels"], row[column]
        if pixels and value and pixels > 0 and value > 0:
            xs, ys = series.setdefault(row["device_name"] or "unknown", ([], []))
            xs.append(pixels)
            ys.append(value / scale)
    return dict(sorted(series.items()))


def _save(figure: Figure, path: Path) -> None:
    """Write the PNG under a temporary name, then rename (a reader never sees half a file)."""
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def _finish(figure: Figure, axes: Any, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Label the axes, add the legend and write the figure."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=7)
    _save(figure, path)


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(7.2, 4.6))
    axes = figure.add_subplot()
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def time_per_iteration(results: Results, fits: dict[str, DeviceFit], path: Path) -> bool:
    """Seconds per iteration vs pixels (log-log) per device, with a + b·pixels^k where fitted."""
    series = _series(results.ok_rows, "seconds_per_iteration")
    if not series:
        return False
    figure, axes = _figure()
    for device, (xs, ys) in series.items():
        points = axes.scatter(xs, ys, s=18, alpha=0.75, label=_text(device))
        fit = fits.get(device)
        if fit is not None:
            grid = np.geomspace(min(xs), max(xs), 60) if min(xs) < max(xs) else np.array([xs[0]])
            axes.plot(
                grid,
                [fit.seconds_per_iteration(float(p)) for p in grid],
                color=points.get_facecolor()[0],
                label=_text(f"{device} fit: {format_k(fit)}"),
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    _finish(figure, axes, PIXELS, "seconds per iteration (median)", "Time per iteration", path)
    return True


def peak_memory(results: Results, path: Path) -> bool:
    """Peak memory vs pixels per device (CUDA peak allocated, or peak RSS on CPU)."""
    series = _series(results.ok_rows, "peak_memory_bytes", MIB)
    if not series:
        return False
    figure, axes = _figure()
    for device, (xs, ys) in series.items():
        axes.scatter(xs, ys, s=18, alpha=0.75, label=_text(device))
    values = [y for _, ys in series.values() for y in ys]
    axes.set_xscale("log")
    if max(values) > 10 * min(values):  # GPU memory grows with pixels over decades
        axes.set_yscale("log")
    else:  # CPU peak RSS is mostly the process itself: a linear axis from 0 is honest
        axes.set_ylim(0, max(values) * 1.1)
    _finish(figure, axes, PIXELS, "peak memory (MiB)", "Peak memory", path)
    return True


def loss_curves(results: Results, path: Path) -> bool:
    """Total loss (log y) against synthesis time of a few items, the largest per device,
    then the latest: quality against time. A coarse-to-fine item's curve starts after its
    coarse scales (``coarse_seconds``), as its losses are the last scale's."""
    rows = [r for r in loss_curve_rows(results) if any(v and v > 0 for v in r["total_losses"])]
    if not rows:
        return False
    figure, axes = _figure()
    for row in rows:
        elapsed = itertools.accumulate(
            row["iteration_seconds"] or [], initial=row.get("coarse_seconds") or 0.0
        )
        curve = [
            (t, v) for t, v in zip(elapsed, row["total_losses"], strict=False) if v is not None and v > 0
        ]
        label = f"{Path(row['content_path'] or '?').name} × {row['style_name']} @ {row['size']}"
        axes.plot([t for t, _ in curve], [v for _, v in curve], label=_text(label), linewidth=1.2)
    axes.set_yscale("log")
    _finish(figure, axes, "synthesis seconds", "total loss", "Loss against time", path)
    return True


def write_plots(results: Results, fits: dict[str, DeviceFit], folder: Path) -> list[Plot]:
    """Draw every figure there is data for into ``folder``; returns those written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file, title, draw in (
        (
            "time_per_iteration.png",
            "Time per iteration vs pixels",
            lambda p: time_per_iteration(results, fits, p),
        ),
        ("peak_memory.png", "Peak memory vs pixels", lambda p: peak_memory(results, p)),
        ("loss_curves.png", "Loss against time", lambda p: loss_curves(results, p)),
    ):
        if draw(folder / file):
            written.append(Plot(f"{PLOTS_DIR}/{file}", title))
        else:
            (folder / file).unlink(missing_ok=True)  # no stale figure from an earlier report
    return written
