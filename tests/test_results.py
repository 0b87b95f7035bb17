"""The Parquet result table and the output root it lives in."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nst_engine import __version__
from nst_engine.distributed.scheduler import skip_done
from nst_engine.engine.images import encode_png
from nst_engine.engine.stats import SynthesisStats
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.provenance import implied_text
from nst_engine.results.resume import check_done, completed
from nst_engine.results.runs import RUNS_FILE, RUNS_SCHEMA, RunLog, read_runs
from nst_engine.results.schema import COLUMNS, SCHEMA, STATS_COLUMNS, make_row, to_table
from nst_engine.results.table import (
    PARTS_DIR,
    RESULTS_FILE,
    ROW_GROUP_ROWS,
    ResultsError,
    ResultTable,
    merge_files,
    read_results,
    where_rows_are,
)
from nst_engine.storage.paths import UnsafePathError, safe_relative
from nst_engine.storage.roots import TMP_PREFIX, OutputRoot
from tests.conftest import write_image


@pytest.fixture
def work(tmp_path: Path) -> list[WorkItem]:
    """Four real work items (2 contents × 2 sizes) from a tiny manifest."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_image(inputs / "a.png", 24, 16, seed=1)
    write_image(inputs / "b.png", 16, 24, seed=2)
    write_image(inputs / "s.png", 20, 20, seed=3)
    manifest = inputs / "m.yaml"
    manifest.write_text(
        "name: tiny\ncontents: [a.png, b.png]\nstyles: [s.png]\nsizes: [32, 48]\nparams: {iterations: 2}\n"
    )
    items = expand(load_manifest(manifest))
    assert len(items) == 4
    return items


def fake_stats(item: WorkItem) -> SynthesisStats:
    """A real SynthesisStats record with plausible values (no synthesis needed here)."""
    return SynthesisStats(
        height=21,
        width=32,
        pixels=21 * 32,
        iterations=2,
        loss_evaluations=3,
        stop_reason="iterations",
        final_content_loss=1.5,
        final_style_loss=2.5,
        final_tv_loss=0.0,
        final_total_loss=4.0,
        content_losses=[3.0, 2.0],
        style_losses=[5.0, 3.0],
        total_losses=[8.0, 5.0],
        iteration_seconds=[0.25, 0.125],
        weights_load_seconds=0.5,
        targets_seconds=0.1,
        setup_seconds=0.6,
        synthesis_seconds=0.375,
        engine_seconds=1.0,
        device="cpu",
        device_type="cpu",
        device_name="test cpu",
        peak_memory_bytes=1234,
        peak_memory_kind="cpu_peak_rss",
        device_memory_bytes=8 * 2**30,
        weights_source="random:0",
    )


def part_files(root: Path) -> list[Path]:
    folder = root / PARTS_DIR
    return sorted(folder.glob("*.parquet")) if folder.exists() else []


# ---------------------------------------------------------------------------- result store


