"""Work items: a manifest expanded into units of rendering, each with a stable id.

An item's id hashes the *contents* of its images and every parameter that changes the
output, never paths or times, so the same work is recognised after files move or a run
is repeated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nst_engine.engine.config import INITS, SynthesisConfig
from nst_engine.engine.images import output_size
from nst_engine.engine.vgg import deepest
from nst_engine.engine.weights import check_source
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import WeightsError, printable
from nst_engine.planning.fingerprints import Facts, ImageIndex
from nst_engine.planning.manifest import ItemSpec, Manifest, ManifestError
from nst_engine.storage.paths import UnsafePathError, holding_problem, safe_relative

ID_LENGTH = 20
#: What to do about bad inputs, shown after them (not one of the problems).
SKIP_HINT = "(use --skip-bad-inputs to record these items as failed and render the rest)"


@dataclass(frozen=True)
class FrameRef:
    """Which frame of which clip a work item is, and where its shot's chain stands.

    A frame after its shot's first continues from the frame before it (Ruder et al.
    2016): it starts from that frame's stylized image, read back from the output root at
    ``previous_output``, warped by the optical flow between the two content frames, so it
    may start only once the item ``after`` has an image (the scheduler holds it back till
    then). Reading the image back, rather than keeping it in a worker's memory, lets any
    worker continue any shot, and a shot resume after preemption at its last frame."""

    clip: str  # the clip's location (a video file, or a frame folder or pattern)
    rate: str | None  # a frame sequence's frame rate (a video file has its own)
    index: int  # 0-based, in the clip
    shot: int  # 0-based, in the clip
    frames: int  # the clip's frame count
    clip_output: str  # the stylized clip's mp4, relative to the output root
    after: str | None = None  # the item id of the frame before, in the same shot
    previous_output: str | None = None  # that frame's image, relative to the output root


@dataclass(frozen=True)
class WorkItem:
    """Everything a worker needs to render one image; plain data, cheap to send."""

    item_id: str
    manifest_name: str
    content_path: str
    content_hash: str
    style_name: str
    style_paths: tuple[str, ...]
    style_hashes: tuple[str, ...]
    style_weights: tuple[float, ...]
    size: int
    config: SynthesisConfig
    output_path: str  # relative to the output root
    pixels_estimate: int  # for largest-first scheduling
    input_error: str | None = None  # set when an image is missing or unreadable
    shape: tuple[int, int] = (0, 0)  # (height, width) of the output, as the engine sizes it
    frame: FrameRef | None = None  # set for a video frame

    @property
    def after(self) -> str | None:
        """The item that must have its image before this one can start (a video frame's
        predecessor in its shot), or None."""
        return self.frame.after if self.frame is not None else None

    @property
    def batch_key(self) -> tuple[tuple[int, int], str, str, str, bool]:
        """Items with equal keys can run in one batch on a worker (``engine.batch``): the
        same output shape, network and precision, so one pass of the network serves all."""
        config = self.config
        return (
            self.shape,
            str(config.precision),
            str(config.pooling),
            deepest(config.loss_layers),
            config.channels_last,
        )

    @property
    def label(self) -> str:
        frame = f" frame {self.frame.index}" if self.frame is not None else ""
        return f"{Path(self.content_path).name}{frame} × {self.style_name} @ {self.size}"


def weights_file(spec: WeightsSpec, where: str = "weights") -> str | None:
    """The weights file a worker will load, or None for a built-in source, after the checks
    that need no loading (see ``check_source``); a problem is a ``ManifestError`` naming
    the field, found here rather than in every worker after Ray has started."""
    try:
        path = check_source(spec.source, spec.preprocessing, spec.allow_download)
    except WeightsError as exc:
        raise ManifestError([f"{where}: {exc.field or 'source'}: {exc.message}"]) from None
    return str(path) if path is not None else None


def weights_identity(spec: WeightsSpec, index: ImageIndex, where: str = "weights") -> dict[str, Any]:
    """What about the weights changes the output: file contents, not file names. Weights
    a worker could not load (a wrong shape, a pickle ``weights_only`` refuses) and a
    calibration image that cannot be read are a ``ManifestError`` naming the field. A
    weights file is loaded once, by ``index``, and the outcome kept in its cache."""
    source = spec.source
    path = weights_file(spec, where)
    if path is not None:
        facts = index.weights(path)
        if facts.problem:
            raise ManifestError([f"{where}: source: {facts.problem}"])
        source = f"sha256:{facts.sha256}"
    calibration = []
    if spec.normalize:
        for location in spec.calibration:
            facts = index.image(location)
            if facts.problem:
                raise ManifestError([f"{where}: calibration: {facts.problem}"])
            calibration.append(facts.sha256)
    return {
        "source": source,
        "preprocessing": spec.preprocessing,
        "normalize": spec.normalize,
        "calibration": calibration,
        "calibration_size": spec.calibration_size if spec.normalize else None,
    }


def item_id(
    content_hash: str,
    style_hashes: tuple[str, ...],
    style_weights: tuple[float, ...],
    config: SynthesisConfig,
    weights: dict[str, Any],
    init_hash: str | None = None,
    after: str | None = None,
) -> str:
    """Hash of what changes the output; an init image counts by its contents, not its path.
    A video frame after its shot's first starts from the frame before, so that frame's id
    (``after``), and through it the whole chain before, is part of its own."""
    params = config.to_params()
    if init_hash is not None:
        params["init"] = f"sha256:{init_hash}"
    payload: dict[str, Any] = {"after": after} if after is not None else {}
    payload |= {
        "content": content_hash,
        "styles": [[h, w] for h, w in zip(style_hashes, style_weights, strict=True)],
        "config": params,
        "weights": weights,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:ID_LENGTH]


def output_relative_path(layout: str, item: dict[str, Any]) -> str:
    content_rel = (
        item["content_rel"].rsplit(".", 1)[0]
        if "." in Path(item["content_rel"]).name
        else item["content_rel"]
    )
    rendered = layout.format(
        style=item["style"],
        size=item["size"],
        content=content_rel,
        content_name=Path(content_rel).name,
        id=item["id"],
    )
    return safe_relative(rendered)


def _init_location(init: str) -> str | None:
    """The image an ``init`` parameter names, or None for noise/content/style."""
    return None if init in INITS else init


def expand(
    manifest: Manifest,
    skip_bad_inputs: bool = False,
    index: ImageIndex | None = None,
    write_cache: bool = True,
) -> list[WorkItem]:
    """Deterministic list of work items (manifest order). Bad images raise a
    ``ManifestError`` listing all of them, unless ``skip_bad_inputs`` marks those items;
    weights a worker could not load raise it always.

    Every input is read once, in parallel, for its hash and a full decode (a weights
    file: its hash and a load), unless the hash cache in the output root
    (``manifest.output``) already knows it at its current size and modification time;
    the cache is written back at the end (unless ``write_cache`` is False: a dry run that
    must not touch the output root). ``index`` (for tests and callers that want its read
    counts) defaults to one on that cache."""
    if index is None:
        index = ImageIndex(manifest.output, manifest.stamps, write=write_cache)
    images = [p for spec in manifest.items for p in (*_content_image(spec), *spec.style.images)]
    images += [p for spec in manifest.items if (p := _init_location(spec.config.init))]
    if manifest.weights.normalize:
        images += list(manifest.weights.calibration)
    try:
        weights = weights_file(manifest.weights, f"{manifest.source}: weights")
    except ManifestError:  # reported by _expand, with the bad inputs
        weights = None
    index.prepare(images=images, weights=[weights] if weights else [])  # loaded while images decode
    try:
        return _expand(manifest, index, skip_bad_inputs, _clip_facts(manifest, write_cache))
    finally:
        index.save()  # what was learnt stays learnt, even when the manifest has bad inputs


def _content_image(spec: ItemSpec) -> tuple[str, ...]:
    """The content image a spec reads at planning: none for a clip (``planning.clips``)."""
    return (spec.content,) if spec.video is None else ()


def _clip_facts(manifest: Manifest, write_cache: bool) -> dict[str, Any]:
    """The manifest's clips read (``planning.clips``), or nothing when it has none."""
    options = {spec.content: spec.video for spec in manifest.items if spec.video is not None}
    if not options:
        return {}
    # imported here: clips need PyAV and OpenCV, which only manifests with videos load
    from nst_engine.planning.clips import read_clips

    return read_clips(options, manifest.output, write_cache)


