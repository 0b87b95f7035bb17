"""Video clips in and out, local or on object storage: a video file decoded with PyAV
(whose wheels carry FFmpeg) or a frame sequence (a folder, a ``frame_%04d.png`` pattern or
a glob of images), and stylized frames encoded back to mp4 at the source's exact frame
rate with the source's audio packets copied, not re-encoded (issue 21, after Ruder,
Dosovitskiy, Brox, "Artistic style transfer for videos", GCPR 2016).

Frames are RGB ``uint8`` arrays (height × width × 3) with their index in the clip, so a
shot can resume at frame k. Knows nothing of PyTorch: the engine turns arrays into tensors.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import functools
import hashlib
import io
import itertools
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from nst_engine.errors import one_line
from nst_engine.storage import uris
from nst_engine.storage.errors import STORAGE_ERRORS, StorageError
from nst_engine.storage.files import _temporary, write_atomic

#: Suffixes of the images a frame folder is made of. (``planning.sources.IMAGE_SUFFIXES``
#: holds the same set for image inputs; it sits above storage, so it should import this.)
FRAME_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

#: Video encoders, best first: H.264 where the PyAV wheel carries libx264, else MPEG-4
#: part 2, which every FFmpeg build has.
VIDEO_ENCODERS = ("libx264", "mpeg4")

#: libx264's constant rate factor: 18 is close to visually lossless, so the encode adds
#: little to what the stylization made (the default, 23, smears fine brush strokes).
X264_CRF = 18

#: Bits per pixel per frame for encoders without a quality mode (mpeg4): ample for
#: textured, stylized frames.
BITS_PER_PIXEL = 0.5

#: Audio codecs an mp4 file can carry as they are, so their packets are copied, never
#: re-encoded (FFmpeg's mp4 muxer; others, e.g. PCM or Vorbis, would need a re-encode).
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})

_ERRORS = (*STORAGE_ERRORS, av.FFmpegError)


class VideoError(StorageError):
    """A clip or frame sequence that cannot be read, or a clip that cannot be written;
    one line naming the location."""


@contextlib.contextmanager
def _problem(location: str, doing: str) -> Iterator[None]:
    """Any decoding, encoding or storage failure inside as one ``VideoError`` line naming
    ``location`` and what could not be done."""
    try:
        yield
    except VideoError:
        raise
    except _ERRORS as exc:
        raise VideoError(f"{location}: cannot {doing} ({uris.redact(one_line(exc))})") from None


@dataclass(frozen=True)
class ClipInfo:
    """What planning needs of a clip before any frame is decoded."""

    frames: int
    rate: Fraction  # frames per second, exact (30000/1001, not 29.97)
    width: int
    height: int
    audio: str | None = None  # the first audio stream's codec name; None when silent

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its 0-based index in the clip and its RGB pixels."""

    index: int
    array: np.ndarray  # height × width × 3, uint8

    def image(self) -> Image.Image:
        return Image.fromarray(self.array, "RGB")


# --- video files -------------------------------------------------------------------------


@contextlib.contextmanager
def _container(location: str) -> Iterator[av.container.InputContainer]:
    """An open input container: FFmpeg reads a local file itself; any other filesystem is
    handed over as pyarrow's random-access file (PyAV reads and seeks through it)."""
    fs, path = uris.resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        with av.open(path) as container:
            yield container
        return
    with fs.open_input_file(path) as handle, av.open(handle) as container:
        yield container


def _video_stream(container: av.container.InputContainer, location: str) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{location}: holds no video stream; give a video file or a frame folder")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of reading
    return stream


def _rate(stream: av.VideoStream, location: str) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoError(
            f"{location}: the container gives no frame rate; give the clip as frames with a rate"
        )
    return Fraction(rate)


