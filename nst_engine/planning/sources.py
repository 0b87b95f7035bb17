"""Where a manifest's images are: files, folders/prefixes and globs on any pyarrow filesystem.

A manifest entry is a local path (relative to the manifest's folder), or a URI such as
``s3://bucket/photos/`` (a prefix), ``s3://bucket/photos/**/*.jpg`` (a glob) or
``gs://bucket/style.jpg`` (a file). Folders and globs are listed here, once, with one
recursive listing each (a LIST request per 1000 objects on S3), and the size and
modification time that listing returns are kept, so planning need not ask for them
again object by object. A glob means the same on a laptop and on a bucket; only the
listing differs: object stores are listed by pyarrow, local folders by ``_walk_local``,
which never follows a symlinked folder twice (pyarrow's recursive listing follows every
one, so a folder linking to itself made a ``**`` glob list about 2^40 paths).

An entry that expands to more than ``max_images`` images is a problem, not a listing:
a glob that runs away (``/**``) stops as soon as it passes the limit.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR as stat_is_dir

import pyarrow.fs as pafs

from nst_engine.storage.uris import display, is_uri, redact, refuse_credentials, resolve

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
GLOB_CHARS = "*?["
#: The manifest's top-level key for the most images one folder or glob entry may expand to,
#: and its default: a manifest of a million images fits in one entry.
MAX_IMAGES_KEY = "max_images_per_entry"
DEFAULT_MAX_IMAGES = 1_000_000


class TooManyImagesError(Exception):
    """A listing passed its limit; raised as soon as it does, so the walk stops there."""


@dataclass(frozen=True)
class Stamp:
    """What identifies a version of a file without reading it (the hash cache's key).

    Every file has its size and modification time; a local file also its inode and ctime,
    because a modification time can be set back (``touch -d``, ``os.utime``) but ctime
    cannot: the kernel sets it to now on every change of the file's contents or metadata,
    setting the modification time included, and a file replaced by another has another
    inode. On object storage pyarrow's listing offers no ETag or generation, only size and
    modification time, which there is the server's time of the last write (a writer
    cannot choose it): those stay 0."""

    size: int
    mtime_ns: int
    inode: int = 0  # st_ino of a local file
    ctime_ns: int = 0  # st_ctime_ns of a local file


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


def stamp_of(info: pafs.FileInfo, fs: pafs.FileSystem) -> Stamp | None:
    """The stamp of a file ``fs`` listed or looked up (None for anything but a file); a
    local file's is read whole from ``os.stat``, so its parts belong to one version."""
    if info.type != pafs.FileType.File or info.size is None:
        return None
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            return local_stamp(os.stat(info.path))
        except OSError:  # gone since it was looked up: as a missing file, read and reported later
            return None
    return Stamp(int(info.size), int(info.mtime_ns or 0))


def local_stamp(info: os.stat_result) -> Stamp:
    """The stamp of a local file from its ``stat`` (of the target, for a symlink)."""
    return Stamp(int(info.st_size), int(info.st_mtime_ns), int(info.st_ino), int(info.st_ctime_ns))


