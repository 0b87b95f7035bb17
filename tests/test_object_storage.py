"""Inputs and outputs on object storage, against a real S3 server (moto) on 127.0.0.1.

Contents, styles and init images are ``s3://`` URIs (objects, prefixes and globs), planned
through pyarrow.fs with the hash cache in the output root, rendered by real Ray workers
that read the objects themselves, to an ``s3://`` output root.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import run_render
from nst_engine.engine.images import load_image
from nst_engine.errors import ImageInputError
from nst_engine.planning.fingerprints import CACHE_FILE, ImageIndex
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.planning.sources import list_images
from nst_engine.results.table import read_results
from nst_engine.storage.roots import OutputRoot
from nst_engine.storage.uris import InputNotFoundError, is_uri, read_bytes, resolve
from tests.conftest import S3Server, write_image

REPO = Path(__file__).resolve().parents[1]


def png(tmp_path: Path, name: str, width: int, height: int, seed: int) -> bytes:
    return write_image(tmp_path / name, width, height, seed).read_bytes()


def upload_dataset(s3: S3Server, tmp_path: Path) -> dict[str, bytes]:
    """photos/ with a nested folder and a non-image, styles/, and an init image."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = {
        "photos/a.png": png(tmp_path, "a.png", 48, 40, 1),
        "photos/trip/b.jpg": _jpeg(png(tmp_path, "b.png", 40, 48, 2)),
        "photos/trip/c.png": png(tmp_path, "c.png", 40, 40, 3),
        "photos/notes.txt": b"not an image",
        "styles/wave.png": png(tmp_path, "wave.png", 40, 48, 4),
        "styles/night.png": png(tmp_path, "night.png", 48, 40, 5),
        "init/start.png": png(tmp_path, "start.png", 32, 32, 6),
    }
    for key, value in data.items():
        s3.put(key, value)
    return data


def _jpeg(png_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes)).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def write_manifest(folder: Path, s3: S3Server, **fields: object) -> Path:
    """Contents from a prefix and a glob, an s3:// style, output to s3://."""
    data: dict[str, object] = {
        "name": "remote",
        "output": f"s3://{s3.bucket}/out",
        "contents": [f"s3://{s3.bucket}/photos/", f"s3://{s3.bucket}/photos/**/*.jpg"],
        "styles": [f"s3://{s3.bucket}/styles/wave.png"],
        "sizes": [32],
        "params": {"iterations": 2},
        "weights": {"source": "random"},
    }
    data.update(fields)
    path = folder / "remote.yaml"
    path.write_text(json.dumps(data, indent=2))
    return path


# ---------------------------------------------------------------------------- locations


def test_uris_resolve_to_pyarrow_paths(s3: S3Server, tmp_path: Path) -> None:
    assert is_uri("s3://b/k") and is_uri("file:///tmp/x") and not is_uri("C:\\x") and not is_uri("a/b")
    fs, path = resolve(f"s3://{s3.bucket}/photos/a b%20#1.png")  # object names are taken literally
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3.bucket}/photos/a b%20#1.png"
    assert resolve(f"file://{tmp_path}/x.png")[1] == f"{tmp_path}/x.png"
    assert resolve("rel.png")[1] == str(Path("rel.png").resolve())
    with pytest.raises(ValueError, match="environment") as refused:  # credentials: never in a manifest
        resolve(f"s3://{s3.bucket}/k?access_key=AKIA&secret_key=s")
    assert "AKIA" not in str(refused.value)
    with pytest.raises(ValueError, match="environment") as refused:  # user:secret@bucket too
        resolve(f"s3://AKIA:SECRETKEY@{s3.bucket}/k.png")
    assert "SECRETKEY" not in str(refused.value) and "AKIA" not in str(refused.value)
    odd = s3.put("photos/a b%20#1.png", b"bytes")  # listed names read back as themselves
    (found,) = list_images(f"s3://{s3.bucket}/photos/", tmp_path).found
    assert found.location == odd and read_bytes(found.location) == b"bytes"
    with pytest.raises(InputNotFoundError) as info:
        read_bytes(f"s3://{s3.bucket}/nope.png")
    assert str(info.value) == f"s3://{s3.bucket}/nope.png: file not found; check the path"


