"""``build_report``: the static HTML report (gallery, plots, devices, failures) for a result table."""

from __future__ import annotations

from pathlib import Path

from nst_engine.reports import html, plots
from nst_engine.reports.scaling import fit_devices
from nst_engine.reports.selection import load_results
from nst_engine.results.runs import read_runs


def build_report(location: str | Path, out_dir: Path, page_size: int = 60) -> html.ReportSummary:
    """Write the report for the results at ``location`` (output root, its results.parquet,
    or a URI) into ``out_dir``; returns what it wrote."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    results = load_results(str(location))
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = {fit.device: fit for fit in fit_devices(results.rows)}
    figures = plots.write_plots(results, fits, out_dir / plots.PLOTS_DIR)
    runs = read_runs(results.root).to_pylist()  # a row per run: small, whatever the items
    return html.write_pages(results, fits, figures, out_dir, page_size, runs)
