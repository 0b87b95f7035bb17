"""``nst report`` on a real results file: pages, escaping, pagination, thumbnails, a real browser.

The results are made once per module without Ray: real tiny syntheses (random VGG, 32-48
px, 2 iterations, well under a second each) written by the project's own ResultTable.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_engine.cli.main import app
from nst_engine.engine import Stylizer, random_weights
from nst_engine.engine.images import encode_png
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.reports.build import build_report
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable
from nst_engine.storage.roots import OutputRoot
from tests.browser import chromium
from tests.browser import flags as browser_flags
from tests.ray_helpers import tiny_manifest

EVIL = '<script>alert("boom")</script> & out of memory'
EVIL_CONTENT = "/nowhere/<img src=x onerror=alert(1)>.png"
START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results.parquet with 11 ok items (one rendered twice), 2 failed rows, 1 skipped row."""
    folder = tmp_path_factory.mktemp("report-inputs")
    plan = load_manifest(tiny_manifest(folder, contents=2, styles=2, sizes=(32, 40, 48), iterations=2))
    items = expand(plan)
    assert len(items) == 12
    root = OutputRoot(plan.output)
    store = ResultTable(root)
    stylizer = Stylizer(random_weights(seed=0), device="cpu")
    rows = []
    for n, item in enumerate(items[:-1]):
        config = replace(item.config, scales=2) if n == 1 else item.config  # one coarse-to-fine
        config = replace(config, tile=16) if n == 2 else config  # one tiled
        result = stylizer.synthesize(item.content_path, item.style_paths, config)
        root.write_bytes(item.output_path, encode_png(result.image))
        when = {"started_at": START + timedelta(seconds=n), "finished_at": START + timedelta(seconds=n + 1)}
        rows.append(make_row(item, "ok", 1, stats=result.stats, **when))
        if n == 0:  # an older attempt of the same item: the gallery shows the latest only
            older = {"started_at": START - timedelta(hours=1), "finished_at": START - timedelta(hours=1)}
            rows.append(make_row(item, "ok", 1, stats=result.stats, **older))
            rows.append(make_row(item, "skipped", 1))
    evil = replace(items[-1], content_path=EVIL_CONTENT)
    rows.append(make_row(evil, "failed", 1, error=EVIL, finished_at=START + timedelta(minutes=5)))
    rows.append(
        make_row(items[-1], "failed", 2, error="worker died", finished_at=START + timedelta(minutes=6))
    )
    store.append(rows[:5])
    store.append(rows[5:])
    store.compact()
    return Path(plan.output) / "results.parquet"


def gallery_rows(page: str) -> int:
    return page.count('<tr class="item">')


