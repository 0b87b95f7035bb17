"""Output roots on any filesystem pyarrow understands (local paths, file://, s3://, gs://).

Every write goes to a temporary name in the same folder and is then renamed, so a
reader never sees half a file, and a killed writer leaves only a ``.nst-tmp-`` file.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from nst_engine.storage import uris
from nst_engine.storage.files import TMP_PREFIX, probe_writable, write_atomic
from nst_engine.storage.paths import safe_relative

#: How the temporary files of a write probe end (``OutputRoot.probe_writable``) ...
PROBE_SUFFIX = "-probe"
#: ... and how long one is left alone by another run's clean-up (a probe takes milliseconds).
PROBE_GRACE_SECONDS = 600.0


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a root, through the one resolver of locations (remote
    filesystems are made once per process there)."""
    fs, base = uris.resolve(uri)
    return fs, base.rstrip("/") or "/"


def _kept_by_owner(path: str) -> bool:
    """Temporaries that processes without the root's lease write (a write probe, the hash
    cache of a concurrent ``nst plan``) or the lease's own heartbeat: while young, they are
    in flight, not left behind."""
    return path.endswith((PROBE_SUFFIX, ".nst-lease.json")) or "/.nst-cache/" in path


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

    def probe_writable(self) -> None:
        """Create the root and write, rename and delete a probe object in it, as every
        result write does, so a root that cannot take results fails before any work
        starts. Raises ``NotWritableError`` (one line: the root, the step, what to do), or
        ``ValueError`` for a URI no filesystem takes (its message never echoes a secret)."""
        fs, base = self._fs_and_base
        probe_writable(base, fs, name=self.uri, like=PROBE_SUFFIX.lstrip("-"))

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
        """Delete ``.nst-tmp-`` files a killed run left behind; returns how many. The run
        calling this holds the root's lease, but a concurrent ``nst plan`` or a second
        ``nst render`` still planning (neither holds it) may be writing there right now:
        such temporaries younger than ``PROBE_GRACE_SECONDS`` are left to their owners."""
        fs, base = self._fs_and_base
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        recent = time.time() - PROBE_GRACE_SECONDS
        stale = [
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and posixpath.basename(i.path).startswith(TMP_PREFIX)
            and not (_kept_by_owner(i.path) and i.mtime is not None and i.mtime.timestamp() > recent)
        ]
        for path in stale:
            fs.delete_file(path)
        return len(stale)
