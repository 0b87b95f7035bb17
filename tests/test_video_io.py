"""Video in and out (issue 21): clips made here with PyAV (a red square moving over a
textured background, a sine tone as AAC), read back, decoded whole and from frame k,
frame folders and patterns in numeric order, and stylized frames written back to mp4 at
the exact source rate with the source's audio packets copied; locally and on S3 (moto)."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from nst_engine.storage.video import (
    ClipInfo,
    ClipReader,
    FrameSequence,
    VideoError,
    VideoFile,
    _seek_frames,
    open_clip,
    video_encoder,
    write_mp4,
)
from tests.conftest import S3Server

FRAMES, WIDTH, HEIGHT, RATE = 24, 64, 48, Fraction(12)
SQUARE, RED = 12, (230, 30, 30)
SAMPLE_RATE = 44100
#: What a lossy encode may move a colour by (per channel) in these tests.
TOLERANCE = 40


def scene(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Frame ``index``: a blue-green texture with a red square moving 2 px right a frame."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([20 + 0 * x, 90 + 40 * np.sin(x / 3.0), 160 + 40 * np.cos(y / 4.0)], -1)
    left = 2 * index
    frame[8 : 8 + SQUARE, left : left + SQUARE] = RED
    return frame.astype(np.uint8)


def square_centre(index: int) -> tuple[int, int]:
    return 8 + SQUARE // 2, 2 * index + SQUARE // 2


def make_clip(
    path: Path,
    container: str = "mp4",
    audio: str | None = "aac",
    frames: int = FRAMES,
    rate: Fraction = RATE,
    ticks: list[int] | None = None,
) -> Path:
    """A clip of ``scene`` frames, key frames every 8 (so decoding from frame k seeks), and
    a 440 Hz tone as long as the picture in ``audio``'s codec; frame i is shown at
    ``ticks[i]`` / ``rate`` (default: i / ``rate``, a constant rate)."""
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=rate, options={"g": "8", "crf": "18"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = out.add_stream(audio, rate=SAMPLE_RATE, layout="mono") if audio else None
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(scene(index), format="rgb24")
            picture.pts = ticks[index] if ticks else index
            out.mux(video.encode(picture))
        out.mux(video.encode())
        if sound is not None:
            _tone(out, sound, frames / rate)
    return path


def _tone(out: av.container.OutputContainer, sound: av.AudioStream, seconds: Fraction) -> None:
    samples = int(seconds * SAMPLE_RATE)
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)
    fmt = sound.codec_context.format.name  # fltp for aac, s16 for pcm_s16le
    chunk = 1024
    for start in range(0, samples, chunk):
        piece = wave[start : start + chunk]
        data = (piece * 32767).astype(np.int16) if fmt == "s16" else piece.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data[None, :], format=fmt, layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, start
        out.mux(sound.encode(frame))
    out.mux(sound.encode())


def audio_seconds(location: str | Path) -> float:
    with av.open(str(location)) as clip:
        stream = clip.streams.audio[0]
        return float(stream.duration * stream.time_base)


def assert_scene(frame: np.ndarray, index: int) -> None:
    """The square is red at its centre and the background keeps its colour far from it."""
    row, col = square_centre(index)
    assert np.abs(frame[row, col].astype(int) - RED).max() <= TOLERANCE, (index, frame[row, col])
    reds = np.flatnonzero(np.abs(frame[row].astype(int) - RED).max(axis=1) <= TOLERANCE)
    assert abs(int(reds[0]) - 2 * index) <= 1, (index, reds[0])  # frame k's square, not k ± 1's
    corner = scene(index)[HEIGHT - 4, WIDTH - 4].astype(int)
    assert np.abs(frame[HEIGHT - 4, WIDTH - 4].astype(int) - corner).max() <= TOLERANCE, index


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "walk.mp4")


def test_info_of_a_clip(clip: Path) -> None:
    info = open_clip(str(clip)).info()
    assert (info.frames, info.width, info.height) == (FRAMES, WIDTH, HEIGHT)
    assert isinstance(info.rate, Fraction) and info.rate == RATE
    assert info.has_audio and info.audio == "aac"


def test_frame_count_by_decoding_when_the_container_has_none(tmp_path: Path) -> None:
    mkv = make_clip(tmp_path / "walk.mkv", container="matroska", audio=None, frames=17)
    with av.open(str(mkv)) as raw:
        assert raw.streams.video[0].frames == 0  # Matroska keeps no count: it must be decoded
    info = VideoFile(str(mkv)).info()
    assert info.frames == 17 and info.rate == RATE and not info.has_audio


def test_frames_decode_to_the_scene(clip: Path) -> None:
    frames = list(open_clip(str(clip)).frames())
    assert [f.index for f in frames] == list(range(FRAMES))
    for frame in frames:
        assert frame.array.shape == (HEIGHT, WIDTH, 3) and frame.array.dtype == np.uint8
        assert_scene(frame.array, frame.index)
    assert frames[5].image().size == (WIDTH, HEIGHT) and frames[5].image().mode == "RGB"


@pytest.mark.parametrize(("start", "stop"), [(11, 19), (16, None), (0, 5), (23, 40), (30, None)])
def test_a_range_decodes_as_the_whole_clip_does(clip: Path, start: int, stop: int | None) -> None:
    video = VideoFile(str(clip))
    whole = {f.index: f.array for f in video.frames()}
    part = list(video.frames(start, stop))
    assert [f.index for f in part] == list(range(start, min(stop or FRAMES, FRAMES)))
    for frame in part:
        np.testing.assert_array_equal(frame.array, whole[frame.index])


def test_a_frame_folder_reads_in_numeric_order(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in range(1, 13):  # frame_2.png sorts after frame_10.png as text
        flat = np.full((HEIGHT, WIDTH, 3), number * 20, np.uint8)
        Image.fromarray(flat).save(folder / f"frame_{number}.png")
    (folder / "notes.txt").write_text("not a frame")
    rate = Fraction(24000, 1001)
    for location in (folder, folder / "frame_%d.png", folder / "frame_*.png"):
        sequence = open_clip(str(location), rate="24000/1001")
        assert isinstance(sequence, FrameSequence)
        assert sequence.info() == ClipInfo(12, rate, WIDTH, HEIGHT, audio=None)
        values = [int(f.array[0, 0, 0]) for f in sequence.frames()]
        assert values == [n * 20 for n in range(1, 13)], location
        assert [f.index for f in sequence.frames(10)] == [10, 11]


def test_a_frame_folder_needs_a_rate_and_frames(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="frame rate"):
        open_clip(str(tmp_path))
    with pytest.raises(VideoError, match="frame rate 'fast' is not a positive number"):
        open_clip(str(tmp_path), rate="fast")
    with pytest.raises(VideoError, match="frame rate '0' is not a positive number"):
        open_clip(str(tmp_path), rate="0")
    with pytest.raises(VideoError, match="no frames found") as raised:
        open_clip(str(tmp_path), rate=24).info()
    assert str(tmp_path) in str(raised.value) and "\n" not in str(raised.value)


def test_writing_keeps_rate_frames_and_audio(clip: Path, tmp_path: Path) -> None:
    source = open_clip(str(clip))
    info = source.info()
    target = tmp_path / "out" / "styled.mp4"  # the folder is made, as for every output
    written = write_mp4((f.array for f in source.frames()), target, info.rate, audio_from=str(clip))
    assert (written.frames, written.rate, written.audio) == (FRAMES, RATE, "copied aac")
    assert written.codec == video_encoder()
    assert open_clip(str(target)).info() == ClipInfo(FRAMES, RATE, WIDTH, HEIGHT, audio="aac")
    assert abs(audio_seconds(target) - audio_seconds(clip)) <= 1 / RATE
    for frame in open_clip(str(target)).frames():
        assert_scene(frame.array, frame.index)
    assert sorted(p.name for p in target.parent.iterdir()) == ["styled.mp4"]  # no temporary left
    data = target.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: the index first


def test_audio_and_video_interleave_in_the_file(tmp_path: Path) -> None:
    """15 s: longer than FFmpeg's own interleaving queue holds (it then writes a dozen video
    packets in a row), so the copy must hand audio over in step with the video."""
    frames = 15 * int(RATE)
    source = make_clip(tmp_path / "long.mp4", frames=frames)
    target = tmp_path / "styled.mp4"
    write_mp4((scene(i % FRAMES) for i in range(frames)), target, RATE, audio_from=str(source))
    with av.open(str(target)) as clip:
        kinds = [packet.stream.type for packet in clip.demux() if packet.dts is not None]
    video_runs = [len(list(run)) for kind, run in itertools.groupby(kinds) if kind == "video"]
    assert kinds.count("video") == frames and max(video_runs) <= 4, max(video_runs)


def test_writing_png_frames_at_an_ntsc_rate_with_mpeg4(tmp_path: Path) -> None:
    """PNG files in, MPEG-4 part 2 (the encoder used where a wheel lacks libx264), an odd
    size (padded to even: 4:2:0 needs it) and 30000/1001 kept exactly."""
    pngs = []
    for index in range(6):
        path = tmp_path / f"f{index}.png"
        Image.fromarray(scene(index, WIDTH - 1, HEIGHT - 1)).save(path)
        pngs.append(path)
    target = tmp_path / "ntsc.mp4"
    written = write_mp4(pngs, target, Fraction(30000, 1001), audio_from=None, codec="mpeg4")
    assert (written.frames, written.codec, written.audio) == (6, "mpeg4", "none in the source")
    back = open_clip(str(target)).info()
    assert (back.frames, back.rate, back.width, back.height) == (6, Fraction(30000, 1001), WIDTH, HEIGHT)
    for frame in open_clip(str(target)).frames():
        assert_scene(frame.array, frame.index)


def test_audio_mp4_cannot_hold_is_not_copied_and_says_so(tmp_path: Path) -> None:
    mkv = make_clip(tmp_path / "pcm.mkv", container="matroska", audio="pcm_s16le", frames=6)
    target = tmp_path / "out.mp4"
    written = write_mp4((scene(i) for i in range(6)), target, RATE, audio_from=str(mkv))
    assert written.audio.startswith("not copied") and "pcm_s16le" in written.audio
    assert open_clip(str(target)).info().audio is None


def test_a_bad_target_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where a folder would go")
    frames = [scene(i) for i in range(3)]
    for target in (blocker / "clip.mp4", tmp_path):  # below a file; a folder itself
        with pytest.raises(VideoError) as raised:
            write_mp4(frames, target, RATE)
        message = str(raised.value)
        assert message.startswith(f"{target}: cannot write this clip") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary left
    with pytest.raises(VideoError, match="no frames to write"):
        write_mp4([], tmp_path / "empty.mp4", RATE)
    with pytest.raises(VideoError, match="frame 1 is 32×48, not 64×48"):
        write_mp4([scene(0), scene(1)[:, :32]], tmp_path / "sizes.mp4", RATE)
    with pytest.raises(VideoError, match=r"frame 0 is float64 \(48, 64, 3\), not RGB uint8"):
        write_mp4([scene(0) / 255.0], tmp_path / "floats.mp4", RATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_missing_clip_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(VideoError) as raised:
        open_clip(str(missing)).info()
    message = str(raised.value)
    assert message.startswith(f"{missing}: cannot read this video") and "\n" not in message


def test_clips_on_object_storage(clip: Path, s3: S3Server, tmp_path: Path) -> None:
    uri = s3.put("clips/walk.mp4", clip.read_bytes())
    remote = open_clip(uri)
    assert remote.info() == open_clip(str(clip)).info()
    local_frames = {f.index: f.array for f in VideoFile(str(clip)).frames(13)}
    for frame in remote.frames(13):  # seeking through pyarrow's file, as resuming does
        np.testing.assert_array_equal(frame.array, local_frames[frame.index])
    target = f"s3://{s3.bucket}/out/styled.mp4"
    written = write_mp4((f.array for f in remote.frames()), target, RATE, audio_from=uri)
    assert (written.location, written.frames, written.audio) == (target, FRAMES, "copied aac")
    back = open_clip(target).info()
    assert (back.frames, back.rate, back.audio) == (FRAMES, RATE, "aac")
    listing = s3.filesystem().get_file_info(pafs.FileSelector(f"{s3.bucket}/out"))
    assert [Path(i.path).name for i in listing] == ["styled.mp4"]


def test_decoding_from_frame_k_seeks_rather_than_falls_back(clip: Path) -> None:
    """Frame 11 is reached from the key frame at 8, not by decoding from 0: the seek path
    finishes (returns True) having yielded 11 onwards, B-frames reordered by timestamp."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoding = _seek_frames(container, stream, 11, 14, str(clip))
        indices = []
        with pytest.raises(StopIteration) as finished:
            while True:
                indices.append(next(decoding).index)
    assert indices == [11, 12, 13] and finished.value.value is True


