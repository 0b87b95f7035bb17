"""``nst plan``: what a render would do, from the manifest, the output root and earlier
fits; no Ray. (``nst render`` prints the same plan's line: see test_render_local.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_engine.cli.bench import _estimate_cell
from nst_engine.cli.main import app
from nst_engine.engine import SynthesisConfig
from nst_engine.engine.images import encode_png
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.reports.plan import RenderPlan, format_duration, predict
from nst_engine.reports.scaling import DeviceFit
from nst_engine.results.provenance import implied_text
from nst_engine.results.schema import make_row
from nst_engine.results.table import ResultTable, read_results
from nst_engine.runs.prepare import Prepared, plan
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import tiny_manifest
from tests.test_results import fake_stats

#: the fake device's time per iteration: 0.01 s + 1e-5 s per pixel
A, B = 0.01, 1e-5


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, list[WorkItem], Path]:
    """A manifest of 3 contents × 1 style at 32 px plus a missing content; in its output
    root one item done (row + image), one recoverable (image only), one to render, and
    an earlier benchmark of a fake device elsewhere."""
    manifest = tiny_manifest(tmp_path, contents=3, styles=1, extra_contents=("missing.png",))
    items = expand(load_manifest(manifest), skip_bad_inputs=True)
    by_name = {Path(i.content_path).name: i for i in items}
    done, lost = by_name["c0.png"], by_name["c1.png"]
    root = OutputRoot(str(tmp_path / "out"))
    ResultTable(root).append([make_row(done, "ok", 1)])
    for item in (done, lost):
        png = encode_png(Image.new("RGB", (32, 27)), implied_text(item))  # as a worker writes it
        root.write_bytes(item.output_path, png)
    bench = tmp_path / "bench"
    rows = []
    for side in (16, 32, 64):  # square sizes; memory 1 MB + 1 kB per pixel on a 2.2 MB device
        pixels = side * side
        stats = replace(
            fake_stats(items[0]),
            height=side,
            width=side,
            pixels=pixels,
            iteration_seconds=[A + B * pixels] * 3,
            device_name="Fake GPU",
            device_type="cuda",
            peak_memory_bytes=1_000_000 + 1000 * pixels,
            device_memory_bytes=2_200_000,
        )
        rows.append(make_row(items[0], "ok", 1, stats=stats, run_kind="bench"))
    ResultTable(OutputRoot(str(bench))).append(rows)
    return manifest, items, bench


def test_plan_json(setup, tmp_path: Path) -> None:
    manifest, items, bench = setup
    result = CliRunner().invoke(app, ["plan", str(manifest), "--json", "--results-for-fits", str(bench)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["manifest"] == str(manifest) and plan["output"] == str(tmp_path / "out")
    assert (plan["items"], plan["done"], plan["recoverable"], plan["to_render"]) == (4, 1, 1, 1)
    assert plan["styles"] == ["s0"] and plan["sizes"] == [32]
    [bad] = plan["bad_inputs"]
    assert "missing.png" in bad["label"] and "image file not found" in bad["error"]
    [fake] = plan["predictions"]
    todo = next(i for i in items if Path(i.content_path).name == "c2.png")
    expected = todo.config.iterations * (A + B * todo.pixels_estimate)
    assert (fake["device"], fake["device_type"]) == ("Fake GPU", "cuda")
    assert fake["seconds"] == pytest.approx(expected, rel=0.05)
    # 2.2 MB fits (2.2e6 - 1e6) / 1000 = 1200 pixels, of which the engine plans on 80%
    # (memory.SAFETY_MARGIN, placement.place): a 32x27 item (864 px) fits
    assert fake["largest_square"] == 34 and fake["sizes_too_large"] == []
    assert plan["fits_from"] == [str(bench)]
    assert read_results(tmp_path / "out").num_rows == 1  # planning writes nothing
    assert not (tmp_path / "out" / "runs.parquet").exists()

    forced = json.loads(CliRunner().invoke(app, ["plan", str(manifest), "--json", "--force"]).stdout)
    assert (forced["done"], forced["to_render"], forced["predictions"]) == (0, 3, [])


def test_plan_for_people_with_a_memory_warning(setup, tmp_path: Path) -> None:
    _manifest, _items, bench = setup
    big = tiny_manifest(tmp_path, contents=3, styles=1, sizes=(32, 64), extra_contents=("missing.png",))
    result = CliRunner().invoke(app, ["plan", str(big), "--results-for-fits", str(bench)])
    assert result.exit_code == 0, result.output
    text = result.stderr
    assert result.stdout == ""
    for line in ("items", "done", "recovered", "to render", "bad inputs"):
        assert line in text
    assert "missing.png × s0 @ 32" in text and "image file not found" in text
    assert "Fake GPU (cuda)" in text
    assert "warning: size 64 will not fit in the memory of Fake GPU; largest square that fits: 34²" in text


def test_plan_without_fits(setup) -> None:
    manifest, _items, _bench = setup
    result = CliRunner().invoke(app, ["plan", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "no fits yet" in result.stderr


def test_the_line_nst_render_prints_first(setup) -> None:
    """``nst render`` prints this line (``runs.prepare.plan(...).one_line()``) before it connects to Ray."""
    manifest, items, bench = setup
    line = plan(Prepared(manifest, load_manifest(manifest), items), False, [str(bench)]).one_line()
    assert line.startswith(
        "plan: 4 items (1 style, 1 size): 1 done, 1 recovered from their images, 1 to render, "
        "1 bad input; predicted "
    )
    assert line.endswith(" s on one Fake GPU") and "\n" not in line


def test_an_invalid_manifest_is_exit_code_2(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("sizes:", "sizez:"))
    result = CliRunner().invoke(app, ["plan", str(manifest), "--json"])
    assert result.exit_code == 2
    assert result.stdout == "" and "sizez" in result.stderr and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["plan", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "manifest file not found" in missing.stderr
    manifest = tiny_manifest(tmp_path)
    (tmp_path / "damaged.parquet").write_bytes(b"not parquet")
    for fits, why in (("nowhere", "nowhere: no results there"), ("damaged.parquet", "not a Parquet file")):
        bad = CliRunner().invoke(app, ["plan", str(manifest), "--results-for-fits", str(tmp_path / fits)])
        assert bad.exit_code == 2, bad.output
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], bad.stderr


def test_durations_read_as_people_say_them() -> None:
    shown = [format_duration(s) for s in (4.25, 42, 725, 12_000)]
    assert shown == ["4.2 s", "42 s", "12 min 5 s", "3 h 20 min"]


def test_plan_with_an_unusable_output_root_is_one_line(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1)
    done = CliRunner().invoke(app, ["plan", str(manifest), "-o", "foo://bucket/out"])
    assert done.exit_code == 2, done.output
    (line,) = done.stderr.strip().splitlines()
    # refused by the output root's probe, before planning; the location named by the
    # resolver's message (the CLI never echoes a URI itself: it may hold a secret)
    assert line.startswith("error: output root: foo://bucket/out: cannot open this filesystem")


def test_a_size_too_large_to_fit_whole_is_planned_in_tiles(setup) -> None:
    """An 80 GB device whose syntheses need 1 GB + 3 kB per pixel: 2048² fits whole,
    8192² only in tiles (and says so), and not at all when the optimizer's own state of
    the whole image is larger than the device."""
    _manifest, items, _bench = setup
    fit = DeviceFit("Big GPU", "cuda", 3, A, B, 1.0, 0.9, 1.1, 1e9, 3000.0, 80 * 10**9, 2048**2, None)

    def item(side: int, history: int) -> WorkItem:
        # L-BFGS keeps no more pairs than it has iterations: 10 iterations keep at most 10
        config = SynthesisConfig(size=side, history_size=history, iterations=max(10, history))
        return replace(items[0], size=side, shape=(side, side), pixels_estimate=side * side, config=config)

    assert fit.tile(2048, 2048, item(2048, 10).config) == 0
    tile = fit.tile(8192, 8192, item(8192, 10).config)
    assert tile and tile % 16 == 0 and tile < 8192
    assert fit.tile(8192, 8192, item(8192, 100).config) is None  # 100 pairs of 8192² images: 161 GB
    prediction = predict(fit, [item(2048, 10), item(8192, 10), item(16384, 100)])
    assert prediction.sizes_tiled == {8192: tile} and prediction.sizes_too_large == [16384]
    # tiles cost their halos and a second forward pass: more than the whole image would
    whole = fit.predict_seconds(8192 * 8192, 10)
    assert whole < fit.predict_tiled_seconds(8192, 8192, item(8192, 10).config, tile) < 3 * whole
    plan = RenderPlan("m.yaml", "out", 3, ["s0"], [2048, 8192, 16384], 0, 0, 3, predictions=[prediction])
    assert f"tiled on Big GPU (too large to fit whole): 8192 in {tile} px tiles" in plan.warnings()
    # nst estimate's cell for the same device
    assert _estimate_cell(fit, item(2048, 100).config).endswith(" s")
    assert _estimate_cell(fit, item(8192, 10).config).endswith("px tiles (too large to fit whole)")
    assert _estimate_cell(fit, item(16384, 100).config) == "does not fit in memory, even in tiles"


def test_plan_prices_the_prediction(setup) -> None:
    """``--price``: each prediction's cost is its seconds at its kind's price per hour."""
    manifest, _items, bench = setup
    args = ["plan", str(manifest), "--results-for-fits", str(bench), "--price", "cuda=3600/h"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    [fake] = json.loads(result.stdout)["predictions"]
    assert fake["cost"] == pytest.approx(fake["seconds"])  # 3600 an hour: 1 a second
    people = CliRunner().invoke(app, args)
    assert f"cost {fake['seconds']:.4g}" in people.stderr
    unpriced = CliRunner().invoke(app, [*args[:-1], "cpu=1/h", "--json"])
    assert json.loads(unpriced.stdout)["predictions"][0]["cost"] is None
    bad = CliRunner().invoke(app, [*args[:-1], "tpu=3/h"])
    assert bad.exit_code == 2 and "--price: expected KIND=AMOUNT/h" in bad.stderr