def test_report_pages_escaping_and_pagination(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = build_report(results, out, page_size=60)
    index = (out / "index.html").read_text()
    assert summary.index == out / "index.html" and summary.items == 11 and summary.pages == 1
    assert gallery_rows(index) == 11  # one row per item, the older attempt left out
    assert not (out / "gallery-2.html").exists()
    # every result links to its full-size image, relative to the report folder
    links = re.findall(r'<a href="([^"#]+\.png)"', index)
    assert len(links) == 11 and all((out / link).is_file() for link in links)
    # counts per status, failures with their attempt and escaped error text
    assert re.search(r'class="ok">ok <b>12</b>', index) and re.search(
        r'class="failed">failed <b>2</b>', index
    )
    assert re.search(r'class="skipped">skipped <b>1</b>', index)
    assert "&lt;script&gt;alert(&quot;boom&quot;)&lt;/script&gt; &amp; out of memory" in index
    assert "<script>alert" not in index and "<img src=x" not in index
    assert "&lt;img src=x onerror=alert(1)&gt;.png × s1 @ 48" in index
    assert "worker died" in index
    assert index.count("<dt>scales</dt>") == 1 and re.search(r"\d+x\d+ px × 2 it → \d+x\d+ px × 2 it", index)
    assert index.count("<dt>tiles</dt>") == 1 and re.search(r"<dd>\d+ of 16 px</dd>", index)
    # plots written and shown; thumbnails: one per result, content and style (shared)
    assert set(summary.plots) == {
        "plots/time_per_iteration.png",
        "plots/peak_memory.png",
        "plots/loss_curves.png",
    }
    for plot in summary.plots:
        assert f'src="{plot}"' in index and Image.open(out / plot).size[0] > 300
    assert summary.thumbs_created == 11 + 2 + 2 and summary.thumbs_reused == 0
    thumbs = sorted((out / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 15 and all(max(Image.open(t).size) <= 256 for t in thumbs)
    # a device table with sizes and, when the scaling module fits (3 sizes here), k
    assert '<h2 id="devices">' in index and '<td class="num">48</td>' in index
    assert "scaling k = " in index

    # pagination: 11 items, 2 per page -> index.html + gallery-2 ... gallery-6
    summary = build_report(results, out, page_size=2)
    assert summary.pages == 6
    assert [(out / f"gallery-{n}.html").exists() for n in range(2, 8)] == [True] * 5 + [False]
    assert gallery_rows((out / "index.html").read_text()) == 2
    assert gallery_rows((out / "gallery-6.html").read_text()) == 1
    assert 'href="gallery-2.html#gallery"' in (out / "index.html").read_text()
    build_report(results, out, page_size=60)
    assert not (out / "gallery-2.html").exists()  # stale pages of the longer report removed


def test_thumbnails_reused_on_second_run(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(results, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")}
    assert len(before) == 15
    stale = out / "thumbs" / ("0" * 24 + ".jpg")  # a thumbnail of a source that changed since
    stale.write_bytes(b"old")
    again = build_report(results, out)
    assert (again.thumbs_created, again.thumbs_reused) == (0, 15)
    assert {p: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")} == before
    assert not stale.exists()


def test_cli_report_and_bad_input(results: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-report"
    done = runner.invoke(app, ["report", str(results.parent), "-o", str(out), "--page-size", "5"])
    assert done.exit_code == 0, done.output
    assert str((out / "index.html").resolve()) in done.stdout
    assert (out / "gallery-3.html").exists()

    (tmp_path / "text.parquet").write_text("not parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    for path, why in (
        (tmp_path / "missing.parquet", "file not found"),
        (tmp_path / "text.parquet", "not a Parquet file"),
        (tmp_path / "other.parquet", "missing columns item_id"),
        (f"file://{tmp_path}/other.parquet", "missing columns item_id"),
        (tmp_path, "no results.parquet"),
        ("foo://bucket/run", "cannot read results there"),
    ):
        bad = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "r")])
        assert bad.exit_code == 2, bad.output
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], bad.stderr
        assert str(path) in lines[0] and "Traceback" not in bad.output


def test_report_from_parts_of_a_running_render(results: Path, tmp_path: Path) -> None:
    """A folder with only results.parts/ (a render still going, or killed) is reported too."""
    running = tmp_path / "running"
    ResultTable(OutputRoot(str(running))).append(pq.read_table(results).to_pylist()[:3])
    summary = build_report(running, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert summary.items == gallery_rows(page) >= 1
    assert 'class="missing"' in page  # the images are not in this folder: no broken img


def test_report_in_a_real_browser(results: Path, tmp_path: Path) -> None:
    browser = chromium()
    out = tmp_path / "report"
    summary = build_report(results, out, page_size=4)
    index = out / "index.html"
    flags = browser_flags(tmp_path / "profile", "--virtual-time-budget=5000")
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('<tr class="item">') == 4, dom[:2000]
    loaded = re.search(r'data-loaded-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    assert loaded and broken, "the page's load script did not run"
    images = index.read_text().count("<img ")
    # every img loaded: 3 plots, then content, style and result of each of the 4 rows
    assert int(broken.group(1)) == 0
    assert int(loaded.group(1)) == images >= len(summary.plots) + 4 * 3

    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file()
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is None or len(colours) > 50  # not one flat colour
