"""Inputs an adversary (or a careless user) writes, refused at planning with one line each
(issue 19: failures 1, 3, 5, 9 and 10).

* 1: a credential in a URI is never shown: not in a message, a row, or anything a command prints;
* 3: every number has bounds the result table's Arrow types hold;
* 5: a YAML alias bomb is refused before it is expanded (under a memory cap);
* 9: the hash cache sees a file changed with its size and modification time put back;
* 10: a name no output path can hold (a NUL) is refused naming its entry, not by a worker.

The CLI cases run the real ``nst`` in subprocesses, all started at once by one fixture,
since each spends seconds importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nst_engine.engine.config import (
    FLOAT32_MAX,
    INT64_MAX,
    INT64_MIN,
    MAX_HISTORY,
    MAX_ITERATIONS,
    MAX_SCALE_FACTOR,
    MAX_SCALES,
    MAX_STYLE_SCALE,
    SynthesisConfig,
)
from nst_engine.engine.images import MAX_SIDE
from nst_engine.errors import ConfigError
from nst_engine.planning.fingerprints import _SCHEMA, CACHE_FILE, IMAGE, ImageIndex
from nst_engine.planning.items import expand, output_relative_path
from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.planning.sources import list_images
from nst_engine.results.schema import make_row, to_table
from nst_engine.storage.paths import UnsafePathError
from nst_engine.storage.roots import OutputRoot
from nst_engine.storage.uris import has_credentials, redact, resolve
from tests.conftest import S3Server, write_image

REPO = Path(__file__).resolve().parents[1]
SECRET = "SuperSecret123"
#: the two forms of the issue: user info before the bucket, and pyarrow's URI options
USERINFO = f"s3://AKIAEXAMPLE:{SECRET}@bucket/photos/"
OPTIONS = f"s3://bucket?access_key=AKIAEXAMPLE&secret_key={SECRET}/p/"
ALIAS_PROBLEM = "an alias (*a): manifests and job files take none; write the value out"


def manifest(folder: Path, name: str = "m.yaml", **fields: object) -> Path:
    """The issue's ``one.yaml`` (JSON is YAML) with ``fields`` changed; its images made once."""
    if not (folder / "good.png").exists():
        write_image(folder / "good.png", 40, 32, seed=1)
        write_image(folder / "style.png", 32, 40, seed=2)
    data: dict[str, object] = {
        "name": "one",
        "contents": ["good.png"],
        "styles": ["style.png"],
        "sizes": [32],
        "params": {"iterations": 2},
        "weights": {"source": "random"},
    }
    data.update(fields)
    path = folder / name
    path.write_text(json.dumps(data, indent=1))
    return path


def line_of(path: Path, text: str) -> int:
    """The number of the first line of ``path`` that holds ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def stored_png(path: Path, seed: int) -> Path:
    """An uncompressed PNG: its size depends on its dimensions only, so two of them with
    other pixels have the same size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return info.value.problems


# ---------------------------------------------------------------------------- 1: credentials


def test_redact_hides_each_form_of_credential_and_nothing_else() -> None:
    assert redact(USERINFO) == "s3://***@bucket/photos/"
    assert redact(OPTIONS) == "s3://bucket?access_key=***&secret_key=***"
    # an unescaped '/' in a secret (common in AWS keys) ends the authority early
    assert redact("s3://AKIA:ab/cd@bucket/k.png") == "s3://***@bucket/k.png"
    assert redact("s3://AKIA:1234/cd@bucket/k.png") == "s3://***@bucket/k.png"  # no port before a bucket
    signed = "gs://b/x.png?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&v=1"
    assert redact(signed) == "gs://b/x.png?X-Amz-Credential=***&X-Amz-Signature=***&v=1"
    assert redact(f"cannot list '{USERINFO}' (why)") == "cannot list 's3://***@bucket/photos/' (why)"
    for clean in (
        "s3://bucket/users/bob@example.com/a.jpg",  # '@' in a key
        "s3://bucket/photos/**/*.jp?g",  # '?' is a wildcard
        "hdfs://namenode:8020/data/a@b.png",  # a port
        "s3://b/rock&roll_key=C.png",  # option-like text in a key, before any '?'
        "gs://b/c/hot&token=x.png",
        "s3://b/photo;passkey=3.png",
        "gs://b/a:b/c@2x.png",
        "file:///tmp/x.png",
        "photos/a.png",
    ):
        assert redact(clean) == clean and not has_credentials(clean), clean


