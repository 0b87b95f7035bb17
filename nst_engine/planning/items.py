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

from PIL import Image

from nst_engine.engine.config import INITS, SynthesisConfig
from nst_engine.engine.images import MAX_DECODE_PIXELS
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.manifest import Manifest, ManifestError
from nst_engine.planning.paths import UnsafePathError, safe_relative

ID_LENGTH = 20


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

    @property
    def label(self) -> str:
        return f"{Path(self.content_path).name} × {self.style_name} @ {self.size}"


class FileHasher:
    """sha256 of file contents, cached by (path, size, mtime) for one planning pass."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: str) -> str:
        stat = Path(path).stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._cache:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._cache[key] = digest.hexdigest()
        return self._cache[key]


def check_image(path: str) -> tuple[str | None, tuple[int, int]]:
    """(problem or None, (width, height)) from the header and a structural check."""
    p = Path(path)
    if not p.is_file():
        return f"{path}: image file not found", (0, 0)
    try:
        with Image.open(p) as img:
            size = img.size
            if size[0] * size[1] > MAX_DECODE_PIXELS:
                return f"{path}: {size[0]}x{size[1]} pixels is over the safe decoding limit", size
            img.verify()
        return None, size
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{path}: not a readable image ({type(exc).__name__}: {exc})", (0, 0)


def weights_identity(spec: WeightsSpec, hasher: FileHasher) -> dict[str, Any]:
    """What about the weights changes the output: file contents, not file names."""
    source = spec.source
    if source not in ("embedded", "torchvision") and not source.startswith("random"):
        source = f"sha256:{hasher(source)}"
    return {
        "source": source,
        "preprocessing": spec.preprocessing,
        "normalize": spec.normalize,
        "calibration": [hasher(p) for p in spec.calibration] if spec.normalize else [],
        "calibration_size": spec.calibration_size if spec.normalize else None,
    }


def item_id(
    content_hash: str,
    style_hashes: tuple[str, ...],
    style_weights: tuple[float, ...],
    config: SynthesisConfig,
    weights: dict[str, Any],
    init_hash: str | None = None,
) -> str:
    """Hash of what changes the output; an init image counts by its contents, not its path."""
    params = config.to_params()
    if init_hash is not None:
        params["init"] = f"sha256:{init_hash}"
    payload = {
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


def expand(manifest: Manifest, skip_bad_inputs: bool = False) -> list[WorkItem]:
    """Deterministic list of work items (manifest order). Bad images raise a
    ``ManifestError`` listing all of them, unless ``skip_bad_inputs`` marks those items."""
    hasher = FileHasher()
    checked: dict[str, tuple[str | None, tuple[int, int]]] = {}
    weights = weights_identity(manifest.weights, hasher)
    items: list[WorkItem] = []
    problems: list[str] = []
    seen_outputs: dict[str, str] = {}
    for spec in manifest.items:
        paths = (spec.content, *spec.style.images)
        for path in paths:
            if path not in checked:
                checked[path] = check_image(path)
        errors = [checked[p][0] for p in paths if checked[p][0]]
        if errors:
            problems += [f"{spec.where}: {e}" for e in errors]
            content_hash = "missing"
            style_hashes = tuple("missing" for _ in spec.style.images)
        else:
            content_hash = hasher(spec.content)
            style_hashes = tuple(hasher(p) for p in spec.style.images)
        init = spec.config.init
        init_hash = hasher(init) if init not in INITS and Path(init).is_file() else None
        ident = item_id(content_hash, style_hashes, spec.style.weights, spec.config, weights, init_hash)
        if errors:  # distinct ids for distinct broken inputs, stable across runs
            ident = hashlib.sha256(f"{ident}|{'|'.join(paths)}".encode()).hexdigest()[:ID_LENGTH]
        try:
            output = output_relative_path(
                manifest.layout,
                {"style": spec.style.name, "size": spec.size, "content_rel": spec.content_rel, "id": ident},
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
        width, height = checked[spec.content][1]
        scale = spec.size / max(width, height, 1)
        items.append(
            WorkItem(
                item_id=ident,
                manifest_name=manifest.name,
                content_path=spec.content,
                content_hash=content_hash,
                style_name=spec.style.name,
                style_paths=spec.style.images,
                style_hashes=style_hashes,
                style_weights=spec.style.weights,
                size=spec.size,
                config=spec.config,
                output_path=output,
                pixels_estimate=int(width * scale) * int(height * scale) if width else spec.size**2,
                input_error="; ".join(errors) if errors else None,
            )
        )
    if problems and not skip_bad_inputs:
        raise ManifestError(
            [*problems, "(use --skip-bad-inputs to record these items as failed and render the rest)"]
        )
    return dedupe(items)


def dedupe(items: list[WorkItem]) -> list[WorkItem]:
    """The same work listed twice (same id) is rendered once."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.item_id not in seen:
            seen.add(item.item_id)
            unique.append(item)
    return unique
