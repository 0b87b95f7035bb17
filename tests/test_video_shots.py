"""Shot boundaries (``engine.shots``) on synthetic clips: textured scenes panning, with a
textured object of a fifth of the frame moving over them, and cuts between two scenes;
and a chain that starts again at a cut (``engine.video.stylize_shot``)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_engine.engine import Stylizer
from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.flow import frame_flow
from nst_engine.engine.shots import (
    CUT_TRUSTED_FRACTION,
    find_cuts,
    is_cut,
    split_shots,
    starts_shot,
    trusted_fraction,
)
from nst_engine.engine.video import stylize_shot
from tests.test_video_engine import texture

SIZE = 128  # frame side, px: the size CUT_TRUSTED_FRACTION was measured at
ROOM = 120  # px of background beyond the frame, for the pans to move into
OBJECT_SHARE = 0.2  # of the frame's area
CUT_AT = 3


def panning(
    seed: int, step: tuple[int, int], count: int, blur: float, size: int = SIZE
) -> list[torch.Tensor]:
    """``count`` frames of a textured background whose view moves ``step`` (x, y) px a frame."""
    background = texture(size + ROOM, size + ROOM, seed=seed, blur=blur)
    corners = [(10 + t * step[0], 10 + t * step[1]) for t in range(count)]
    return [background[..., y : y + size, x : x + size] for x, y in corners]


def with_object(
    frames: list[torch.Tensor], blur: float, step: tuple[int, int] = (6, 2)
) -> list[torch.Tensor]:
    """``frames`` with a textured square of ``OBJECT_SHARE`` of their area moving ``step`` px a frame."""
    size = frames[0].shape[-1]
    side = round(math.sqrt(OBJECT_SHARE) * size)
    patch = texture(side, side, seed=2, blur=blur)
    moved = []
    for t, frame in enumerate(frames):
        frame = frame.clone()
        x, y = 8 + t * step[0], 20 + t * step[1]
        frame[..., y : y + side, x : x + side] = patch
        moved.append(frame)
    return moved


def cut_clip(blur: float, count: int = 6, moving_object: bool = False) -> list[torch.Tensor]:
    """Two scenes of different textures, each drifting, cut at frame ``CUT_AT``; with
    ``moving_object`` the same object moves on across the cut (only the background changes)."""
    first = panning(1, (2, 1), count, blur)[:CUT_AT]
    second = panning(7, (2, 1), count, blur)[CUT_AT:]
    frames = first + second
    return with_object(frames, blur) if moving_object else frames


def fractions(frames: list[torch.Tensor]) -> list[float]:
    return [trusted_fraction(frame_flow(a, b)) for a, b in itertools.pairwise(frames)]


@pytest.mark.parametrize("blur", [1.0, 1.5, 3.0])
@pytest.mark.parametrize("moving_object", [False, True])
def test_one_cut_is_found_where_the_scene_changes(blur: float, moving_object: bool) -> None:
    clip = cut_clip(blur, moving_object=moving_object)
    assert find_cuts(clip) == [CUT_AT]
    assert split_shots(len(clip), [CUT_AT]) == [range(0, CUT_AT), range(CUT_AT, len(clip))]


@pytest.mark.parametrize("blur", [1.0, 3.0])
def test_a_strong_consistent_pan_is_no_cut(blur: float) -> None:
    clip = panning(1, (6, 0), 5, blur)
    assert find_cuts(clip) == []
    assert min(fractions(clip)) > CUT_TRUSTED_FRACTION + 0.2  # measured 0.93-0.94: not near


@pytest.mark.parametrize("blur", [1.0, 3.0])
def test_a_moving_object_of_a_fifth_of_the_frame_is_no_cut(blur: float) -> None:
    clip = with_object(panning(1, (1, 0), 5, blur), blur)
    assert find_cuts(clip) == []
    trusted = fractions(clip)
    assert min(trusted) > CUT_TRUSTED_FRACTION  # measured 0.81-0.86
    assert max(trusted) < 0.95  # the object's edges and trail are masked: the check sees it


def test_given_cuts_override_detection() -> None:
    clip = cut_clip(1.5)
    across = frame_flow(clip[CUT_AT - 1], clip[CUT_AT])
    within = frame_flow(clip[0], clip[1])
    assert is_cut(across) and not is_cut(within)
    assert starts_shot(CUT_AT, across, None) and not starts_shot(1, within, None)
    assert not starts_shot(CUT_AT, across, frozenset())  # given: none, whatever the flow says
    assert starts_shot(1, within, frozenset({1}))
    assert starts_shot(0, None, frozenset())  # the first frame always starts one


def test_split_shots_orders_and_bounds_the_cuts() -> None:
    assert split_shots(5, []) == [range(0, 5)]
    assert split_shots(5, [4, 0, 2, 2, 9]) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_shots(0, [1]) == []


def _images(frames: list[torch.Tensor]) -> list[Image.Image]:
    return [Image.fromarray((f[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)) for f in frames]


CHAIN = SynthesisConfig(size=SIZE, iterations=4)


@pytest.fixture(scope="module")
def style(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("style") / "style.png"
    _images([texture(64, 64, seed=11, blur=2.0)])[0].save(path)
    return path


def test_a_chain_starts_again_at_a_detected_cut(stylizer: Stylizer, style: Path) -> None:
    """The frame after a cut is synthesized as a first frame: all its iterations, no
    temporal term; the frames within a shot chain as before."""
    clip = _images(cut_clip(1.5, count=5))
    frames = list(stylize_shot(clip, [style], CHAIN, stylizer))
    assert [f.starts_shot for f in frames] == [True, False, False, True, False]
    assert [f.temporal_loss is None for f in frames] == [True, False, False, True, False]
    assert [f.stats.iterations for f in frames] == [4, 2, 2, 4, 2]
    assert frames[CUT_AT].flow is not None and trusted_fraction(frames[CUT_AT].flow) < CUT_TRUSTED_FRACTION


def test_given_cuts_replace_detection_in_a_chain(stylizer: Stylizer, style: Path) -> None:
    clip = _images(cut_clip(1.5, count=4))
    frames = list(stylize_shot(clip, [style], CHAIN, stylizer, cuts=[1]))
    assert [f.starts_shot for f in frames] == [True, True, False, False]  # the real cut at 3 ignored
    assert [f.temporal_loss is None for f in frames] == [True, True, False, False]