def test_sources_resolver_and_rows_never_hold_a_credential(tmp_path: Path) -> None:
    for uri in (USERINFO, OPTIONS, f"{OPTIONS}*.png"):
        listing = list_images(uri, tmp_path)  # the query form used to meet the wildcard check first
        assert listing.problem and "credentials" in listing.problem and SECRET not in listing.problem
        with pytest.raises(ValueError) as refused:
            resolve(uri)
        assert SECRET not in str(refused.value)
        facts = ImageIndex().image(uri)
        assert facts.problem and SECRET not in facts.problem
    # a row is the last place a location could slip through: it is redacted there too
    (item,) = expand(load_manifest(manifest(tmp_path, output=str(tmp_path / "out"))))
    forged = dataclasses.replace(item, content_path=f"{USERINFO}a.png", style_paths=(OPTIONS,))
    table = to_table([make_row(forged, "ok", 1)])
    assert SECRET not in json.dumps(table.to_pylist(), default=str)
    assert table.column("content_path")[0].as_py() == "s3://***@bucket/photos/a.png"


def test_a_real_bucket_named_with_credentials_is_refused_unread(s3: S3Server, tmp_path: Path) -> None:
    s3.put("photos/a.png", write_image(tmp_path / "a.png", 32, 32, seed=3).read_bytes())
    key_in_uri = f"s3://AKIAEXAMPLE:{SECRET}@{s3.bucket}/photos/"
    path = manifest(tmp_path, contents=[key_in_uri], output=f"s3://{s3.bucket}/out?secret_key={SECRET}")
    problems = problems_of(path)
    assert len(problems) == 2 and all("credentials" in p for p in problems), problems
    assert SECRET not in "\n".join(problems)
    with pytest.raises(ValueError) as refused:
        OutputRoot(f"s3://k:{SECRET}@{s3.bucket}/out").probe_writable()
    assert SECRET not in str(refused.value)


# ---------------------------------------------------------------------------- 3: numbers


def test_numbers_beyond_what_the_results_hold_are_one_line_each(tmp_path: Path) -> None:
    params = {
        "iterations": 10**20,  # the 1e20: a YAML int, or a float with a dot below
        "seed": 2**64,
        "history_size": 10**12,
        "tile": 2**70,
        "style_scale": 1e30,
        "tv_weight": float("inf"),
        "scales": 3,
        "scale_factor": 1e200,  # scale_factor ** scales overflowed: a traceback, before
    }
    path = manifest(tmp_path, params=params)
    text = path.read_text().replace("Infinity", ".inf")  # YAML's spelling
    path.write_text(text)
    problems = problems_of(path)
    line = line_of(path, '"iterations"')
    assert f"{path}:{line}: params.iterations: must be at most 100000, got 100000000000000000000" in problems
    for field in ("seed", "history_size", "tile", "style_scale", "scale_factor"):
        assert any(f": params.{field}: must be at most " in p for p in problems), (field, problems)
    assert any(": params.tv_weight: expected a finite number, got inf" in p for p in problems), problems
    float_path = manifest(tmp_path, "f.yaml")
    float_path.write_text(float_path.read_text().replace('"iterations": 2', '"iterations": 1.0e+20'))
    line = line_of(float_path, '"iterations"')
    assert problems_of(float_path) == [
        f"{float_path}:{line}: params.iterations: expected a whole number of a usable size, got 1e+20"
    ]
    blend = {"name": "b", "images": [{"path": "style.png", "weight": 1e39}]}
    assert any(
        "styles[0].images[0].weight: must be at most 3.40282e+38" in p
        for p in problems_of(manifest(tmp_path, "b.yaml", styles=[blend]))
    )
    table = tmp_path / "t.csv"
    table.write_text("content,style,size,style_weights\ngood.png,style.png;style.png,32,nan;1\n")
    assert problems_of(table) == [
        f"{table}: line 2: style_weights: give finite, non-negative weights with a positive sum"
    ]


