"""Output roots on any filesystem pyarrow understands (local paths, file://, s3://, gs://).

Every write goes to a temporary name in the same folder and is then renamed, so a
reader never sees half a file, and a killed writer leaves only a ``.nst-tmp-`` file.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from nst_engine.engine import uris
from nst_engine.engine.files import TMP_PREFIX, write_atomic
from nst_engine.planning.paths import safe_relative


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a root, through the one resolver of locations (remote
    filesystems are made once per process there)."""
    fs, base = uris.resolve(uri)
    return fs, base.rstrip("/") or "/"


@dataclass(frozen=True)
class OutputRoot:
    """A folder on some filesystem; picklable (it holds only the URI) for Ray workers."""

    uri: str

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs_and_base[0]

    def display_full(self, path: str) -> str:
        """A full path on this root's filesystem as the user would write it."""
        return uris.display(self.uri, path)

    @property
    def _fs_and_base(self) -> tuple[pafs.FileSystem, str]:
        return _filesystem(self.uri)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    def local_path(self, relative: str = "") -> Path:
        _fs, base = self._fs_and_base
        return Path(posixpath.join(base, relative)) if relative else Path(base)

    def full_path(self, relative: str) -> str:
        _, base = self._fs_and_base
        return posixpath.join(base, safe_relative(relative))

    def display(self, relative: str) -> str:
        return self.full_path(relative) if self.is_local else f"{self.uri.rstrip('/')}/{relative}"

    def exists(self, relative: str) -> bool:
        fs, _ = self._fs_and_base
        return fs.get_file_info(self.full_path(relative)).type == pafs.FileType.File

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Atomic write: temporary sibling, then rename."""
        fs, _ = self._fs_and_base
        return write_atomic(self.full_path(relative), data, fs)

    def read_bytes(self, relative: str) -> bytes:
        fs, _ = self._fs_and_base
        with fs.open_input_stream(self.full_path(relative)) as stream:
            return stream.read()

    def list_files(self, relative_dir: str, suffix: str = "") -> list[str]:
        """Paths (relative to the root) of the files directly in ``relative_dir``."""
        fs, base = self._fs_and_base
        folder = posixpath.join(base, safe_relative(relative_dir))
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(
            posixpath.relpath(info.path, base)
            for info in infos
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    def delete(self, relative: str) -> None:
        fs, _ = self._fs_and_base
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(self.full_path(relative))

    def remove_stale_temporaries(self) -> int:
        """Delete ``.nst-tmp-`` files a killed run left behind; returns how many."""
        fs, base = self._fs_and_base
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        stale = [
            i.path
            for i in infos
            if i.type == pafs.FileType.File and posixpath.basename(i.path).startswith(TMP_PREFIX)
        ]
        for path in stale:
            fs.delete_file(path)
        return len(stale)
