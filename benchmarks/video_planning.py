"""What a clip costs the driver (issue 21): planning reads each clip once (its digest, its
header, and, unless cuts are given, a decode of every frame with the optical flow between
consecutive frames at 128 px to find the cuts), then every frame is a work item whose shot
is a chain the scheduler holds back frame by frame.

Measures on a synthetic clip (a pan over blurred noise, a cut every ``--shot`` frames, x264):
clip facts cold (no cache) and warm (``.nst-cache/clips``), frames per second of the cold
analysis, ``expand`` of a manifest with the clip × styles × sizes (items per second), and the
driver's chain bookkeeping: a ``Lane`` built over every frame and each frame released as
the one before finishes, as the scheduler does (microseconds per frame).

    PYTHONPATH=. .venv/bin/python benchmarks/video_planning.py --frames 1200 --shot 300
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

from nst_engine.distributed.pool import Lane
from nst_engine.planning.clips import read_clips
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import VideoOptions, load_manifest
from nst_engine.storage.video import write_mp4


@functools.cache
def texture(shot: int, width: int, height: int) -> np.ndarray:
    """A photo-like (non-periodic) texture per shot: blurred noise, twice the frame's width."""
    rng = np.random.default_rng(shot)
    noise = Image.fromarray(rng.integers(0, 256, (height, 2 * width, 3), dtype=np.uint8))
    return np.asarray(noise.filter(ImageFilter.GaussianBlur(2)))


def frame(index: int, shot: int, width: int, height: int) -> np.ndarray:
    """A window panning 1 px a frame over its shot's texture; each shot another texture."""
    start = index % shot
    return np.ascontiguousarray(texture(index // shot, width, height)[:, start : start + width])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--shot", type=int, default=300, help="frames per shot")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--styles", type=int, default=4)
    parser.add_argument("--sizes", default="256,512")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nst-video-planning-"))
    clip = folder / "clip.mp4"
    frames = (frame(i, args.shot, args.width, args.height) for i in range(args.frames))
    write_mp4(frames, clip, Fraction(24))
    for s in range(args.styles):
        Image.fromarray(frame(s * args.shot, args.shot, 64, 64)).save(folder / f"style{s}.png")
    root = folder / "out"

    started = time.perf_counter()
    facts = read_clips({str(clip): VideoOptions()}, str(root))[str(clip)]
    cold = time.perf_counter() - started
    started = time.perf_counter()
    read_clips({str(clip): VideoOptions()}, str(root))
    warm = time.perf_counter() - started
    assert facts.problem is None, facts.problem

    sizes = [int(s) for s in args.sizes.split(",")]
    manifest = folder / "clips.yaml"
    styles = [f"style{s}.png" for s in range(args.styles)]
    manifest.write_text(yaml.safe_dump({"videos": ["clip.mp4"], "styles": styles, "sizes": sizes}))
    started = time.perf_counter()
    items = expand(load_manifest(manifest, str(root)))
    planned = time.perf_counter() - started

    started = time.perf_counter()
    lane = Lane("render", {}, "cpu", 1, 1, 1, items, max_batch=1)
    ready = len(lane.queue)
    released = 0
    while lane.queue:
        item, _ = lane.queue.popleft()
        lane.release(item.item_id)
        released += 1
    chains = time.perf_counter() - started
    assert released == len(items)

    print(f"clip: {args.frames} frames {args.width}x{args.height}, a cut every {args.shot}")
    print(f"cuts found: {list(facts.cuts)}")
    rows = [
        (
            "clip facts, cold (digest, header, decode + flow at 128 px)",
            cold,
            f"{args.frames / cold:.0f} frames/s",
        ),
        ("clip facts, warm (digest, cache)", warm, f"{args.frames / warm:.0f} frames/s"),
        (f"expand: {len(items)} frame items", planned, f"{len(items) / planned:.0f} items/s"),
        (f"chains: {ready} shot starts queued, {len(items)} frames released", chains, ""),
    ]
    print("| step | seconds | rate |")
    print("|---|---|---|")
    for name, seconds, rate in rows:
        print(f"| {name} | {seconds:.3f} | {rate or f'{1e6 * seconds / len(items):.1f} µs/frame'} |")


if __name__ == "__main__":
    main()
