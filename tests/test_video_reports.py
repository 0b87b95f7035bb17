"""What ``nst plan``, ``nst status`` and ``nst report`` say about a render with videos.

Two tiny clips (a pan of 5 frames, and 8 frames with a cut after the fourth: 2 shots)
and one style, rendered once for the module with the real ``nst render`` (embedded local
Ray, random weights, 32 px): 13 frames in 3 shots, and both mp4s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nst_engine.cli.main import app
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.reports.build import build_report
from nst_engine.reports.plan import predict, video_plan
from nst_engine.reports.scaling import DeviceFit
from nst_engine.results.resume import DoneCheck
from nst_engine.results.status import render_status
from nst_engine.results.summary import MAX_CLIPS, ClipRows, RunRows, TableSummary, merged_clips
from nst_engine.storage.video import write_mp4
from tests.browser import chromium
from tests.browser import flags as browser_flags
from tests.test_video_io import scene

MANIFEST = """\
videos:
  - cut.mp4
  - {path: pan.mp4, later_iterations: 3}
styles: [style.png]
sizes: [32]
weights: random
params: {iterations: 6}
"""


def other(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``index`` of another scene (warm stripes), so a clip of both has a cut."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([150 + 60 * np.sin((x + 3 * index) / 2.0), 60 + 50 * np.cos(y / 3.0), 40 + 0 * x], -1)
    return frame.astype(np.uint8)


def nst(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``nst`` command line, in its own process (as a user runs it)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    command = [sys.executable, "-m", "nst_engine.cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The folder with the clips, style and manifest; ``out`` rendered; the render's output."""
    folder = tmp_path_factory.mktemp("video-reports")
    write_mp4([scene(i) for i in range(4)] + [other(i) for i in range(4)], folder / "cut.mp4", Fraction(12))
    write_mp4([scene(i) for i in range(5)], folder / "pan.mp4", Fraction(24))
    Image.fromarray(other(0)).save(folder / "style.png")
    (folder / "m.yaml").write_text(MANIFEST)
    done = nst("render", "m.yaml", "-o", "out", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout + done.stderr


def test_render_and_plan_count_clips_shots_and_frames(
    rendered: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, output = rendered
    assert "plan: 13 items (1 style, 1 size): 0 done, 13 to render, 0 bad inputs; " in output
    assert "2 clips, 3 shots, 13 frames (13 to render)" in output
    monkeypatch.chdir(folder)  # as the user who rendered it
    result = CliRunner().invoke(app, ["plan", "m.yaml", "-o", "out", "--json"])
    assert result.exit_code == 0, result.output
    video = json.loads(result.stdout)["video"]
    assert video == {"clips": 2, "outputs": 2, "shots": 3, "frames": 13, "done": 13, "to_render": 0}
    text = CliRunner().invoke(app, ["plan", "m.yaml", "-o", "fresh"]).stderr
    assert "video        2 clips, 3 shots, 13 frames (13 to render); 0 frames done" in text


def test_a_later_frame_is_predicted_at_its_own_iterations(rendered: tuple[Path, str]) -> None:
    folder, _ = rendered
    items = expand(load_manifest(folder / "m.yaml"))
    pan = [i for i in items if i.frame is not None and i.frame.clip_output.endswith("pan.mp4")]
    first, later = pan[0], pan[1]
    assert (first.config.iterations, later.config.iterations) == (6, 3)
    fit = DeviceFit("Fake GPU", "cuda", 9, 0.001, 1e-6, 1.0, 0.9, 1.1, 1e6, 1e3, 2**34, 10**7, None)
    one = predict(fit, [first]).seconds
    assert predict(fit, [later]).seconds == pytest.approx(one / 2)
    assert predict(fit, pan).seconds == pytest.approx(one * (1 + 4 / 2))


def test_status_shows_frames_done_per_clip_and_shot(rendered: tuple[Path, str]) -> None:
    folder, _ = rendered
    found = render_status(str(folder / "out"))
    clips = {c.clip: (c.frames_done, c.shots, c.failed, c.encoded) for c in found.clips}
    assert clips == {
        "style/32/cut.mp4": (8, {0: 4, 1: 4}, 0, True),
        "style/32/pan.mp4": (5, {0: 5}, 0, True),
    }
    text = CliRunner().invoke(app, ["status", str(folder / "out")]).stderr
    assert re.search(r"clips +2  \(13 frames done by any run\)", text)
    assert "style/32/cut.mp4: 8 frames done (per shot 0: 4, 1: 4); encoded" in text
    data = json.loads(CliRunner().invoke(app, ["status", str(folder / "out"), "--json"]).stdout)
    assert data["clips"][1] == {
        "clip": "style/32/pan.mp4",
        "frames_done": 5,
        "failed": 0,
        "shots": {"0": 5},
        "encoded": True,
    }
    assert data["clips_capped"] is False


def test_a_footer_keeps_frames_as_ranges_merged_once_and_capped() -> None:
    """A frame rendered again (--force) counts once; ranges join; clips stop at ``MAX_CLIPS``."""
    first = RunRows(clips={"a.frames": ClipRows({0: [[0, 3]], 1: [[6, 6]]}, failed=1)})
    again = RunRows(clips={"a.frames": ClipRows({0: [[2, 5]], 1: [[8, 9]]})})
    back = TableSummary.from_json(TableSummary({"r1": first, "r2": again}).to_json())
    clip = merged_clips(back.runs.values())["a.frames"]
    assert clip.shots == {0: [[0, 5]], 1: [[6, 6], [8, 9]]} and clip.done == 9 and clip.failed == 1
    many = RunRows(clips={f"c{n:04}.frames": ClipRows({0: [[0, 0]]}) for n in range(MAX_CLIPS + 5)})
    kept = first.merged(many).clips
    assert len(kept) == MAX_CLIPS and "a.frames" in kept and "c0000.frames" in kept


def test_report_has_a_video_section_linking_the_clips(rendered: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = rendered
    out = tmp_path / "report"
    build_report(folder / "out", out)
    index = (out / "index.html").read_text()
    section = index[index.index('<h2 id="video">') : index.index('<h2 id="devices">')]
    assert "Video (2 stylized clips)" in section and 'href="index.html#video"' in index
    rows = re.findall(r"<tr><td>(.*?)</tr>", section)
    assert len(rows) == 2
    cut = re.findall(r'<td class="num">([^<]*)</td>', rows[0])
    assert cut[:4] == ["32", "8", "0", "2"]  # size, frames ok, failed, shots
    assert all(value != "–" for value in cut)  # every mean known: both kinds of frames ran
    link = re.search(r'<a href="([^"]+)"[^>]*>style/32/cut\.mp4</a>', rows[0])
    assert link and (out / link.group(1)).resolve() == folder / "out" / "style" / "32" / "cut.mp4"
    # the table as a browser lays it out: the clip's link is there, no image broken
    flags = browser_flags(tmp_path / "profile", "--virtual-time-budget=5000")
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-broken-images="0"' in dom and "style/32/pan.mp4</a>" in dom


def test_an_image_manifest_has_no_video_plan(rendered: tuple[Path, str]) -> None:
    """Frames are what make a plan's video counts: the same items without them have none."""
    folder, _ = rendered
    items = expand(load_manifest(folder / "m.yaml"))
    assert video_plan(items, DoneCheck(todo=items)) is not None
    images = [replace(i, frame=None) for i in items]
    assert video_plan(images, DoneCheck(todo=images)) is None
