"""The stylized clips: once every frame of a clip × style × size has its image, the frames
are encoded as an mp4 at the source's exact frame rate, with the source's audio copied
(``storage.video.write_mp4``), next to the frames folder.

Encoding reads every frame, so it runs as a Ray task per clip, on the cluster, not on the
driver; without Ray (a rerun with nothing left to render but a clip to encode) it runs
here. A clip is encoded again when one of its frames is newer than its mp4 (frames
re-rendered with other parameters), and not at all while a frame is missing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.fs as pafs
import ray

from nst_engine.errors import NSTError, one_line
from nst_engine.planning.items import FrameRef, WorkItem
from nst_engine.storage.errors import STORAGE_ERRORS
from nst_engine.storage.roots import OutputRoot
from nst_engine.storage.video import VideoFile, frames_folder, open_clip, write_mp4


@dataclass(frozen=True)
class ClipJob:
    """One stylized clip to encode: its frames' images in order and where it goes."""

    source: FrameRef  # any frame of it: the clip it was made from, and its mp4
    frames: tuple[str, ...]  # relative to the output root, in frame order


@dataclass(frozen=True)
class ClipOutcome:
    """What became of one clip: written (with a note such as "copied aac") or why not."""

    output: str  # the mp4, relative to the output root
    frames: int
    note: str
    written: bool


def clip_jobs(items: Iterable[WorkItem], root: OutputRoot) -> tuple[list[ClipJob], list[ClipOutcome]]:
    """The clips of ``items`` to encode now, and those that wait for frames (one listing of
    each clip's frames folder: what exists and when it was written)."""
    clips: dict[str, list[WorkItem]] = {}
    for item in items:
        if item.frame is not None and item.input_error is None:
            clips.setdefault(item.frame.clip_output, []).append(item)
    jobs, waiting = [], []
    for output, frames in clips.items():
        frames.sort(key=_index)
        written = _written(root, output)
        missing = [f for f in frames if f.output_path not in written]
        if missing:
            note = (
                f"{len(missing)} of {len(frames)} frames not rendered yet (first: frame {_index(missing[0])})"
            )
            waiting.append(ClipOutcome(output, len(frames), note, False))
            continue
        clip_time = written.get(output)
        if clip_time is None or any(written[f.output_path] > clip_time for f in frames):
            jobs.append(ClipJob(frames[0].frame, tuple(f.output_path for f in frames)))  # type: ignore[arg-type]
    return jobs, waiting


def _index(item: WorkItem) -> int:
    """A frame item's index in its clip."""
    return item.frame.index if item.frame else 0


def _written(root: OutputRoot, clip_output: str) -> dict[str, float]:
    """Modification times of the clip's mp4 and its frames, by path relative to the root."""
    fs, folder = root.filesystem, frames_folder(clip_output)
    listed = fs.get_file_info(pafs.FileSelector(root.full_path(folder), allow_not_found=True))
    infos = [(posixpath.join(folder, posixpath.basename(i.path)), i) for i in listed]
    infos.append((clip_output, fs.get_file_info(root.full_path(clip_output))))
    return {
        path: info.mtime.timestamp()
        for path, info in infos
        if info.type == pafs.FileType.File and info.mtime is not None
    }


def encode(job: ClipJob, root_uri: str) -> ClipOutcome:
    """Encode ``job``'s frames as its mp4 at the source's rate, audio copied; never raises
    (a clip that cannot be written says why in its outcome)."""
    root = OutputRoot(root_uri)
    ref = job.source
    try:
        clip = open_clip(ref.clip, ref.rate)
        written = write_mp4(
            (root.display_full(root.full_path(f)) for f in job.frames),
            root.display_full(root.full_path(ref.clip_output)),
            clip.info().rate,
            audio_from=clip.location if isinstance(clip, VideoFile) else None,
        )
    except (NSTError, *STORAGE_ERRORS) as exc:
        return ClipOutcome(ref.clip_output, len(job.frames), one_line(exc), False)
    note = f"{written.frames} frames at {written.rate} fps, {written.codec}, audio: {written.audio}"
    return ClipOutcome(ref.clip_output, written.frames, note, True)


def encode_clips(items: Iterable[WorkItem], root: OutputRoot) -> list[ClipOutcome]:
    """Every clip of ``items`` whose frames are all there and newer than its mp4, encoded:
    as Ray tasks when connected, else here; and the clips still waiting for frames."""
    jobs, outcomes = clip_jobs(items, root)
    if jobs and ray.is_initialized():
        task = ray.remote(num_cpus=1)(encode)
        outcomes += ray.get([task.remote(job, root.uri) for job in jobs])
    else:
        outcomes += [encode(job, root.uri) for job in jobs]
    return outcomes
