"""Work items: content-addressed ids, bad inputs, output paths, dedupe, size estimates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nst_engine.planning.items import ID_LENGTH, expand, output_relative_path
from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.storage.paths import UnsafePathError
from nst_engine.storage.roots import OutputRoot
from tests.conftest import write_image


def write_manifest(folder: Path, filename: str = "m.yaml", **fields: object) -> Path:
    """A JSON-in-YAML manifest (JSON is valid YAML) with defaults for a tiny job."""
    data: dict[str, object] = {"contents": ["c.png"], "styles": ["s.png"], "sizes": [64]}
    data.update(fields)
    path = folder / filename
    path.write_text(json.dumps(data, indent=2))
    return path


def items_of(path: Path, **kwargs):
    return expand(load_manifest(path), **kwargs)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests without ``output`` plan into ``out/<name>`` of today's folder, where the hash
    cache goes: keep that inside the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_image(tmp_path / "c.png", 30, 20, seed=1)
    write_image(tmp_path / "d.png", 20, 30, seed=3)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    write_image(tmp_path / "t.png", 20, 20, seed=4)
    return tmp_path


def only_id(path: Path) -> str:
    (item,) = items_of(path)
    return item.item_id


# ---------------------------------------------------------------------------- ids


def test_ids_are_stable_and_well_formed(images: Path) -> None:
    path = write_manifest(images, contents=["c.png", "d.png"], styles=["s.png", "t.png"], sizes=[64, 128])
    first, second = items_of(path), items_of(path)
    assert first == second
    ids = [i.item_id for i in first]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert all(len(i) == ID_LENGTH and int(i, 16) >= 0 for i in ids)
    item = first[0]
    assert item.content_path == str((images / "c.png").resolve())
    assert item.style_paths == (str((images / "s.png").resolve()),)
    assert len(item.content_hash) == 64 and len(item.style_hashes[0]) == 64
    assert item.input_error is None


def test_same_bytes_at_another_path_keep_the_id(images: Path, tmp_path: Path) -> None:
    original = only_id(write_manifest(images, params={"iterations": 3}))
    elsewhere = tmp_path / "moved" / "deep"
    elsewhere.mkdir(parents=True)
    shutil.copy(images / "c.png", elsewhere / "renamed.png")
    shutil.copy(images / "s.png", elsewhere / "other_style.png")
    moved = write_manifest(
        elsewhere,
        contents=["renamed.png"],
        styles=[{"name": "x", "image": "other_style.png"}],
        params={"iterations": 3},
    )
    assert only_id(moved) == original


def test_different_bytes_at_the_same_path_change_the_id(images: Path) -> None:
    path = write_manifest(images)
    before = only_id(path)
    write_image(images / "c.png", 30, 20, seed=99)
    assert only_id(path) != before


@pytest.mark.parametrize(
    "change",
    [
        {"params": {"ratio": 0.01}},
        {"params": {"iterations": 3}},
        {"params": {"seed": 1}},
        {"params": {"pooling": "max"}},
        {"sizes": [96]},
        {
            "styles": [
                {"name": "s", "images": [{"path": "s.png", "weight": 1}, {"path": "t.png", "weight": 1}]}
            ]
        },
    ],
    ids=["ratio", "iterations", "seed", "pooling", "size", "blend"],
)
def test_output_changing_parameters_change_the_id(images: Path, change: dict) -> None:
    base = only_id(write_manifest(images, "base.yaml"))
    assert only_id(write_manifest(images, "changed.yaml", **change)) != base


def test_style_blend_weight_changes_the_id(images: Path) -> None:
    def blend(weight: float) -> dict:
        return {"name": "b", "images": [{"path": "s.png", "weight": 1}, {"path": "t.png", "weight": weight}]}

    one = only_id(write_manifest(images, "one.yaml", styles=[blend(1.0)]))
    two = only_id(write_manifest(images, "two.yaml", styles=[blend(2.0)]))
    assert one != two


def test_output_folder_layout_and_names_do_not_change_the_id(images: Path) -> None:
    base = only_id(write_manifest(images, "base.yaml"))
    assert only_id(write_manifest(images, "a.yaml", output="somewhere/else")) == base
    assert only_id(write_manifest(images, "b.yaml", layout="{id}/{content_name}.png")) == base
    assert only_id(write_manifest(images, "c.yaml", name="renamed")) == base
    assert only_id(write_manifest(images, "d.yaml", styles=[{"name": "fancy", "image": "s.png"}])) == base
    elsewhere = str(images / "x" / "y")
    assert expand(load_manifest(write_manifest(images, "e.yaml"), output=elsewhere))[0].item_id == base


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_all_listed_or_skipped(images: Path) -> None:
    good = images / "c.png"
    truncated = images / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = images / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    path = write_manifest(images, contents=["c.png", "missing.png", "truncated.png", "garbage.png"])

    with pytest.raises(ManifestError) as info:
        items_of(path)
    text = str(info.value)
    problems = info.value.problems
    for bad in ("missing.png", "truncated.png", "garbage.png"):
        assert any(str((images / bad).resolve()) in p for p in problems), (bad, problems)
    assert "not found" in text
    assert "--skip-bad-inputs" in text and len(problems) == 3  # the hint is no problem
    assert text.startswith("3 problems in the manifest:")
    assert str(good.resolve()) + ":" not in text

    items = items_of(path, skip_bad_inputs=True)
    assert len(items) == 4
    errors = {Path(i.content_path).name: i.input_error for i in items}
    assert errors["c.png"] is None
    assert "not found" in errors["missing.png"]
    assert "damaged or truncated" in errors["truncated.png"]  # the worker's own decoder's words
    assert "not a readable image" in errors["garbage.png"]
    assert len({i.item_id for i in items}) == 4
    # ids of broken items are stable too
    assert [i.item_id for i in items_of(path, skip_bad_inputs=True)] == [i.item_id for i in items]


def test_a_bad_style_marks_every_item_using_it(images: Path) -> None:
    path = write_manifest(images, contents=["c.png", "d.png"], styles=["s.png", "gone.png"])
    with pytest.raises(ManifestError) as info:
        items_of(path)
    gone = [p for p in info.value.problems if "gone.png" in p]
    assert len(gone) == 2  # once per item that needs it
    items = items_of(path, skip_bad_inputs=True)
    assert [(Path(i.content_path).name, i.style_name, i.input_error is None) for i in items] == [
        ("c.png", "s", True),
        ("c.png", "gone", False),
        ("d.png", "s", True),
        ("d.png", "gone", False),
    ]


# ---------------------------------------------------------------------------- output paths


def test_default_layout(images: Path) -> None:
    (images / "album" / "sub").mkdir(parents=True)
    write_image(images / "album" / "sub" / "deep.jpg", 20, 20, seed=5)
    path = write_manifest(images, contents=["c.png", "album"], sizes=[64, 128])
    assert [i.output_path for i in items_of(path)] == [
        "s/64/c.png",
        "s/128/c.png",
        "s/64/sub/deep.png",
        "s/128/sub/deep.png",
    ]


def test_layout_fields(images: Path) -> None:
    (images / "album" / "a" / "b").mkdir(parents=True)
    write_image(images / "album" / "a" / "b" / "pic.v2.jpg", 20, 20, seed=5)
    path = write_manifest(
        images, contents=["album"], layout="{content}/{style}-{size}-{content_name}-{id}.png"
    )
    (item,) = items_of(path)
    assert item.output_path == f"a/b/pic.v2/s-64-pic.v2-{item.item_id}.png"


def test_output_paths_never_escape_the_root(images: Path, tmp_path: Path) -> None:
    (images / "album" / "x" / "y").mkdir(parents=True)
    write_image(images / "album" / "x" / "y" / "deep.png", 20, 20, seed=5)
    path = write_manifest(images, contents=["album", "c.png"], layout="{content}/{style}/{size}.png")
    root = OutputRoot(str(tmp_path / "out"))
    for item in items_of(path):
        assert not item.output_path.startswith("/") and ".." not in item.output_path.split("/")
        full = Path(root.full_path(item.output_path)).resolve()
        assert full.is_relative_to((tmp_path / "out").resolve())
    assert sorted(i.output_path for i in items_of(path)) == ["c/s/64.png", "x/y/deep/s/64.png"]


def test_table_contents_outside_the_table_folder_stay_inside_the_root(tmp_path: Path) -> None:
    """A table keeps the content's relative path; one leaving its folder keeps only its name."""
    (tmp_path / "outside").mkdir()
    write_image(tmp_path / "outside" / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "outside" / "d.png", 20, 20, seed=3)
    manifests = tmp_path / "m"
    (manifests / "sub").mkdir(parents=True)
    write_image(manifests / "sub" / "e.png", 20, 20, seed=4)
    write_image(manifests / "s.png", 20, 20, seed=2)
    table = manifests / "t.csv"
    table.write_text(
        "content,style,size\n"
        "sub/../../outside/c.png,s.png,64\n"
        "../outside/d.png,s.png,64\n"
        f"{(tmp_path / 'outside' / 'd.png').resolve()},s.png,128\n"
        "./sub/e.png,s.png,64\n"
    )
    plan = load_manifest(table)
    assert plan.items[0].content == str((tmp_path / "outside" / "c.png").resolve())
    items = expand(plan)
    assert [i.output_path for i in items] == ["s/64/c.png", "s/64/d.png", "s/128/d.png", "s/64/sub/e.png"]
    root = tmp_path / "out"
    for item in items:
        assert (
            Path(OutputRoot(str(root)).full_path(item.output_path)).resolve().is_relative_to(root.resolve())
        )