def test_a_config_at_every_bound_makes_a_row_the_table_holds(tmp_path: Path) -> None:
    """Where the issue's driver crashed: writing the row of a config that had validated."""
    (item,) = expand(load_manifest(manifest(tmp_path, output=str(tmp_path / "out"))))
    widest = SynthesisConfig(
        size=MAX_SIDE,
        iterations=MAX_ITERATIONS,
        seed=INT64_MAX,
        ratio=FLOAT32_MAX,
        history_size=MAX_HISTORY,
        scale_iterations=MAX_ITERATIONS,
        tile=MAX_SIDE,
        style_scale=MAX_STYLE_SCALE,
        tv_weight=FLOAT32_MAX,
        style_layer_weights=(FLOAT32_MAX,) * 5,
    )
    lowest = SynthesisConfig(
        size=1024, seed=INT64_MIN, scales=MAX_SCALES, scale_factor=1.01, style_layers=["conv1_1"]
    )
    for config in (widest, lowest, SynthesisConfig(size=2048, scales=3, scale_factor=MAX_SCALE_FACTOR**0.5)):
        row = make_row(dataclasses.replace(item, config=config, size=config.size), "ok", 1)
        stored = to_table([row]).to_pylist()[0]
        assert (stored["iterations_requested"], stored["seed"]) == (config.iterations, config.seed)
    for beyond in (
        {"iterations": MAX_ITERATIONS + 1},
        {"seed": INT64_MAX + 1},
        {"seed": INT64_MIN - 1},
        {"ratio": FLOAT32_MAX * 2},
        {"scales": MAX_SCALES + 1},
    ):
        with pytest.raises(ConfigError):
            SynthesisConfig(**beyond)


# ---------------------------------------------------------------------------- 5: aliases

#: The issue's bomb: each level an anchored list of ten aliases of the level before (10^8 x's).
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{level}: &{level} [{', '.join([f'*{previous}'] * 10)}]\n"
    for previous, level in zip("abcdefg", "bcdefgh", strict=True)
)

#: Run in a child whose address space is capped at what it has mapped after its imports plus
#: 1 GiB: expanding the bomb (10^8 values, unbounded before) fails there at once, with a
#: MemoryError instead of the one line expected. Prints one JSON line.
CAPPED = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import nst_engine.runs.prepare, nst_engine.planning.items, nst_engine.cli.main
    from nst_engine.distributed.jobs import JobFileError, is_job_file, load_job
    from nst_engine.planning.manifest import ManifestError, load_manifest

    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    folder = Path(sys.argv[1])
    out = {"is_job_file": is_job_file(folder / "job.yaml")}
    for key, load, error in (("manifest", load_manifest, ManifestError), ("job", load_job, JobFileError)):
        try:
            load(folder / f"{key}.yaml")
            out[key] = "accepted"
        except error as exc:
            out[key] = exc.problems
    print(json.dumps(out))
    """
)


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(BOMB + "contents: *h\nstyles: [s.png]\nsizes: [32]\n")
    (tmp_path / "job.yaml").write_text(BOMB + "manifest: *h\noutput: out\n")
    done = subprocess.run(
        [sys.executable, "-c", CAPPED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,  # the old walk took 22 s to reach 3.4 GB
        env={**os.environ, "PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["manifest"] == [f"{tmp_path / 'manifest.yaml'}:2: {ALIAS_PROBLEM}"]
    assert out["job"] == [f"{tmp_path / 'job.yaml'}:2: {ALIAS_PROBLEM}"]
    assert out["is_job_file"] is False  # so nst submit reads it as a manifest: refused there too


def test_anchors_alone_are_fine_but_a_single_alias_is_refused(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    text = path.read_text().replace('"contents": [', '"contents": &images [')
    path.write_text(text)
    assert len(load_manifest(path).items) == 1  # an anchor alone repeats nothing
    start = text.index('"styles": [')
    path.write_text(text[:start] + '"styles": *images' + text[text.index("]", start) + 1 :])
    assert problems_of(path) == [
        f"{path}:{line_of(path, '*images')}: {ALIAS_PROBLEM.replace('*a', '*images')}"
    ]


# ---------------------------------------------------------------------------- 9: the hash cache


def _cached_plan(path: Path, output: Path) -> tuple[str, tuple[int, int]]:
    """The one item's id, and (files read, files answered from the cache)."""
    index = ImageIndex(str(output), load_manifest(path).stamps)
    (item,) = expand(load_manifest(path), index=index)
    return item.item_id, (index.stats.reads, index.stats.cached)