def name_problem(location: str, relative: str) -> str | None:
    """Why an image found by listing cannot be an item's content: its name, which becomes
    part of the output path, holds what no output path may hold (a control character; a
    name that is not UTF-8). A bad input of its items, like an unreadable image, so that
    ``--skip-bad-inputs`` renders the rest of a folder that holds one."""
    return holding_problem(relative, location)


def _expand(
    manifest: Manifest, index: ImageIndex, skip_bad_inputs: bool, clips: dict[str, Any]
) -> list[WorkItem]:
    try:
        weights = weights_identity(manifest.weights, index, f"{manifest.source}: weights")
        refused: list[str] = []
    except ManifestError as exc:  # fatal even with --skip-bad-inputs; listed with the bad inputs
        weights, refused = {}, exc.problems
    items: list[WorkItem] = []
    problems: list[str] = []
    seen_outputs: dict[str, str] = {}
    for spec in manifest.items:
        if spec.video is not None:
            continue  # below, with the other frames of its clip
        init = _init_location(spec.config.init)
        paths = (spec.content, *spec.style.images, *((init,) if init else ()))
        unusable_name = name_problem(spec.content, spec.content_rel)
        facts = {p: index.image(p) for p in paths}
        if unusable_name:  # the only problem said of it (a read could not even name it)
            facts[spec.content] = Facts(None, problem=unusable_name)
        errors = list(dict.fromkeys(f.problem for f in facts.values() if f.problem))
        if errors:
            problems += [f"{spec.where}: {e}" for e in errors]
            content_hash = "missing"
            style_hashes = tuple("missing" for _ in spec.style.images)
        else:
            content_hash = facts[spec.content].sha256 or "missing"
            style_hashes = tuple(facts[p].sha256 or "missing" for p in spec.style.images)
        init_hash = facts[init].sha256 if init and not errors else None
        ident = item_id(content_hash, style_hashes, spec.style.weights, spec.config, weights, init_hash)
        if errors:  # distinct ids for distinct broken inputs, stable across runs
            inputs = (spec.content, *spec.style.images)
            # surrogateescape: a name that is not UTF-8 (a bad input too) hashes as its bytes
            text = f"{ident}|{'|'.join(inputs)}"
            ident = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:ID_LENGTH]
        try:
            output = output_relative_path(
                manifest.layout,
                # an unusable name is never written (its item fails first): the id stands in
                {
                    "style": spec.style.name,
                    "size": spec.size,
                    "content_rel": ident if unusable_name else spec.content_rel,
                    "id": ident,
                },
            )
        except (UnsafePathError, KeyError, ValueError) as exc:
            raise ManifestError([f"{manifest.source}: layout: {exc}"]) from None
        if output in seen_outputs and seen_outputs[output] != ident:
            raise ManifestError(
                [
                    f"{spec.where}: layout: two different items would both write {output}; "
                    "add {id} or {content} to the layout"
                ]
            )
        seen_outputs[output] = ident
        width, height = facts[spec.content].width, facts[spec.content].height
        scale = spec.size / max(width, height, 1)
        shape = output_size(width, height, spec.size) if width and height else (spec.size, spec.size)
        items.append(
            spec_item(
                manifest,
                spec,
                item_id=ident,
                # as shown, for a name no row could hold (a lone surrogate): it is never read
                content_path=printable(spec.content, len(spec.content)) if unusable_name else spec.content,
                content_hash=content_hash,
                style_hashes=style_hashes,
                config=spec.config,
                output_path=output,
                pixels_estimate=int(width * scale) * int(height * scale) if width else spec.size**2,
                input_error="; ".join(errors) if errors else None,
                shape=shape,
            )
        )
    if clips:
        # imported here, as for ``_clip_facts``
        from nst_engine.planning.frames import frame_items

        videos = [spec for spec in manifest.items if spec.video is not None]
        styles = {p: index.image(p) for spec in videos for p in spec.style.images}
        frames, frame_problems = frame_items(manifest, videos, styles, clips, weights)
        items += frames
        problems += frame_problems
    bad_inputs = problems if not skip_bad_inputs else []
    if refused or bad_inputs:
        raise ManifestError([*refused, *bad_inputs], hint=SKIP_HINT if bad_inputs else None)
    return dedupe(items)


def spec_item(manifest: Manifest, spec: ItemSpec, **fields: Any) -> WorkItem:
    """A work item of ``spec``: the fields its manifest and spec give as they are (the
    same for an image and a video frame), and ``fields``, which the caller decides."""
    return WorkItem(
        manifest_name=manifest.name,
        style_name=spec.style.name,
        style_paths=spec.style.images,
        style_weights=spec.style.weights,
        size=spec.size,
        **fields,
    )


def dedupe(items: list[WorkItem]) -> list[WorkItem]:
    """The same work listed twice (same id) is rendered once."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.item_id not in seen:
            seen.add(item.item_id)
            unique.append(item)
    return unique
