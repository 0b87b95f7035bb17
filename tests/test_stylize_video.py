"""The real ``nst stylize-video`` in subprocesses (issue 21), with the tiny random network
on a short clip made here (tests/test_video_io.py's moving red square, AAC tone): the mp4
keeps the source's frame count, exact rate and audio; PNG frames are written; a rerun
renders only the missing frames and leaves finished ones untouched; bad input is one line
with exit 2; ``--max-frames`` and frame folders with ``--rate``. Also the runs layer
called from Python, resuming past a gap in the middle of the frames."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from nst_engine.engine import SynthesisConfig
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.runs.stylize_video import FRAME_NAME, FrameDone, VideoRequest, stylize_video
from tests.conftest import write_image
from tests.test_video_io import RATE, make_clip, scene

REPO = Path(__file__).resolve().parents[1]
FRAMES = 6
FAST = ["--weights", "random", "--size", "32", "--iterations", "4", "--device", "cpu"]


def nst(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nst_engine.cli.main", "stylize-video", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def mp4_facts(path: Path) -> tuple[int, Fraction, str | None]:
    """Frames (by decoding), exact rate and audio codec of an mp4."""
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        audio = clip.streams.audio[0].codec_context.name if clip.streams.audio else None
        frames = sum(1 for _ in clip.decode(stream))
        return frames, Fraction(stream.average_rate), audio


def frame_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("frame_*.png"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return make_clip(folder / "walk.mp4", frames=FRAMES), write_image(folder / "style.png", 48, 48, seed=1)


@pytest.fixture(scope="module")
def rendered(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip, style = inputs
    output = tmp_path_factory.mktemp("out") / "walk.mp4"
    run = nst(clip, style, "-o", output, *FAST)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("frame ") >= FRAMES and f"{FRAMES} rendered, 0 kept" in run.stderr, run.stderr
    return output


def test_the_mp4_keeps_frame_count_exact_rate_and_audio(rendered: Path) -> None:
    assert mp4_facts(rendered) == (FRAMES, RATE, "aac")


def test_each_frame_is_a_png_next_to_the_output(rendered: Path) -> None:
    folder = rendered.with_suffix(".frames")
    assert frame_files(folder) == [FRAME_NAME.format(i) for i in range(FRAMES)]
    with Image.open(folder / FRAME_NAME.format(0)) as image:  # the 64×48 source at --size 32
        assert image.size == (32, 24)


def test_a_rerun_renders_only_the_missing_frames(rendered: Path, inputs: tuple[Path, Path]) -> None:
    folder = rendered.with_suffix(".frames")
    kept = {i: (folder / FRAME_NAME.format(i)).read_bytes() for i in range(FRAMES - 2)}
    for i in (FRAMES - 2, FRAMES - 1):
        (folder / FRAME_NAME.format(i)).unlink()
    run = nst(*inputs, "-o", rendered, *FAST)
    assert run.returncode == 0, run.stderr
    assert f"2 rendered, {FRAMES - 2} kept" in run.stderr, run.stderr
    assert f"frame {FRAMES - 2}/{FRAMES}: done before, kept" in run.stderr
    assert f"frame {FRAMES}/{FRAMES}: done before" not in run.stderr
    assert {i: (folder / FRAME_NAME.format(i)).read_bytes() for i in range(FRAMES - 2)} == kept
    assert frame_files(folder) == [FRAME_NAME.format(i) for i in range(FRAMES)]
    assert mp4_facts(rendered) == (FRAMES, RATE, "aac")


def test_max_frames_and_a_rerun_at_another_size(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    clip, style = inputs
    run = nst(clip, style, "-o", tmp_path / "try.mp4", *FAST, "--max-frames", "2", "-q")
    assert run.returncode == 0, run.stderr
    assert frame_files(tmp_path / "try.frames") == [FRAME_NAME.format(0), FRAME_NAME.format(1)]
    assert mp4_facts(tmp_path / "try.mp4")[:2] == (2, RATE)
    # resuming on frames of another --size would chain mismatched images: refused
    run = nst(clip, style, "-o", tmp_path / "try.mp4", *FAST, "--max-frames", "3", "--size", "48", "-q")
    assert run.returncode == 2 and "frame_000001.png: is 32x24, not 48x36" in run.stderr, run.stderr


def test_a_frame_folder_at_an_ntsc_rate(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for i in range(3):
        Image.fromarray(scene(i)).save(source / f"f{i + 1}.png")
    frames = tmp_path / "elsewhere"
    output = tmp_path / "ntsc.mp4"
    run = nst(source, inputs[1], "-o", output, *FAST, "--rate", "30000/1001", "--frames-dir", frames)
    assert run.returncode == 0, run.stderr
    assert mp4_facts(output) == (3, Fraction(30000, 1001), None)
    assert len(frame_files(frames)) == 3 and not output.with_suffix(".frames").exists()


@pytest.mark.parametrize("which", ["clip", "style", "folder-without-rate"])
def test_bad_input_is_one_line_naming_it(which: str, inputs: tuple[Path, Path], tmp_path: Path) -> None:
    clip, style = inputs
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    args, named = {
        "clip": ((tmp_path / "missing.mp4", style), tmp_path / "missing.mp4"),
        "style": ((clip, text), text),
        "folder-without-rate": ((tmp_path, style), tmp_path),
    }[which]
    run = nst(*args, "-o", tmp_path / "out.mp4", *FAST)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0], run.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_the_runs_layer_resumes_past_a_gap(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """Called from Python: with frame 2 of 4 missing, only it is rendered (chained on from
    frame 1's PNG, so it has a warping error), and the frames after it are kept."""
    clip, style = inputs
    request = VideoRequest(
        str(clip),
        [style],
        tmp_path / "gap.mp4",
        SynthesisConfig(size=32, iterations=3),
        WeightsSpec(source="random"),
        max_frames=4,
        device="cpu",
    )
    first = stylize_video(request)
    assert (first.rendered, first.skipped, first.written.frames) == (4, 0, 4)
    assert first.warping_error is not None and first.flow_seconds > 0
    request.frame_path(2).unlink()
    seen: list[FrameDone] = []
    again = stylize_video(request, on_frame=seen.append)
    assert [f.index for f in seen] == list(range(4)) and [f.index for f in seen if f.rendered] == [2]
    assert seen[2].warping_error is not None and seen[2].flow_seconds > 0
    assert (again.rendered, again.skipped, again.written.frames) == (1, 3, 4)
