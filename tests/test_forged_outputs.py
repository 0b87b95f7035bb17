"""An image is taken as an item's result only when it shows what the item implies (issue
19, failure 2): its output shape, RGB, and the parameters and input ids in its text, not
only a copied ``nst:item_id``. Real images and tables; the last test renders on a real
local Ray."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image
from typer.testing import CliRunner

from nst_engine.cli.main import app
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import run_render
from nst_engine.engine.images import encode_png, read_png_metadata
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.results.provenance import ITEM_ID_KEY, implied_text
from nst_engine.results.resume import check_done
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import rows, tiny_manifest


@pytest.fixture
def items(tmp_path: Path) -> list[WorkItem]:
    """Four real work items (2 contents × 2 styles at 32 px: 32x27 each); none rendered."""
    work = sorted(
        expand(load_manifest(tiny_manifest(tmp_path, contents=2, styles=2))), key=lambda i: i.output_path
    )
    assert [i.shape for i in work] == [(27, 32)] * 4
    return work


def png(size: tuple[int, int], text: dict[str, object], mode: str = "RGB") -> bytes:
    """A whole PNG of noise, ``size`` (width, height), with ``text`` as its PNG text."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels).convert(mode), text)


def forgeries(items: list[WorkItem]) -> dict[str, bytes]:
    """item_id -> a forged image for the first three items, each carrying that item's id:
    the audit's 1×1 PNG (every text chunk of a genuine image copied), a greyscale image of
    the right size, and a right-sized RGB image rendered with other parameters."""
    one, grey, other, _ = items
    text = implied_text(other)
    return {
        one.item_id: png((1, 1), implied_text(one)),
        grey.item_id: png((32, 27), implied_text(grey), mode="L"),
        other.item_id: png((32, 27), {**text, "nst:params": {**text["nst:params"], "iterations": 500}}),
    }


def test_an_image_with_a_copied_item_id_is_neither_recovered_nor_verified(tmp_path: Path, items) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    store = ResultTable(root)
    forged = forgeries(items)
    genuine = items[3]
    for item in items:
        root.write_bytes(item.output_path, forged.get(item.item_id) or png((32, 27), implied_text(item)))

    # no rows (the driver killed before its flush): only the genuine image is recovered
    check = check_done(store, items)
    assert (check.recovered, check.todo) == ([genuine], items[:3])
    assert [row["item_id"] for row in check.rows] == [genuine.item_id]

    # ok rows from before output_bytes: every image is read, the forged ones are redone
    store.append([make_row(item, "ok", 1) for item in items])
    check = check_done(store, items)
    assert (check.done, check.todo) == ([genuine], items[:3])
    assert check.redo == {
        items[0].item_id: "image size differs (1x1, the item's is 32x27)",
        items[1].item_id: "image mode differs (L, not RGB)",
        items[2].item_id: "image parameters differ (nst:params)",
    }


def test_an_init_image_that_moved_is_no_mismatch(tmp_path: Path, items) -> None:
    """An init image counts by its contents (in the item id), not its path: an image
    rendered before the init image moved is still the item's."""
    item = dataclasses.replace(
        items[0], config=dataclasses.replace(items[0].config, init=str(tmp_path / "s0.png"))
    )
    text = implied_text(item)
    root = OutputRoot(str(tmp_path / "out"))
    root.write_bytes(
        item.output_path, png((32, 27), {**text, "nst:params": {**text["nst:params"], "init": "old/s0.png"}})
    )
    assert check_done(ResultTable(root), [item]).recovered == [item]


def test_verify_outputs_refuses_a_forged_image_that_its_row_vouches_for(tmp_path: Path, items) -> None:
    """The audit's second half: once such an image was recovered, its row recorded the
    forgery's size and checksum, and ``--verify-outputs`` passed it. The size alone still
    vouches for it without ``verify`` (the default check reads no image: see the trust
    note in ``results.provenance``); reading it, the item's shape is checked."""
    item = items[0]
    root = OutputRoot(str(tmp_path / "out"))
    store = ResultTable(root)
    forged = png((1, 1), implied_text(item))
    root.write_bytes(item.output_path, forged)
    sha = hashlib.sha256(forged).hexdigest()
    store.append([make_row(item, "ok", 0, output_bytes=len(forged), output_sha256=sha)])
    store.flush()

    assert check_done(store, [item]).done == [item]  # trusted by its listed size
    full = check_done(store, [item], verify=True)
    assert full.todo == [item]
    assert full.redo == {item.item_id: "image size differs (1x1, the item's is 32x27)"}
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "tiny.yaml"), "--json", "--verify-outputs"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["done"], plan["redo"], plan["redo_reasons"]) == (0, 1, {"image size differs": 1})


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def test_a_forged_image_whose_row_was_lost_is_rendered_again(local_ray, tmp_path: Path) -> None:
    """Rendered for real, then the rows lost and one image replaced by a 1×1 PNG with every
    text chunk of the genuine one: the rerun recovers the other image and renders the
    forged one's item again (it used to record it as ok, 1×1)."""
    manifest = tiny_manifest(tmp_path, contents=2, styles=1)
    plan = load_manifest(manifest)
    items = sorted(expand(plan), key=lambda i: i.output_path)
    options = PoolOptions(threads_per_actor=1, cpu_actors=1)
    summary = run_render(items, plan.weights, OutputRoot(plan.output), options)
    assert summary.rendered == 2
    output = Path(plan.output)
    forged, kept = (output / i.output_path for i in items)
    text = read_png_metadata(forged)
    assert text[ITEM_ID_KEY] == items[0].item_id and "nst:params" in text
    forged.write_bytes(png((1, 1), dict(text)))
    (output / "results.parquet").unlink()
    shutil.rmtree(output / "results.parts", ignore_errors=True)
    kept_mtime = kept.stat().st_mtime_ns

    summary = run_render(items, plan.weights, OutputRoot(plan.output), options)
    assert (summary.rendered, summary.skipped, summary.failed) == (1, 1, [])
    assert kept.stat().st_mtime_ns == kept_mtime
    by_item = {r["item_id"]: r for r in rows(output)}
    again, recovered = by_item[items[0].item_id], by_item[items[1].item_id]
    assert (again["status"], again["attempt"], again["width"], again["height"]) == ("ok", 1, 32, 27)
    assert (recovered["status"], recovered["attempt"]) == ("ok", 0)
    with Image.open(io.BytesIO(forged.read_bytes())) as image:
        assert image.size == (32, 27)
    final = check_done(ResultTable(OutputRoot(plan.output)), items, verify=True)
    assert len(final.done) == 2 and final.redo == {}
