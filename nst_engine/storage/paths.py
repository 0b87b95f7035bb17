"""Output paths relative to an output root, checked so they cannot leave it."""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath


class UnsafePathError(ValueError):
    """A relative output path that would leave the output root."""


def safe_relative(path: str) -> str:
    """``path`` as a clean relative POSIX path, refusing absolute paths and ``..``."""
    if not path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(f"{path!r} is absolute; output paths must stay inside the output root")
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if any(part == ".." for part in parts):
        raise UnsafePathError(f"{path!r} contains '..'; output paths must stay inside the output root")
    clean = posixpath.normpath("/".join(parts))
    if clean in (".", ""):
        raise UnsafePathError(f"{path!r} names no file")
    return clean
