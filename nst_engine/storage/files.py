"""The one way this project writes a file: atomically, on any pyarrow filesystem."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from nst_engine.errors import NSTError, one_line

#: Prefix of the temporary sibling a write goes to before its rename; a killed writer
#: leaves only such a file, which the next batch run removes.
TMP_PREFIX = ".nst-tmp-"


class NotWritableError(NSTError):
    """A place where results cannot be written, found before any work that would be lost."""


def write_atomic(path: str | os.PathLike, data: bytes, filesystem: pafs.FileSystem | None = None) -> str:
    """Write ``data`` to a temporary sibling of ``path``, then rename it into place, so a
    reader never sees half a file. ``path`` is local unless ``filesystem`` is given;
    folders are created. Returns the path written.

    Every output file gets the umask's mode (``0o666 & ~umask``, 0644 under the usual
    022), whoever writes it (``nst stylize``, render workers, reports): the temporary file
    is made by an ordinary create, which applies the umask, and the rename keeps its mode.
    A private temporary file (``tempfile.mkstemp``, mode 0600, as this function once used)
    would leave outputs readable by their owner only."""
    fs = filesystem or pafs.LocalFileSystem()
    target = str(path) if filesystem is not None else Path(path).expanduser().resolve().as_posix()
    folder = posixpath.dirname(target)
    fs.create_dir(folder, recursive=True)
    tmp = _temporary(folder, posixpath.basename(target))
    try:
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    return target


def _temporary(folder: str, basename: str) -> str:
    """The unique temporary sibling a write of ``basename`` in ``folder`` goes to first."""
    return posixpath.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{basename}")


def probe_writable(
    folder: str, filesystem: pafs.FileSystem | None = None, name: str | None = None, like: str = "probe"
) -> None:
    """Create ``folder``, then write, rename and delete a uniquely named file in it, the
    steps of every ``write_atomic``, so a place that cannot take results fails now, in
    seconds, rather than after the work whose results it would lose.

    ``folder`` is local unless ``filesystem`` is given; ``name`` is how the error names
    it (default: the folder); the probe has the temporary name a write of a file named
    ``like`` would use, so a name too long for the filesystem fails here too. Raises
    ``NotWritableError`` (one line: where, which step failed, what to do). The probe is
    named like a temporary file, so one a killed probe leaves behind is removed with them."""
    fs = filesystem or pafs.LocalFileSystem()
    base = folder if filesystem is not None else Path(folder).expanduser().resolve().as_posix()
    probe = _temporary(base, like)
    moved = _temporary(base, "probe")
    steps = (
        ("create the folder", lambda: fs.create_dir(base, recursive=True)),
        ("write a file", lambda: _write_empty(fs, probe)),
        ("rename a file", lambda: fs.move(probe, moved)),
        ("delete a file", lambda: fs.delete_file(moved)),
    )
    for step, action in steps:
        try:
            action()
        except (OSError, ValueError, pa.ArrowException) as exc:
            for leftover in (probe, moved):  # best effort: never leave a probe behind
                with contextlib.suppress(OSError, ValueError, pa.ArrowException):
                    fs.delete_file(leftover)
            raise NotWritableError(
                f"{name or base}: cannot {step} there ({one_line(exc)}); "
                "give a location you can create files in"
            ) from None


def _write_empty(fs: pafs.FileSystem, path: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(b"probe")
