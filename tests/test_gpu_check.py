"""The GPU check runs whole on a CPU before it is sent to a rented GPU (one short call,
no second chance): ``benchmarks/gpu_check.py --dry-run`` at tiny sizes, with one step
made to fail and one to hang; and ``benchmarks/gpu_wheels.py``'s repack of a wheel,
offline, on a tiny synthetic one (CI must not download Ray)."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["device", "precision", "engine_speed", "launches", "batching", "render", "scaling", "oom"]
#: The steps that need no script from elsewhere and must pass on a CPU.
CPU_STEPS = ["device", "engine_speed", "batching", "render", "scaling", "oom"]


def load_wheels_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks" / "gpu_wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_reports_every_step_and_goes_past_a_failure_and_a_hang(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    command += ["--inject", "precision=fail", "--inject", "launches=hang", "--timeout", "launches=3"]
    done = subprocess.run(
        [*command, "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the injected ones
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["finished"] and report["dry_run"] and report["device"] == "cpu"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    failing = [(n, s["status"], s.get("output_tail", "")[-2000:]) for n, s in steps.items() if n in CPU_STEPS]
    assert all(status == "ok" for _, status, _ in failing), failing
    for step in steps.values():
        assert step["seconds"] >= 0 and step["command"] and step["log"]
    assert not any(steps[name]["left_processes"] for name in CPU_STEPS)  # Ray stopped with its driver

    assert steps["precision"]["status"] == "failed" and steps["precision"]["returncode"] == 1
    assert "injected failure" in steps["precision"]["error"]
    assert "injected failure" in steps["precision"]["output_tail"]
    assert steps["launches"]["status"] == "timeout" and steps["launches"]["timeout_seconds"] == 3
    assert steps["launches"]["seconds"] < 30 and steps["launches"]["left_processes"]  # stopped

    assert steps["device"]["result"]["torch"] and steps["device"]["result"]["embedded_weights"]
    assert [r["precision"] for r in steps["engine_speed"]["summary"]] == ["fp32", "bf16"]
    assert all(r["s_per_iter"] > 0 and r["ratio_to_floor"] > 0 for r in steps["engine_speed"]["summary"])
    batching = steps["batching"]["summary"]
    assert [r["batch"] for r in batching] == [1, 2]
    assert all(r["items_per_hour"] == pytest.approx(3600 * r["items_per_second"]) for r in batching)
    assert all(r["peak_memory_mib"] > 0 for r in batching)
    render = steps["render"]["summary"]
    assert render["items"] == render["rows_ok"] == 16 and render["batch_sizes"] == {"1": 16}
    assert 0 < render["synthesis_span_seconds"] < render["wall_seconds"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check-files.tar.gz", "gpu_check.json"]
    with tarfile.open(out / "gpu_check-files.tar.gz") as archive:
        names = archive.getnames()
    assert "./render/results.parquet" in names and "./precision.log" in names
    scaling = steps["scaling"]["summary"]
    assert scaling["largest_size_whole"] == 64 and len(scaling["fits"]) == 1
    assert steps["oom"]["summary"]["lost"] == 0 and steps["oom"]["summary"]["outcomes"] == {"ok": 4}

    assert "| render | ok |" in done.stdout and "| launches | timeout |" in done.stdout


def test_dry_run_of_the_precision_and_launch_steps(tmp_path: Path) -> None:
    """The two engine checks the first test makes fail and hang, run for real at tiny
    sizes: each precision against float64, and the operator calls per iteration."""
    out = tmp_path / "report"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    command += ["--only", "precision,launches"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["name"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert steps["precision"]["status"] == "ok" and steps["launches"]["status"] == "ok"
    checks = {(r["check"], r["precision"]) for r in steps["precision"]["result"]}
    assert {("evaluation", "fp32"), ("evaluation", "bf16"), ("synthesis", "fp32")} <= checks
    fp32 = next(
        r for r in steps["precision"]["result"] if r["check"] == "evaluation" and r["precision"] == "fp32"
    )
    assert fp32["ok"] and fp32["gradient_relative_error"] < 5e-3
    rows = steps["launches"]["result"]["rows"]
    assert [(r["history"], r["batch"]) for r in rows] == [(5, 1), (5, 2)]
    assert all(r["launching_per_step"] > 0 and r["calls_by_part"]["optimizer"] > 0 for r in rows)


def _wheel(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A wheel of ``files`` (name -> (data, mode)) with a RECORD whose hashes are stale."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16  # as wheel builders write it
            wheel.writestr(info, data)
        rows = "".join(f"{name},sha256=stale,1\n" for name in files) + "demo-1.0.dist-info/RECORD,,\n"
        wheel.writestr("demo-1.0.dist-info/RECORD", rows)
    return path


def test_slim_wheel_drops_prefixes_rebuilds_the_record_and_installs(tmp_path: Path) -> None:
    gpu_wheels = load_wheels_module()
    true = shutil.which("true")
    strip = shutil.which("strip")
    files = {
        "demo/__init__.py": (b"ANSWER = 42\n", 0o644),
        "demo/big/blob.bin": (os.urandom(4096), 0o644),
        "demo/big/more/blob2.bin": (b"x" * 100, 0o644),
        "demo/tool": (Path(true).read_bytes() if true else b"#!/bin/sh\n", 0o755),
        "demo-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n", 0o644),
        "demo-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            0o644,
        ),
    }
    source = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", files)
    stripped = ("demo/tool",) if strip and true else ()
    slim = gpu_wheels.slim_wheel(source, tmp_path / "slim", ("demo/big/",), stripped)
    assert slim.name == source.name and slim.parent == tmp_path / "slim"
    assert not list((tmp_path / "slim").glob("*.part"))

    with zipfile.ZipFile(slim) as wheel:
        names = wheel.namelist()
        assert not [n for n in names if n.startswith("demo/big/")]
        assert (wheel.getinfo("demo/tool").external_attr >> 16) & 0o777 == 0o755
        rows = list(csv.reader(io.StringIO(wheel.read("demo-1.0.dist-info/RECORD").decode())))
        marker = wheel.read("demo-1.0.dist-info/SLIMMED").decode()
        tool = wheel.read("demo/tool")
    assert "demo/big/" in marker
    assert {r[0] for r in rows} == set(names)
    for name, digest, size in rows:
        if name.endswith("RECORD"):
            assert digest == size == ""
            continue
        with zipfile.ZipFile(slim) as wheel:
            data = wheel.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}" and int(size) == len(data)
    if stripped:
        assert len(tool) <= len(files["demo/tool"][0]) and tool.startswith(b"\x7fELF")

    # idempotent: a second run writes the same members
    again = gpu_wheels.slim_wheel(source, tmp_path / "slim", ("demo/big/",), stripped)
    with zipfile.ZipFile(again) as wheel:
        assert sorted(wheel.namelist()) == sorted(names)

    # pip takes it as the device's command does (from a local file, no index)
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    install += ["--no-cache-dir", "--upgrade", "--target", str(target), str(slim)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (target / "demo" / "__init__.py").read_text() == "ANSWER = 42\n"
    assert not (target / "demo" / "big").exists()
    assert os.access(target / "demo" / "tool", os.X_OK)
    if true:
        assert subprocess.run([str(target / "demo" / "tool")], check=False).returncode == 0


def test_slim_wheel_refuses_a_wheel_without_its_record(tmp_path: Path) -> None:
    gpu_wheels = load_wheels_module()
    path = tmp_path / "bad-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("bad/__init__.py", "")
    with pytest.raises(ValueError, match="RECORD"):
        gpu_wheels.slim_wheel(path, tmp_path / "out", ("bad/",))


def test_wheel_pins_and_python_tags() -> None:
    gpu_wheels = load_wheels_module()
    pins = gpu_wheels.pins()
    assert all(gpu_wheels.normalize(name) in pins for name in gpu_wheels.WHEELS)
    assert gpu_wheels._fits_python("rpds_py-1-cp312-cp312-manylinux_2_17_x86_64.whl", "312")
    assert not gpu_wheels._fits_python("rpds_py-1-cp311-cp311-manylinux_2_17_x86_64.whl", "312")
    assert gpu_wheels._fits_python("six-1-py2.py3-none-any.whl", "312")
