"""Run by tests/test_metrics.py in a subprocess (its own embedded Ray, on the metrics
port its parent chose through ``NST_METRICS_EXPORT_PORT``): two small renders one after
the other, the metrics port scraped after each until the nst counters show its items.
Prints one JSON line: the scrapes' nst samples and the port's listening addresses."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import ray
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent.parent))
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect, metrics_port
from nst_engine.distributed.scheduler import run_render
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.cost import Spending, parse_prices
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import tiny_manifest

#: the second render's prices: a CPU core-hour costs 3.6, so a device-second 0.001
PRICE = "cpu=3.6/h"
#: Ray exports every few seconds (RAY_metrics_report_interval_ms, set by the parent)
SCRAPE_DEADLINE = 90.0


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """The nst samples at the metrics port: (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("ray_nst_")
    ]


def ok_items(samples: list) -> float:
    return sum(v for n, labels, v in samples if n == "ray_nst_items_total" and labels["status"] == "ok")


def render_and_scrape(
    folder: Path, contents: int, port: int, expected_ok: int, spending: Spending = Spending()
) -> list:
    """Render a tiny manifest of ``contents`` × 2 items, then scrape until the ok
    counter reaches ``expected_ok`` (or the deadline: the parent's asserts say what)."""
    plan = load_manifest(tiny_manifest(folder, contents=contents, styles=2, iterations=3))
    options = PoolOptions(threads_per_actor=1, cpu_actors=1)
    run_render(expand(plan), plan.weights, OutputRoot(plan.output), options, spending=spending)
    deadline = time.monotonic() + SCRAPE_DEADLINE
    samples = scrape(port)
    while ok_items(samples) < expected_ok and time.monotonic() < deadline:
        time.sleep(1)
        samples = scrape(port)
    return samples


def listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


def main() -> None:
    folder = Path(sys.argv[1])
    port = metrics_port()
    assert port is not None
    connect(num_cpus=2)
    try:
        first = render_and_scrape(folder / "first", 2, port, 4)
        priced = Spending(parse_prices(PRICE))
        second = render_and_scrape(folder / "second", 3, port, 4 + 6, priced)
        print(json.dumps({"first": first, "second": second, "listening": listening(port)}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