def _sort_key(relative: str) -> tuple[str, ...]:
    # part by part, as pathlib orders paths: "a/b" before "a-b"
    return tuple(relative.split("/"))


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_images(entry: str, base: Path, max_images: int = DEFAULT_MAX_IMAGES) -> Listing:
    """The images ``entry`` names, sorted; never raises for a missing file (planning reports
    that per item, so ``--skip-bad-inputs`` can skip it), but a folder or glob with no
    images or more than ``max_images``, or a filesystem that cannot be listed, is a ``problem``."""
    location = locate(entry, base)
    kind = "glob" if is_glob(entry) else "file"
    try:
        refuse_credentials(location)  # before the wildcard check: '?' starts a URI's options too
        if kind == "glob":
            root, pattern = _split_glob(location)
            return Listing("glob", tuple(_list(root, pattern, max_images)))
        fs, path = resolve(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory or (
            info.type == pafs.FileType.NotFound and location.endswith("/")
        ):
            kind = "folder"
            return Listing(kind, tuple(_list(location, None, max_images)))
        name = posixpath.basename(path.rstrip("/")) or path
        return Listing("file", (Found(location, name, stamp_of(info, fs)),))
    except TooManyImagesError:
        return Listing(kind, (), _too_many(kind, entry, max_images))
    except (OSError, ValueError) as exc:  # bad URI, no permission, unreachable endpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Listing(kind, (), redact(f"cannot list {entry!r} ({first})"))


def _too_many(kind: str, entry: str, max_images: int) -> str:
    """The one line for an entry past the limit: which entry, the limit, what to do."""
    what = "matches" if kind == "glob" else "holds"
    narrower = "narrow the pattern" if kind == "glob" else "list its subfolders or a glob instead"
    return (
        f"{kind} {redact(entry)!r} {what} more than {max_images:,} images (the limit per entry); "
        f"{narrower}, or raise the limit with '{MAX_IMAGES_KEY}: N' at the top of the manifest"
    )


def _list(root: str, pattern: str | None, max_images: int) -> list[Found]:
    """Image files under ``root`` (recursively), optionally matching the glob ``pattern``
    (relative to it); ``TooManyImagesError`` as soon as more than ``max_images`` match."""
    fs, root_path = resolve(root)
    regex = glob_regex(pattern) if pattern is not None else None
    depth = None if pattern is None or "**" in pattern else pattern.count("/")
    if isinstance(fs, pafs.LocalFileSystem):
        files = _walk_local(root_path, depth)
    else:
        files = _walk_store(fs, root_path, depth)
    found = []
    for relative, stamp in files:
        if not _is_image(relative) or (regex is not None and not regex.fullmatch(relative)):
            continue
        try:
            found.append(Found(display(root, _join(root_path, relative)), relative, stamp()))
        except FileNotFoundError:  # removed since its folder was read
            continue
        if len(found) > max_images:
            raise TooManyImagesError
    return sorted(found, key=lambda f: _sort_key(f.relative))


def _join(root_path: str, relative: str) -> str:
    return f"{root_path.rstrip('/')}/{relative}"


#: A file found by a walk: its path relative to the walk's root, and how to get its stamp
#: (deferred, so that only the files a glob keeps cost a ``stat`` on a local disk).
Walked = tuple[str, Callable[[], Stamp | None]]


def _walk_store(fs: pafs.FileSystem, root_path: str, depth: int | None) -> Iterator[Walked]:
    """Every file under ``root_path`` on an object store: one recursive listing (a LIST request
    per 1000 objects on S3), which has nothing to loop over (no symlinks there)."""
    selector = pafs.FileSelector(root_path, recursive=depth != 0, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            stamp = stamp_of(info, fs)
            yield posixpath.relpath(info.path, root_path), lambda stamp=stamp: stamp


def _walk_local(root_path: str, depth: int | None = None) -> Iterator[Walked]:
    """Every file under the local folder ``root_path``, down to ``depth`` folders below it
    (None: all), each symlinked folder followed only the first time its target is seen.

    Hand-written because pyarrow's recursive listing has no loop protection: it follows
    every symlinked folder, so ``a/loop -> ..`` lists ``a/loop/a/loop/...`` until the path is
    too long, and two such links make about 2^40 paths. Real folders are walked first and
    the symlinked ones after them, in path order, so an image inside the tree keeps its
    real path and an image reached only through a link (a dataset linked in) is listed once,
    under the first link to it. Folders are told apart by (device, inode), which also ends
    loops made with bind mounts. A missing root lists nothing, as pyarrow's listing does."""
    try:
        root_stat = os.stat(root_path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not os.path.isdir(root_path):
        raise NotADirectoryError(f"{root_path}: not a folder")
    seen = {(root_stat.st_dev, root_stat.st_ino)}
    links: list[tuple[str, tuple[int, int]]] = []  # symlinked folders, followed after the real ones
    yield from _walk_real(root_path, "", depth, seen, links)
    while links:
        pending, links = sorted(links, key=lambda link: _sort_key(link[0])), []
        for relative, key in pending:
            if key in seen:
                continue
            seen.add(key)
            yield from _walk_real(_join(root_path, relative), relative + "/", depth, seen, links)


def _walk_real(
    folder: str,
    prefix: str,
    depth: int | None,
    seen: set[tuple[int, int]],
    links: list[tuple[str, tuple[int, int]]],
) -> Iterator[Walked]:
    """The files under ``folder`` through real (not symlinked) folders not seen before;
    symlinked folders go to ``links`` for ``_walk_local`` to follow later. ``prefix`` is
    ``folder`` relative to the walk's root, with a trailing slash (or empty)."""
    stack = [(folder, prefix)]
    while stack:
        path, relative = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                name = relative + entry.name
                if entry.is_file():  # follows a symlinked file, as pyarrow's listing does
                    yield name, lambda entry=entry: _stamp(entry)
                elif depth is not None and name.count("/") >= depth:
                    continue
                elif entry.is_symlink():
                    target = _folder_key(entry, follow=True)
                    if target is not None:  # a folder; a broken link is nothing
                        links.append((name, target))
                elif entry.is_dir():
                    key = _folder_key(entry, follow=False)
                    if key is not None and key not in seen:
                        seen.add(key)
                        stack.append((entry.path, name + "/"))


def _stamp(entry: os.DirEntry[str]) -> Stamp:
    """The stamp of a file (of its target, for a symlink), as ``stamp_of`` gives it for a
    file looked up alone, so an image keeps its hash cache key however it was named."""
    return local_stamp(entry.stat())


def _folder_key(entry: os.DirEntry[str], follow: bool) -> tuple[int, int] | None:
    """(device, inode) of a folder (of its target when ``follow``); None for anything else."""
    try:
        info = entry.stat(follow_symlinks=follow)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat_is_dir(info.st_mode) else None


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