def test_output_relative_path_refuses_escapes() -> None:
    item = {"style": "s", "size": 64, "content_rel": "a/b.png", "id": "abc"}
    assert output_relative_path("{style}/{size}/{content}.png", item) == "s/64/a/b.png"
    assert output_relative_path("./{style}//{content_name}.png", item) == "s/b.png"
    for layout, rel in [
        ("{content}.png", "../up.png"),
        ("{content}.png", "a/../../up.png"),
        ("../{content}.png", "a.png"),
        ("/{content}.png", "a.png"),
    ]:
        with pytest.raises(UnsafePathError):
            output_relative_path(layout, {**item, "content_rel": rel})
    with pytest.raises(UnsafePathError):
        output_relative_path("{content}.png", {**item, "content_rel": "/etc/passwd"})


def test_two_items_writing_the_same_output_are_refused(images: Path) -> None:
    path = write_manifest(images, contents=["c.png", "d.png"], layout="{style}/{size}.png")
    with pytest.raises(ManifestError) as info:
        items_of(path)
    (problem,) = info.value.problems
    assert "s/64.png" in problem and "{id}" in problem


def test_same_name_in_different_folders_collides_with_content_name(images: Path) -> None:
    for sub, seed in (("one", 7), ("two", 8)):
        (images / "album" / sub).mkdir(parents=True)
        write_image(images / "album" / sub / "pic.png", 20, 20, seed=seed)
    colliding = write_manifest(images, "bad.yaml", contents=["album"], layout="{style}/{content_name}.png")
    with pytest.raises(ManifestError, match=r"both write s/pic\.png"):
        items_of(colliding)
    fine = write_manifest(images, "good.yaml", contents=["album"])
    assert [i.output_path for i in items_of(fine)] == ["s/64/one/pic.png", "s/64/two/pic.png"]