@dataclass(frozen=True)
class VideoFile:
    """A video file (any container and codec FFmpeg decodes) at a local path or URI."""

    location: str

    def info(self) -> ClipInfo:
        """Frame count from the container's header where it has one (mp4, mov), else by
        decoding every frame; frame rate, size, and the audio codec."""
        with _problem(self.location, "read this video"), _container(self.location) as container:
            stream = _video_stream(container, self.location)
            audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
            rate = _rate(stream, self.location)
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            context = stream.codec_context
            return ClipInfo(frames, rate, context.width, context.height, audio)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Frames ``start`` (0-based) up to ``stop`` (excluded; None: the end). From frame
        k, the decoder seeks to the key frame before it rather than decoding all before."""
        with _problem(self.location, "decode this video"), _container(self.location) as container:
            stream = _video_stream(container, self.location)
            if start > 0:
                found = yield from _seek_frames(container, stream, start, stop, self.location)
                if found:
                    return
                container.seek(0, stream=stream)  # the seek landed past frame k: decode from 0
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield Frame(index, frame.to_ndarray(format="rgb24"))


def _seek_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    start: int,
    stop: int | None,
    location: str,
) -> Iterator[Frame]:
    """Frames from ``start`` after a seek to the key frame at or before it, each indexed by
    the rank of its timestamp among all frames' (``_frame_times``): right for clips of
    variable frame rate too (phones record those), where time × rate is not the index.
    Returns False, having yielded nothing, when the frames cannot be told apart by their
    timestamps or the decoder lands after frame ``start``: the caller then decodes from
    the first frame."""
    times = _frame_times(container, stream)
    if times is None:
        return False
    if start >= len(times):
        return True
    rank = {pts: index for index, pts in enumerate(times)}
    container.seek(times[start], stream=stream, backward=True)
    wanted = start  # the next index to yield
    for frame in container.decode(stream):
        index = rank.get(frame.pts)
        if wanted == start and (index is None or index > start):
            return False  # nothing yielded yet: the caller decodes from frame 0 instead
        if index is None:
            raise VideoError(f"{location}: frame {wanted} has a timestamp no packet has; cannot place it")
        if stop is not None and index >= stop:
            return True
        if index >= wanted:
            yield Frame(index, frame.to_ndarray(format="rgb24"))
            wanted = index + 1
    return True


def _frame_times(container: av.container.InputContainer, stream: av.VideoStream) -> list[int] | None:
    """Every frame's timestamp in presentation order, read from the packets without
    decoding any (one pass over the file's bytes, far cheaper than decoding up to frame
    k); None when a packet has none or two share one."""
    times = [packet.pts for packet in container.demux(stream) if packet.size]  # size 0: the flush packet
    if None in times or len(set(times)) != len(times):
        return None
    return sorted(times)


# --- frame sequences ---------------------------------------------------------------------

_PRINTF = re.compile(r"%(0?\d*)d")


def _natural(name: str) -> tuple[tuple[int, object], ...]:
    """Sort key that orders ``f2.png`` before ``f10.png``: numbers by value, text as text."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def _sequence_files(location: str) -> list[str]:
    """Locations of the frames ``location`` names, in frame order: a folder (its images,
    numbers in names by value), a printf pattern (``frame_%04d.png``, by the number) or a
    glob (``frame_*.png``)."""
    fs, path = uris.resolve(location)
    name = posixpath.basename(path)
    if _PRINTF.search(name):
        folder, pattern = posixpath.dirname(path), _printf_regex(name)
        matches = {n: m for n in _names(fs, folder) if (m := pattern.fullmatch(n))}
        names = sorted(matches, key=lambda n: int(matches[n].group(1)))
    elif any(char in name for char in "*?["):
        folder = posixpath.dirname(path)
        names = sorted(fnmatch.filter(_names(fs, folder), name), key=_natural)
    else:
        folder = path
        names = sorted(
            (n for n in _names(fs, folder) if posixpath.splitext(n)[1].lower() in FRAME_SUFFIXES),
            key=_natural,
        )
    if not names:
        raise VideoError(
            f"{location}: no frames found; give a folder of images or a pattern such as frame_%04d.png"
        )
    return [uris.display(location, posixpath.join(folder, n)) for n in names]


