"""What planning needs of each clip: its digest (item ids hash contents, never paths), its
frame count, rate and size, and its shots.

A shot's frames form a chain (each starts from the one before: Ruder, Dosovitskiy, Brox,
"Artistic style transfer for videos", GCPR 2016), and shots are what may run in parallel,
so planning must know them before anything renders: the cuts come from the manifest, or
are found here from the optical flow's consistency (``engine.shots``) over every frame at
``CUT_ANALYSIS_SIDE``, the size the threshold was measured at, so a clip's shots are the
same at every render size. Clips are read in parallel, and what was found is kept in
``.nst-cache/clips/DIGEST.json`` in the output root, keyed by the clip's digest, so a rerun
hashes the clip again (its bytes may have changed) but decodes none of it.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction

from nst_engine.engine.images import output_size, resize, to_tensor
from nst_engine.engine.shots import CUT_TRUSTED_FRACTION, find_cuts_in, split_shots
from nst_engine.errors import one_line
from nst_engine.planning.manifest import VideoOptions
from nst_engine.storage.errors import STORAGE_ERRORS
from nst_engine.storage.files import write_atomic
from nst_engine.storage.uris import redact, resolve
from nst_engine.storage.video import Clip, ClipInfo, VideoError, clip_digest, open_clip

#: Longer side, in pixels, at which cuts are looked for (``shots.CUT_TRUSTED_FRACTION`` was
#: measured on 128 px scenes); a few milliseconds of flow a frame pair.
CUT_ANALYSIS_SIDE = 128
CACHE_FOLDER = ".nst-cache/clips"
READ_THREADS = 4  # clips read at once (decoding and flow release the GIL)


@dataclass(frozen=True)
class ClipFacts:
    """One clip as planning sees it; ``problem`` (one line naming the clip) when it cannot
    be read, and then nothing else is known."""

    location: str
    digest: str = ""
    info: ClipInfo | None = None
    cuts: tuple[int, ...] = ()  # frames that start a shot after the first
    problem: str | None = None

    def shots(self) -> list[range]:
        """The frame ranges of the clip's shots, in order."""
        return split_shots(self.info.frames if self.info else 0, self.cuts)


def _analysis_frames(clip: Clip, info: ClipInfo) -> Iterable:
    height, width = output_size(info.width, info.height, CUT_ANALYSIS_SIDE)
    for frame in clip.frames():
        yield to_tensor(resize(frame.image(), height, width))


def _cache_path(cache_root: str | None, digest: str) -> tuple | None:
    if cache_root is None:
        return None
    fs, base = resolve(cache_root)
    return fs, posixpath.join(base, CACHE_FOLDER, f"{digest}.json")


def _cached(cache_root: str | None, digest: str) -> tuple[ClipInfo, tuple[int, ...]] | None:
    where = _cache_path(cache_root, digest)
    if where is None:
        return None
    fs, path = where
    try:
        with fs.open_input_stream(path) as stream:
            data = json.loads(stream.read())
        info = ClipInfo(data["frames"], Fraction(data["rate"]), data["width"], data["height"], data["audio"])
        if data.get("threshold") != CUT_TRUSTED_FRACTION or data.get("side") != CUT_ANALYSIS_SIDE:
            return None  # found with another rule: found again
        return info, tuple(data["cuts"])
    except (*STORAGE_ERRORS, ValueError, KeyError, TypeError):  # missing or damaged: found again
        return None


def _store(cache_root: str | None, digest: str, info: ClipInfo, cuts: tuple[int, ...]) -> None:
    where = _cache_path(cache_root, digest)
    if where is None:
        return
    fs, path = where
    data = {
        **asdict(info),
        "rate": str(info.rate),
        "cuts": list(cuts),
        "threshold": CUT_TRUSTED_FRACTION,
        "side": CUT_ANALYSIS_SIDE,
    }
    try:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        write_atomic(path, json.dumps(data).encode(), fs)
    except STORAGE_ERRORS:  # a cache that cannot be written costs a decode next time, nothing more
        pass


def clip_facts(
    location: str, options: VideoOptions, cache_root: str | None = None, write: bool = True
) -> ClipFacts:
    """``location``'s facts, the cuts as ``options`` gives them or as found; a clip that
    cannot be read, or holds no frame, has its ``problem``."""
    try:
        clip = open_clip(location, options.rate)
        digest = clip_digest(clip)
        cached = _cached(cache_root, digest)
        if cached is not None:
            info, found = cached
        else:
            info = clip.info()
            if info.frames < 1:
                raise VideoError(f"{location}: holds no frames")
            found = tuple(find_cuts_in(_analysis_frames(clip, info)))
            if write:
                _store(cache_root, digest, info, found)
    except (VideoError, *STORAGE_ERRORS) as exc:
        return ClipFacts(location, problem=redact(one_line(exc)))
    cuts = found if options.cuts is None else tuple(c for c in options.cuts if c < info.frames)
    return ClipFacts(location, digest, info, cuts)


def read_clips(
    clips: dict[str, VideoOptions], cache_root: str | None = None, write: bool = True
) -> dict[str, ClipFacts]:
    """``clip_facts`` of every clip, in parallel; ``write`` False: the cache is only read
    (a dry run leaves the output root alone)."""
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="clips") as pool:
        facts = pool.map(lambda pair: clip_facts(*pair, cache_root, write), clips.items())
        return {f.location: f for f in facts}
