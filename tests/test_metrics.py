"""Metrics where operators look: the nst metrics reach Ray's metrics port during a real
render on the embedded cluster, on loopback only, and the files operators load
(cluster/grafana-nst-dashboard.json) name exactly the metrics ``metrics.py`` defines."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nst_engine.distributed import metrics
from nst_engine.distributed.runtime import METRICS_PORT_ENV, metrics_port
from nst_engine.errors import NSTError

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "cluster" / "grafana-nst-dashboard.json"
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def total(samples: list, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels`` (one series per process)."""
    return sum(v for n, have, v in samples if n == name and labels.items() <= have.items())


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two renders (4 items, then 6) on one embedded cluster, in a child process (its
    own Ray, on a metrics port chosen here), scraped after each."""
    folder = tmp_path_factory.mktemp("metrics")
    env = {**os.environ, METRICS_PORT_ENV: str(free_port()), "RAY_metrics_report_interval_ms": "1000"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "metrics_child.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_render_moves_the_item_counters(scrapes: dict) -> None:
    """The ok counter counts every rendered item and goes on counting in the next run."""
    tags = {"status": "ok", "lane": "render", "device_kind": "cpu", "run_kind": "render"}
    assert total(scrapes["first"], "ray_nst_items_total", **tags) == 4
    assert total(scrapes["second"], "ray_nst_items_total", **tags) == 10
    assert total(scrapes["second"], "ray_nst_items_total", status="failed") == 0


def test_workers_report_item_and_iteration_seconds(scrapes: dict) -> None:
    """Each rendered item is one observation of its seconds and of its seconds per
    iteration, made in the worker processes and exported by the same agent."""
    for name in ("ray_nst_item_seconds_count", "ray_nst_iteration_seconds_count"):
        assert total(scrapes["first"], name, device_kind="cpu") == 4, name
        assert total(scrapes["second"], name, device_kind="cpu") == 10, name
    assert total(scrapes["second"], "ray_nst_item_seconds_sum") > 0


def test_driver_reports_pool_gauges_and_spend(scrapes: dict) -> None:
    """Queue depth and workers by state exist per lane (0 once the run is over), and the
    run's held device-seconds, priced at its --price (none in the first run: cost 0)."""
    samples = scrapes["second"]
    assert {labels["state"] for n, labels, _ in samples if n == "ray_nst_workers"} == {"live", "pending"}
    assert total(samples, "ray_nst_workers", lane="render") == 0
    assert total(samples, "ray_nst_queue_depth", lane="render") == 0
    assert total(scrapes["first"], "ray_nst_device_seconds", device_kind="cpu") > 0
    assert total(scrapes["first"], "ray_nst_cost", device_kind="cpu") == 0
    held = total(samples, "ray_nst_device_seconds", device_kind="cpu")
    assert held > 0
    assert total(samples, "ray_nst_cost", device_kind="cpu") == pytest.approx(held * 3.6 / 3600, rel=1e-3)


def test_metrics_port_binds_loopback_only(scrapes: dict) -> None:
    """The embedded cluster's metrics port listens on 127.0.0.1 and nowhere else."""
    assert scrapes["listening"] == [LOOPBACK_HEX]


@pytest.mark.parametrize("value", ["http", "0", "70000", "-5"])
def test_bad_metrics_port_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(METRICS_PORT_ENV, value)
    with pytest.raises(NSTError, match=rf"^{METRICS_PORT_ENV}={re.escape(value)}: not a TCP port"):
        metrics_port()


def test_metrics_are_defined_once() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"nst_[a-z_]+", name) for name in names)
    assert all(m.kind in ("counter", "gauge", "histogram") for m in metrics.METRICS)
    assert all(bool(m.boundaries) == (m.kind == "histogram") for m in metrics.METRICS)


def dashboard_metrics() -> set[str]:
    """Every nst series the dashboard's PromQL names, back to the metric's exported name."""
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    found = set()
    for query in queries:
        for series in re.findall(r"\bray_nst_[a-z_]+", query):
            found.add(re.sub(r"_(bucket|sum|count)$", "", series))
    return found


def test_dashboard_and_metrics_name_the_same_series() -> None:
    """One source of truth: the dashboard queries every metric and no other."""
    assert dashboard_metrics() == {m.exported for m in metrics.METRICS}


def test_dashboard_histograms_use_buckets() -> None:
    """Percentile panels read a histogram's _bucket series, never a counter's."""
    histograms = {m.exported for m in metrics.METRICS if m.kind == "histogram"}
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            if "histogram_quantile" in target["expr"]:
                used = set(re.findall(r"\b(ray_nst_[a-z_]+)_bucket\b", target["expr"]))
                assert used and used <= histograms, target["expr"]