def _printf_regex(name: str) -> re.Pattern[str]:
    """``frame_%04d.png`` as a regular expression whose one group is the frame number."""
    pieces = _PRINTF.split(name)  # text, width, text: one printf field
    if len(pieces) != 3:
        raise VideoError(f"{name}: a frame pattern holds one number field (%d or %04d)")
    return re.compile(f"{re.escape(pieces[0])}(\\d+){re.escape(pieces[2])}")


def _names(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder))
    return [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File]


def _read_image(location: str) -> np.ndarray:
    with _problem(location, "read this frame"):
        try:
            with Image.open(io.BytesIO(uris.read_bytes(location))) as image:
                return np.asarray(image.convert("RGB"))
        except Image.DecompressionBombError as exc:  # not an OSError: PIL's guard on huge images
            raise VideoError(f"{location}: cannot read this frame ({one_line(exc)})") from None


@dataclass(frozen=True)
class FrameSequence:
    """Images as the frames of a clip, at a frame rate the user gives (images carry none)."""

    location: str
    rate: Fraction

    @functools.cached_property
    def files(self) -> list[str]:
        with _problem(self.location, "list these frames"):
            return _sequence_files(self.location)

    def info(self) -> ClipInfo:
        height, width, _ = _read_image(self.files[0]).shape
        return ClipInfo(len(self.files), Fraction(self.rate), width, height)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for index, location in enumerate(self.files[start:stop], start):
            yield Frame(index, _read_image(location))


Clip = VideoFile | FrameSequence


def open_clip(location: str, rate: Fraction | int | str | None = None) -> Clip:
    """The clip at ``location``: a frame sequence when it is a folder, a printf pattern or
    a glob (``rate`` is then required: images carry none), else a video file."""
    uris.check_location(location)
    fs, path = uris.resolve(location)
    name = posixpath.basename(path)
    with _problem(location, "open this clip"):
        is_folder = fs.get_file_info(path).type == pafs.FileType.Directory
    if is_folder or _PRINTF.search(name) or any(char in name for char in "*?["):
        if rate is None:
            raise VideoError(f"{location}: frames carry no frame rate; give one (e.g. 24 or 30000/1001)")
        return FrameSequence(location, frame_rate(rate, location))
    return VideoFile(location)  # its own rate, whatever ``rate`` says


def frame_rate(rate: Fraction | int | str, name: str) -> Fraction:
    """``rate`` (``24``, ``"30000/1001"``) as an exact positive Fraction, or ``VideoError``
    naming ``name``; a float such as 29.97 is taken at its written value, not 30000/1001."""
    try:
        exact = Fraction(str(rate)) if isinstance(rate, float) else Fraction(rate)
    except (ValueError, TypeError, ZeroDivisionError):
        exact = None
    if exact is None or exact <= 0:
        raise VideoError(f"{name}: frame rate {rate!r} is not a positive number (e.g. 24 or 30000/1001)")
    return exact


# --- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What :func:`write_mp4` wrote; ``audio`` says what became of the source's sound."""

    location: str
    frames: int
    rate: Fraction
    codec: str
    audio: str  # "copied aac", "none in the source", or why it was not copied


@functools.cache
def video_encoder() -> str:
    """The best encoder this PyAV build has (``VIDEO_ENCODERS``, in order)."""
    for name in VIDEO_ENCODERS:
        with contextlib.suppress(av.FFmpegError, ValueError):
            if name in av.codecs_available and av.Codec(name, "w"):
                return name
    raise VideoError(f"this PyAV build has none of the encoders {', '.join(VIDEO_ENCODERS)}")


FrameLike = np.ndarray | Image.Image | str | os.PathLike


