"""A shot as a chain of frames (Ruder, Dosovitskiy, Brox, "Artistic style transfer for
videos", GCPR 2016, Sec. 3): frame 0 is the paper's synthesis; each later frame starts
from the previous stylized frame warped into it by the optical flow and keeps near it
(the temporal loss, eq. 7) wherever the flow's consistency check trusts the flow.

Stylizing frames one by one instead flickers: each starts from new noise and lands in
another local minimum. The warm start also lets later frames stop sooner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.flow import FrameFlow, frame_flow
from nst_engine.engine.images import ImageLike, load_image, resize, to_tensor
from nst_engine.engine.problem import synthesis_size
from nst_engine.engine.shots import starts_shot
from nst_engine.engine.stats import SynthesisStats
from nst_engine.engine.synthesis import PreviousFrame, Stylizer
from nst_engine.engine.targets import image_digest
from nst_engine.engine.warp import warp

#: Iterations of each frame after a shot's first, as a share of ``config.iterations``: the
#: warped previous frame is most of the way already. Measured on tests/test_video_chain.py's
#: clip (tiny random network, 48 px, 60 iterations): at half, the warping error is 0.06 of
#: independent frames' (0.06 at full too), style losses 0.99-1.16× theirs (0.89-1.00× at
#: full), and a later frame takes about half the first's time. To be checked on VGG-19.
ITERATIONS_AFTER_FIRST_SHARE = 0.5


@dataclass(frozen=True)
class ShotFrame:
    """One stylized frame of a shot: the output (1, 3, H, W) in [0, 1] at the synthesis
    size, its statistics (``stats.final_temporal_loss`` set after the first frame), and
    the flow from the frame before (None for the first), whose ``seconds`` is the flow
    time and whose weights say which pixels the warping error may be measured over, and
    whether the frame starts a shot (``shots``): synthesized as a first frame, its flow
    (kept for its time and trusted fraction) across a cut, not to measure coherence by."""

    index: int
    image: torch.Tensor
    stats: SynthesisStats
    flow: FrameFlow | None
    starts_shot: bool = False

    @property
    def flow_seconds(self) -> float:
        return self.flow.seconds if self.flow is not None else 0.0

    @property
    def temporal_loss(self) -> float | None:
        return self.stats.final_temporal_loss


def iterations_after_first(config: SynthesisConfig) -> int:
    """The default iterations of a frame after a shot's first: at least one, unless the
    first frame runs none."""
    return min(config.iterations, max(1, round(config.iterations * ITERATIONS_AFTER_FIRST_SHARE)))


def content_frame(frame: ImageLike, config: SynthesisConfig) -> torch.Tensor:
    """A content frame (1, 3, H, W) in [0, 1] at the synthesis size, resized as the
    synthesis resizes it, so its flow lines up with the stylized frames."""
    image = load_image(frame)
    return to_tensor(resize(image, *synthesis_size(image, config)))


def warm_start(flow: FrameFlow, previous_stylized: torch.Tensor, temporal: bool = True) -> PreviousFrame:
    """How a frame after its shot's first starts (Ruder et al. 2016, Sec. 3): the previous
    stylized frame (1, 3, H, W) warped into it by ``flow`` (from the previous content frame
    to this one), and, with ``temporal``, pulled towards it where the flow is trusted."""
    return PreviousFrame(warp(previous_stylized, flow.backward), flow.weights, temporal)


def stylize_shot(
    frames: Iterable[ImageLike],
    styles: Sequence[ImageLike],
    config: SynthesisConfig,
    stylizer: Stylizer,
    *,
    later_iterations: int | None = None,
    temporal: bool = True,
    cuts: Iterable[int] | None = None,
) -> Iterator[ShotFrame]:
    """Stylize one shot's frames in order, each as it is done.

    Frame 0 is ``stylizer.synthesize`` as ``config`` says (from noise by default); frame
    i > 0 starts from ``warp(stylized[i−1], frame_flow(content[i−1], content[i]).backward)``
    and runs ``later_iterations`` (default ``iterations_after_first``) with the temporal
    loss at ``config.temporal_weight``; ``temporal=False`` keeps the warm start alone.
    A frame that starts a shot (``shots.starts_shot``: at a cut found from the flow, or at
    the indices of ``cuts`` when given) starts a new chain, synthesized as frame 0 is.
    """
    style_images = [load_image(s) for s in styles]
    style_ids = [image_digest(s) for s in style_images]
    later = dataclasses.replace(
        config, iterations=iterations_after_first(config) if later_iterations is None else later_iterations
    )
    given = None if cuts is None else frozenset(cuts)
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (content, stylized) of frame i−1
    for index, frame in enumerate(frames):
        image = load_image(frame)
        content = content_frame(image, config)
        flow, start = None, None
        if previous is not None:
            flow = frame_flow(previous[0], content)
            if not starts_shot(index, flow, given):
                start = warm_start(flow, previous[1], temporal)
        first = start is None
        result = stylizer.synthesize(
            image, style_images, config if first else later, style_ids=style_ids, previous=start
        )
        yield ShotFrame(index, result.image, result.stats, flow, first)
        previous = (content, result.image)