def test_append_read_completed_compact(tmp_path: Path, work: list[WorkItem]) -> None:
    out = tmp_path / "out"
    store = ResultTable(OutputRoot(str(out)))
    assert read_results(store.root).num_rows == 0
    assert read_results(store.root).schema == SCHEMA
    assert completed(store) == {}
    assert store.compact() == 0
    assert not (out / RESULTS_FILE).exists()

    started = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    failed = make_row(work[0], "failed", 1, error="x")
    ok = make_row(work[0], "ok", 2, stats=fake_stats(work[0]), node_id="node-1", started_at=started)
    other_ok = make_row(work[1], "ok", 1, stats=fake_stats(work[1]))
    store.append([failed])
    assert len(part_files(out)) == 1
    store.append([ok, other_ok])
    assert len(part_files(out)) == 2
    store.append([])  # nothing to write: no file
    assert len(part_files(out)) == 2

    table = read_results(out)
    assert table.schema == SCHEMA
    assert table.num_rows == 3
    rows = sorted(table.to_pylist(), key=lambda r: (r["item_id"], r["attempt"]))
    by_status = {(r["item_id"], r["status"]): r for r in rows}
    f = by_status[(work[0].item_id, "failed")]
    assert f["error"] == "x" and f["attempt"] == 1 and f["height"] is None and f["total_losses"] is None
    assert f["run_kind"] == "render" and f["manifest_name"] == "tiny" and f["nst_version"] == __version__
    assert f["content_path"] == work[0].content_path and f["style_weights"] == [1.0]
    assert f["iterations_requested"] == 2 and f["size"] == work[0].size == 32
    assert json.loads(f["params_json"])["iterations"] == 2
    o = by_status[(work[0].item_id, "ok")]
    assert o["error"] is None and o["attempt"] == 2 and o["node_id"] == "node-1"
    assert (o["height"], o["width"], o["pixels"]) == (21, 32, 672)
    assert o["total_losses"] == [8.0, 5.0] and o["iteration_seconds"] == [0.25, 0.125]
    assert o["seconds_per_iteration"] == 0.1875  # median of 0.25 and 0.125
    assert (o["seconds_per_iteration_p25"], o["seconds_per_iteration_p75"]) == (0.15625, 0.21875)
    assert o["started_at"] == started and o["finished_at"] is None
    assert o["output_path"] == work[0].output_path

    assert completed(store) == {
        work[0].item_id: work[0].output_path,
        work[1].item_id: work[1].output_path,
    }

    assert store.compact() == 2
    assert part_files(out) == []
    assert (out / RESULTS_FILE).is_file()
    assert not list(out.rglob(f"{TMP_PREFIX}*"))
    compacted = pq.read_table(out / RESULTS_FILE)
    assert compacted.schema == SCHEMA
    assert compacted.num_rows == 3
    frame = pd.read_parquet(out / RESULTS_FILE)
    assert list(frame.columns) == [c.name for c in COLUMNS]
    assert sorted(frame["status"]) == ["failed", "ok", "ok"]
    assert frame.loc[frame["status"] == "failed", "error"].tolist() == ["x"]
    assert store.compact() == 0  # nothing new to merge

    # after compaction: appends go to parts again, reads see old + new
    store.append([make_row(work[2], "ok", 1)])
    store.append([make_row(work[3], "skipped", 1)])
    assert len(part_files(out)) == 2
    again = read_results(out)
    assert again.num_rows == 5
    assert sorted(again["item_id"].to_pylist()) == sorted(
        [work[0].item_id, work[0].item_id, work[1].item_id, work[2].item_id, work[3].item_id]
    )
    assert set(completed(store)) == {work[0].item_id, work[1].item_id, work[2].item_id}
    assert store.compact() == 2
    assert pq.read_table(out / RESULTS_FILE).num_rows == 5
    assert part_files(out) == []


def test_a_second_store_on_the_same_root_sees_the_rows(tmp_path: Path, work: list[WorkItem]) -> None:
    ResultTable(OutputRoot(str(tmp_path / "out"))).append([make_row(work[0], "ok", 1)])
    reader = ResultTable(OutputRoot(f"file://{tmp_path / 'out'}"))
    assert completed(reader) == {work[0].item_id: work[0].output_path}


def test_parts_folder_reads_as_a_dataset(tmp_path: Path, work: list[WorkItem]) -> None:
    store = ResultTable(OutputRoot(str(tmp_path)))
    for item in work:
        store.append([make_row(item, "ok", 1)])
    dataset = pq.read_table(tmp_path / PARTS_DIR)
    assert dataset.num_rows == 4
    assert sorted(dataset["item_id"].to_pylist()) == sorted(i.item_id for i in work)


def test_unknown_row_keys_are_refused(work: list[WorkItem]) -> None:
    with pytest.raises(KeyError, match="not_a_column"):
        make_row(work[0], "ok", 1, not_a_column="typo")
    with pytest.raises(KeyError, match="height"):  # a statistic, not a worker's attempt column
        make_row(work[0], "ok", 1, height=3)


