"""Local folders and globs with symlinks: loops end, each image is found once, and an entry
that expands past the limit is one problem naming it.

The looped expansions run in a subprocess with a timeout (pytest-timeout is not a
dependency), so a regression fails in seconds instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.planning.sources import (
    DEFAULT_MAX_IMAGES,
    MAX_IMAGES_KEY,
    Found,
    Stamp,
    glob_regex,
    list_images,
)
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]
#: Seconds a looped expansion may take in its subprocess, import of the package included;
#: before the walk was hand-written it did not end within hours.
LOOP_TIMEOUT = 60


def looped_tree(tmp_path: Path) -> Path:
    """root/ with real images, two self-loops (a/loop1 -> .., a/loop2 -> ..), a shortcut to
    one of its own folders, and two links to one dataset outside it."""
    root, dataset = tmp_path / "root", tmp_path / "dataset"
    for rel, seed in [
        ("root/top.png", 1),
        ("root/a/inner.png", 2),
        ("root/a/b/deeper.png", 3),
        ("dataset/outside.png", 4),
        ("dataset/sub/nested.png", 5),
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / rel, 12, 10, seed=seed)
    os.symlink("..", root / "a" / "loop1")
    os.symlink("..", root / "a" / "loop2")
    os.symlink("../a", root / "a" / "b" / "shortcut")  # a folder already in the tree
    os.symlink(dataset, root / "linked")  # a dataset linked in: followed once
    os.symlink(dataset, root / "zz-linked-again")  # the same target: not followed again
    os.symlink(tmp_path / "nowhere", root / "broken")  # a broken link is nothing
    return root


EXPANSION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from nst_engine.planning.manifest import load_manifest
    from nst_engine.planning.sources import list_images

    root, manifest = Path(sys.argv[1]), sys.argv[2]
    out = {}
    for entry in ("**/*.png", ".", "**"):
        listing = list_images(entry, root)
        out[entry] = {
            "kind": listing.kind,
            "problem": listing.problem,
            "found": [[f.location, f.relative] for f in listing.found],
        }
    out["manifest"] = [[s.content, s.content_rel] for s in load_manifest(manifest).items]
    print(json.dumps(out))
    """
)


def expand_in_subprocess(root: Path, manifest: Path) -> dict:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", EXPANSION_SCRIPT, str(root), str(manifest)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=LOOP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"expanding a folder with symlink loops took over {LOOP_TIMEOUT} s")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    result["seconds"] = time.monotonic() - started
    return result


def test_loops_end_and_each_image_is_found_once_through_its_first_path(tmp_path: Path) -> None:
    root = looped_tree(tmp_path)
    manifest = tmp_path / "looped.yaml"
    manifest.write_text(f"contents: ['{root}/**/*.png']\nstyles: ['{root}/top.png']\nsizes: [16]\n")
    result = expand_in_subprocess(root, manifest)
    expected = [  # real folders keep their real paths; the dataset appears under its first link
        "a/b/deeper.png",
        "a/inner.png",
        "linked/outside.png",
        "linked/sub/nested.png",
        "top.png",
    ]
    for entry in ("**/*.png", ".", "**"):
        listing = result[entry]
        assert listing["problem"] is None, listing
        assert [rel for _, rel in listing["found"]] == expected, entry
        assert [loc for loc, _ in listing["found"]] == [str(root / rel) for rel in expected]
    assert result["**/*.png"]["kind"] == "glob" and result["."]["kind"] == "folder"
    assert [rel for _, rel in result["manifest"]] == expected


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_ctime_ns


