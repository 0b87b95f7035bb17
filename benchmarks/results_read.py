"""What resume and reports read from a large result table: ``read_results`` with the
columns they ask for against the whole table.

Writes N synthetic rows (real ``make_row`` rows with loss curves of ``--iterations``
points, as a render writes them) into one compacted results.parquet, then times, each
``--repeat`` times: ``resume.completed`` (item_id and output_path of ok rows: what
resume reads), the report's scalar columns, and every column. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.stats import SynthesisStats
from nst_engine.planning.items import WorkItem
from nst_engine.reports.selection import REPORT_COLUMNS
from nst_engine.results.resume import completed
from nst_engine.results.schema import make_row
from nst_engine.results.table import RESULTS_FILE, ResultTable, read_results
from nst_engine.storage.roots import OutputRoot


def synthetic_rows(count: int, iterations: int) -> list[dict]:
    config = SynthesisConfig(size=512, iterations=iterations)
    curve = [float(i) for i in range(iterations)]
    stats = SynthesisStats(
        height=384, width=512, pixels=384 * 512, iterations=iterations, loss_evaluations=iterations + 1,
        stop_reason="iterations", final_content_loss=1.0, final_style_loss=2.0, final_tv_loss=0.0,
        final_total_loss=3.0, iteration_seconds=curve, total_losses=curve, content_losses=curve,
        style_losses=curve, weights_load_seconds=0.0, targets_seconds=0.1, setup_seconds=0.1,
        synthesis_seconds=1.0, engine_seconds=1.2, device="cuda:0", device_type="cuda",
        device_name="bench", peak_memory_bytes=1, peak_memory_kind="cuda_peak_allocated",
        device_memory_bytes=1, weights_source="embedded",
    )  # fmt: skip
    rows = []
    for n in range(count):
        item = WorkItem(
            item_id=f"{n:020d}", manifest_name="bench", content_path=f"/data/{n}.jpg", content_hash="h",
            style_name="s", style_paths=("/s.jpg",), style_hashes=("h",), style_weights=(1.0,),
            size=512, config=config, output_path=f"s/512/{n}.png", pixels_estimate=384 * 512,
        )  # fmt: skip
        rows.append(make_row(item, "ok", 1, stats=dataclasses.replace(stats)))
    return rows


def median_seconds(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = OutputRoot(folder)
        store = ResultTable(root)
        rows = synthetic_rows(args.rows, args.iterations)
        for start in range(0, len(rows), 10_000):
            store.append(rows[start : start + 10_000])
        store.compact()
        size = (Path(folder) / RESULTS_FILE).stat().st_size
        resume = median_seconds(lambda: completed(store), args.repeat)
        report = median_seconds(lambda: read_results(root, REPORT_COLUMNS), args.repeat)
        everything = median_seconds(lambda: read_results(root), args.repeat)
    print(f"{args.rows:,} rows, {args.iterations}-point loss curves, results.parquet {size / 2**20:.1f} MiB")
    table = [
        ("resume (`resume.completed`)", "item_id, output_path where ok", resume),
        ("report rows", f"{len(REPORT_COLUMNS)} scalar columns", report),
        ("every column", "all, loss curves included", everything),
    ]
    print("| read | columns | median s | all columns / this |")
    print("| --- | --- | --- | --- |")
    for name, what, seconds in table:
        print(f"| {name} | {what} | {seconds:.3f} | {everything / seconds:.1f}× |")


if __name__ == "__main__":
    main()