# ---------------------------------------------------------------------------- dedupe, estimates


def test_duplicate_work_is_rendered_once(images: Path) -> None:
    path = write_manifest(images, contents=["c.png", "d.png", "c.png"], sizes=[64])
    items = items_of(path)
    assert [Path(i.content_path).name for i in items] == ["c.png", "d.png"]
    assert len({i.item_id for i in items}) == 2


def test_pixels_estimate_orders_sizes(images: Path) -> None:
    path = write_manifest(images, sizes=[128, 512])
    small, large = items_of(path)
    assert (small.size, large.size) == (128, 512)
    assert large.pixels_estimate > small.pixels_estimate
    # c.png is 30x20: the longer side scales to the size, the aspect ratio is kept
    assert small.pixels_estimate == pytest.approx(128 * 128 * 20 / 30, rel=0.02)
    assert large.pixels_estimate == pytest.approx(512 * 512 * 20 / 30, rel=0.01)
    assert sorted([small, large], key=lambda i: -i.pixels_estimate)[0] is large


def test_label(images: Path) -> None:
    (item,) = items_of(write_manifest(images))
    assert item.label == "c.png × s @ 64"


def test_init_image_counts_by_contents_not_path(tmp_path: Path) -> None:
    import shutil

    import yaml

    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from tests.conftest import write_image

    write_image(tmp_path / "c.png", 40, 32, seed=1)
    write_image(tmp_path / "s.png", 40, 32, seed=2)
    write_image(tmp_path / "init_a.png", 40, 32, seed=3)
    shutil.copy(tmp_path / "init_a.png", tmp_path / "init_b.png")
    ids = []
    for init in ("init_a.png", "init_b.png"):
        manifest = tmp_path / f"m_{init}.yaml"
        manifest.write_text(
            yaml.safe_dump(
                {"contents": ["c.png"], "styles": ["s.png"], "sizes": [32], "params": {"init": init}}
            )
        )
        ids.append(expand(load_manifest(manifest))[0].item_id)
    assert ids[0] == ids[1]


# ---------------------------------------------------------------------------- hash cache


def test_hash_cache_in_the_output_root_makes_reruns_read_nothing(images: Path) -> None:
    from nst_engine.planning.fingerprints import CACHE_FILE, ImageIndex

    output = images / "out"
    path = write_manifest(images, contents=["c.png", "d.png"], styles=["s.png"], output=str(output))
    first = ImageIndex(str(output))
    items = expand(load_manifest(path), index=first)
    assert (first.stats.reads, first.stats.cached) == (3, 0)
    assert (output / CACHE_FILE).is_file()

    dry = load_manifest(path)
    dry.output = str(images / "dry")
    assert expand(dry, write_cache=False) == items and not (images / "dry").exists()

    again = ImageIndex(str(output))
    assert expand(load_manifest(path), index=again) == items
    assert (again.stats.reads, again.stats.cached) == (0, 3)

    write_image(images / "d.png", 20, 30, seed=77)  # a new version: read again, and only it
    changed = ImageIndex(str(output))
    assert expand(load_manifest(path), index=changed)[1].item_id != items[1].item_id
    assert (changed.stats.reads, changed.stats.cached) == (1, 2)


def test_a_damaged_hash_cache_is_ignored_and_rewritten(images: Path) -> None:
    from nst_engine.planning.fingerprints import CACHE_FILE, ImageIndex

    output = images / "out"
    path = write_manifest(images, output=str(output))
    before = only_id(path)
    (output / CACHE_FILE).write_bytes(b"not parquet")
    index = ImageIndex(str(output))
    assert expand(load_manifest(path), index=index)[0].item_id == before
    assert index.stats.reads == 2
    rewritten = ImageIndex(str(output))
    assert rewritten.image(str((images / "c.png").resolve())).sha256 is not None
    assert (rewritten.stats.reads, rewritten.stats.cached) == (0, 1)
