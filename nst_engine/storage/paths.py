"""Output paths relative to an output root, checked so they cannot leave it, and names
checked for characters no output path can hold."""

from __future__ import annotations

import posixpath
import re
from pathlib import PurePosixPath

#: Characters no name that becomes part of an output path may hold: NUL (no filesystem
#: takes it: the write fails only on the worker), the other C0 controls and DEL (an S3
#: listing, XML 1.0, cannot carry most of them, and they break every one-line message and
#: log line), and lone surrogates (how Python reads a file name that is not UTF-8: no
#: object key or Parquet string can hold them).
_UNHOLDABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class UnsafePathError(ValueError):
    """A relative output path that would leave the output root, or could not be written."""


def unholdable(text: str) -> str | None:
    """What in ``text`` no output path can hold (``a NUL character``), or None."""
    found = _UNHOLDABLE.search(text)
    if found is None:
        return None
    char = found.group(0)
    if char == "\x00":
        return "a NUL character"
    if "\ud800" <= char <= "\udfff":
        return f"a character that is not UTF-8 ({char!r})"
    return f"a control character ({char!r})"


def holding_problem(text: str, name: str | None = None) -> str | None:
    """Why ``text`` cannot become part of an output path, naming it as ``name`` (by
    default ``text`` itself: a listed file is named by its location, checked by the part
    that enters the path), or None. The one wording of this refusal."""
    what = unholdable(text)
    if what is None:
        return None
    shown = text if name is None else name
    return f"{shown!r} holds {what}, which no output path may hold; rename it"


def check_holdable(text: str) -> str:
    """``text`` itself, or ``ValueError`` naming the character no output path may hold."""
    problem = holding_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


def safe_relative(path: str) -> str:
    """``path`` as a clean relative POSIX path, refusing absolute paths, ``..`` and
    characters no filesystem or object store can hold."""
    if not path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(f"{path!r} is absolute; output paths must stay inside the output root")
    if (what := unholdable(path)) is not None:
        raise UnsafePathError(f"{path!r} holds {what}, which no output path may hold")
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if any(part == ".." for part in parts):
        raise UnsafePathError(f"{path!r} contains '..'; output paths must stay inside the output root")
    clean = posixpath.normpath("/".join(parts))
    if clean in (".", ""):
        raise UnsafePathError(f"{path!r} names no file")
    return clean
