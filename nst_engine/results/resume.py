"""What a rerun trusts as done: ok rows of the result table (``results.table``) whose
images are verified, and images whose rows were lost.

**Verified resume.** An ok row is trusted only with its image verified (``check_done``):
by default the listing's size must equal the row's ``output_bytes``; a row without it
(written before it existed) or a size that differs has its image read: it must decode
fully, carry the item's id, match the row's ``output_sha256`` and show what the item
implies (its output shape, RGB, its parameters and inputs' ids in the PNG text:
``provenance``). Anything else is rendered again, and ``DoneCheck.redo`` says why. A
rerun of 100k done items costs, by default, one recursive listing (100 list requests
on object storage, 1,000 keys each) and one read of four columns of the ok rows (10 MB
of Parquet, 7 MB of it checksums), no image read; with ``verify`` (``--verify-outputs``)
also every image, ``READ_THREADS`` at a time (100k GET requests, 100k × the image size:
40 GB of 400 KB PNGs). Same-size corruption (bytes flipped in place) passes the default
check; ``verify`` catches it.
Images of rows from before ``output_bytes`` are read once: the next run records an
attempt-0 ok row with their size, and trusts the size from then on.

**Recovery.** Rows still in a run's buffer when its driver is killed are not lost for
finished items: the worker writes the image (with ``nst:item_id`` in its PNG text)
before it returns the row, and the next run finds an image with the item's id but no ok
row and records it as ok from the image's metadata (``check_done``), once the image
shows what the item implies (``provenance``).

**What is trusted.** Whoever can write the output root can forge results (an image with
a genuine image's text, rows in the table); verification catches accidents and
mismatches, not an adversary with write access (``provenance``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow.compute as pc
import pyarrow.fs as pafs
from PIL import Image

from nst_engine.errors import one_line
from nst_engine.planning.fingerprints import READ_THREADS
from nst_engine.planning.items import WorkItem
from nst_engine.results.provenance import ITEM_ID_KEY, mismatch
from nst_engine.results.schema import make_row
from nst_engine.results.table import RESULTS_FILE, ResultTable, read_results
from nst_engine.storage.roots import OutputRoot

#: What decoding a damaged or foreign file raises (PIL, zlib).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError)


@dataclass
class DoneCheck:
    """Which items are already done, from one read of the ok rows' output columns and one
    listing of the output root; images are read only where the listing cannot vouch for
    them (see the module's docstring, *Verified resume*)."""

    todo: list[WorkItem] = field(default_factory=list)
    done: list[WorkItem] = field(default_factory=list)  # an ok row and its verified image
    #: the image exists and carries the item's id, but no ok row does (the driver was
    #: killed before its buffer was flushed): done, once ``rows`` are recorded
    recovered: list[WorkItem] = field(default_factory=list)
    #: ok rows to record, rebuilt from the images read: for ``recovered`` items, and for
    #: done items whose rows predate ``output_bytes`` (so the next rerun trusts the size)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: item_id -> why an item with an ok row is rendered again (each is in ``todo``)
    redo: dict[str, str] = field(default_factory=dict)
    images_read: int = 0  # images read to decide (none on a clean rerun without verify)


class Recorded(NamedTuple):
    """What an item's ok rows at its output path recorded of the image (several ok rows:
    an item rendered again; rows written before these columns existed add nothing).
    A tuple: 100k of them cost little to build and nothing to the garbage collector."""

    sizes: tuple[int, ...] = ()  # output_bytes
    checksums: tuple[str, ...] = ()  # output_sha256

    def add(self, size: int | None, checksum: str | None) -> Recorded:
        return Recorded(
            self.sizes + ((size,) if size is not None else ()),
            self.checksums + ((checksum,) if checksum is not None else ()),
        )

    def sizes_text(self) -> str:
        return " or ".join(str(n) for n in sorted(set(self.sizes)))


@dataclass(frozen=True)
class _Verdict:
    """What ``check_done`` concluded of one item's image."""

    trusted: bool = False
    row: dict[str, Any] | None = None  # the ok row rebuilt from the image, when it was read
    reason: str | None = None  # why it is not trusted (kept for items with an ok row)


_NOTHING = Recorded()
_TRUSTED = _Verdict(trusted=True)
_UNTRUSTED = _Verdict()
_MISSING = _Verdict(reason="image missing")


def reason_kind(reason: str) -> str:
    """A redo reason without its details (``image does not decode (...)`` ->
    ``image does not decode``), for counting reasons."""
    return re.split(r" \(|; |, ", reason, maxsplit=1)[0]


def recovered_row(
    item: WorkItem, image: Image.Image, data: bytes, run_kind: str = "render"
) -> dict[str, Any]:
    """The ok row of an item whose image survived but whose row was lost: the item
    columns, attempt 0 (no attempt in this run), the image's ``data`` size and checksum
    (so later reruns trust it by size) and what the image itself tells (size,
    iterations, final losses from its PNG text); timing and worker columns stay null."""
    output = {"output_bytes": len(data), "output_sha256": hashlib.sha256(data).hexdigest()}
    row = make_row(item, "ok", 0, run_kind=run_kind, **output)
    width, height = image.size
    row.update(height=height, width=width, pixels=height * width)
    text = getattr(image, "text", {})
    with contextlib.suppress(ValueError, TypeError, KeyError):
        row.update(iterations=int(text["nst:iterations"]), loss_evaluations=int(text["nst:loss_evaluations"]))
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        losses = json.loads(text["nst:final_losses"])
        row.update(
            final_content_loss=float(losses["content"]),
            final_style_loss=float(losses["style"]),
            final_total_loss=float(losses["total"]),
        )
    return row


def _with_size(reason: str, size: int, recorded: Recorded | None) -> str:
    """``reason``, plus the sizes when the ok rows recorded another one."""
    if recorded is None or not recorded.sizes or size in recorded.sizes:
        return reason
    return f"{reason}; image is {size} bytes, the ok row recorded {recorded.sizes_text()}"


def completed(table: ResultTable) -> dict[str, str]:
    """item_id -> output path of every item with an ok row (three columns read)."""
    ok = read_results(table.root, ["item_id", "output_path"], where=pc.field("status") == "ok")
    return dict(zip(ok["item_id"].to_pylist(), ok["output_path"].to_pylist(), strict=True))


def recorded_outputs(table: ResultTable) -> dict[tuple[str, str], Recorded]:
    """(item_id, output_path) -> the sizes and checksums its ok rows recorded (one read
    of four columns)."""
    names = ["item_id", "output_path", "output_bytes", "output_sha256"]
    ok = read_results(table.root, names, where=pc.field("status") == "ok")
    recorded: dict[tuple[str, str], Recorded] = {}
    for item_id, path, size, checksum in zip(*(ok[n].to_pylist() for n in names), strict=True):
        recorded[(item_id, path)] = recorded.get((item_id, path), _NOTHING).add(size, checksum)
    return recorded


def output_sizes(root: OutputRoot) -> dict[str, int]:
    """Relative path -> size in bytes of every file under the root, from one recursive
    listing: the way to ask "which outputs exist, and are they whole" for a whole run
    (one request per 1,000 files on object storage, where one ``exists`` per item
    would be one request each; the sizes come with the listing)."""
    base = posixpath.dirname(root.full_path(RESULTS_FILE))
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = root.filesystem.get_file_info(selector)
    prefix = base.rstrip("/") + "/"
    return {
        i.path[len(prefix) :] if i.path.startswith(prefix) else posixpath.relpath(i.path, base): i.size
        for i in infos
        if i.type == pafs.FileType.File
    }


def check_done(
    table: ResultTable, items: Sequence[WorkItem], run_kind: str = "render", verify: bool = False
) -> DoneCheck:
    """Split ``items`` into done (ok row + verified image), recovered (image with the
    item's id, no ok row; ``rows`` holds the ok rows to record) and to do (everything
    else, bad inputs included; ``redo`` says why for those with an ok row).

    An image is verified by its listed size when its ok row recorded one; else, or
    when the size differs, or for every image with ``verify``, it is read (in
    parallel): it must decode fully, carry the item's id, and match a recorded
    checksum. Images without an ok row are read to be recovered."""
    recorded = recorded_outputs(table)
    listed = output_sizes(table.root)
    entries = [recorded.get((item.item_id, item.output_path)) for item in items]
    verdicts = [  # None: the image must be read
        _UNTRUSTED if item.input_error else _by_listing(entry, listed.get(item.output_path), verify)
        for item, entry in zip(items, entries, strict=True)
    ]
    to_read = [n for n, verdict in enumerate(verdicts) if verdict is None]
    if to_read:
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            read = pool.map(lambda n: _verify(table.root, items[n], entries[n], run_kind), to_read)
            for n, verdict in zip(to_read, read, strict=True):
                verdicts[n] = verdict
    check = DoneCheck(images_read=len(to_read))
    for item, entry, verdict in zip(items, entries, verdicts, strict=True):
        _classify(check, item, entry, verdict or _UNTRUSTED)
    return check


def _verify(root: OutputRoot, item: WorkItem, recorded: Recorded | None, run_kind: str) -> _Verdict:
    """Read ``item``'s image: trusted, with the ok row rebuilt from it, when it decodes
    fully, carries the item's id, matches a checksum its ok rows recorded (if any) and
    shows what the item implies (``provenance.mismatch``)."""
    try:
        data = root.read_bytes(item.output_path)
    except OSError as exc:  # deleted since the listing, or unreadable
        return _Verdict(reason=f"image cannot be read ({one_line(exc)})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # every pixel: a truncated or corrupted stream fails here
            found = getattr(image, "text", {}).get(ITEM_ID_KEY)
            row = recovered_row(item, image, data, run_kind)
            wrong = mismatch(item, image)
    except _DECODE_ERRORS as exc:
        detail = "not an image" if isinstance(exc, Image.UnidentifiedImageError) else one_line(exc)
        return _Verdict(reason=_with_size(f"image does not decode ({detail})", len(data), recorded))
    if found != item.item_id:
        return _Verdict(reason="image belongs to another item" if found else "image carries no item id")
    if recorded is not None and recorded.checksums and row["output_sha256"] not in recorded.checksums:
        return _Verdict(reason=_with_size("checksum differs", len(data), recorded))
    if wrong is not None:  # its id copied onto another image, or rendered with other parameters
        return _Verdict(reason=wrong)
    return _Verdict(trusted=True, row=row)


def _by_listing(recorded: Recorded | None, size: int | None, verify: bool) -> _Verdict | None:
    """The verdict the listing alone gives (an image's ``size``, None when absent), or
    None when the image must be read."""
    if size is None:
        return _MISSING
    if size == 0:
        known = f", the ok row recorded {recorded.sizes_text()}" if recorded and recorded.sizes else ""
        return _Verdict(reason=f"image is 0 bytes{known}")
    if recorded is not None and size in recorded.sizes and not verify:
        return _TRUSTED
    return None


def _classify(check: DoneCheck, item: WorkItem, recorded: Recorded | None, verdict: _Verdict) -> None:
    """File ``item`` under done, recovered or to do in ``check`` by its verdict."""
    if verdict.trusted and recorded is not None:
        check.done.append(item)
        if verdict.row is not None and not recorded.sizes:  # a row from before output_bytes
            check.rows.append(verdict.row)
    elif verdict.trusted and verdict.row is not None:
        check.recovered.append(item)
        check.rows.append(verdict.row)
    else:
        check.todo.append(item)
        if recorded is not None and verdict.reason is not None and not item.input_error:
            check.redo[item.item_id] = verdict.reason
