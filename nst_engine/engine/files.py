"""The one way this project writes a file: atomically, on any pyarrow filesystem."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

#: Prefix of the temporary sibling a write goes to before its rename; a killed writer
#: leaves only such a file, which the next batch run removes.
TMP_PREFIX = ".nst-tmp-"


def write_atomic(path: str | os.PathLike, data: bytes, filesystem: pafs.FileSystem | None = None) -> str:
    """Write ``data`` to a temporary sibling of ``path``, then rename it into place, so a
    reader never sees half a file. ``path`` is local unless ``filesystem`` is given;
    folders are created. Returns the path written."""
    fs = filesystem or pafs.LocalFileSystem()
    target = str(path) if filesystem is not None else Path(path).expanduser().resolve().as_posix()
    folder = posixpath.dirname(target)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(target)}")
    try:
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    return target
