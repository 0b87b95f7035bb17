"""What ``nst plan`` spends pricing items against a device fit, per item against once per
distinct shape and config (``reports.plan.predict``), side by side in one run.

100,000 items of one shape and config on a fictitious 80 GB device whose fit says the
8192×6144 items must be tiled (and the 512×384 ones fit whole); the per-item way decides
each item's tile and prices its tiles again, as ``predict`` did before it priced once.

Run: .venv/bin/python benchmarks/plan_pricing.py [--items 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from nst_engine.engine import SynthesisConfig
from nst_engine.planning.items import WorkItem
from nst_engine.reports.plan import predict
from nst_engine.reports.scaling import DeviceFit

FIT = DeviceFit("80 GB GPU", "cuda", 3, 0.01, 1e-5, 1.0, 0.9, 1.1, 1e9, 3000.0, 80 * 10**9, 2048**2, None)


def per_item(items: list[WorkItem]) -> float:
    return sum(FIT.predict_tiled_seconds(*i.shape, i.config, FIT.tile(*i.shape, i.config)) for i in items)


def timed(function, items: list[WorkItem], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(items)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = SynthesisConfig(size=512, history_size=10)
    small = WorkItem(
        "x", "m", "c", "h", "s", ("s",), ("h",), (1.0,), 512, base, "o", 512 * 384, shape=(384, 512)
    )
    large = replace(small, size=8192, shape=(6144, 8192), config=replace(base, size=8192))
    print("| items | per item s | once per shape and config s | ratio |")
    print("|---|---|---|---|")
    for name, item in (("512×384, whole", small), ("8192×6144, tiled", large)):
        items = [item] * args.items
        slow = timed(per_item, items, args.repeats)
        fast = timed(lambda i: predict(FIT, i), items, args.repeats)
        print(f"| {args.items:,} {name} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}× |")


if __name__ == "__main__":
    main()
