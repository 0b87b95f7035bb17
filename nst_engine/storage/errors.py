"""Storage problems as the one-line errors a person acts on: a location that cannot be
read or written, named, with what went wrong."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa

from nst_engine.errors import NSTError, one_line

#: What reading or writing an output root or input location raises besides ``NSTError``: an
#: unusable URI (``ValueError``), storage that refuses (``OSError``), pyarrow's own errors.
STORAGE_ERRORS = (OSError, ValueError, pa.ArrowException)


class StorageError(NSTError):
    """A location that cannot be read or written as a run needs."""


@contextlib.contextmanager
def storage_problem(message: str) -> Iterator[None]:
    """Turn a storage failure inside into ``StorageError(message)``, the failure's one line
    in place of ``{error}``: the message names the location and what could not be done."""
    try:
        yield
    except NSTError:
        raise
    except STORAGE_ERRORS as exc:
        raise StorageError(message.replace("{error}", one_line(exc))) from None
