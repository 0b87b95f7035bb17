"""A result is trusted only when its image is verified: by its listed size by default,
by reading it (decode, item id, checksum) when the size cannot vouch for it or with
``--verify-outputs``; anything else is rendered again with the reason on its new rows."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image
from typer.testing import CliRunner

from nst_engine.cli.main import app
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import run_render, skip_done
from nst_engine.engine.images import encode_png
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.reports.plan import make_plan
from nst_engine.results.provenance import implied_text
from nst_engine.results.resume import check_done, reason_kind
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable, read_results
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]
OPTIONS = PoolOptions(threads_per_actor=1, cpu_actors=2)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_middle(path: Path) -> None:
    """Silent corruption: 8 bytes in the middle inverted, the size unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- without Ray


@pytest.fixture
def items(tmp_path: Path) -> list[WorkItem]:
    """Four real work items (2 contents × 2 styles at 32 px); no image rendered."""
    work = expand(load_manifest(tiny_manifest(tmp_path, contents=2, styles=2)))
    assert len(work) == 4
    return sorted(work, key=lambda i: i.output_path)


def png_of(item: WorkItem | None, height: int = 27) -> bytes:
    """A whole PNG of noise as a worker writes it for ``item`` (its id and the parameters
    it implies in its text; None: no text of an item)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, 32, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels), implied_text(item) if item else {"nst:iterations": 3})


def write(root: OutputRoot, item: WorkItem, data: bytes) -> bytes:
    root.write_bytes(item.output_path, data)
    return data


def test_older_rows_without_output_bytes_are_verified_by_decoding(tmp_path: Path, items) -> None:
    """Rows written before output_bytes existed: each image is read once (decode, id);
    whole ones are done and get an attempt-0 row with their size, so the next rerun
    trusts them by size alone; damaged ones are redone with the reason."""
    whole, half, foreign, anonymous = items
    root = OutputRoot(str(tmp_path / "out"))
    store = ResultTable(root)
    store.append([make_row(i, "ok", 1) for i in items])  # no output_bytes: an older table
    whole_png = write(root, whole, png_of(whole))
    write(root, half, png_of(half)[:1000])
    write(root, foreign, png_of(whole))
    write(root, anonymous, png_of(None))

    check = check_done(store, items)
    assert check.images_read == 4
    assert (check.done, check.recovered, check.todo) == ([whole], [], [half, foreign, anonymous])
    assert check.redo[half.item_id].startswith("image does not decode (")
    assert "the ok row recorded" not in check.redo[half.item_id]  # no size was recorded
    assert check.redo[foreign.item_id] == "image belongs to another item"
    assert check.redo[anonymous.item_id] == "image carries no item id"
    [row] = check.rows
    assert (row["item_id"], row["status"], row["attempt"]) == (whole.item_id, "ok", 0)
    assert (row["output_bytes"], row["output_sha256"]) == (len(whole_png), sha256(whole_png))
    assert read_results(root).num_rows == 4  # checking writes nothing

    skip_done(items, store, force=False)  # records the verified image's size, once
    again = check_done(store, items)
    assert again.done == [whole] and again.rows == []
    assert again.images_read == 3  # the damaged ones only: the whole one is trusted by size now
    # trusted by size alone: same-size damage passes the default check, not a full one
    (tmp_path / "out" / whole.output_path).write_bytes(b"\0" * len(whole_png))
    assert check_done(store, items).done == [whole]
    full = check_done(store, items, verify=True)
    assert whole in full.todo and full.redo[whole.item_id] == "image does not decode (not an image)"


def test_a_checksum_that_differs_is_redone(tmp_path: Path, items) -> None:
    """An image that decodes and carries its id, but is not the bytes the worker wrote."""
    same_size, other_size, _, _ = items
    root = OutputRoot(str(tmp_path))
    store = ResultTable(root)
    written = [(i, png_of(i)) for i in (same_size, other_size)]
    store.append(
        [make_row(i, "ok", 1, output_bytes=len(png), output_sha256=sha256(png)) for i, png in written]
    )
    tampered = bytearray(written[0][1])
    tampered[-1] ^= 0xFF  # the end chunk's CRC, which decoders do not check: it still decodes
    write(root, same_size, bytes(tampered))
    replaced = write(root, other_size, png_of(other_size, height=28))  # its id, other pixels
    recorded = len(written[1][1])
    assert len(replaced) != recorded

    check = check_done(store, items[:2])
    assert check.done == [same_size] and check.images_read == 1  # the same size is trusted unread
    why = f"checksum differs; image is {len(replaced)} bytes, the ok row recorded {recorded}"
    assert check.redo == {other_size.item_id: why}
    full = check_done(store, items[:2], verify=True)
    assert full.images_read == 2 and full.done == []
    assert full.redo[same_size.item_id] == "checksum differs"


def test_the_plan_counts_redo_apart_from_new_items(tmp_path: Path, items) -> None:
    zero, also_zero, missing, fine = items
    root = OutputRoot(str(tmp_path / "out"))
    store = ResultTable(root)
    done = [zero, also_zero, missing, fine]
    pngs = {i.item_id: png_of(i) for i in done}
    store.append([make_row(i, "ok", 1, output_bytes=len(pngs[i.item_id])) for i in done])
    for item in (zero, also_zero, fine):
        write(root, item, pngs[item.item_id])
    for item in (zero, also_zero):
        (tmp_path / "out" / item.output_path).write_bytes(b"")

    plan = make_plan("m.yaml", items, store)
    assert (plan.done, plan.to_render, plan.redo) == (1, 3, 3)
    assert plan.redo_reasons == {"image is 0 bytes": 2, "image missing": 1}
    assert plan.check is not None
    assert plan.check.redo[zero.item_id] == f"image is 0 bytes, the ok row recorded {len(pngs[zero.item_id])}"
    assert "3 to render (3 redo: 2 image is 0 bytes, 1 image missing), 0 bad inputs" in plan.one_line()
    assert plan.to_json()["redo_reasons"] == {"image is 0 bytes": 2, "image missing": 1}

    manifest = tmp_path / "tiny.yaml"
    result = CliRunner().invoke(app, ["plan", str(manifest)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "new 0 redo 3 (damaged or missing outputs) 2 image is 0 bytes 1 image missing" in text


def test_reason_kinds_leave_out_the_details() -> None:
    assert reason_kind("image is 0 bytes, the ok row recorded 123456") == "image is 0 bytes"
    assert reason_kind("image does not decode (image file is truncated)") == "image does not decode"
    assert reason_kind("checksum differs; image is 5 bytes, the ok row recorded 6") == "checksum differs"
    assert reason_kind("image missing") == "image missing"


# ---------------------------------------------------------------------------- on a real local Ray


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def render(manifest: Path):
    plan = load_manifest(manifest)
    items = expand(plan)
    return run_render(items, plan.weights, OutputRoot(plan.output), OPTIONS), items


def test_damaged_outputs_are_redone_with_their_reason(local_ray, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=2)
    output = tmp_path / "out"
    summary, items = render(manifest)
    assert (summary.rendered, len(summary.failed)) == (8, 0)
    first = rows(output)
    for row in first:  # the worker recorded what it wrote
        data = (output / row["output_path"]).read_bytes()
        assert (row["output_bytes"], row["output_sha256"]) == (len(data), sha256(data))
        assert row["redo_reason"] is None

    paths = sorted(output / i.output_path for i in items)
    sizes = {p: p.stat().st_size for p in paths}
    zero, half, deleted, flipped = paths[:4]
    # another item's whole image (with its id), of another size so the listing can tell
    foreign, donor = next((p, d) for p in paths[4:] for d in paths if sizes[d] != sizes[p])
    untouched = [p for p in paths[4:] if p != foreign]
    shutil.copyfile(donor, foreign)  # first, while the donor is whole
    zero.write_bytes(b"")
    half.write_bytes(half.read_bytes()[: sizes[half] // 2])
    deleted.unlink()
    flip_middle(flipped)
    flipped_bytes = flipped.read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in [*untouched, flipped]}

    summary, _ = render(manifest)
    assert (summary.rendered, summary.skipped, len(summary.failed)) == (4, 4, 0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the rest was not rendered again
    by_path = {r["output_path"]: r for r in rows(output) if r["redo_reason"] is not None}
    relative = {p: p.relative_to(output).as_posix() for p in paths}
    assert set(by_path) == {relative[p] for p in (zero, half, deleted, foreign)}
    assert by_path[relative[zero]]["redo_reason"] == f"image is 0 bytes, the ok row recorded {sizes[zero]}"
    assert by_path[relative[half]]["redo_reason"].startswith("image does not decode (")
    assert by_path[relative[half]]["redo_reason"].endswith(
        f"; image is {sizes[half] // 2} bytes, the ok row recorded {sizes[half]}"
    )
    assert by_path[relative[deleted]]["redo_reason"] == "image missing"
    assert by_path[relative[foreign]]["redo_reason"] == "image belongs to another item"
    assert {(r["status"], r["attempt"]) for r in by_path.values()} == {("ok", 1)}
    # the trade-off of the default check: same-size corruption is trusted by its size
    assert flipped.read_bytes() == flipped_bytes

    cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "--cpu-actors", "1", "-q"]
    plain = CliRunner().invoke(app, ["plan", str(manifest), "--json"])
    assert json.loads(plain.stdout)["redo"] == 0
    verified = json.loads(
        CliRunner().invoke(app, ["plan", str(manifest), "--json", "--verify-outputs"]).stdout
    )
    assert (verified["done"], verified["redo"], verified["verified"]) == (7, 1, True)
    proc = subprocess.run([*cmd, "--verify-outputs"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "1 to render (1 redo: 1 image does not decode)" in said
    assert {p: p.stat().st_mtime_ns for p in untouched} == {p: mtimes[p] for p in untouched}
    redone = [r for r in rows(output) if r["output_path"] == relative[flipped] and r["redo_reason"]]
    assert len(redone) == 1 and redone[0]["redo_reason"].startswith("image does not decode (")
    assert flipped.read_bytes() != flipped_bytes
    assert len(assert_outputs_whole(output)) == 8
    final = check_done(ResultTable(OutputRoot(str(output))), items, verify=True)
    assert len(final.done) == 8 and final.redo == {}


def test_an_image_without_its_row_is_adopted_with_its_size(local_ray, tmp_path: Path) -> None:
    """The rows are lost (results deleted), the images kept: the rerun rebuilds the rows
    from the images (attempt 0, output_bytes of the image) and renders nothing."""
    manifest = tiny_manifest(tmp_path, contents=2, styles=1)
    output = tmp_path / "out"
    summary, items = render(manifest)
    assert summary.rendered == 2
    pngs = {i.output_path: (output / i.output_path) for i in items}
    mtimes = {p: p.stat().st_mtime_ns for p in pngs.values()}
    (output / "results.parquet").unlink()
    shutil.rmtree(output / "results.parts", ignore_errors=True)
    assert rows(output) == []

    summary, _ = render(manifest)
    assert (summary.rendered, summary.skipped, summary.workers) == (0, 2, 0)  # no worker started
    assert {p: p.stat().st_mtime_ns for p in pngs.values()} == mtimes
    adopted = rows(output)
    assert sorted(r["output_path"] for r in adopted) == sorted(pngs)
    for row in adopted:
        data = pngs[row["output_path"]].read_bytes()
        assert (row["status"], row["attempt"], row["redo_reason"]) == ("ok", 0, None)
        assert (row["output_bytes"], row["output_sha256"]) == (len(data), sha256(data))
    check = check_done(ResultTable(OutputRoot(str(output))), items)
    assert len(check.done) == 2 and check.images_read == 0  # trusted by size from now on
