"""An item's image that cannot be written is not a lost worker (issue 19, failure 11): by
the write's errno, a place that cannot take it (ENOTDIR, EACCES, EROFS) fails the item at
once, with the reason, no retry and no worker retired; a full output root (ENOSPC) stops
the run handing out work, with a one-line reason, and what finished is kept.

All real: a file where an item's folder belongs, a read-only folder (skipped as root,
where permissions are not enforced), and, where the kernel lets an unprivileged process
have its own mount namespace (``unshare -rm``), a read-only tmpfs and a tmpfs filled to
the last byte under a real ``nst render``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import RunSummary, run_render
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _own_mounts() -> bool:
    """Whether this user may mount a tmpfs in a namespace of its own (``unshare -rm``):
    Linux with unprivileged user namespaces (some distributions turn them off)."""
    if shutil.which("unshare") is None:
        return False
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=16k tmpfs "$d" && umount "$d" && rmdir "$d"'
    try:
        return (
            subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


OWN_MOUNTS = _own_mounts()
needs_mounts = pytest.mark.skipif(not OWN_MOUNTS, reason="no unprivileged mount namespace (unshare -rm)")


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def render(manifest: Path) -> tuple[RunSummary, list[WorkItem], Path]:
    plan = load_manifest(manifest)
    items = expand(plan)
    summary = run_render(
        items, plan.weights, OutputRoot(plan.output), PoolOptions(threads_per_actor=1, cpu_actors=1)
    )
    return summary, items, Path(plan.output)


def assert_failed_once_each(output: Path, items: list[WorkItem], style: str, why: str) -> None:
    """``style``'s items failed at their first and only attempt, naming their path and
    ``why``; the others are ok; no attempt was retried, and one worker did it all."""
    table = rows(output)
    blocked = {i.item_id for i in items if i.style_name == style}
    assert Counter(r["item_id"] for r in table) == Counter({i.item_id: 1 for i in items})
    for row in table:
        expected = ("failed", 1) if row["item_id"] in blocked else ("ok", 1)
        assert (row["status"], row["attempt"]) == expected, row["error"]
        if row["item_id"] in blocked:
            assert f"cannot write {row['output_path']}: " in row["error"] and why in row["error"], row[
                "error"
            ]
    assert len({r["actor_id"] for r in table}) == 1  # the worker was neither retired nor replaced


def test_a_file_where_the_items_folder_belongs_fails_its_items_not_the_worker(
    local_ray, tmp_path: Path
) -> None:
    manifest = tiny_manifest(tmp_path, contents=2, styles=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s0").write_text("a file where s0's folder belongs")  # ENOTDIR
    summary, items, output = render(manifest)
    assert (summary.rendered, len(summary.failed), summary.retried, summary.workers) == (2, 2, 0, 1)
    assert {i.style_name for i, _ in summary.failed} == {"s0"}
    assert all("Not a directory" in reason for _, reason in summary.failed)
    assert_failed_once_each(output, items, "s0", "Not a directory")


@pytest.mark.skipif(IS_ROOT, reason="root writes into a read-only folder anyway")
def test_a_read_only_folder_fails_its_items_not_the_worker(local_ray, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=2, styles=2)
    folder = tmp_path / "out" / "s1"
    folder.mkdir(parents=True)
    folder.chmod(0o555)  # EACCES
    try:
        summary, items, output = render(manifest)
    finally:
        folder.chmod(0o755)
    assert (summary.rendered, len(summary.failed), summary.retried, summary.workers) == (2, 2, 0, 1)
    assert_failed_once_each(output, items, "s1", "Permission denied")


def _in_own_mounts(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``script`` (sh) as root of a user and mount namespace of its own, from the repo."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


@needs_mounts
def test_a_read_only_filesystem_fails_its_items_not_the_worker(tmp_path: Path) -> None:
    """EROFS, for real: s0's folder is a read-only tmpfs under a real ``nst render``."""
    manifest = tiny_manifest(tmp_path, contents=2, styles=2)
    folder = tmp_path / "out" / "s0"
    folder.mkdir(parents=True)
    render_cmd = shlex.join([sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q"])
    done = _in_own_mounts(
        f"mount -t tmpfs -o ro,size=16k tmpfs {shlex.quote(str(folder))} && {render_cmd} --cpu-actors 1"
    )
    assert done.returncode == 1, done.stderr  # items failed, the run finished
    assert "Traceback" not in done.stderr
    said = " ".join(done.stderr.split())
    assert said.count("Read-only file system") == 2 and "gave up" not in said
    items = expand(load_manifest(manifest))
    assert_failed_once_each(tmp_path / "out", items, "s0", "Read-only file system")


@needs_mounts
def test_a_full_output_root_stops_the_run_with_its_reason_and_keeps_what_finished(tmp_path: Path) -> None:
    """ENOSPC, for real: the output root is a tmpfs, filled to the last byte once the first
    image is written (``full_root_child.py``). The run stops handing out work and says so
    in one line; the images written stay, and the next run, with space, renders only the
    rest (rows the full root could not take are rebuilt from the images)."""
    manifest = tiny_manifest(tmp_path, contents=6, styles=1, iterations=60)
    output = tmp_path / "out"
    output.mkdir()
    child = shlex.join(
        [sys.executable, str(REPO / "tests" / "full_root_child.py"), str(manifest), str(output)]
    )
    done = _in_own_mounts(f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(output))} && {child}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = report["first"], report["second"]

    assert first["code"] == 2, first["stderr"]
    assert "Traceback" not in first["stderr"]
    [line] = [line for line in first["stderr"].splitlines() if line.startswith("error:")]
    assert re.fullmatch(
        r"error: the output root is full, so the run stopped: cannot write \S+\.png: "
        r".*No space left on device.*; \d+ more items? left to do; "
        r"free space there and run again \(finished images are kept\)",
        line,
    ), line
    assert 1 <= len(first["images"]) < 6 and first["leftovers"] == []

    assert second["code"] == 0, second["stderr"]
    assert len(second["images"]) == 6
    assert {p: second["images"][p] for p in first["images"]} == first["images"]  # not rendered again
    ok = Counter(r["item_id"] for r in report["rows"] if r["status"] == "ok")
    assert len(ok) == 6 and set(ok.values()) == {1}
    assert "retried" not in {r["status"] for r in report["rows"]}
    assert all("No space left on device" in r["error"] for r in report["rows"] if r["status"] == "failed")