def test_duckdb_reads_the_results(tmp_path: Path, work: list[WorkItem], monkeypatch) -> None:
    duckdb = pytest.importorskip("duckdb")
    store = ResultTable(OutputRoot(str(tmp_path)))
    store.append([make_row(item, "ok", 1) for item in work])
    store.compact()
    monkeypatch.chdir(tmp_path)
    assert duckdb.sql("SELECT count(*) FROM 'results.parquet'").fetchall() == [(4,)]


# ---------------------------------------------------------------------------- output root


def test_write_bytes_is_atomic_and_leaves_no_temporaries(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    target = root.write_bytes("a/b/c.bin", b"first")
    assert Path(target) == (tmp_path / "out" / "a" / "b" / "c.bin").resolve()
    assert Path(target).read_bytes() == b"first"
    root.write_bytes("a/b/c.bin", b"second, longer")  # replaces
    assert root.read_bytes("a/b/c.bin") == b"second, longer"
    assert root.exists("a/b/c.bin") and not root.exists("a/b") and not root.exists("a/b/none")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert root.list_files("a/b") == ["a/b/c.bin"]
    assert root.list_files("nowhere") == []


def test_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("keeps the folder non-empty")
    with pytest.raises(OSError):
        root.write_bytes("taken", b"cannot replace a non-empty folder")
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert (tmp_path / "taken" / "inside").is_file()


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path))
    root.write_bytes("keep/real.png", b"png")
    (tmp_path / f"{TMP_PREFIX}abc-results.parquet").write_bytes(b"half")
    (tmp_path / "keep" / f"{TMP_PREFIX}def-real.png").write_bytes(b"half")
    (tmp_path / "keep" / "deeper").mkdir()
    (tmp_path / "keep" / "deeper" / f"{TMP_PREFIX}ghi-x.png").write_bytes(b"half")
    (tmp_path / "keep" / "not.nst-tmp-x").write_bytes(b"not a temporary: prefix only")
    assert root.remove_stale_temporaries() == 3
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["keep/not.nst-tmp-x", "keep/real.png"]
    assert root.remove_stale_temporaries() == 0
    assert OutputRoot(str(tmp_path / "absent")).remove_stale_temporaries() == 0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x.png",
        "a/../../x.png",
        "a/../b.png",
        "..\\x.png",
        "/etc/passwd",
        "\\\\server\\share\\x.png",
        "C:\\x.png",
        "c:/x.png",
        "D:x.png",
    ],
)
def test_safe_relative_refuses_escapes(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative(bad)


def test_safe_relative_cleans_good_paths(tmp_path: Path) -> None:
    assert safe_relative("a/b.png") == "a/b.png"
    assert safe_relative("./a//b/./c.png") == "a/b/c.png"
    assert safe_relative("a\\b.png") == "a/b.png"
    root = OutputRoot(str(tmp_path))
    with pytest.raises(UnsafePathError):
        root.write_bytes("../escape.bin", b"x")
    with pytest.raises(UnsafePathError):
        root.read_bytes("/etc/hostname")
    assert not (tmp_path.parent / "escape.bin").exists()


def test_file_uri_roots(tmp_path: Path, work: list[WorkItem]) -> None:
    uri_root = OutputRoot(f"file://{tmp_path}/out")
    plain_root = OutputRoot(str(tmp_path / "out"))
    assert uri_root.is_local and plain_root.is_local
    assert not OutputRoot("s3://bucket/prefix").is_local
    uri_root.write_bytes("x/y.txt", b"via uri")
    assert (tmp_path / "out" / "x" / "y.txt").read_bytes() == b"via uri"
    assert plain_root.read_bytes("x/y.txt") == b"via uri"
    assert uri_root.local_path("x/y.txt") == tmp_path / "out" / "x" / "y.txt"
    assert uri_root.display("x/y.txt") == str(tmp_path / "out" / "x" / "y.txt")
    store = ResultTable(uri_root)
    store.append([make_row(work[0], "ok", 1)])
    assert store.compact() == 1
    assert pq.read_table(tmp_path / "out" / RESULTS_FILE).num_rows == 1
    uri_root.delete("x/y.txt")
    uri_root.delete("x/y.txt")  # deleting twice is fine
    assert not (tmp_path / "out" / "x" / "y.txt").exists()


def test_output_root_is_picklable() -> None:
    import pickle

    root = OutputRoot("file:///tmp/somewhere")
    assert pickle.loads(pickle.dumps(root)) == root


def test_schema_is_documented() -> None:
    names = [c.name for c in COLUMNS]
    assert len(names) == len(set(names)) == len(SCHEMA.names)
    assert all(c.meaning for c in COLUMNS)
    assert SCHEMA.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert SCHEMA.field("style_weights").type == pa.list_(pa.float64())


# ---------------------------------------------------------------------------- one schema, one reader


def test_every_statistic_is_a_column_with_its_meaning() -> None:
    """The stats record's fields are the schema's stats columns: a new metric is one field."""
    fields = {f.name: f.metadata["meaning"] for f in dataclasses.fields(SynthesisStats)}
    stats_columns = {c.name: c.meaning for c in STATS_COLUMNS}
    assert stats_columns == fields
    assert set(fields) <= set(SCHEMA.names)
    assert SCHEMA.field("iteration_seconds").type == pa.list_(pa.float64())
    assert SCHEMA.field("peak_memory_bytes").type == pa.int64()


def test_warmup_is_left_out_of_the_per_iteration_statistics(work: list[WorkItem]) -> None:
    stats = replace(fake_stats(work[0]), iteration_seconds=[9.0, 1.0, 2.0, 3.0])
    assert stats.seconds_per_iteration == 2.5 and stats.warmup_iterations == 0
    warm = stats.with_warmup(1)
    assert (warm.warmup_iterations, warm.seconds_per_iteration) == (1, 2.0)
    assert (warm.seconds_per_iteration_p25, warm.seconds_per_iteration_p75) == (1.5, 2.5)
    assert stats.with_warmup(10).warmup_iterations == 3  # at least one iteration is kept
    row = make_row(work[0], "ok", 1, stats=warm)
    assert row["seconds_per_iteration"] == 2.0 and row["warmup_iterations"] == 1


def test_read_results_reads_only_the_columns_asked_for(tmp_path: Path, work: list[WorkItem]) -> None:
    store = ResultTable(OutputRoot(str(tmp_path)))
    store.append([make_row(work[0], "ok", 1, stats=fake_stats(work[0]))])
    store.compact()
    store.append([make_row(work[1], "failed", 1, error="bad")])  # one compacted file + one part
    table = read_results(tmp_path, ["item_id", "status"])
    assert table.column_names == ["item_id", "status"] and table.num_rows == 2
    ok = read_results(tmp_path, ["item_id"], where=pc.field("status") == "ok")
    assert ok["item_id"].to_pylist() == [work[0].item_id]
    with pytest.raises(KeyError, match="no_such_column"):
        read_results(tmp_path, ["no_such_column"])
    # the same rows through every way of naming the location
    for location in (str(tmp_path / RESULTS_FILE), f"file://{tmp_path}", f"file://{tmp_path}/{RESULTS_FILE}"):
        assert read_results(location, ["item_id"]).num_rows == 2
    assert read_results(tmp_path / "nothing-yet").num_rows == 0


def test_tables_written_before_a_column_existed_read_it_as_null(tmp_path: Path, work: list[WorkItem]) -> None:
    row = make_row(work[0], "ok", 1, stats=fake_stats(work[0]))
    old = to_table([row]).drop_columns(["final_tv_loss", "engine_seconds"])
    pq.write_table(old, tmp_path / RESULTS_FILE)
    ResultTable(OutputRoot(str(tmp_path))).append([row])
    table = read_results(tmp_path, ["item_id", "final_tv_loss", "final_total_loss"])
    assert table.num_rows == 2
    assert sorted(table["final_tv_loss"].to_pylist(), key=str) == [0.0, None]
    assert table["final_total_loss"].to_pylist() == [4.0, 4.0]


def test_a_parquet_file_that_is_not_a_results_table_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / RESULTS_FILE)
    with pytest.raises(ResultsError, match=r"results\.parquet: not an nst results table: missing columns"):
        read_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError, match="not a Parquet file"):
        read_results(tmp_path)


