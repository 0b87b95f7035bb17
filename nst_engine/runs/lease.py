"""One writer per output root: a run holds its root's lease for its whole length."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from nst_engine.runs.events import Listener
from nst_engine.storage.errors import storage_problem
from nst_engine.storage.lease import Lease
from nst_engine.storage.roots import OutputRoot


@contextlib.contextmanager
def held(
    root: OutputRoot, command: str, manifest: str | None, wait: bool, listener: Listener
) -> Iterator[Lease]:
    """``root``'s lease for ``command``, released however the block ends. A root another
    run holds raises ``LeaseHeldError`` (who holds it, and what to do), or with ``wait``
    the listener hears whom the run waits for, then it waits."""
    lease = Lease(root, command, manifest, warn=listener.warn)
    with storage_problem(f"{root.uri}: cannot take the output root's lease ({{error}})"):
        lease.acquire(wait=wait, on_wait=listener.note)
    with lease:
        yield lease