def test_local_listing_matches_pyarrows_on_a_tree_without_loops(tmp_path: Path) -> None:
    """Locations, relative paths and stamps (the hash cache's keys) as pyarrow's recursive
    listing gave them, hidden files and a symlinked file included."""
    root = tmp_path / "tree"
    for rel, seed in [
        ("x.png", 1),
        ("A.JPG", 2),
        (".hidden.png", 3),
        ("n/y.png", 4),
        ("n/deep/er/z.webp", 5),
        ("n/.cache/w.png", 6),
        ("a-b/v.png", 7),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, 8, 8, seed=seed)
    (root / "n" / "notes.txt").write_text("not an image")
    os.symlink(root / "x.png", root / "n" / "alias.png")
    infos = pafs.LocalFileSystem().get_file_info(pafs.FileSelector(str(root), recursive=True))
    files = [  # a local file's stamp adds its inode and ctime to pyarrow's size and time (issue 19)
        Found(i.path, os.path.relpath(i.path, root), Stamp(i.size, i.mtime_ns, *_identity(i.path)))
        for i in infos
        if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in {".png", ".jpg", ".webp"}
    ]
    order = lambda f: tuple(f.relative.split("/"))  # noqa: E731
    for pattern in (None, "**/*.png", "*/*.png", "*.png", ".*", "**", "*/**/*.[pw]*"):
        regex = glob_regex(pattern) if pattern else None
        expected = sorted((f for f in files if regex is None or regex.fullmatch(f.relative)), key=order)
        entry = f"{root}/{pattern}" if pattern else str(root)
        assert list(list_images(entry, tmp_path).found) == expected, pattern


def test_an_entry_past_the_limit_is_one_problem_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(4):
        write_image(root / f"p{i}.png", 8, 8, seed=i)
    glob = list_images("photos/*.png", tmp_path, max_images=3)
    assert glob.found == () and glob.kind == "glob"
    assert glob.problem is not None and "\n" not in glob.problem
    assert "'photos/*.png'" in glob.problem and "3 images" in glob.problem
    assert "narrow the pattern" in glob.problem and MAX_IMAGES_KEY in glob.problem
    folder = list_images("photos", tmp_path, max_images=3)
    assert folder.kind == "folder" and "'photos'" in folder.problem and MAX_IMAGES_KEY in folder.problem
    assert len(list_images("photos", tmp_path, max_images=4).found) == 4  # the limit itself is fine
    assert DEFAULT_MAX_IMAGES == 1_000_000


def test_the_walk_stops_as_soon_as_the_limit_is_passed(tmp_path: Path) -> None:
    """Images at the top are found before any subfolder is read, so a limit of 2 with 3 of
    them stops before the 5,000 files below: far faster than listing them all."""
    root = tmp_path / "big"
    for d in range(100):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(50):
            (root / f"d{d}" / f"{i}.png").write_bytes(b"")
    for i in range(3):
        write_image(root / f"top{i}.png", 8, 8, seed=i)

    def fastest(max_images: int) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            list_images("big", tmp_path, max_images=max_images)
            times.append(time.perf_counter() - started)
        return min(times)

    everything, stopped = fastest(DEFAULT_MAX_IMAGES), fastest(2)
    assert list_images("big", tmp_path, max_images=2).problem
    assert stopped < everything / 10, (stopped, everything)


def test_the_manifest_sets_the_limit(tmp_path: Path) -> None:
    root = looped_tree(tmp_path)
    manifest = tmp_path / "m.yaml"
    body = f"contents: ['{root}/**/*.png']\nstyles: ['{root}/top.png']\nsizes: [16]\n"
    manifest.write_text(f"{MAX_IMAGES_KEY}: 4\n{body}")
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    (problem,) = info.value.problems
    assert problem.startswith(f"{manifest}:2: contents[0]: glob '{root}/**/*.png' matches more than 4 images")
    manifest.write_text(f"{MAX_IMAGES_KEY}: 5\n{body}")
    assert len(load_manifest(manifest).items) == 5
    for bad in ("0", "many", "true", "2.5"):
        manifest.write_text(f"{MAX_IMAGES_KEY}: {bad}\n{body}")
        with pytest.raises(ManifestError) as info:
            load_manifest(manifest)
        assert info.value.problems == [
            f"{manifest}:1: {MAX_IMAGES_KEY}: expected a whole number >= 1 (default 1,000,000), "
            f"got {yaml.safe_load(bad)!r}"
        ]
