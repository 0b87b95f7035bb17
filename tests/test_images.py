"""Decoding of user image files: every mode becomes 8-bit RGB, every bad file a one-line error."""

from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_engine.engine.images import (
    MAX_DECODE_PIXELS,
    MAX_SIDE,
    load_image,
    output_size,
    read_png_metadata,
    save_png,
    to_pil,
)
from nst_engine.errors import ConfigError, ImageInputError

W, H = 12, 8


def _assert_rgb(img: Image.Image, size: tuple[int, int] = (W, H)) -> None:
    assert img.mode == "RGB"
    assert img.size == size


def _single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------------- modes


def test_rgb_png_is_returned_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (W, H), (10, 20, 30)).save(path)
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((3, 2)) == (10, 20, 30)


def test_grey_l(tmp_path: Path) -> None:
    path = tmp_path / "l.png"
    Image.new("L", (W, H), 77).save(path)
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((0, 0)) == (77, 77, 77)


def test_grey_alpha_la_composites_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    image = Image.new("LA", (W, H), (0, 255))  # opaque black
    image.putpixel((1, 1), (0, 0))  # one fully transparent pixel
    image.save(path)
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((1, 1)) == (255, 255, 255)


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    image = Image.new("P", (W, H), 1)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" not in check.info
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_composites_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "pt.png"
    image = Image.new("P", (W, H), 1)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((2, 3), 0)
    image.save(path, transparency=0)  # palette entry 0 (red) is transparent
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((2, 3)) == (255, 255, 255)  # white, not red
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (W, H), (200, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    image.save(path)
    img = load_image(path)
    _assert_rgb(img)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((5, 5)) == (200, 0, 0)
    half = img.getpixel((1, 0))
    assert all(120 <= v <= 135 for v in half), half


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cmyk{suffix}"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    img = load_image(path)
    _assert_rgb(img)
    r, g, b = img.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32768, 128), (0, 0), (200, 1)])
def test_sixteen_bit_png_uses_full_range(tmp_path: Path, value: int, expected: int) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((H, W), value, dtype=np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")
    img = load_image(path)
    _assert_rgb(img)
    r, g, b = img.getpixel((0, 0))
    assert r == g == b
    assert abs(r - expected) <= 1, (value, r)


def test_sixteen_bit_gradient_is_monotonic_and_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "ramp16.png"
    ramp = np.linspace(0, 65535, W).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (H, 1))).save(path)
    row = [load_image(path).getpixel((x, 0))[0] for x in range(W)]
    assert row[0] == 0 and row[-1] == 255
    assert row == sorted(row) and len(set(row)) == W  # not clipped to a plateau


@pytest.mark.parametrize(("value", "expected"), [(70000, 255), (32768, 128), (200, 200)])
def test_mode_i_tiff(tmp_path: Path, value: int, expected: int) -> None:
    path = tmp_path / "i32.tif"
    Image.fromarray(np.full((H, W), value, dtype=np.int32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I"
    img = load_image(path)
    _assert_rgb(img)
    assert abs(img.getpixel((0, 0))[0] - expected) <= 1


def test_in_memory_image() -> None:
    img = load_image(Image.new("L", (W, H), 9))
    _assert_rgb(img)
    assert img.getpixel((0, 0)) == (9, 9, 9)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # left quarter white
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    image.save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as check:
        assert check.size == (40, 20)
    img = load_image(path)
    _assert_rgb(img, (20, 40))
    # rotated 90° clockwise: the left side goes to the top
    assert min(img.getpixel((10, 2))) > 200
    assert max(img.getpixel((10, 37))) < 50


# ----------------------------------------------------------------------------- bad files


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    assert str(path) in _single_line(exc)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError) as exc:
        load_image(tmp_path)
    assert str(tmp_path) in _single_line(exc)


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    assert str(path) in _single_line(exc)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    assert str(path) in _single_line(exc)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    buffer = BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    full = tmp_path / f"full.{fmt.lower()}"
    full.write_bytes(data)
    assert load_image(full).size == (64, 64)  # the untruncated file is fine
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    assert str(path) in _single_line(exc)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)  # 81M pixels, a few kB on disk
    assert MAX_DECODE_PIXELS < 9000 * 9000
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    message = _single_line(exc)
    assert str(path) in message
    assert str(MAX_DECODE_PIXELS) in message


def test_max_pixels_argument(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    assert load_image(path, max_pixels=400).size == (20, 20)
    with pytest.raises(ImageInputError) as exc:
        load_image(path, max_pixels=100)
    message = _single_line(exc)
    assert "100" in message and str(path) in message


# ----------------------------------------------------------------------------- output_size


@pytest.mark.parametrize(
    ("width", "height", "size", "expected"),
    [
        (400, 300, 200, (150, 200)),
        (300, 400, 200, (200, 150)),
        (50, 50, 32, (32, 32)),
        (1000, 10, 50, (1, 50)),
    ],
)
def test_output_size_keeps_aspect(width: int, height: int, size: int, expected: tuple[int, int]) -> None:
    assert output_size(width, height, size) == expected


@pytest.mark.parametrize("size", [0, -5, MAX_SIDE + 1])
def test_output_size_rejects_bad_size(size: int) -> None:
    with pytest.raises(ConfigError) as exc:
        output_size(100, 100, size)
    message = _single_line(exc)
    assert exc.value.field == "size" and message.startswith("size: ") and str(size) in message
    assert "--" not in message


def test_output_size_accepts_max_side() -> None:
    assert output_size(100, 50, MAX_SIDE) == (MAX_SIDE // 2, MAX_SIDE)


# ----------------------------------------------------------------------------- PNG output


def test_save_png_round_trip(tmp_path: Path) -> None:
    tensor = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(3))
    metadata = {"params": {"size": 32, "layers": ["conv1_1", "conv5_1"], "ratio": 0.001}, "note": "héllo"}
    out = tmp_path / "sub" / "out.png"
    assert save_png(tensor, out, metadata) == out
    assert out.is_file()
    assert not [name for name in os.listdir(out.parent) if name.endswith(".tmp")]
    assert os.listdir(out.parent) == ["out.png"]

    text = read_png_metadata(out)
    assert json.loads(text["params"]) == metadata["params"]
    assert text["note"] == "héllo"

    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (13, 9)
        decoded = np.asarray(img)
    assert np.array_equal(decoded, np.asarray(to_pil(tensor)))


def test_save_png_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    save_png(torch.zeros(1, 3, 4, 4), out, {"run": 1})
    save_png(torch.ones(1, 3, 4, 4), out, {"run": 2})
    assert sorted(os.listdir(tmp_path)) == ["out.png"]
    assert read_png_metadata(out)["run"] == "2"
    with Image.open(out) as img:
        assert img.getpixel((0, 0)) == (255, 255, 255)


def test_to_pil_rounds_and_clamps() -> None:
    tensor = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    assert to_pil(tensor).getpixel((0, 0)) == (128, 0, 255)
