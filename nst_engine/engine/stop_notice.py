"""The process was told to stop (preemption): every checkpointed synthesis saves itself
at its next iteration and ends, so a retry elsewhere loses nothing.

A notice for the whole process rather than a callback per synthesis, because whoever
hears the stop (a signal, in a worker) does not know which syntheses run; each
synthesis's ``Checkpointer`` reads it after every iteration (an ``Event`` read: cheap).
The engine knows nothing of signals or Ray: the render worker sets the notice
(``distributed/preemption.py``).
"""

from __future__ import annotations

import threading

_requested = threading.Event()


class StopRequested(Exception):
    """A synthesis ended because the process was told to stop. ``saved_at``: the
    iteration its checkpoint holds now (None: nothing new was saved, because it had not
    started iterating or its checkpoint could not be written)."""

    def __init__(self, saved_at: int | None) -> None:
        self.saved_at = saved_at
        where = f"saved at iteration {saved_at}" if saved_at is not None else "nothing new saved"
        super().__init__(f"stopped: the process was told to stop ({where})")


def request_stop() -> None:
    """Tell every checkpointed synthesis of this process to save itself and end."""
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def withdraw_stop() -> None:
    """Syntheses run again to their end (a process that stays, as a test's)."""
    _requested.clear()
