"""Where a manifest's images are: files, folders/prefixes and globs on any pyarrow filesystem.

A manifest entry is a local path (relative to the manifest's folder), or a URI such as
``s3://bucket/photos/`` (a prefix), ``s3://bucket/photos/**/*.jpg`` (a glob) or
``gs://bucket/style.jpg`` (a file). Folders and globs are listed here, once, with one
recursive listing each (a LIST request per 1000 objects on S3), and the size and
modification time that listing returns are kept, so planning need not ask for them
again object by object. Local and remote entries go through the same code, so a glob
means the same on a laptop and on a bucket.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from nst_engine.engine.uris import display, is_uri, resolve

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Stamp:
    """What identifies a version of a file without reading it: its size and modification time."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Found:
    """One image a manifest entry names."""

    location: str  # absolute local path, or the full URI
    relative: str  # POSIX path under the entry's folder, prefix or glob base (for output layouts)
    stamp: Stamp | None = None  # from the listing, when the entry was a folder or glob


@dataclass(frozen=True)
class Listing:
    """The images of one entry; ``problem`` says why there are none, when there are none."""

    kind: str  # file, folder or glob
    found: tuple[Found, ...]
    problem: str | None = None


def locate(entry: str, base: Path) -> str:
    """A URI as it is; a local path made absolute against ``base`` (the manifest's folder)."""
    if is_uri(entry):
        return entry
    return str((base / entry).resolve())


def is_glob(entry: str) -> bool:
    """``*``, ``?`` or ``[`` anywhere, URIs included: there ``?`` is a wildcard, not options."""
    return any(ch in entry for ch in GLOB_CHARS)


def stamp_of(info: pafs.FileInfo) -> Stamp | None:
    """The stamp of a listed or looked-up file (None for anything but a file)."""
    if info.type != pafs.FileType.File or info.size is None:
        return None
    return Stamp(int(info.size), int(info.mtime_ns or 0))


def _sort_key(relative: str) -> tuple[str, ...]:
    # part by part, as pathlib orders paths: "a/b" before "a-b"
    return tuple(relative.split("/"))


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_images(entry: str, base: Path) -> Listing:
    """The images ``entry`` names, sorted; never raises for a missing file (planning reports
    that per item, so ``--skip-bad-inputs`` can skip it), but a folder or glob with no
    images, or a filesystem that cannot be listed, is a ``problem``."""
    location = locate(entry, base)
    kind = "glob" if is_glob(entry) else "file"
    try:
        if kind == "glob":
            root, pattern = _split_glob(location)
            return Listing("glob", tuple(_list(root, pattern, recursive="/" in pattern or "**" in pattern)))
        fs, path = resolve(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory or (
            info.type == pafs.FileType.NotFound and location.endswith("/")
        ):
            return Listing("folder", tuple(_list(location, None, recursive=True)))
        name = posixpath.basename(path.rstrip("/")) or path
        return Listing("file", (Found(location, name, stamp_of(info)),))
    except (OSError, ValueError) as exc:  # bad URI, no permission, unreachable endpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Listing(kind, (), f"cannot list {entry!r} ({first})")


def _list(root: str, pattern: str | None, recursive: bool) -> list[Found]:
    """Image files under ``root``, optionally matching the glob ``pattern`` (relative to it)."""
    fs, root_path = resolve(root)
    regex = glob_regex(pattern) if pattern is not None else None
    infos = fs.get_file_info(pafs.FileSelector(root_path, recursive=recursive, allow_not_found=True))
    found = []
    for info in infos:
        if info.type != pafs.FileType.File or not _is_image(info.path):
            continue
        relative = posixpath.relpath(info.path, root_path)
        if regex is not None and not regex.fullmatch(relative):
            continue
        found.append(Found(display(root, info.path), relative, stamp_of(info)))
    return sorted(found, key=lambda f: _sort_key(f.relative))


def _split_glob(location: str) -> tuple[str, str]:
    """(folder or prefix before the first wildcard, the rest: a glob relative to it)."""
    head, sep, tail = location.partition("://") if is_uri(location) else ("", "", location)
    parts = tail.split("/")
    first = next(i for i, part in enumerate(parts) if is_glob(part))
    if is_uri(location) and first == 0:
        raise ValueError(f"{location}: a wildcard in the bucket name; put it after {head}://BUCKET/")
    root = "/".join(parts[:first]) or "/"
    return f"{head}{sep}{root}", "/".join(parts[first:])


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as Python's ``glob(recursive=True)`` reads it, for paths relative to its base:
    ``*``, ``?`` and ``[...]`` stay within one folder, ``**`` spans any number of folders,
    and wildcards do not match names starting with a dot unless the pattern does."""
    parts = pattern.split("/")
    regex = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex.append(r"(?:(?!\.)[^/]+/)*" if not last else r"(?:(?!\.)[^/]+/)*(?!\.)[^/]+")
            continue
        hidden = "" if part.startswith(".") else r"(?!\.)"
        regex.append(hidden + _segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(regex))


def _segment_regex(part: str) -> str:
    """One path segment of a glob as a regex that never crosses a ``/``."""
    out, i = [], 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            while i + 1 < len(part) and part[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)) > 0:
            body = part[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)
