"""Scaling fits on known data, and nst bench scaling / nst estimate on a real local Ray."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nst_engine.distributed.scheduler import cpu_worker_threads
from nst_engine.reports.scaling import fit_devices, format_k
from nst_engine.results.table import read_results

REPO = Path(__file__).resolve().parents[1]
SIDES = np.array([128, 256, 384, 512, 768, 1024])


def table(k: float, noise: float = 0.02, device: str = "GPU X", oom_at: int | None = None) -> pa.Table:
    rng = np.random.default_rng(1)
    pixels = SIDES**2
    seconds = (0.004 + (pixels / 1024**2) ** k) * (1 + noise * rng.standard_normal(pixels.size))
    rows = [
        {
            "status": "ok",
            "error": None,
            "device_name": device,
            "device_type": "cuda",
            "pixels": int(p),
            "seconds_per_iteration": float(s),
            "peak_memory_bytes": int(5e8 + 4000 * p),
            "device_memory_bytes": int(80e9),
            "batch_size": 1,
        }
        for p, s in zip(pixels, seconds, strict=True)
    ]
    if oom_at:
        rows.append({**rows[-1], "status": "failed", "error": "out of memory at size 9", "pixels": oom_at})
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("k", [0.8, 1.0, 1.3])
def test_fit_recovers_exponent_within_its_interval(k: float) -> None:
    (fit,) = fit_devices(table(k))
    assert fit.k_low <= k <= fit.k_high
    assert abs(fit.k - k) < 0.1 and fit.k_high - fit.k_low < 0.3
    assert format_k(fit).startswith(f"k = {fit.k:.2f} [")
    pixels = 700**2
    assert fit.seconds_per_iteration(pixels) == pytest.approx(0.004 + (pixels / 1024**2) ** k, rel=0.1)
    assert fit.predict_seconds(pixels, 500) == pytest.approx(500 * fit.seconds_per_iteration(pixels))


def test_memory_fit_predicts_largest_square_and_respects_oom() -> None:
    (fit,) = fit_devices(table(1.0))
    assert fit.mem_d == pytest.approx(4000, rel=1e-6) and fit.mem_c == pytest.approx(5e8, rel=1e-6)
    expected = math.isqrt(int((80e9 - 5e8) / 4000))
    assert abs(fit.max_square_side() - expected) <= 1
    (limited,) = fit_devices(table(1.0, oom_at=2000**2))
    assert limited.oom_pixels == 2000**2 and limited.max_square_side() == 2000


def test_too_few_sizes_and_flat_times() -> None:
    few = table(1.0).slice(0, 2)
    assert fit_devices(few) == []
    flat = table(1.0)
    flat = flat.set_column(
        flat.column_names.index("seconds_per_iteration"),
        "seconds_per_iteration",
        pa.array([0.5, 0.4, 0.45, 0.42, 0.41, 0.40]),
    )
    (fit,) = fit_devices(flat)
    assert math.isnan(fit.k) and "n/a" in format_k(fit)


def test_bench_scaling_and_estimate_on_local_ray(tmp_path: Path) -> None:
    output = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "nst_engine.cli.main",
        "bench",
        "scaling",
        "--sizes",
        "32,40,48,56",
        "--iterations",
        "4",
        "--warmup",
        "1",
        "--devices",
        "cpu",
        "--cpu-threads",
        "1",
        "--weights",
        "random",
        "--output",
        str(output),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "k = " in proc.stderr and "s/iteration" in proc.stderr
    rows = read_results(str(output)).to_pylist()
    assert len(rows) == 4 and {r["run_kind"] for r in rows} == {"bench"}
    assert sorted(r["size"] for r in rows) == [32, 40, 48, 56]
    for row in rows:
        assert row["status"] == "ok" and row["warmup_iterations"] == 1
        assert (
            row["seconds_per_iteration_p25"]
            <= row["seconds_per_iteration"]
            <= row["seconds_per_iteration_p75"]
        )
        assert row["device_memory_bytes"] > 0
    estimate = subprocess.run(
        [
            sys.executable,
            "-m",
            "nst_engine.cli.main",
            "estimate",
            "--size",
            "512",
            "--iterations",
            "100",
            "--results",
            str(output / "results.parquet"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert estimate.returncode == 0, estimate.stderr
    assert "512² × 100 iterations" in estimate.stderr and " s" in estimate.stderr
    # the same rows through an output folder and a file:// URI of it
    for location in (str(output), output.resolve().as_uri()):
        proc = run_estimate(location)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == estimate.stderr  # the same rows, the same fits
    (tmp_path / "not-results.parquet").write_bytes(b"PAR1 not parquet")
    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other" / "results.parquet")
    for location, says in (
        (str(tmp_path / "none.parquet"), "file not found"),
        (str(tmp_path / "not-results.parquet"), "not a Parquet file"),
        (str(tmp_path / "other"), "not an nst results table"),
        ((tmp_path / "none").as_uri(), "no results"),
    ):
        proc = run_estimate(location)
        assert proc.returncode == 2, proc.stderr
        assert "error:" in proc.stderr and says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def run_estimate(location: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nst_engine.cli.main",
            "estimate",
            "--size",
            "512",
            "--iterations",
            "100",
            "--results",
            location,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cpu_worker_threads_one_default_for_render_and_bench() -> None:
    assert cpu_worker_threads(None, [16, 2]) == 4  # the largest node, at most 4
    assert cpu_worker_threads(None, [2, 1]) == 2
    assert cpu_worker_threads(3, [16]) == 3  # asked for


def test_bench_lane_stores_lost_attempts_and_stops_at_out_of_memory(tmp_path: Path) -> None:
    """run_scaling on the render Scheduler: a lost worker's attempt is stored as retried and
    the item finished by a replacement; the lane stops at its first out-of-memory size."""
    import ray

    from nst_engine.distributed import bench
    from nst_engine.distributed.runtime import connect
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from nst_engine.storage.roots import OutputRoot
    from tests import ray_helpers

    plan = load_manifest(ray_helpers.tiny_manifest(tmp_path, contents=1, styles=1, sizes=(32, 40, 48, 56)))
    items = expand(plan)
    ray.cloudpickle.register_pickle_by_value(ray_helpers)
    connect(num_cpus=2)
    try:
        slot = bench.DeviceSlot("scripted", "cpu", {"num_cpus": 1, "num_gpus": 0})
        seen: list[tuple[str, int, str]] = []
        rows = bench.run_scaling(
            items,
            plan.weights,
            OutputRoot(plan.output),
            [slot],
            warmup=0,
            on_row=lambda s, r: seen.append((s.label, r["size"], r["status"])),
            worker_class=ray_helpers.ScriptedWorker,
        )
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(ray_helpers)
    stored = read_results(OutputRoot(plan.output), ["size", "status", "attempt", "error", "run_kind"])
    got = sorted((r["size"], r["attempt"], r["status"]) for r in stored.to_pylist())
    assert got == [(32, 1, "ok"), (40, 1, "retried"), (40, 2, "ok"), (48, 1, "failed")]  # no 56
    assert {r["run_kind"] for r in stored.to_pylist()} == {"bench"}
    lost = [r for r in stored.to_pylist() if r["status"] == "retried"]
    assert lost[0]["error"].startswith("worker lost")
    assert len(rows) == 4 and sorted(seen) == sorted(("scripted", s, st) for s, _, st in got)


def test_bench_batches_record_items_per_second_and_stay_out_of_the_fits(tmp_path: Path) -> None:
    output = tmp_path / "bench"
    cmd = [sys.executable, "-m", "nst_engine.cli.main", "bench", "scaling", "--sizes", "32,40,48"]
    cmd += ["--iterations", "30", "--warmup", "1", "--devices", "cpu", "--cpu-threads", "1"]
    cmd += ["--weights", "random", "--batches", "1,3", "--output", str(output)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "COLUMNS": "200"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "items/s against batch size" in proc.stderr and "batch 3" in proc.stderr
    rows = read_results(str(output)).to_pylist()
    assert len(rows) == 3 * (1 + 3) and {r["status"] for r in rows} == {"ok"}
    lone = [r for r in rows if r["batch_size"] == 1]
    assert sorted(r["size"] for r in lone) == [32, 40, 48]
    assert sorted(r["batch_size"] for r in rows if r not in lone) == [3] * 9  # all three together
    fitted = fit_devices([{**r, "batch_size": 4} for r in rows])
    assert fitted == [], "batched rows alone give no fit: their times are their batch's"
    assert len(fit_devices(rows)) == 1