def test_a_damaged_table_file_says_how_to_recover(tmp_path: Path, work: list[WorkItem]) -> None:
    """The error names the damaged file of the output root and the move that recovers from
    it (after which the table reads again); a file the user named gets no such advice."""
    root = OutputRoot(str(tmp_path))
    ResultTable(root).append([make_row(work[0], "ok", 1, stats=fake_stats(work[0]))])
    part = next((tmp_path / PARTS_DIR).glob("*.parquet"))
    for damaged, left in ((tmp_path / RESULTS_FILE, 1), (part, 0)):
        damaged.write_bytes(b"not parquet at all")
        with pytest.raises(ResultsError) as error:
            read_results(tmp_path)
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{damaged}: not a Parquet file"), message
        assert f"move it aside (mv {damaged} {damaged}.damaged) and run nst render again" in message
        assert "recovers every finished item from its image" in message
        damaged.rename(f"{damaged}.damaged")  # as advised: no table's file any more
        assert read_results(tmp_path).num_rows == left
    named = tmp_path / "mine.parquet"
    named.write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError) as error:
        read_results(str(named))
    assert "move it aside" not in str(error.value)


def test_where_rows_are_never_names_a_missing_file(tmp_path: Path, work: list[WorkItem]) -> None:
    """After a run stopped before its final merge the rows are only in part files: the
    summary names the root, the parts and how to read them, not results.parquet."""
    root = OutputRoot(str(tmp_path / "out"))
    assert where_rows_are(root) == f"none yet in {tmp_path / 'out'}"
    store = ResultTable(root)
    store.append([make_row(item, "ok", 1, stats=fake_stats(item)) for item in work[:2]])
    said = where_rows_are(root)
    assert not (tmp_path / "out" / RESULTS_FILE).exists() and RESULTS_FILE + " and" not in said
    assert said.startswith(f"{tmp_path / 'out'} (1 part file in {PARTS_DIR}/"), said
    assert f"read_results('{tmp_path / 'out'}') reads them all now" in said
    store.compact()
    assert where_rows_are(root) == str(tmp_path / "out" / RESULTS_FILE)
    store.append([make_row(work[2], "ok", 1, stats=fake_stats(work[2]))])
    assert f"({RESULTS_FILE} and 1 part file in {PARTS_DIR}/" in where_rows_are(root)