def _as_array(item: FrameLike) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    return _read_image(os.fspath(item))


def _even(array: np.ndarray) -> np.ndarray:
    """4:2:0 chroma needs even sides: an odd one gets its last row or column repeated."""
    height, width = array.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return array
    return np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_mp4(
    frames: Iterable[FrameLike],
    target: str | os.PathLike,
    rate: Fraction | int | str,
    audio_from: str | None = None,
    codec: str | None = None,
) -> Written:
    """Encode ``frames`` (RGB arrays, PIL images or image locations, all one size) as an
    mp4 at ``target`` (a local path or URI) at exactly ``rate`` frames per second, with
    the first audio stream of the clip at ``audio_from`` copied packet for packet when mp4
    can hold its codec. Written atomically: a temporary sibling renamed into place (on
    object storage, encoded locally first: mp4 writes its index at the end, seeking back);
    folders are created, as for every output. ``VideoError`` (one line) names ``target``."""
    target = str(target)
    uris.check_location(target)
    fs, path = uris.resolve(target)
    local = isinstance(fs, pafs.LocalFileSystem)
    with _problem(target, "write this clip"), contextlib.ExitStack() as stack:
        if local:
            fs.create_dir(posixpath.dirname(path), recursive=True)
            scratch = _temporary(posixpath.dirname(path), posixpath.basename(path))
            stack.callback(lambda: Path(scratch).unlink(missing_ok=True))  # after a rename: nothing there
        else:
            scratch = posixpath.join(stack.enter_context(tempfile.TemporaryDirectory()), "clip.mp4")
        exact = frame_rate(rate, target)
        written = _encode(frames, scratch, exact, audio_from, codec or video_encoder(), target)
        if local:
            fs.move(scratch, path)
        else:
            write_atomic(path, Path(scratch).read_bytes(), fs)
        return written


def _encode(
    frames: Iterable[FrameLike], scratch: str, rate: Fraction, audio_from: str | None, codec: str, target: str
) -> Written:
    items = iter(frames)
    first = next(items, None)
    if first is None:
        raise VideoError(f"{target}: no frames to write")
    first_array = _as_array(first)
    with contextlib.ExitStack() as stack:
        # faststart: the index goes before the media, so a player can start while downloading
        output = stack.enter_context(av.open(scratch, "w", format="mp4", options={"movflags": "+faststart"}))
        video = _add_video(output, codec, rate, first_array.shape)
        source = stack.enter_context(_container(audio_from)) if audio_from else None
        audio, note = _add_audio(output, source)
        count = 0
        for array in _arrays(first_array, items, target):
            picture = av.VideoFrame.from_ndarray(_even(array), format="rgb24")
            picture.pts = count  # the stream's time base is 1/rate: one tick per frame
            _mux_video(output, video.encode(picture), audio)
            count += 1
        _mux_video(output, video.encode(), audio)
        if audio is not None:
            audio.until(None)
    return Written(target, count, rate, codec, note)


def _mux_video(
    output: av.container.OutputContainer, packets: list[av.Packet], audio: _AudioCopy | None
) -> None:
    """Video packets, each after the audio up to its time, so the file interleaves the two."""
    for packet in packets:
        if audio is not None and packet.dts is not None:
            audio.until(packet.dts * packet.time_base)
        output.mux(packet)


def _arrays(first: np.ndarray, rest: Iterator[FrameLike], target: str) -> Iterator[np.ndarray]:
    """The frames as contiguous uint8 arrays, each checked to be the first one's size."""
    height, width = first.shape[:2]
    for index, item in enumerate(itertools.chain([first], rest)):
        array = _as_array(item)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise VideoError(f"{target}: frame {index} is {array.dtype} {array.shape}, not RGB uint8 (H×W×3)")
        if array.shape != first.shape:
            shown = f"{array.shape[1]}×{array.shape[0]}" if array.ndim >= 2 else str(array.shape)
            raise VideoError(f"{target}: frame {index} is {shown}, not {width}×{height} as frame 0")
        yield np.ascontiguousarray(array)


