"""Image I/O: safe decoding of user files, resizing, tensors and PNG output.

Every decoding problem becomes an ``ImageInputError`` naming the file, because a
batch of thousands of images must report bad ones instead of crashing.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from nst_engine.errors import ConfigError, ImageInputError
from nst_engine.storage.files import write_atomic
from nst_engine.storage.uris import InputNotFoundError, is_uri, read_bytes

#: Refuse to decode images with more pixels than this (decompression-bomb guard).
MAX_DECODE_PIXELS = 64_000_000
#: Largest output side the engine accepts; beyond this no GPU today has the memory.
MAX_SIDE = 16_384

#: A path or URI (``s3://``, ``gs://``, ``file://``), encoded bytes, a binary file object or a
#: decoded image.
ImageLike = str | os.PathLike | bytes | BinaryIO | Image.Image


def load_image(
    source: ImageLike, max_pixels: int = MAX_DECODE_PIXELS, name: str | None = None
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB image, respecting EXIF orientation.

    A URI is read through pyarrow.fs by the calling process (a worker reads its own
    inputs); bytes or a binary file object are decoded as they are, named ``name`` in
    errors. Transparent images are composited onto white; 16-bit and CMYK images are
    converted with their full range rather than clipped.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source, "<in-memory image>")
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(source), name or "<image bytes>", max_pixels)
    if hasattr(source, "read"):
        return _decode(source, name or str(getattr(source, "name", "<image stream>")), max_pixels)
    if is_uri(source):
        try:
            data = read_bytes(str(source))
        except (InputNotFoundError, ValueError) as exc:
            raise ImageInputError(str(exc)) from None
        return _decode(io.BytesIO(data), name or str(source), max_pixels)
    path = Path(source)
    if not path.exists():
        raise ImageInputError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise ImageInputError(f"{path}: not a file; give an image file (PNG, JPEG, ...)")
    return _decode(path, name or str(path), max_pixels)


def _decode(source: Path | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """The decoding behind ``load_image``: every problem becomes an ``ImageInputError``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageInputError(
                        f"{name}: {width}x{height} pixels is over the safe decoding limit of "
                        f"{max_pixels} pixels; downscale the image first"
                    )
                if width == 0 or height == 0:
                    raise ImageInputError(f"{name}: image has zero size; replace the file")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img, name)
        except ImageInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageInputError(
                f"{name}: image is too large to decode safely; downscale the image first"
            ) from None
        except Image.UnidentifiedImageError:
            raise ImageInputError(
                f"{name}: not a readable image; give a PNG, JPEG, WebP, TIFF or BMP file"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(
                f"{name}: image is damaged or truncated ({exc}); re-export the file"
            ) from None


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and data.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = max(float(data.max(initial=0)), 1.0)
        grey = np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"{name}: cannot convert image mode {mode} to RGB ({exc})") from None


def output_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the longer side equal to ``long_side`` and the aspect ratio kept."""
    if long_side <= 0:
        raise ConfigError(f"must be a positive number of pixels, got {long_side}", field="size")
    if long_side > MAX_SIDE:
        raise ConfigError(f"{long_side} is larger than the supported {MAX_SIDE} pixels", field="size")
    scale = long_side / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(img: Image.Image, height: int, width: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.LANCZOS)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor (1, 3, H, W) in [0, 1]."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """Float tensor (1, 3, H, W) in [0, 1] -> RGB image, rounding to nearest."""
    array = image.detach().float().clamp(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def png_bytes_info(metadata: dict[str, object]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        info.add_itxt(key, text)
    return info


def encode_png(image: torch.Tensor | Image.Image, metadata: dict[str, object] | None = None) -> bytes:
    """PNG bytes with ``metadata`` as text chunks (for writers to other filesystems)."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", pnginfo=png_bytes_info(metadata or {}))
    return buffer.getvalue()


def save_png(
    image: torch.Tensor | Image.Image, path: str | os.PathLike, metadata: dict[str, object] | None = None
) -> Path:
    """Write a PNG atomically (temporary file, then rename) so readers never see half a file."""
    write_atomic(path, encode_png(image, metadata))
    return Path(path)


def read_png_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Text chunks of a PNG written by :func:`save_png`."""
    with Image.open(path) as img:
        img.load()
        return dict(getattr(img, "text", {}))