def test_load_image_reads_uris_bytes_and_streams(s3: S3Server, tmp_path: Path) -> None:
    data = png(tmp_path, "x.png", 30, 20, seed=9)
    uri = s3.put("x.png", data)
    local = load_image(tmp_path / "x.png")
    for source in (uri, f"file://{tmp_path}/x.png", data, io.BytesIO(data)):
        assert load_image(source).tobytes() == local.tobytes()
    with pytest.raises(ImageInputError, match=rf"^s3://{s3.bucket}/missing\.png: file not found"):
        load_image(f"s3://{s3.bucket}/missing.png")
    with pytest.raises(ImageInputError, match=r"^upload\.png: not a readable image"):
        load_image(b"garbage", name="upload.png")


def test_prefixes_and_globs_list_the_same_way_as_local_folders(s3: S3Server, tmp_path: Path) -> None:
    data = upload_dataset(s3, tmp_path / "src")
    local = tmp_path / "local"
    for key, value in data.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(value)
    for entry in ("photos/", "photos", "photos/**/*.jpg", "photos/*/c.png", "photos/**/*"):
        remote = list_images(f"s3://{s3.bucket}/{entry}", tmp_path)
        on_disk = list_images(entry, local)
        assert remote.problem is None and remote.found, entry
        assert [f.relative for f in remote.found] == [f.relative for f in on_disk.found], entry
        assert all(f.location.startswith(f"s3://{s3.bucket}/photos/") for f in remote.found)
        assert all(f.stamp and f.stamp.size == len(data["photos/" + f.relative]) for f in remote.found)
    assert [f.relative for f in list_images(f"s3://{s3.bucket}/photos/", tmp_path).found] == [
        "a.png",
        "trip/b.jpg",
        "trip/c.png",
    ]
    assert list_images(f"s3://{s3.bucket}/empty/", tmp_path).kind == "folder"
    assert not list_images(f"s3://{s3.bucket}/empty/", tmp_path).found


# ---------------------------------------------------------------------------- planning


def test_plan_from_s3_matches_the_same_images_on_disk(s3: S3Server, tmp_path: Path) -> None:
    data = upload_dataset(s3, tmp_path / "src")
    plan = load_manifest(write_manifest(tmp_path, s3))
    items = expand(plan)
    # the folder gives a.png, trip/b.jpg, trip/c.png; the glob trip/b.jpg again (same work: once)
    assert [i.output_path for i in items] == ["wave/32/a.png", "wave/32/trip/b.png", "wave/32/trip/c.png"]
    assert items[0].content_path == f"s3://{s3.bucket}/photos/a.png"
    assert items[0].style_paths == (f"s3://{s3.bucket}/styles/wave.png",)

    # content-addressed: the same bytes on disk give the same ids
    local = tmp_path / "local"
    for key, value in data.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(value)
    on_disk = {
        "contents": ["photos", "photos/**/*.jpg"],
        "styles": ["styles/wave.png"],
        "output": str(tmp_path / "out"),
    }
    local_items = expand(load_manifest(write_manifest(local, s3, **on_disk)))
    assert [i.item_id for i in local_items] == [i.item_id for i in items]


def test_hash_cache_in_the_output_root_skips_unchanged_objects(s3: S3Server, tmp_path: Path) -> None:
    upload_dataset(s3, tmp_path / "src")
    init = f"s3://{s3.bucket}/init/start.png"
    calibration = {"source": "random", "normalize": True, "calibration": [f"s3://{s3.bucket}/styles/"]}
    manifest = write_manifest(tmp_path, s3, params={"iterations": 2, "init": init}, weights=calibration)

    first = ImageIndex(f"s3://{s3.bucket}/out", load_manifest(manifest).stamps)
    items = expand(load_manifest(manifest), index=first)
    # 3 contents, 1 style (also a calibration image), 1 init, 1 more calibration image
    assert (first.stats.reads, first.stats.cached) == (6, 0)
    info = s3.filesystem().get_file_info(f"{s3.bucket}/out/{CACHE_FILE}")
    assert info.type == pafs.FileType.File

    # a rerun of the unchanged dataset reads nothing: not even a stat per listed object
    again = ImageIndex(f"s3://{s3.bucket}/out", load_manifest(manifest).stamps)
    assert [i.item_id for i in expand(load_manifest(manifest), index=again)] == [i.item_id for i in items]
    assert (again.stats.reads, again.stats.cached, again.stats.bytes_read) == (0, 6, 0)

    # a changed object (new size) is read again, and only that one
    s3.put("photos/a.png", png(tmp_path, "a2.png", 40, 36, seed=42))
    changed = ImageIndex(f"s3://{s3.bucket}/out", load_manifest(manifest).stamps)
    new_items = expand(load_manifest(manifest), index=changed)
    assert (changed.stats.reads, changed.stats.cached) == (1, 5)
    assert new_items[0].item_id != items[0].item_id and new_items[1:] == items[1:]