def test_no_timed_iteration_is_null_not_nan(tmp_path: Path, work: list[WorkItem]) -> None:
    """A synthesis with no iteration (iterations=0, or cancelled at once) has no per-iteration
    time: null in Parquet (and JSON), which the fits skip, never NaN."""
    empty = replace(fake_stats(work[0]), iteration_seconds=[], total_losses=[], iterations=0)
    assert empty.seconds_per_iteration is None and empty.seconds_per_iteration_p75 is None
    store = ResultTable(OutputRoot(str(tmp_path)))
    store.append([make_row(work[0], "ok", 1, stats=empty)])
    row = read_results(tmp_path, ["seconds_per_iteration", "seconds_per_iteration_p25"]).to_pylist()[0]
    assert row == {"seconds_per_iteration": None, "seconds_per_iteration_p25": None}
    json.dumps(empty.to_dict(), allow_nan=False)  # valid JSON


def test_a_row_with_a_key_that_is_no_column_is_refused(work: list[WorkItem]) -> None:
    row = make_row(work[0], "ok", 1)
    with pytest.raises(KeyError, match="typo_column"):
        to_table([{**row, "typo_column": 1}])


def test_an_unknown_filesystem_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"^foo://bucket/run: cannot read results there \("):
        read_results("foo://bucket/run")


# ---------------------------------------------------------------------------- buffering, compaction, recovery