def test_a_variable_rate_clip_decodes_from_frame_k_as_a_whole(tmp_path: Path) -> None:
    """Timestamps with gaps, as phones record: frame k is the k-th frame shown, not the
    one at time k / rate, whether decoded from the start or from a seek."""
    ticks = [0, 1, 2, 3, 5, 6, 8, 9, 10, 13, 14, 15, 17, 18, 19, 20, 22, 23, 26, 27]
    clip = make_clip(tmp_path / "phone.mp4", audio=None, frames=len(ticks), ticks=ticks)
    video = VideoFile(str(clip))
    assert video.info().frames == len(ticks) and video.info().rate != RATE  # the average
    whole = list(video.frames())
    assert [f.index for f in whole] == list(range(len(ticks)))
    for frame in whole:
        assert_scene(frame.array, frame.index)
    for start in (7, 12, 17):
        with av.open(str(clip)) as container:
            part = list(_seek_frames(container, container.streams.video[0], start, start + 3, str(clip)))
        assert [f.index for f in part] == [start, start + 1, start + 2]
        for frame in part:
            np.testing.assert_array_equal(frame.array, whole[frame.index].array)


def test_a_clip_reader_keeps_clips_of_one_name_apart_and_frees_evicted_copies(
    clip: Path, s3: S3Server, tmp_path: Path
) -> None:
    """Three bucket clips named alike (other prefixes, other pixels) with room for two:
    each is read as itself after others evicted and replaced clips, a chain's i − 1, i
    requests give the decoded frames, and the evicted local copies are deleted."""
    sources = {"a": clip}
    for name, flip in (
        ("b", (slice(None, None, -1), slice(None))),
        ("c", (slice(None), slice(None, None, -1))),
    ):
        arrays = (np.ascontiguousarray(f.array[flip]) for f in VideoFile(str(clip)).frames())
        sources[name] = Path(write_mp4(arrays, tmp_path / f"{name}.mp4", RATE).location)
    uris = {name: s3.put(f"{name}/walk.mp4", path.read_bytes()) for name, path in sources.items()}
    expected = {
        name: {f.index: f.array for f in VideoFile(str(path)).frames()} for name, path in sources.items()
    }
    reader = ClipReader(clips=2)
    for name in ("a", "b", "c", "a", "c"):
        for index in (3, 4):
            got = reader.frames(uris[name], None, [index - 1, index])
            assert [f.index for f in got] == [index - 1, index]
            for frame in got:
                np.testing.assert_array_equal(frame.array, expected[name][frame.index])
    assert len(list(Path(reader._scratch.name).iterdir())) == 2  # the evicted copies are gone
