"""What a worker needs to start a video frame (``WorkItem.frame``): the content frame,
decoded from its clip, and for a frame after its shot's first, the warm start and temporal
target of Ruder, Dosovitskiy, Brox ("Artistic style transfer for videos", GCPR 2016): the
frame before's image, read back from the output root, warped by the optical flow between
the two content frames (``engine.video.warm_start``).

The frame before is read back as its PNG, not kept in memory, so the result is the same
whichever worker renders it and whether or not the shot was interrupted in between.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.flow import frame_flow
from nst_engine.engine.images import load_image, to_tensor
from nst_engine.engine.synthesis import PreviousFrame
from nst_engine.engine.video import content_frame, warm_start
from nst_engine.errors import ImageInputError
from nst_engine.planning.items import WorkItem
from nst_engine.storage.errors import STORAGE_ERRORS
from nst_engine.storage.roots import OutputRoot
from nst_engine.storage.video import ClipReader


@dataclass(frozen=True)
class FrameStart:
    """A frame's content image, and (after its shot's first) where it starts from, with the
    seconds its optical flow took."""

    image: Image.Image
    previous: PreviousFrame | None = None
    flow_seconds: float | None = None


class FrameStarts:
    """A worker's source of ``FrameStart``s; keeps its clips open between items."""

    def __init__(self, root: OutputRoot) -> None:
        self.root = root
        self.clips = ClipReader()

    def start(self, item: WorkItem, config: SynthesisConfig) -> FrameStart:
        """``item``'s start (``item.frame`` set); a missing frame before is a bad input."""
        ref = item.frame
        assert ref is not None
        indices = [ref.index - 1, ref.index] if ref.after is not None else [ref.index]
        frames = self.clips.frames(ref.clip, ref.rate, indices)
        image = frames[-1].image()
        if ref.after is None or ref.previous_output is None:
            return FrameStart(image)
        stylized = to_tensor(self._previous_image(ref.previous_output))
        flow = frame_flow(content_frame(frames[0].image(), config), content_frame(image, config))
        if stylized.shape[-2:] != flow.weights.shape[-2:]:
            raise ImageInputError(
                f"{self.root.display(ref.previous_output)}: the frame before is "
                f"{stylized.shape[-1]}x{stylized.shape[-2]}, not the synthesis size; delete it and run again"
            )
        return FrameStart(image, warm_start(flow, stylized), flow.seconds)

    def _previous_image(self, path: str) -> Image.Image:
        try:
            data = self.root.read_bytes(path)
        except STORAGE_ERRORS as exc:
            raise ImageInputError(
                f"{self.root.display(path)}: the frame before has no readable image ({exc}); run again"
            ) from None
        return load_image(data, name=self.root.display(path))
