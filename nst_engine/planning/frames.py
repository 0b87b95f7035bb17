"""A manifest's clips expanded into work items, one per frame (Ruder, Dosovitskiy, Brox,
"Artistic style transfer for videos", GCPR 2016).

Each frame is an item like an image's, so everything items have, frames have: a row per
attempt, resume, retries on another worker, checkpoints, batching, plans and prices. What
a frame adds is its place in its shot's chain (``FrameRef``): a shot's first frame is the
paper's synthesis; each later frame starts from the frame before it and names it
(``after``), and its id hashes that frame's id, so a chain's ids change from the first
frame that changes on. A frame after the first runs fewer iterations (``later_iterations``,
default ``engine.video.iterations_after_first``): the warped previous frame is most of the
way already.
"""

from __future__ import annotations

import dataclasses
import hashlib

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.images import output_size
from nst_engine.engine.video import iterations_after_first
from nst_engine.planning.clips import ClipFacts
from nst_engine.planning.fingerprints import Facts
from nst_engine.planning.items import ID_LENGTH, FrameRef, WorkItem, item_id, output_relative_path, spec_item
from nst_engine.planning.manifest import ItemSpec, Manifest, ManifestError
from nst_engine.storage.paths import UnsafePathError, safe_relative
from nst_engine.storage.video import CLIP_SUFFIX, frame_location


def frame_hash(digest: str, index: int) -> str:
    """The content hash of frame ``index`` of the clip of ``digest``: what the frame is,
    without decoding it at planning (the clip's bytes fix every frame's pixels)."""
    return hashlib.sha256(f"{digest}/frame/{index}".encode()).hexdigest()


def clip_output(layout: str, spec: ItemSpec, ident: str) -> str:
    """The stylized clip's mp4, where the layout would put an image of the clip (its
    frames go in a folder beside it, ``storage.video.frames_folder``)."""
    image = output_relative_path(
        layout, {"style": spec.style.name, "size": spec.size, "content_rel": spec.content_rel, "id": ident}
    )
    return safe_relative(image.rsplit(".", 1)[0] + CLIP_SUFFIX)


def frame_items(
    manifest: Manifest,
    specs: list[ItemSpec],
    styles: dict[str, Facts],
    clips: dict[str, ClipFacts],
    weights: dict,
) -> tuple[list[WorkItem], list[str]]:
    """Every frame of every clip × style × size of ``specs``, each shot a chain; and the
    problems (a clip or style that cannot be read: one failed item per clip × style × size
    with ``--skip-bad-inputs``)."""
    items: list[WorkItem] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for spec in specs:
        facts = clips[spec.content]
        errors = list(
            dict.fromkeys(p for p in (facts.problem, *(styles[s].problem for s in spec.style.images)) if p)
        )
        if errors:
            problems += [f"{spec.where}: {e}" for e in errors]
            items.append(_unreadable(manifest, spec, facts, errors))
            continue
        made = _chains(
            manifest, spec, facts, tuple(styles[s].sha256 or "" for s in spec.style.images), weights
        )
        output = made[0].frame.clip_output if made[0].frame else ""
        if seen.setdefault(output, made[0].item_id) != made[0].item_id:
            raise ManifestError(
                [
                    f"{spec.where}: layout: two clips would both write {output}; "
                    "add {id} or {content} to it"
                ]
            )
        items += made
    return items, problems


def _chains(
    manifest: Manifest, spec: ItemSpec, facts: ClipFacts, style_hashes: tuple[str, ...], weights: dict
) -> list[WorkItem]:
    """A clip × style × size's frames, shot by shot, each frame after the first of its shot
    naming the one before."""
    assert facts.info is not None and spec.video is not None
    info, options = facts.info, spec.video
    first = spec.config
    later_iterations = options.later_iterations
    later = dataclasses.replace(
        first, iterations=iterations_after_first(first) if later_iterations is None else later_iterations
    )
    height, width = output_size(info.width, info.height, spec.size)
    mp4 = clip_output_of(
        manifest, spec, item_id(facts.digest, style_hashes, spec.style.weights, first, weights)
    )
    items: list[WorkItem] = []
    for shot, frames in enumerate(facts.shots()):
        previous: WorkItem | None = None
        for index in frames:
            config = first if previous is None else later
            content_hash = frame_hash(facts.digest, index)
            after = previous.item_id if previous else None
            ident = item_id(content_hash, style_hashes, spec.style.weights, config, weights, after=after)
            frame = FrameRef(
                spec.content,
                options.rate,
                index,
                shot,
                info.frames,
                mp4,
                after,
                previous.output_path if previous else None,
            )
            shape = (height, width)
            previous = _frame_item(
                manifest, spec, ident, content_hash, style_hashes, config, frame, shape=shape
            )
            items.append(previous)
    return items


def _frame_item(
    manifest: Manifest,
    spec: ItemSpec,
    ident: str,
    content_hash: str,
    style_hashes: tuple[str, ...],
    config: SynthesisConfig,
    frame: FrameRef,
    error: str | None = None,
    shape: tuple[int, int] = (0, 0),
) -> WorkItem:
    """One frame's item; ``shape`` (height, width) of its output when its clip was read."""
    return spec_item(
        manifest,
        spec,
        item_id=ident,
        content_path=spec.content,
        content_hash=content_hash,
        style_hashes=style_hashes,
        config=config,
        output_path=frame_location(frame.clip_output, frame.index),
        pixels_estimate=shape[0] * shape[1] if all(shape) else spec.size**2,
        input_error=error,
        shape=shape,
        frame=frame,
    )


def _unreadable(manifest: Manifest, spec: ItemSpec, facts: ClipFacts, errors: list[str]) -> WorkItem:
    """The one item that stands for a clip × style × size whose clip or style cannot be
    read: recorded as failed under ``--skip-bad-inputs``, its id stable across runs."""
    text = f"{spec.content}|{'|'.join(spec.style.images)}|{spec.size}|{spec.config.to_params()}"
    ident = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:ID_LENGTH]
    rate = spec.video.rate if spec.video else None
    frame = FrameRef(spec.content, rate, 0, 0, 0, clip_output_of(manifest, spec, ident))
    styles = tuple("missing" for _ in spec.style.images)
    return _frame_item(manifest, spec, ident, "missing", styles, spec.config, frame, "; ".join(errors))


def clip_output_of(manifest: Manifest, spec: ItemSpec, ident: str) -> str:
    """``clip_output``, or a ``ManifestError`` naming the layout."""
    try:
        return clip_output(manifest.layout, spec, ident)
    except (UnsafePathError, KeyError, ValueError) as exc:
        raise ManifestError([f"{manifest.source}: layout: {exc}"]) from None