def test_a_file_changed_with_its_size_and_time_put_back_is_hashed_again(tmp_path: Path) -> None:
    output = tmp_path / "out"
    path = manifest(tmp_path, output=str(output))
    content = stored_png(tmp_path / "good.png", seed=1)
    first, _ = _cached_plan(path, output)
    assert _cached_plan(path, output) == (first, (0, 2))  # unchanged: nothing read

    before = content.stat()
    other = stored_png(tmp_path / "other.png", seed=9).read_bytes()
    assert len(other) == before.st_size and other != content.read_bytes()  # same size, other pixels
    content.write_bytes(other)  # rewritten in place, then the time put back, as touch -d does
    os.utime(content, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (content.stat().st_size, content.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    changed, counts = _cached_plan(path, output)
    assert changed != first and counts == (1, 1)

    # replaced by another file (a new inode), its size and time those of the one before
    again = content.stat()
    replacement = stored_png(tmp_path / "replacement.png", seed=5)
    os.utime(replacement, ns=(again.st_atime_ns, again.st_mtime_ns))
    os.replace(replacement, content)
    third, counts = _cached_plan(path, output)
    assert third not in (first, changed) and counts == (1, 1)


def test_a_row_forged_with_size_and_time_alone_is_not_trusted(tmp_path: Path) -> None:
    """The issue's forgery: a row with the file's new size and time but its old hash, as
    the cache was keyed before; a local file's key now also has its inode and ctime."""
    output = tmp_path / "out"
    path = manifest(tmp_path, output=str(output))
    first, _ = _cached_plan(path, output)
    content = tmp_path / "good.png"
    rows = pq.read_table(output / CACHE_FILE).to_pylist()
    old = next(r for r in rows if r["location"] == str(content.resolve()))
    write_image(content, 36, 30, seed=11)  # a new version: new size and time
    now = content.stat()
    forged = {**old, "size": now.st_size, "mtime_ns": now.st_mtime_ns, "inode": 0, "ctime_ns": 0}
    pq.write_table(pa.Table.from_pylist([forged], schema=_SCHEMA), output / CACHE_FILE)
    changed, counts = _cached_plan(path, output)
    assert changed != first and counts == (2, 0)
    assert {r["kind"] for r in pq.read_table(output / CACHE_FILE).to_pylist()} == {IMAGE}


def test_a_cache_from_before_keeps_its_object_rows_and_drops_its_local_ones() -> None:
    """Upgrading must not read every object again (an object's key, size and the store's
    own time, is unchanged), while a local row keyed by size and time alone is not trusted."""
    from nst_engine.planning.fingerprints import _upgraded

    facts = {"kind": IMAGE, "sha256": "0" * 64, "width": 8, "height": 8, "problem": None}
    before = pa.Table.from_pylist(
        [
            {"location": "/data/a.png", "size": 10, "mtime_ns": 5, **facts},
            {"location": "s3://bucket/a.png", "size": 10, "mtime_ns": 5, **facts},
        ]
    )
    kept = _upgraded(before).to_pylist()
    assert [(r["location"], r["inode"], r["ctime_ns"]) for r in kept] == [("s3://bucket/a.png", 0, 0)]
    assert _upgraded(pa.table({"location": ["s3://b/x"]})).num_rows == 0  # another layout: rebuilt


# ---------------------------------------------------------------------------- 10: unholdable names


def test_a_nul_or_control_character_in_a_name_is_refused_naming_the_entry(tmp_path: Path) -> None:
    styles = [{"name": "van\0gogh", "image": "style.png"}]
    path = manifest(tmp_path, styles=styles)
    (problem,) = problems_of(path)
    line = line_of(path, '"name": "van')
    assert problem.startswith(f"{path}:{line}: styles[0].name: 'van\\x00gogh' holds a NUL character, ")
    (problem,) = problems_of(manifest(tmp_path, "c.yaml", contents=["good\0.png"]))
    assert ": contents[0]: 'good\\x00.png' holds a NUL character" in problem
    # names found by listing a folder (a newline, a name that is not UTF-8) are bad inputs
    # of their items, so --skip-bad-inputs renders the rest of the folder
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "ok.png", 32, 32, seed=4)
    write_image(photos / "two\nlines.png", 32, 32, seed=5)
    write_image(photos / "fine.png", 32, 32, seed=6)
    os.rename(os.fsencode(photos / "ok.png"), os.fsencode(photos) + b"/\xff.png")
    listed = load_manifest(manifest(tmp_path, "f.yaml", contents=["photos"]))
    with pytest.raises(ManifestError) as info:
        expand(listed)
    assert len(info.value.problems) == 2, info.value.problems
    assert any("holds a control character ('\\n')" in p for p in info.value.problems), info.value.problems
    assert any("holds a character that is not UTF-8" in p for p in info.value.problems), info.value.problems
    items = expand(listed, skip_bad_inputs=True)
    assert sorted(bool(i.input_error) for i in items) == [False, True, True], items
    rows = [make_row(i, "failed", 1, error=i.input_error) for i in items if i.input_error]
    assert to_table(rows).num_rows == 2  # a failed item's row holds its name, escaped
    table = tmp_path / "t.csv"
    table.write_text("content,style,size,style_name\ngood.png,style.png,32,a\x01b\n")
    assert problems_of(table) == [
        f"{table}: line 2: style_name: 'a\\x01b' holds a control character ('\\x01'), "
        "which no output path may hold; rename it"
    ]
    with pytest.raises(UnsafePathError, match="NUL"):  # the layout's own check, the last one
        output_relative_path(
            "{style}/{content}.png", {"style": "a\0", "size": 1, "content_rel": "c", "id": "i"}
        )


# ---------------------------------------------------------------------------- the CLI

#: name -> (manifest fields or a file's text, the command after ``nst``; {m} is the file)
CLI_CASES: dict[str, tuple[object, list[str]]] = {
    "userinfo": ({"contents": [USERINFO]}, ["plan", "{m}"]),
    "options": ({"contents": [OPTIONS]}, ["plan", "{m}"]),
    "style-init-weights": (
        {
            "styles": [OPTIONS, {"name": "b", "images": [USERINFO]}],
            "params": {"iterations": 2, "init": USERINFO + "x.png"},
            "weights": {"source": "random", "normalize": True, "calibration": [OPTIONS]},
        },
        ["plan", "{m}", "--json"],
    ),
    "weights-file": ({"weights": USERINFO + "vgg.pth"}, ["plan", "{m}"]),
    "manifest-output": ({"output": USERINFO}, ["render", "{m}", "-q"]),
    "render-output": ({}, ["render", "{m}", "--output", OPTIONS, "-q"]),
    "table": (f"content,style,size\n{USERINFO}a.png,style.png,32\n", ["plan", "{m}"]),
    "report": ({}, ["report", USERINFO]),
    "fits": ({}, ["plan", "{m}", "--results-for-fits", OPTIONS]),
    "job": (f"manifest: m.yaml\noutput: '{OPTIONS}'\n", ["submit", "{m}"]),
    "iterations": ({"params": {"iterations": 10**20}}, ["plan", "{m}"]),
    "nul-style": ({"styles": [{"name": "a\0b", "image": "style.png"}]}, ["render", "{m}", "-q"]),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    def run(name: str) -> subprocess.CompletedProcess:
        folder = tmp_path_factory.mktemp(name)
        fields, args = CLI_CASES[name]
        path = manifest(folder, **(fields if isinstance(fields, dict) else {}))
        if isinstance(fields, str):  # a table or a job file naming m.yaml
            path = folder / ("t.csv" if name == "table" else "job.yaml")
            path.write_text(fields)
        return subprocess.run(
            [sys.executable, "-m", "nst_engine.cli.main", *(a.replace("{m}", str(path)) for a in args)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"},
        )

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(CLI_CASES, pool.map(run, CLI_CASES), strict=True))


@pytest.mark.parametrize("name", [n for n in CLI_CASES if n not in ("iterations", "nul-style")])
def test_the_cli_never_prints_a_credential(cli: dict[str, subprocess.CompletedProcess], name: str) -> None:
    done = cli[name]
    said = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in said, said
    assert SECRET not in said and "AKIAEXAMPLE" not in said, said
    assert "credentials" in said, said


def test_the_cli_refuses_huge_numbers_and_nul_names_in_one_line(
    cli: dict[str, subprocess.CompletedProcess],
) -> None:
    for name, needle in (
        ("iterations", r"m\.yaml:13: params\.iterations: must be at most 100000, got 100000000000000000000$"),
        ("nul-style", r"m\.yaml:8: styles\[0\]\.name: 'a\\x00b' holds a NUL character, "),
    ):
        done = cli[name]
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if re.search(needle, line)]
        assert len(lines) == 1, done.stderr