def test_buffered_appends_write_few_part_files(tmp_path: Path, work: list[WorkItem]) -> None:
    """5,000 rows appended one at a time, as a run's driver does, make 5 part files, not 5,000."""
    store = ResultTable(OutputRoot(str(tmp_path)), flush_rows=1000, flush_seconds=3600)
    for n in range(5000):
        store.append([make_row(work[n % 4], "ok", n + 1)])
        if n == 998:
            assert store.buffered == 999 and read_results(tmp_path).num_rows == 0  # not written yet
    assert store.buffered == 0 and len(part_files(tmp_path)) == 5
    store.append([make_row(work[0], "failed", 5001, error="late")])
    assert read_results(tmp_path).num_rows == 5000
    store.flush()
    table = read_results(tmp_path, ["attempt"])
    assert sorted(table["attempt"].to_pylist()) == list(range(1, 5002))
    assert len(part_files(tmp_path)) == 6
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_an_old_buffer_is_written_when_the_next_row_arrives(tmp_path: Path, work: list[WorkItem]) -> None:
    store = ResultTable(OutputRoot(str(tmp_path)), flush_rows=1000, flush_seconds=0.05)
    store.append([make_row(work[0], "ok", 1)])
    assert store.buffered == 1
    time.sleep(0.06)
    store.append([make_row(work[1], "ok", 1)])
    assert store.buffered == 0 and read_results(tmp_path).num_rows == 2


def test_incremental_compaction_keeps_every_row_once(tmp_path: Path, work: list[WorkItem]) -> None:
    """Levels of compact_at files merge into one file of the next level as parts arrive,
    so the part count stays bounded; every row is there exactly once, before and after
    the final compaction."""
    store = ResultTable(OutputRoot(str(tmp_path)), compact_at=4)  # every append is a part
    most = 0
    for n in range(1, 101):
        store.append([make_row(work[n % 4], "ok", n)])
        most = max(most, len(part_files(tmp_path)))
        assert sorted(read_results(tmp_path, ["attempt"])["attempt"].to_pylist()) == list(range(1, n + 1))
    # 100 = 1·64 + 2·16 + 1·4: levels 3, 2, 1 hold 1, 2 and 1 files, level 0 none
    assert sorted(p.name.split("-")[0] for p in part_files(tmp_path)) == ["L1", "L2", "L2", "L3"]
    assert most <= 3 * 4  # never more than (compact_at - 1) files per level, plus the new one
    assert store.compact() == 4
    assert part_files(tmp_path) == []
    assert sorted(pq.read_table(tmp_path / RESULTS_FILE)["attempt"].to_pylist()) == list(range(1, 101))


def test_a_merge_streams_in_row_groups(tmp_path: Path, work: list[WorkItem]) -> None:
    store = ResultTable(OutputRoot(str(tmp_path)), flush_rows=30_000)
    store.append([make_row(work[n % 4], "ok", n) for n in range(ROW_GROUP_ROWS * 2 + 5)])
    store.compact()
    metadata = pq.ParquetFile(tmp_path / RESULTS_FILE).metadata
    assert metadata.num_rows == ROW_GROUP_ROWS * 2 + 5
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [
        ROW_GROUP_ROWS,
        ROW_GROUP_ROWS,
        5,
    ]


def test_parts_left_by_a_crash_after_a_merge_count_once(tmp_path: Path, work: list[WorkItem]) -> None:
    """A merge that was not followed by the deletion of its sources (the driver died
    between the two) neither doubles rows for readers nor gets merged twice."""
    root = OutputRoot(str(tmp_path))
    store = ResultTable(root)
    for n in range(1, 4):
        store.append([make_row(work[0], "ok", n)])
    parts = root.list_files(PARTS_DIR, ".parquet")
    merge_files(root, parts, RESULTS_FILE)  # merged, sources still there: as after a crash
    assert len(part_files(tmp_path)) == 3
    assert sorted(read_results(tmp_path, ["attempt"])["attempt"].to_pylist()) == [1, 2, 3]
    again = ResultTable(root)
    again.append([make_row(work[1], "ok", 4)])
    assert again.compact() == 1  # only the new part: the leftovers were deleted, not merged
    assert part_files(tmp_path) == []
    assert sorted(read_results(tmp_path, ["attempt"])["attempt"].to_pylist()) == [1, 2, 3, 4]