def test_missing_and_damaged_objects_are_reported_per_item(s3: S3Server, tmp_path: Path) -> None:
    upload_dataset(s3, tmp_path / "src")
    s3.put("photos/broken.png", b"\x89PNG not really")
    missing = f"s3://{s3.bucket}/photos/gone.png"
    manifest = write_manifest(tmp_path, s3, contents=[f"s3://{s3.bucket}/photos/broken.png", missing])
    with pytest.raises(ManifestError) as info:
        expand(load_manifest(manifest))
    problems = info.value.problems
    assert any(p.endswith(f"{missing}: image file not found") for p in problems), problems
    assert any(f"s3://{s3.bucket}/photos/broken.png: not a readable image" in p for p in problems)
    items = expand(load_manifest(manifest), skip_bad_inputs=True)
    assert len(items) == 2 and all(i.input_error for i in items)


def test_cli_missing_object_is_one_line_naming_the_uri(s3: S3Server, tmp_path: Path) -> None:
    upload_dataset(s3, tmp_path / "src")
    missing = f"s3://{s3.bucket}/photos/gone.png"
    manifest = write_manifest(tmp_path, s3, contents=[missing])
    done = subprocess.run(
        [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),  # the endpoint and dummy credentials, as users set them
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    naming = [line for line in done.stderr.splitlines() if missing in line]
    assert len(naming) == 1 and "image file not found" in naming[0], done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def local_ray(_moto_endpoint: str):
    """Ray started after the S3 environment is set, so its workers inherit the endpoint."""
    connect(num_cpus=2)
    yield
    ray.shutdown()


def test_render_from_s3_to_s3_and_rerun_reads_nothing(local_ray, s3: S3Server, tmp_path: Path) -> None:
    upload_dataset(s3, tmp_path / "src")
    init = f"s3://{s3.bucket}/init/start.png"
    manifest = write_manifest(
        tmp_path, s3, contents=[f"s3://{s3.bucket}/photos/trip/*.png", f"s3://{s3.bucket}/photos/a.png"]
    )
    with_init = tmp_path / "init"
    with_init.mkdir()
    manifest_with_init = write_manifest(
        with_init, s3, params={"iterations": 2, "init": init}, layout="init/{content}.png"
    )
    options = PoolOptions(threads_per_actor=1, cpu_actors=1)
    plan = load_manifest(manifest)
    root = OutputRoot(plan.output)
    items = expand(plan) + expand(load_manifest(manifest_with_init))[:1]
    summary = run_render(items, plan.weights, root, options)
    assert (summary.rendered, summary.skipped, len(summary.failed)) == (3, 0, 0), summary.failed

    # images and results are in the bucket, read back through pyarrow
    fs = s3.filesystem()
    listed = fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/out", recursive=True))
    pngs = sorted(i.path for i in listed if i.path.endswith(".png"))
    assert pngs == [f"{s3.bucket}/out/{p}" for p in ("init/a.png", "wave/32/a.png", "wave/32/c.png")]
    for path in pngs:
        with fs.open_input_file(path) as handle, Image.open(io.BytesIO(handle.read())) as img:
            assert max(img.size) == 32
    with fs.open_input_file(f"{s3.bucket}/out/results.parquet") as handle:
        table = pq.read_table(handle)
    assert table.num_rows == 3 and set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("content_path").to_pylist()) == {
        f"s3://{s3.bucket}/photos/a.png",
        f"s3://{s3.bucket}/photos/trip/c.png",
    }

    # a rerun plans from the cache (no image read) and skips every item
    index = ImageIndex(plan.output, load_manifest(manifest).stamps)
    again = expand(load_manifest(manifest), index=index)
    assert index.stats.reads == 0 and index.stats.cached == 3
    summary = run_render(again, plan.weights, root, options)
    assert (summary.rendered, summary.skipped) == (0, 2)
    assert read_results(plan.output, ["status"]).column("status").to_pylist().count("ok") == 3  # no re-render
