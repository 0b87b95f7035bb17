"""``nst status OUTPUT_ROOT``: a render's state from its output root's files alone, read
from the result files' footer summaries (never their rows), locally and on S3, for a
finished render, one killed by SIGKILL, and a root written before summaries existed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nst_engine.errors import NSTError
from nst_engine.results.runs import RunLog, read_runs
from nst_engine.results.status import render_status
from nst_engine.results.summary import SUMMARY_KEY, TableSummary
from nst_engine.results.table import MERGED_KEY, ResultTable, read_results
from nst_engine.storage.roots import OutputRoot
from tests.conftest import S3Server
from tests.ray_helpers import tiny_manifest
from tests.test_clean_exits import LONG, pngs, start_render, wait_for

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def row(item: str, status: str = "ok", minute: int = 0, **columns: object) -> dict:
    """A result row with the columns a summary reads."""
    return {
        "item_id": item,
        "status": status,
        "attempt": 1,
        "error": "CUDA out of memory" if status == "failed" else None,
        "total_seconds": 2.0,
        "finished_at": T0 + timedelta(minutes=minute),
        "node_id": f"node{item[-1]}",
        "hostname": "h1",
        "device_type": "cuda",
        "device_name": "H100",
        **columns,
    }


def nst(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "nst_engine.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def status_json(output: str) -> dict:
    proc = nst("status", output, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_summary_of_rows_merges_and_round_trips() -> None:
    from nst_engine.results.schema import to_table

    a = TableSummary.of_rows(to_table([row("i1"), row("i2", "failed"), row("i3", minute=1)]), "r1")
    b = TableSummary.of_rows(
        to_table([row("i4", minute=1), row("i5", attempt=0), row("i6", "retried")]), "r1"
    )
    other = TableSummary.of_rows(to_table([row("i7")]), "r2")
    both = TableSummary.from_json(a.merged(b).merged(other).to_json())
    r1 = both.runs["r1"]
    assert r1.statuses == {"ok": 3, "failed": 1, "retried": 1}
    assert r1.recorded == 1  # attempt 0: recorded from its image, not rendered in the run
    assert r1.errors == {"CUDA out of memory": 1} and r1.devices == {"H100 (cuda)": 3}
    assert r1.worker_seconds == 10.0 and r1.nodes == [f"node{i}" for i in range(1, 7)]
    minute = int(T0.timestamp() // 60)
    assert r1.per_minute == {minute: 1, minute + 1: 2}
    assert both.runs["r2"].statuses == {"ok": 1}


def test_status_reads_only_footers_and_summarises_old_files(tmp_path: Path) -> None:
    """Parts whose row data is destroyed (footers intact) still give the status, so no row
    is read; a file from before summaries is summarised from its rows, and merged with a
    summary from then on."""
    root = OutputRoot(str(tmp_path))
    with pytest.raises(NSTError, match="no render recorded there"):
        render_status(root)
    record = RunLog(root).start("m", total=10, skipped=2)
    legacy = tmp_path / "results.parquet"  # as written before summaries: no nst:summary
    from nst_engine.results.schema import to_table

    pq.write_table(to_table([row("a1", finished_at=datetime.now(UTC)), row("a2", "failed")]), legacy)
    table = ResultTable(root, run_id=record.run_id)
    for i in range(5):
        table.append([row(f"p{i}", finished_at=datetime.now(UTC))])
    parts = list((tmp_path / "results.parts").glob("*.parquet"))
    assert len(parts) == 5 and all(SUMMARY_KEY in pq.read_schema(p).metadata for p in parts)
    for part in parts:  # zero every byte between the magic and the footer
        data = bytearray(part.read_bytes())
        footer = int.from_bytes(data[-8:-4], "little")
        data[4 : len(data) - 8 - footer] = bytes(len(data) - 12 - footer)
        part.write_bytes(bytes(data))
    with pytest.raises((OSError, pa.ArrowException)):  # the rows are unreadable
        read_results(root).to_pylist()
    found = render_status(root)
    assert (found.rendered, found.failed, found.skipped, found.to_go) == (6, 1, 2, 1)
    assert found.state == "died" and found.files_read == 6  # running, and no lease
    assert found.worker_seconds == 14.0 and found.failures == {"CUDA out of memory": 1}

    fresh = tmp_path / "fresh"  # compacting a legacy file writes its summary from then on
    fresh_root = OutputRoot(str(fresh))
    record = RunLog(fresh_root).start("m", total=3)
    fresh.mkdir(exist_ok=True)
    pq.write_table(to_table([row("a1", finished_at=datetime.now(UTC))]), fresh / "results.parquet")
    store = ResultTable(fresh_root, run_id=record.run_id)
    store.append([row("b1", finished_at=datetime.now(UTC))])
    store.compact()
    metadata = pq.read_schema(fresh / "results.parquet").metadata
    assert TableSummary.from_json(metadata[SUMMARY_KEY]).runs[record.run_id].statuses == {"ok": 2}
    assert render_status(fresh_root).to_go == 1


def test_status_of_a_finished_render_matches_its_rows(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=2, styles=2)
    proc = nst("render", str(manifest), "--cpu-actors", "1", "-q", "--no-gpus", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    found = status_json(str(out))
    rows = read_results(str(out)).to_pylist()
    assert found["state"] == "finished" and found["total"] == 4 and found["to_go"] == 0
    assert found["rendered"] == sum(r["status"] == "ok" for r in rows) == found["done"] == 4
    assert found["failed"] == 0 and found["workers"] == 1 and found["files_read"] == 1
    assert found["worker_seconds"] == pytest.approx(sum(r["total_seconds"] for r in rows))
    assert sum(found["devices"].values()) == 4 and found["per_minute"] > 0
    human = nst("status", str(out))
    assert human.returncode == 0 and "finished" in human.stderr and "to go" in human.stderr

    # as written before summaries: the same status, from the rows of results.parquet
    table = pq.read_table(out / "results.parquet")
    pq.write_table(table.replace_schema_metadata({MERGED_KEY: b"[]"}), out / "results.parquet")
    assert SUMMARY_KEY not in pq.read_schema(out / "results.parquet").metadata
    assert {k: v for k, v in status_json(str(out)).items() if k != "per_minute"} == {
        k: v for k, v in found.items() if k != "per_minute"
    }


def test_a_render_killed_by_sigkill_is_died(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=1, iterations=LONG // 2)
    home = tmp_path / "home"
    home.mkdir()
    output = tmp_path / "out"
    render = start_render(manifest, home, "--workers", "1")
    try:
        wait_for(lambda: (output / "runs.parquet").exists(), 300, "the run's record", render)
        running = status_json(str(output))
        assert running["state"] == "running" and running["total"] == 4 and running["lease"]
        wait_for(lambda: len(pngs(output)) >= 1, 300, "a first image", render)
        render.kill()  # SIGKILL: no flush, no record of its end, its lease left behind
        render.wait(10)
    finally:
        render.kill()
    found = status_json(str(output))
    assert found["state"] == "died" and found["lease"] is None
    assert found["to_go"] == 4 - found["rendered"] - found["failed"]


def test_status_of_an_s3_root_from_another_process(s3: S3Server) -> None:
    uri = f"s3://{s3.bucket}/out"
    root = OutputRoot(uri)
    record = RunLog(root).start("m", total=5, skipped=1)
    table = ResultTable(root, run_id=record.run_id)
    table.append([row("i1"), row("i2", "failed")])
    table.append([row("i3", minute=1)])
    found = status_json(uri)
    assert (found["rendered"], found["failed"], found["to_go"], found["skipped"]) == (2, 1, 1, 1)
    assert found["state"] == "died" and found["files_read"] == 2 and found["worker_seconds"] == 6.0
    assert found["hosts"] == ["h1"] and found["devices"] == {"H100 (cuda)": 2}


def test_watch_follows_a_render_on_s3_to_its_end(tmp_path: Path, s3: S3Server) -> None:
    """From a second process, ``nst status s3://... --watch --json`` follows a render to
    its end: a line per refresh, counts that only grow, an ETA while it runs, and at the
    end the rows' counts and the run's bill."""
    # 12 items of a second or two: rows reach the root in parts every FLUSH_SECONDS, so the
    # render must outlast a flush or two for a refresh to see it under way
    manifest = tiny_manifest(tmp_path, contents=6, styles=2, sizes=(48,), iterations=400)
    home = tmp_path / "home"
    home.mkdir()
    uri = f"s3://{s3.bucket}/nightly"
    extra = ("--workers", "1", "--threads-per-actor", "1", "--output", uri, "--price", "cpu=3.6/h")
    render = start_render(manifest, home, *extra)
    try:
        wait_for(lambda: OutputRoot(uri).exists("runs.parquet"), 300, "the run's record", render)
        watch = nst("status", uri, "--watch", "--json", "--interval", "0.5")
        assert render.wait(300) == 0, render.communicate()[1]
    finally:
        render.kill()
    assert watch.returncode == 0, watch.stderr
    seen = [json.loads(line) for line in watch.stdout.splitlines()]
    assert seen[0]["state"] == "running" and seen[-1]["state"] == "finished"
    done = [s["done"] + s["failed"] for s in seen]
    assert done == sorted(done) and done[-1] == 12
    going = [s for s in seen if s["eta_seconds"] is not None]  # while it runs (0 once all are done)
    assert any(s["to_go"] > 0 for s in going), "no refresh while items were still to go"
    for s in going:
        assert s["state"] == "running"
        assert s["eta_seconds"] == pytest.approx(s["to_go"] / s["per_minute"] * 60)
    final = seen[-1]
    rows = read_results(uri).to_pylist()
    assert final["rendered"] == sum(r["status"] == "ok" for r in rows) == 12 and final["to_go"] == 0
    assert final["device_seconds"] == pytest.approx(sum(r["device_seconds"] for r in rows))
    bill = read_runs(uri).to_pylist()[-1]
    assert final["cost_basis"] == "bill" and final["cost"] == pytest.approx(bill["cost"]) and bill["cost"] > 0