def _write_output(root: OutputRoot, item: WorkItem, item_id: str) -> None:
    """An output image as a worker writes it: encode_png at the item's shape, with the
    item id (``item_id``) and the parameters the item implies in its text."""
    height, width = item.shape
    image = Image.new("RGB", (width, height), (200, 30, 30))
    metadata = {**implied_text(item), "nst:item_id": item_id, "nst:iterations": 7, "nst:loss_evaluations": 9}
    metadata["nst:final_losses"] = {"content": 1.0, "style": 2.0, "total": 3.0}
    root.write_bytes(item.output_path, encode_png(image, metadata))


def test_an_image_without_its_row_is_recovered_not_rerendered(tmp_path: Path, work: list[WorkItem]) -> None:
    """The driver was killed with rows in its buffer: the images carry their item ids, so
    the next run records them as ok (from the image) instead of rendering them again."""
    root = OutputRoot(str(tmp_path / "out"))
    store = ResultTable(root)
    done, lost, stranger, missing = work
    store.append([make_row(done, "ok", 1)])
    _write_output(root, done, done.item_id)
    _write_output(root, lost, lost.item_id)  # image written, row never flushed
    _write_output(root, stranger, "another-item")  # another item's image at this path
    (tmp_path / "out" / missing.output_path).parent.mkdir(parents=True, exist_ok=True)

    check = check_done(store, work)
    assert (check.done, check.recovered) == ([done], [lost])
    assert check.todo == [stranger, missing]
    assert read_results(root).num_rows == 1  # checking writes nothing

    resumed = skip_done(work, store, force=False)
    assert resumed.todo == [stranger, missing]
    assert set(completed(store)) == {done.item_id, lost.item_id}
    row = next(r for r in read_results(root).to_pylist() if r["item_id"] == lost.item_id)
    assert (row["status"], row["attempt"], row["error"]) == ("ok", 0, None)
    # the image's own size (the item's shape: recovery takes no image of another)
    assert (row["width"], row["height"], row["pixels"], row["iterations"]) == (48, 32, 1536, 7)
    assert (row["final_total_loss"], row["seconds_per_iteration"]) == (3.0, None)
    assert row["output_path"] == lost.output_path and row["content_hash"] == lost.content_hash
    # recorded once: the next check finds both done
    assert check_done(store, work).done == [done, lost]
    assert skip_done(work, store, force=True).todo == work


def test_a_damaged_output_is_rendered_again(tmp_path: Path, work: list[WorkItem]) -> None:
    root = OutputRoot(str(tmp_path))
    root.write_bytes(work[0].output_path, b"\x89PNG\r\n\x1a\n truncated")
    assert check_done(ResultTable(root), work[:1]).todo == work[:1]


def test_the_runs_table_records_each_run(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path))
    assert read_runs(root).num_rows == 0 and read_runs(root).schema == RUNS_SCHEMA
    log = RunLog(root)
    first = log.start("tiny", total=4)
    running = read_runs(root).to_pylist()
    assert len(running) == 1 and running[0]["state"] == "running" and running[0]["finished_at"] is None
    log.finish(first, rendered=3, failed=1, workers=2)
    second = log.start("tiny", total=4)
    log.finish(second, "interrupted", skipped=3)
    runs = sorted(read_runs(str(tmp_path / RESULTS_FILE)).to_pylist(), key=lambda r: r["started_at"])
    assert [(r["state"], r["rendered"], r["skipped"], r["failed"]) for r in runs] == [
        ("finished", 3, 0, 1),
        ("interrupted", 0, 3, 0),
    ]
    assert runs[0]["run_id"] != runs[1]["run_id"] and runs[0]["wall_seconds"] >= 0
    assert runs[0]["nst_version"] == __version__ and runs[0]["manifest_name"] == "tiny"
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))
    (tmp_path / RUNS_FILE).write_bytes(b"damaged")
    with pytest.raises(ResultsError, match=r"runs\.parquet: cannot read the runs table"):
        read_runs(root)
