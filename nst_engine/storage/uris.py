"""Input locations: a local path or a URI (``s3://``, ``gs://``, ``file://``), read through pyarrow.fs.

Images may live on object storage, and the process that decodes an image (a Ray worker,
the planner, ``nst stylize``) reads its bytes itself; this module is the one place that
turns a location string into a filesystem and a path on it. It belongs to the engine
because ``load_image`` (contents, styles, init and calibration images) needs it.

Credentials and endpoints come only from the environment, as pyarrow reads them
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``
for an S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), never from a
manifest, so they never end up in results or logs.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pyarrow.fs as pafs

# a scheme of two or more letters, so a Windows drive (``C:\\``) is never taken for one
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: URI options pyarrow would take as credentials: refused, so none is written into a manifest,
#: a results row or a log line
_SECRET_OPTIONS = re.compile(r"[?&](access_key|secret_key|session_token)=", re.IGNORECASE)


class InputNotFoundError(FileNotFoundError):
    """A location with no file behind it; ``str()`` is one line naming the location."""


def is_uri(location: str | object) -> bool:
    """True for ``scheme://...`` strings (remote or ``file://``), False for plain paths."""
    return isinstance(location, str) and bool(_URI.match(location))


def absolute(location: str) -> str:
    """A local path made absolute here, a URI as it is: what to hand to another process,
    whose working directory (a Ray worker's, on another node) is not this one's."""
    return location if is_uri(location) else Path(location).expanduser().resolve().as_posix()


@functools.lru_cache(maxsize=64)
def _filesystem(root: str) -> pafs.FileSystem:
    """One filesystem per scheme://bucket, made once per process: building an
    S3 or GCS filesystem reads credentials and may resolve the bucket's region, far too
    slow to repeat for each of 100k objects."""
    fs, _ = pafs.FileSystem.from_uri(root)
    return fs


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path or URI (``s3://bucket/key`` -> ``bucket/key``).

    The key is taken literally, with no percent-decoding, query or fragment, so that every
    object name a listing returns (spaces, ``%``, ``#`` included) reads back as itself; a
    local path becomes absolute. Raises ``ValueError`` (one line) for an unusable URI.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), Path(location).expanduser().resolve().as_posix()
    scheme, _, rest = location.partition("://")
    scheme = scheme.lower()
    # refused without echoing the URI, which holds a secret: options pyarrow takes as
    # credentials, or user:secret@ before the bucket
    if _SECRET_OPTIONS.search(rest) or "@" in rest.partition("/")[0]:
        raise ValueError(
            f"a {scheme}:// URI with credentials in it; give credentials in the environment "
            "(AWS_ACCESS_KEY_ID, ...), never in a manifest"
        )
    if scheme == "file":
        return pafs.LocalFileSystem(), rest or "/"
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{location}: URI names no bucket; write {scheme}://BUCKET/KEY")
    try:
        fs = _filesystem(f"{scheme}://{bucket}")
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for unusable URIs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{location}: cannot open this filesystem ({first})") from None
    return fs, f"{bucket}/{key}".rstrip("/")


def display(location: str, path: str) -> str:
    """A path found on ``location``'s filesystem, written the way the user wrote ``location``:
    a URI for URIs (``s3://bucket/key``), an absolute path for local paths."""
    if not is_uri(location):
        return path
    return f"{location.partition('://')[0].lower()}://{path}"


def read_bytes(location: str) -> bytes:
    """All bytes of the file at ``location``; ``InputNotFoundError`` when there is none."""
    fs, path = resolve(location)
    try:
        with fs.open_input_file(path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputNotFoundError(f"{location}: file not found; check the path") from None
    except OSError:  # a folder is final; anything else (a network hiccup) may pass on retry
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            raise InputNotFoundError(f"{location}: not a file; give an image file (PNG, JPEG, ...)") from None
        raise
