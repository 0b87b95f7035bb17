"""Tiny manifests for the Ray tests: real images, random tiny VGG, few iterations."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml
from PIL import Image

from tests.conftest import write_image


def tiny_manifest(
    folder: Path,
    contents: int = 2,
    styles: int = 2,
    sizes: tuple[int, ...] = (32,),
    iterations: int = 3,
    extra_contents: tuple[str, ...] = (),
) -> Path:
    photos = folder / "photos"
    (photos / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(contents):
        target = photos / ("sub" if i % 2 else "") / f"c{i}.png"
        write_image(target, 48, 40, seed=10 + i)
    for i in range(styles):
        write_image(folder / f"s{i}.png", 40, 48, seed=20 + i)
    manifest = {
        "name": "tiny",
        "output": "out",
        "contents": ["photos", *extra_contents],
        "styles": [f"s{i}.png" for i in range(styles)],
        "sizes": list(sizes),
        "params": {"iterations": iterations},
        "weights": {"source": "random"},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def rows(output: Path) -> list[dict]:
    """Every row: the compacted file plus any part files."""
    tables = []
    if (output / "results.parquet").exists():
        tables.append(pq.read_table(output / "results.parquet"))
    tables += [pq.read_table(p) for p in sorted((output / "results.parts").glob("*.parquet"))]
    return [row for t in tables for row in t.to_pylist()]


def assert_outputs_whole(output: Path) -> list[Path]:
    """No temporary files left anywhere, and every PNG decodes fully."""
    assert not list(output.rglob(".nst-tmp-*")), list(output.rglob(".nst-tmp-*"))
    pngs = sorted(output.rglob("*.png"))
    for png in pngs:
        with Image.open(png) as img:
            img.load()
    return pngs