def _add_video(output: av.container.OutputContainer, codec: str, rate: Fraction, shape: tuple[int, ...]):
    height, width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
    options = {"crf": str(X264_CRF)} if codec.startswith("libx264") else {}
    stream = output.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / rate
    if not options:
        stream.bit_rate = int(width * height * rate * BITS_PER_PIXEL)
    return stream


class _AudioCopy:
    """Remux: the source's first audio stream's packets into the output, timestamps
    rescaled, never decoded; handed over in step with the video (``until``) so each
    stream's packets lie near the other's of the same time in the file."""

    def __init__(self, source: av.container.InputContainer, output: av.container.OutputContainer) -> None:
        template = source.streams.audio[0]
        self.stream = output.add_stream_from_template(template)
        self._output = output
        # dts None: the demuxer's empty flush packet, nothing to copy
        self._packets = (p for p in source.demux(template) if p.dts is not None)
        self._next: av.Packet | None = next(self._packets, None)

    def until(self, seconds: Fraction | None) -> None:
        """Mux the packets that start at or before ``seconds`` (None: all that are left)."""
        while self._next is not None and (
            seconds is None or self._next.dts * self._next.time_base <= seconds
        ):
            packet, self._next = self._next, next(self._packets, None)
            packet.stream = self.stream
            self._output.mux(packet)


def _add_audio(
    output: av.container.OutputContainer, source: av.container.InputContainer | None
) -> tuple[_AudioCopy | None, str]:
    """A copy of the source's first audio stream (None when there is none or mp4 cannot
    hold its codec as it is), and what became of the sound, in words."""
    if source is None or not source.streams.audio:
        return None, "none in the source"
    name = source.streams.audio[0].codec_context.name
    if name not in MP4_AUDIO_CODECS:
        return None, f"not copied: mp4 cannot hold {name} audio as it is (it would need a re-encode)"
    return _AudioCopy(source, output), f"copied {name}"


# --- a clip's outputs and identity -------------------------------------------------------

#: A stylized frame's PNG in its clip's frames folder, by its 0-based index in the clip.
FRAME_NAME = "frame_{:06d}.png"
#: The folder of a stylized clip's frames, next to its mp4: ``OUT.mp4`` → ``OUT.frames``.
FRAMES_SUFFIX = ".frames"
CLIP_SUFFIX = ".mp4"  # a stylized clip's
DIGEST_CHUNK = 1 << 22  # bytes per read while hashing a clip: 4 MiB


def frames_folder(clip_output: str) -> str:
    """Where the frames of the stylized clip written to ``clip_output`` (``….mp4``) go."""
    return posixpath.splitext(clip_output)[0] + FRAMES_SUFFIX


def clip_of_folder(folder: str) -> str:
    """The stylized clip (``….mp4``) whose frames are in ``folder`` (``frames_folder``'s inverse)."""
    return folder.removesuffix(FRAMES_SUFFIX) + CLIP_SUFFIX


def frame_location(clip_output: str, index: int) -> str:
    """Frame ``index``'s PNG of the stylized clip written to ``clip_output``."""
    return posixpath.join(frames_folder(clip_output), FRAME_NAME.format(index))


def clip_digest(clip: Clip) -> str:
    """sha256 of what a clip is: a video file's bytes, or a frame sequence's frame files'
    bytes in frame order (renaming the files keeps it; reordering them does not)."""
    digest = hashlib.sha256()
    locations = clip.files if isinstance(clip, FrameSequence) else [clip.location]
    for location in locations:
        with _problem(location, "read this clip"):
            fs, path = uris.resolve(location)
            with fs.open_input_stream(path) as stream:
                while chunk := stream.read(DIGEST_CHUNK):
                    digest.update(chunk)
        if len(locations) > 1:
            digest.update(b"\0frame\0")  # frame boundaries count: two files are not their concatenation
    return digest.hexdigest()


