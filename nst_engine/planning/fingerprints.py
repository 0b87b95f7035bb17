"""Content hashes and full checks of every input, read in parallel and cached.

Item ids hash image *contents*, and planning checks that each image decodes, so every
input must be read once. For 100k objects on S3 that is hours if done one after another
on the driver, so:

* each file is read once, by a thread pool, and hashed and checked from the same bytes:
  an image is decoded in full, as a worker will decode it (a header check passes a
  truncated JPEG that fails at render); a weights file is loaded as a worker will load
  it (a wrong shape or a refused pickle would otherwise fail in every worker);
* the results are kept in ``.nst-cache/hashes.parquet`` in the output root, keyed by
  location and ``Stamp``, loaded once per plan and written atomically at its end, so a
  nightly rerun over an unchanged dataset reads no image at all.

What the cache trusts. A row is used for a file whose stamp equals the row's key: for a
local file its size, modification time, inode and ctime (nanoseconds), so a file rewritten
in place or replaced is read again even with its size and modification time put back
(``touch -d``): the kernel sets ctime on every change and nothing sets it back. On object
storage the key is size and modification time only: pyarrow's listings carry no ETag or
generation, and asking each object for one would cost the request per object the cache
exists to save; there the modification time is the server's time of the last write, so an
overwrite is seen unless it keeps the size and lands within the store's time resolution
(a second on S3) of the write before. The rows themselves are trusted as they stand:
whoever can write the output root can forge one (any key, any hash). That can make a plan
give an item the id of other work, so that the item counts as done when that work's image
is there, or it is rendered and recorded under the wrong hashes, and let an image that does
not decode reach a worker, which then fails that item. It cannot make a worker read anything
but the file the manifest names (workers read and decode their inputs themselves), run
code (nothing in the cache is executed or unpickled), or write outside the output root;
and whoever can write the output root can already write its images and result rows. Treat
write access to an output root as trust in its results.

Only the planner reads here; workers read the bytes they render themselves.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nst_engine.engine.images import MAX_DECODE_PIXELS, load_image
from nst_engine.engine.weights import load_state_dict_file
from nst_engine.errors import NSTError, WeightsError
from nst_engine.planning.sources import Stamp, stamp_of
from nst_engine.storage.files import write_atomic
from nst_engine.storage.uris import redact, resolve

log = logging.getLogger(__name__)

#: Where the cache lives, relative to the output root.
CACHE_FILE = ".nst-cache/hashes.parquet"
#: Reads in flight at once: object stores answer each request slowly but many at a time.
READ_THREADS = 16
#: Images decoded at once: decoding is CPU work (Pillow releases the GIL) and holds the
#: whole bitmap (up to 192 MB at the 64 MP limit), so more than the cores only costs memory.
_DECODING = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
#: What a cache row's facts were checked by. The kind is part of the key, so a row made by
#: another check is never trusted: rows of the older "image" kind were made by a header
#: check (PIL's verify(), which passes a truncated JPEG) and rows of the older "file" kind
#: hashed weights without loading them; both are read again once, and dropped.
IMAGE = "image-decoded"  # hashed and decoded in full, as load_image decodes for a worker
WEIGHTS = "weights-loaded"  # hashed and loaded (weights_only), shapes checked, as a worker loads it
KINDS = (IMAGE, WEIGHTS)
_SCHEMA = pa.schema(
    [
        ("location", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("inode", pa.uint64()),  # 0 on object storage; unsigned, as st_ino is
        ("ctime_ns", pa.int64()),  # 0 on object storage
        ("kind", pa.string()),  # one of KINDS: which check made the row
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("problem", pa.string()),
    ]
)


@dataclass(frozen=True)
class Facts:
    """What planning needs of one input: its hash, its size in pixels, or why it is unusable."""

    sha256: str | None
    width: int = 0
    height: int = 0
    problem: str | None = None


@dataclass
class IndexStats:
    """How much was read: ``reads`` 0 on a rerun over unchanged inputs."""

    cached: int = 0  # inputs answered from the cache
    reads: int = 0  # files read (hashed, and decoded or loaded)
    bytes_read: int = 0


def check_image(data: bytes, name: str) -> tuple[str | None, tuple[int, int]]:
    """(problem or None, (width, height)) of ``data`` decoded in full by the engine's own
    ``load_image``, the decoder a worker uses, so planning accepts exactly what renders:
    every pixel, the decompression-bomb limit and the conversion to RGB included."""
    try:
        with _DECODING:
            img = load_image(data, max_pixels=MAX_DECODE_PIXELS, name=name)
        return None, img.size
    except NSTError as exc:  # ImageInputError: one line naming the file and what to do
        return str(exc), (0, 0)
    except Exception as exc:  # Pillow raises many other types for damaged files
        return f"{name}: not a readable image ({type(exc).__name__}: {exc})", (0, 0)


def check_weights(path: str) -> str | None:
    """The problem of a weights file as a worker would meet it, or None: loaded by the
    engine's own loader (``torch.load(weights_only=True)``: nothing is unpickled), with
    its key and shape checks."""
    try:
        load_state_dict_file(path)
    except WeightsError as exc:  # one line naming the file and what to do
        return exc.message
    except Exception as exc:  # e.g. a tensor no float() takes: a worker would fail the same way
        return f"{path}: not usable as VGG-19 weights ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _upgraded(table: pa.Table) -> pa.Table:
    """A cache table as ``_SCHEMA`` has it. One written before local files were keyed by
    inode and ctime keeps its object-storage rows (their key is unchanged: size and the
    store's own modification time), so an upgrade does not read every object again; its
    local rows are dropped (size and time alone can be put back), read again as needed."""
    missing = [name for name in _SCHEMA.names if name not in table.column_names]
    if missing and not set(missing) <= {"inode", "ctime_ns"}:
        return _SCHEMA.empty_table()  # another layout altogether: rebuilt as files are read
    if missing:
        table = table.filter(pc.match_substring(table["location"], "://"))
        for name in missing:
            table = table.append_column(name, pa.array([0] * table.num_rows, _SCHEMA.field(name).type))
    return table.select(_SCHEMA.names).cast(_SCHEMA)


class ImageIndex:
    """Hashes and checks (images decoded, weights loaded) of inputs for one plan.

    ``cache_root`` is the output root (a folder or URI) holding the persistent cache, or
    None for none; ``stamps`` are sizes and modification times already known from listing
    folders and globs, so those files need no metadata request of their own. With
    ``write=False`` the cache is only read (for a dry run that must leave the root alone).
    """

    def __init__(
        self,
        cache_root: str | None = None,
        stamps: dict[str, Stamp] | None = None,
        threads: int = READ_THREADS,
        write: bool = True,
    ) -> None:
        self.cache_root = cache_root
        self.threads = threads
        self.write = write
        self.stats = IndexStats()
        self._stamps: dict[str, Stamp | Facts] = dict(stamps or {})
        self._stored: dict[tuple[str, Stamp, str], Facts] = self._load()
        self._facts: dict[tuple[str, str], Facts] = {}
        self._dirty = False

    # ------------------------------------------------------------------ persistent cache

    def _cache_location(self) -> tuple[pafs.FileSystem, str] | None:
        if self.cache_root is None:
            return None
        fs, base = resolve(self.cache_root)
        return fs, posixpath.join(base, CACHE_FILE)

    def _load(self) -> dict[tuple[str, Stamp, str], Facts]:
        where = self._cache_location()
        if where is None:
            return {}
        fs, path = where
        try:
            with fs.open_input_file(path) as handle:
                table = pq.read_table(handle)
            table = _upgraded(table)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring the hash cache %s (%s)", path, _first_line(exc))
            return {}
        return {
            (r["location"], Stamp(r["size"], r["mtime_ns"], r["inode"], r["ctime_ns"]), r["kind"]): Facts(
                r["sha256"], r["width"], r["height"], r["problem"]
            )
            for r in table.to_pylist()
            if r["kind"] in KINDS  # rows of an older, weaker check: neither trusted nor kept
        }

    def save(self) -> None:
        """Write the cache (atomically) if this plan learned anything. Entries of files
        seen with another size or time this plan are dropped; others are kept, so plans
        over different parts of one output root share the cache."""
        where = self._cache_location()
        if where is None or not self._dirty or not self.write:
            return
        current = {loc: stamp for loc, stamp in self._stamps.items() if isinstance(stamp, Stamp)}
        rows = [
            {
                "location": loc,
                "size": stamp.size,
                "mtime_ns": stamp.mtime_ns,
                "inode": stamp.inode,
                "ctime_ns": stamp.ctime_ns,
                "kind": kind,
                "sha256": f.sha256,
                "width": f.width,
                "height": f.height,
                "problem": f.problem,
            }
            for (loc, stamp, kind), f in self._stored.items()
            if loc not in current or current[loc] == stamp
        ]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), buffer)
        fs, path = where
        try:
            write_atomic(path, buffer.getvalue(), fs)
            self._dirty = False
        except OSError as exc:  # the cache only saves time: planning goes on without it
            log.warning("could not write the hash cache %s (%s)", path, _first_line(exc))

    # ------------------------------------------------------------------ reading

    def prepare(self, images: Iterable[str] = (), weights: Iterable[str] = ()) -> None:
        """Hash and decode ``images`` and hash and load ``weights`` files, in parallel:
        first the stamps nobody listed, then the contents of whatever the cache does not
        know."""
        wanted = [(loc, IMAGE) for loc in dict.fromkeys(images)]
        wanted += [(loc, WEIGHTS) for loc in dict.fromkeys(weights)]
        wanted = [w for w in wanted if w not in self._facts]
        unstamped = [loc for loc in dict.fromkeys(loc for loc, _ in wanted) if loc not in self._stamps]
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for loc, stamp in zip(unstamped, pool.map(self._stamp, unstamped), strict=True):
                self._stamps[loc] = stamp
            to_read = []
            for loc, kind in wanted:
                stamp = self._stamps[loc]
                if isinstance(stamp, Facts):  # missing or not a file: nothing to read
                    self._facts[(loc, kind)] = stamp
                    continue
                stored = self._stored.get((loc, stamp, kind))
                if stored is not None:
                    self.stats.cached += 1
                    self._facts[(loc, kind)] = stored
                else:
                    to_read.append((loc, kind))
            for (loc, kind), (facts, size) in zip(to_read, pool.map(self._read, to_read), strict=True):
                self._facts[(loc, kind)] = facts
                self.stats.reads += 1
                self.stats.bytes_read += size
                stamp = self._stamps[loc]
                if facts.sha256 is not None and isinstance(stamp, Stamp):
                    self._stored[(loc, stamp, kind)] = facts
                    self._dirty = True

    def _stamp(self, location: str) -> Stamp | Facts:
        """The stamp of a file, or the Facts (a problem) of something that is not one."""
        try:
            fs, path = resolve(location)
            info = fs.get_file_info(path)
        except (OSError, ValueError) as exc:
            return Facts(None, problem=redact(f"{location}: cannot read ({_first_line(exc)})"))
        stamp = stamp_of(info, fs)
        if stamp is not None:
            return stamp
        if info.type in (pafs.FileType.NotFound, pafs.FileType.File):  # a file: removed since
            return Facts(None, problem=f"{location}: image file not found")
        return Facts(None, problem=f"{location}: not a file; give an image file")

    def _read(self, job: tuple[str, str]) -> tuple[Facts, int]:
        """(facts, bytes read) of one file: hashed, and an image decoded from the same
        bytes; a weights file is hashed as a stream, then loaded from its path."""
        location, kind = job
        digest = hashlib.sha256()
        try:
            fs, path = resolve(location)
            with fs.open_input_file(path) as handle:
                if kind == WEIGHTS:  # possibly large (550 MB): streamed, never held whole
                    size = 0
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        size += len(block)
                    data = b""
                else:
                    data = handle.read()
                    digest.update(data)
                    size = len(data)
        except (OSError, ValueError) as exc:
            return Facts(None, problem=redact(f"{location}: cannot read ({_first_line(exc)})")), 0
        if kind == WEIGHTS:  # local only (a manifest refuses URIs for weights)
            return Facts(digest.hexdigest(), problem=check_weights(path)), size
        problem, (width, height) = check_image(data, location)
        return Facts(digest.hexdigest(), width, height, problem), size

    # ------------------------------------------------------------------ answers

    def image(self, location: str) -> Facts:
        """Hash, size and problem of an image (read now if ``prepare`` did not)."""
        if (location, IMAGE) not in self._facts:
            self.prepare(images=[location])
        return self._facts[(location, IMAGE)]

    def weights(self, location: str) -> Facts:
        """Hash and problem of a weights file (read and loaded now if ``prepare`` did not)."""
        if (location, WEIGHTS) not in self._facts:
            self.prepare(weights=[location])
        return self._facts[(location, WEIGHTS)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
