"""What an image must show to be taken as an item's result: what the item implies of it.

A worker writes each item's image with its parameters in the PNG text
(``engine.result.png_metadata``, plus ``nst:item_id``). Recovery and verification
(``resume.check_done``) take an image as the item's only when it shows what the item
implies: the item's output shape (``WorkItem.shape``), RGB, and the same parameters,
content id and style ids in its text (``implied_text``; what the synthesis came to, its
iterations and losses, the item cannot imply).

**What is trusted.** These checks catch accidents and mismatches: a damaged file,
another item's or another run's image, a file copied to the wrong place, an older render
with other parameters. They prove nothing about who wrote the image: the text is no
signature, so whoever can write the output root can forge a result that passes (the
text copied from a genuine image, pixels of their choosing), and can edit the result
table too. Keep write access to the output root to those whose results you would accept.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from PIL import Image

from nst_engine.engine.config import INITS, SynthesisConfig
from nst_engine.errors import NSTError
from nst_engine.planning.items import WorkItem

#: PNG text key under which a worker stores the item id of the image it wrote.
ITEM_ID_KEY = "nst:item_id"
#: The PNG text a worker writes that the item implies, besides its id (``implied_text``).
IMPLIED_KEYS = ("nst:params", "nst:content_id", "nst:style_ids")


def item_config(item: WorkItem) -> SynthesisConfig:
    """The configuration a worker renders ``item`` with: the item's, with its style
    weights when it blends several styles (a manifest gives those per style, not in
    ``params``). Validates again, so a bad value raises ``ConfigError``."""
    if len(item.style_paths) > 1:
        return replace(item.config, style_weights=item.style_weights)
    return item.config


def implied_text(item: WorkItem) -> dict[str, Any]:
    """The PNG text of ``item``'s image that the item implies (values before encoding:
    ``engine.images.png_bytes_info`` writes them as JSON)."""
    return {
        ITEM_ID_KEY: item.item_id,
        "nst:params": item_config(item).to_params(),
        "nst:content_id": item.content_hash,
        "nst:style_ids": list(item.style_hashes),
    }


def mismatch(item: WorkItem, image: Image.Image) -> str | None:
    """Why ``image`` (decoded, with its PNG text) is not what ``item`` implies, or None
    when it is. The item id is checked apart (``resume``), before this."""
    height, width = item.shape
    if height and width and image.size != (width, height):  # (0, 0): a shape not known
        return f"image size differs ({image.width}x{image.height}, the item's is {width}x{height})"
    if image.mode != "RGB":
        return f"image mode differs ({image.mode}, not RGB)"
    try:
        expected = implied_text(item)
    except NSTError as exc:  # the item's own parameters do not validate: nothing to match
        return f"item parameters invalid ({exc})"
    text = getattr(image, "text", {})
    # an init image counts by its contents (in the id), not its path, which may have moved
    moved = () if item.config.init in INITS else ("init",)
    differ = [key for key in IMPLIED_KEYS if not _matches(text.get(key), expected[key], moved)]
    if differ:
        return f"image parameters differ ({', '.join(differ)})"
    return None


def _matches(text: str | None, expected: Any, ignored: tuple[str, ...] = ()) -> bool:
    """Whether a PNG's text value is ``expected`` as ``engine.images.png_bytes_info`` writes
    it: strings as they are, anything else as JSON, compared in one canonical form (the
    text's spacing does not matter; a NaN equals a NaN), without the ``ignored`` keys of
    a mapping."""
    if text is None:
        return False
    if isinstance(expected, str):
        return text == expected
    try:
        found = json.loads(text)
    except ValueError:
        return False
    if isinstance(found, dict) and isinstance(expected, dict):
        found = {k: v for k, v in found.items() if k not in ignored}
        expected = {k: v for k, v in expected.items() if k not in ignored}
    return json.dumps(found, sort_keys=True) == json.dumps(expected, sort_keys=True, default=str)