@dataclass
class _Decoding:
    """One decoder of a clip, where it stands: the last frame it gave."""

    frames: Iterator[Frame]
    last: Frame


class ClipReader:
    """A worker's random access to clips' frames, kept between calls.

    A shot's chain asks for frames i − 1 and i, then i and i + 1 (often on another item
    of the same worker): a decoder that stands at i − 1 goes on by one frame rather than
    seeking and decoding from the key frame before it. Several shots of one clip run side
    by side (a batch), so each clip keeps up to ``decoders`` of them. A clip on object
    storage is copied to a local file once (decoding seeks; every seek over the network
    would read again), at most ``clips`` at a time. Thread-safe: a batch's syntheses ask
    from threads of their own.
    """

    def __init__(self, clips: int = 4, decoders: int = 8, ahead: int = 48) -> None:
        self._lock = threading.Lock()
        self._clips: collections.OrderedDict[tuple[str, str | None], tuple[Clip, list[_Decoding]]] = (
            collections.OrderedDict()
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="nst-clips-")
        self._copies = itertools.count()  # names local copies: two clips may share a file name
        self.clips, self.decoders, self.ahead = clips, decoders, ahead

    def frames(self, location: str, rate: str | None, indices: Sequence[int]) -> list[Frame]:
        """The frames ``indices`` (ascending) of the clip at ``location``."""
        with self._lock:
            clip, decodings = self._open(location, rate)
            if isinstance(clip, FrameSequence):
                return [Frame(i, _read_image(clip.files[i])) for i in indices]
            return [self._decoded(clip, decodings, i) for i in indices]

    def _open(self, location: str, rate: str | None) -> tuple[Clip, list[_Decoding]]:
        key = (location, rate)
        if key in self._clips:
            self._clips.move_to_end(key)
            return self._clips[key]
        clip = open_clip(location, rate)
        if isinstance(clip, VideoFile) and not isinstance(uris.resolve(location)[0], pafs.LocalFileSystem):
            copy = os.path.join(self._scratch.name, f"{next(self._copies)}-{posixpath.basename(location)}")
            with _problem(location, "copy this clip"):
                Path(copy).write_bytes(uris.read_bytes(location))
            clip = VideoFile(copy)
        while len(self._clips) >= self.clips:
            evicted, decodings = self._clips.popitem(last=False)[1]
            self._close(decodings)
            if isinstance(evicted, VideoFile) and evicted.location.startswith(self._scratch.name):
                Path(evicted.location).unlink(missing_ok=True)  # a local copy: its disk back
        self._clips[key] = (clip, [])
        return self._clips[key]

    def _decoded(self, clip: VideoFile, decodings: list[_Decoding], index: int) -> Frame:
        """Frame ``index`` from the decoder that stands at or shortly before it, else a new one."""
        near = [d for d in decodings if d.last.index <= index <= d.last.index + self.ahead]
        decoding = max(near, key=lambda d: d.last.index) if near else None
        if decoding is None:
            frames = clip.frames(index)
            first = next(frames, None)
            if first is None:
                raise VideoError(f"{clip.location}: has no frame {index}")
            decoding = _Decoding(frames, first)
            decodings.append(decoding)
            if len(decodings) > self.decoders:
                self._close([decodings.pop(0)])
        while decoding.last.index < index:
            following = next(decoding.frames, None)
            if following is None:
                raise VideoError(f"{clip.location}: has no frame {index}")
            decoding.last = following
        decodings.remove(decoding)
        decodings.append(decoding)  # the most recently used last
        return decoding.last

    @staticmethod
    def _close(decodings: list[_Decoding]) -> None:
        """Close the decoders' containers now rather than when they are collected."""
        for decoding in decodings:
            close = getattr(decoding.frames, "close", None)
            if close is not None:
                close()  # the generator's container closes with it
