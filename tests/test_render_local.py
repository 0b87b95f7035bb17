"""End to end on a real local Ray: images, rows, resume, --force, bad inputs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import run_render
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.runs import read_runs
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def render(manifest: Path, **kwargs):
    plan = load_manifest(manifest)
    items = expand(plan, skip_bad_inputs=kwargs.pop("skip_bad_inputs", False))
    options = PoolOptions(threads_per_actor=1, cpu_actors=2)
    return run_render(items, plan.weights, OutputRoot(plan.output), options, **kwargs), items


def test_render_resume_and_force(local_ray, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path)
    output = tmp_path / "out"
    summary, items = render(manifest)
    assert (summary.rendered, summary.skipped, len(summary.failed)) == (4, 0, 0)
    pngs = assert_outputs_whole(output)
    # default layout mirrors the content folder: <style>/<size>/<relative content path>.png
    assert sorted(p.relative_to(output).as_posix() for p in pngs) == [
        "s0/32/c0.png",
        "s0/32/sub/c1.png",
        "s1/32/c0.png",
        "s1/32/sub/c1.png",
    ]
    first = rows(output)
    assert not list((output / "results.parts").glob("*.parquet"))  # compacted
    assert {r["status"] for r in first} == {"ok"} and len(first) == 4
    assert {r["item_id"] for r in first} == {i.item_id for i in items}
    row = first[0]
    assert row["iterations"] == 3 and row["loss_evaluations"] >= 4
    assert len(row["iteration_seconds"]) == 3 and len(row["total_losses"]) == 3
    assert (row["width"], row["height"]) == (
        32,
        27,
    )  # 48x40 content, longer side 32 and row["pixels"] == row["height"] * row["width"]
    assert row["actor_id"] and row["node_id"] and row["device_type"] == "cpu"
    assert row["synthesis_seconds"] > 0 and row["queue_wait_seconds"] >= 0 and row["total_seconds"] > 0
    assert row["started_at"] <= row["finished_at"]
    assert row["weights_source"].startswith("random")
    # pandas reads the table with no extra steps
    frame = pd.read_parquet(output / "results.parquet")
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}

    mtimes = {p: p.stat().st_mtime_ns for p in pngs}
    results_mtime = (output / "results.parquet").stat().st_mtime_ns
    summary, _ = render(manifest)
    assert (summary.rendered, summary.skipped) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in pngs} == mtimes  # nothing re-rendered
    # a rerun of a finished manifest adds no result row (nor rewrites the table), one run record
    assert sorted(r["status"] for r in rows(output)) == ["ok"] * 4
    assert (output / "results.parquet").stat().st_mtime_ns == results_mtime
    runs = sorted(read_runs(str(output)).to_pylist(), key=lambda r: r["started_at"])
    assert [(r["state"], r["total"], r["rendered"], r["skipped"]) for r in runs] == [
        ("finished", 4, 4, 0),
        ("finished", 4, 0, 4),
    ]
    assert runs[0]["workers"] >= 1 and runs[1]["workers"] == 0 and runs[1]["manifest_name"] == "tiny"

    # a deleted image is rendered again even though its ok row exists
    pngs[0].unlink()
    summary, _ = render(manifest)
    assert (summary.rendered, summary.skipped) == (1, 3)
    assert len(rows(output)) == 5

    summary, _ = render(manifest, force=True)
    assert (summary.rendered, summary.skipped) == (4, 0)
    assert_outputs_whole(output)
    assert len(rows(output)) == 9 and len(read_runs(str(output))) == 4
    assert not list((output / "results.parts").glob("*.parquet"))


def test_bad_inputs_recorded_and_rest_rendered(local_ray, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1, extra_contents=("missing.png",))
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    summary, _items = render(manifest, skip_bad_inputs=True)
    assert summary.rendered == 1
    assert len(summary.failed) == 2
    table = rows(tmp_path / "out")
    failed = [r for r in table if r["status"] == "failed"]
    assert len(failed) == 2
    assert any("missing.png" in r["error"] for r in failed)
    assert any("broken.png" in r["error"] for r in failed)


def test_cli_render_prints_summary_and_fails_on_failed_items(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1, extra_contents=("missing.png",))
    base = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "--cpu-actors", "1", "-q"]
    invalid = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert invalid.returncode == 2
    assert "missing.png" in invalid.stderr and "--skip-bad-inputs" in invalid.stderr
    # nothing rendered for an invalid manifest (planning may leave its hash cache there)
    assert not list((tmp_path / "out").rglob("*.png")) and not (tmp_path / "out" / "results.parts").exists()

    proc = subprocess.run(
        [*base, "--skip-bad-inputs", "--output", str(tmp_path / "cli-out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr  # one item failed
    assert "render summary" in proc.stderr and "Traceback" not in proc.stderr
    assert "failed: missing.png" in proc.stderr
    assert len(assert_outputs_whole(tmp_path / "cli-out")) == 1

    # the one-line plan comes first; a rerun with nothing left to render starts no Ray
    assert "plan: " in proc.stderr
    again = subprocess.run(
        [*base, "--skip-bad-inputs", "--output", str(tmp_path / "cli-out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert again.returncode == 1, again.stderr  # the bad input is still a failed item
    said = " ".join(again.stderr.split())  # rich wraps long lines
    assert "no cluster (nothing to render)" in said and "Traceback" not in said


def test_a_damaged_results_table_moved_aside_as_advised_renders_nothing_again(tmp_path: Path) -> None:
    """A damaged results.parquet stops the rerun with one line saying what to do; doing it
    (the ``mv`` in the message, run as it is) and rerunning renders nothing: every finished
    item is recovered from its image, which stays as it was."""
    manifest = tiny_manifest(tmp_path, contents=2, styles=1)
    output = tmp_path / "out"
    base = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "--cpu-actors", "1", "-q"]
    first = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stderr
    images = {p: p.stat().st_mtime_ns for p in assert_outputs_whole(output)}
    assert len(images) == 2
    (output / "results.parquet").write_bytes(b"PAR1 damaged by a full disk")

    refused = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"{output / 'results.parquet'}: not a Parquet file" in errors[0], errors
    advice = re.search(r"move it aside \((mv [^)]*)\) and run nst render again", errors[0])
    assert advice and "recovers every finished item from its image" in errors[0], errors
    subprocess.run(shlex.split(advice.group(1)), check=True)

    again = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stderr.split())  # rich wraps long lines
    assert "2 recovered from their images, 0 to render" in said, said
    assert "no cluster (nothing to render)" in said, said
    runs = read_runs(str(output)).sort_by("started_at").to_pylist()
    assert [(r["rendered"], r["skipped"], r["recovered"]) for r in runs][-1] == (0, 2, 2), runs
    assert {p: p.stat().st_mtime_ns for p in assert_outputs_whole(output)} == images  # none redone
    ok = [r for r in rows(output) if r["status"] == "ok"]
    assert sorted(r["output_path"] for r in ok) == sorted(p.relative_to(output).as_posix() for p in images)
