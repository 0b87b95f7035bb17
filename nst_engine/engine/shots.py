"""Shot boundaries: where a clip's chain of frames must start again (Ruder, Dosovitskiy,
Brox, "Artistic style transfer for videos", GCPR 2016, Sec. 3 start each shot afresh).

Across a cut the previous stylized frame is of another scene: warping it in as the start
and pulling towards it (eq. 7) would paint the old shot over the new one. A cut shows in
the flow itself: the forward–backward consistency check (eqs. 5, 6) trusts most pixels of
two frames of one shot, even under strong motion, and few across a cut, where the flow
matches unrelated content and the two directions disagree. So a cut is a pair of frames
whose trusted fraction falls below ``CUT_TRUSTED_FRACTION``; cuts may also be given.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator, Sequence

import torch

from nst_engine.engine.flow import FrameFlow, frame_flow

#: A pair of consecutive frames whose flow the consistency check trusts on fewer than this
#: share of pixels is a cut. Measured on synthetic 128 px textured scenes (DIS MEDIUM,
#: texture blurs 1-3 px, tests/test_video_shots.py): a 6 px/frame pan keeps 0.93-0.94, a
#: textured object of 20 % of the frame moving 6 px/frame over a drifting background
#: 0.81-0.86, a cut 0.31-0.37 (0.39-0.49 when the same object stays in both shots). The
#: threshold sits mid-gap. Faster motion than DIS follows fails too: a 12 px/frame pan of a
#: fine texture falls to 0.06-0.24 and reads as a cut (a fresh start: flicker, no harm).
CUT_TRUSTED_FRACTION = 0.65


def trusted_fraction(flow: FrameFlow) -> float:
    """The share of the current frame's pixels whose flow the consistency check trusts."""
    return float(flow.weights.mean())


def is_cut(flow: FrameFlow) -> bool:
    """Whether the flow between two consecutive frames says they belong to different shots."""
    return trusted_fraction(flow) < CUT_TRUSTED_FRACTION


def starts_shot(index: int, flow: FrameFlow | None, cuts: Collection[int] | None) -> bool:
    """Whether frame ``index`` starts a shot: the first frame always; else one of the given
    ``cuts`` when they are given (they override detection, both ways), or a detected cut."""
    if index == 0 or flow is None:
        return True
    return index in cuts if cuts is not None else is_cut(flow)


def find_cuts(frames: Sequence[torch.Tensor]) -> list[int]:
    """The indices of the frames (1, 3, H, W) in [0, 1], of one size, that start a shot
    after the first: where the flow from the frame before is a cut."""
    return list(find_cuts_in(frames))


def find_cuts_in(frames: Iterable[torch.Tensor]) -> Iterator[int]:
    """``find_cuts`` over frames as they come (a whole clip need not be held)."""
    previous = None
    for index, frame in enumerate(frames):
        if previous is not None and is_cut(frame_flow(previous, frame)):
            yield index
        previous = frame


def split_shots(count: int, cuts: Iterable[int]) -> list[range]:
    """The frame ranges of the shots of a clip of ``count`` frames cut before each index of
    ``cuts`` (0 and indices past the end ignored): the chains that may run apart."""
    edges = sorted({0, *(c for c in cuts if 0 < c < count), count}) if count else []
    return [range(a, b) for a, b in itertools.pairwise(edges)]
