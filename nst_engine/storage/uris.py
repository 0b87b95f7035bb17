"""Input locations: a local path or a URI (``s3://``, ``gs://``, ``file://``), read through pyarrow.fs.

Images may live on object storage, and the process that decodes an image (a Ray worker,
the planner, ``nst stylize``) reads its bytes itself; this module is the one place that
turns a location string into a filesystem and a path on it. It belongs to the engine
because ``load_image`` (contents, styles, init and calibration images) needs it.

Credentials and endpoints come only from the environment, as pyarrow reads them
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``
for an S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), never from a
manifest, so they never end up in results or logs. A location that carries one anyway
(``s3://KEY:SECRET@bucket/``, ``?secret_key=...``) is refused before any other check, and
:func:`redact` is the one function that makes any text safe to show: every message that
may hold a location passes through it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pyarrow.fs as pafs

from nst_engine.storage.paths import check_holdable

# a scheme of two or more letters, so a Windows drive (``C:\\``) is never taken for one
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: A URI inside any text (a message, a pyarrow error): up to a space or a quote.
_URI_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]+://[^\s'\"<>`]*")
#: URI options that carry a secret: pyarrow's own (access_key, secret_key, session_token)
#: and the usual others (a presigned URL's X-Amz-Signature, an Azure SAS's sig, token=,
#: password=), so none is shown whatever the store; their values run to the next option.
_SECRET_OPTION = re.compile(
    r"(?P<key>[?&;][\w.-]*(?:key|secret|token|password|passwd|pwd|signature|sig|credential)s?)="
    r"(?P<value>[^&#]*)",
    re.IGNORECASE,
)
#: What stands where a credential was.
REDACTED = "***"


class InputNotFoundError(FileNotFoundError):
    """A location with no file behind it; ``str()`` is one line naming the location."""


def is_uri(location: str | object) -> bool:
    """True for ``scheme://...`` strings (remote or ``file://``), False for plain paths."""
    return isinstance(location, str) and bool(_URI.match(location))


def absolute(location: str) -> str:
    """A local path made absolute here, a URI as it is: what to hand to another process,
    whose working directory (a Ray worker's, on another node) is not this one's."""
    return location if is_uri(location) else Path(location).expanduser().resolve().as_posix()


def redact(text: str) -> str:
    """``text`` with every credential in the URIs it holds replaced by ``***``: the user
    info before a host or bucket (``s3://***@bucket/``) and secret-bearing options
    (``?secret_key=***``). Text without one comes back unchanged, so this may run on
    every message, row and log line; it is what a location with a credential looks like
    wherever it is named."""
    return _URI_IN_TEXT.sub(lambda uri: _redact_uri(uri.group(0)), text) if "://" in text else text


def _redact_uri(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:  # user[:secret]@host: everything before the host goes
        rest = f"{REDACTED}@{rest[authority.rindex('@') + 1 :]}"
    elif _is_secret_colon(scheme, authority) and "@" in rest:
        # KEY:SEC/RET@bucket: a '/' in an unescaped secret ends the authority early, so the
        # user info runs to the next '@' (a '/' is common in AWS secret keys)
        rest = f"{REDACTED}@{rest.partition('@')[2]}"
    # options live after the first '?' only: a key may hold '&x_key=' as plain text
    path, question, options = rest.partition("?")
    options = _SECRET_OPTION.sub(lambda m: f"{m.group('key')}={REDACTED}", f"?{options}")[1:]
    return f"{scheme}://{path}{question}{options}"


#: Schemes whose authority is a bucket: a colon there is never a port's.
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})


def _is_secret_colon(scheme: str, authority: str) -> bool:
    """``KEY:SECRET`` rather than ``host:port``: any colon before a bucket; elsewhere a
    colon not followed by a port number."""
    _, colon, port = authority.partition(":")
    return bool(colon) and (scheme.lower() in _BUCKET_SCHEMES or not port.isdigit())


def has_credentials(location: str) -> bool:
    """Whether ``location`` carries a credential (what :func:`redact` would hide)."""
    return redact(location) != location


def refuse_credentials(location: str) -> str:
    """``location`` itself, or ``ValueError`` when it carries a credential; the message
    names the scheme only, never the location (a secret is never echoed)."""
    if has_credentials(location):
        scheme = location.partition("://")[0].lower() if is_uri(location) else "location"
        raise ValueError(
            f"a {scheme}:// URI with credentials in it; give credentials in the environment "
            "(AWS_ACCESS_KEY_ID, ...), never in a manifest"
        )
    return location


def check_location(location: str) -> str:
    """``location`` (a path or URI as a user wrote it) itself, or ``ValueError``: one with
    credentials is refused before any other check, without being echoed; then one holding
    a character no output path may hold (a NUL), since an input's name becomes part of
    its item's output path."""
    return check_holdable(refuse_credentials(location))


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
        return pafs.LocalFileSystem(), absolute(location)
    refuse_credentials(location)  # first: every message below names the location
    scheme, _, rest = location.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        return pafs.LocalFileSystem(), rest or "/"
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{location}: URI names no bucket; write {scheme}://BUCKET/KEY")
    try:
        fs = _filesystem(f"{scheme}://{bucket}")
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for unusable URIs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{location}: cannot open this filesystem ({redact(first)})") from None
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
