"""What ``nst status`` reads of a large render: the footers of its result files (their
summaries) against the rows they summarise.

Writes N synthetic rows (real ``make_row`` rows with ``--iterations``-point loss curves)
from ``--workers`` workers on as many hosts, through ``ResultTable`` as a render does
(a part per ``FLUSH_ROWS`` rows, merged every ``COMPACT_AT`` parts), with a runs.parquet,
then times, each ``--repeat`` times: ``render_status`` (the lease, runs.parquet and one
footer per file) and reading the columns a summary is made from out of every row (what
the status would cost without footers). Prints the files, the footer bytes, medians and
the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.results_read import median_seconds, synthetic_rows
from nst_engine.results.runs import RunLog
from nst_engine.results.status import render_status
from nst_engine.results.summary import SUMMARY_COLUMNS, SUMMARY_KEY
from nst_engine.results.table import FLUSH_ROWS, ResultTable, read_results
from nst_engine.storage.roots import OutputRoot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = OutputRoot(folder)
        record = RunLog(root).start("bench", total=args.rows)
        store = ResultTable(root, flush_rows=FLUSH_ROWS, run_id=record.run_id)
        rows = synthetic_rows(args.rows, args.iterations)
        for n, row in enumerate(rows):
            worker = n % args.workers
            node = hashlib.sha256(str(worker).encode()).hexdigest()[:56]  # as random as Ray's ids
            row.update(node_id=node, hostname=f"gpu-{worker}", device_seconds=1.0)
        for start in range(0, len(rows), FLUSH_ROWS):
            store.append(rows[start : start + FLUSH_ROWS])
        files = sorted(Path(folder).rglob("*.parquet"))
        footers = [
            len(pq.read_schema(f).metadata.get(SUMMARY_KEY, b"")) for f in files if f.name != "runs.parquet"
        ]
        # bytes an object store would serve: the footers' summaries, or the summary's
        # columns of every row group (compressed, as stored)
        column_bytes = sum(
            meta.row_group(g).column(c).total_compressed_size
            for f in files
            if f.name != "runs.parquet"
            for meta in [pq.read_metadata(f)]
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
            if meta.row_group(g).column(c).path_in_schema in SUMMARY_COLUMNS
        )
        status = median_seconds(lambda: render_status(root), args.repeat)
        rows_read = median_seconds(lambda: read_results(root, list(SUMMARY_COLUMNS)), args.repeat)
        found = render_status(root)
    print(
        f"{args.rows:,} rows from {args.workers:,} workers, {len(footers)} result files, "
        f"summaries {sum(footers) / 2**10:.0f} KiB in all (largest {max(footers) / 2**10:.0f} KiB)"
    )
    print(f"status: {dataclasses.asdict(found)['rendered']:,} rendered, {found.files_read} footers read")
    print(f"bytes: summaries {sum(footers) / 2**20:.2f} MiB, summary columns {column_bytes / 2**20:.2f} MiB")
    print("| read | median s | rows / this |")
    print("| --- | --- | --- |")
    print(f"| `render_status` (footers) | {status:.3f} | {rows_read / status:.1f}× |")
    print(f"| the summary's columns of every row | {rows_read:.3f} | 1.0× |")


if __name__ == "__main__":
    main()
