"""The live view's data: workers post what they are doing to a ``ProgressBoard`` actor
(rather than to the driver, which waits on Ray and would handle a call per report), and
the driver reads it about twice a second into a ``Progress``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

#: Longest wait for the board's answer: the live view skips a beat rather than stall the driver.
SNAPSHOT_TIMEOUT = 2.0


@dataclass
class Progress:
    """What the live view shows; passed to the progress callback about twice a second."""

    total: int
    done: int
    failed: int
    skipped: int
    elapsed: float
    workers: dict[str, tuple[str, int, int, float]]  # actor -> (item label, iteration, total, loss)
    excluded_nodes: list[str] = field(default_factory=list)  # ExcludedNode.describe() of each


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where workers post what they are doing; the driver reads it for the live view."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, int, int, float]] = {}

    def update(self, actor_id: str, label: str, iteration: int, total: int, loss: float) -> None:
        self.state[actor_id] = (label, iteration, total, loss)

    def snapshot(self) -> dict[str, tuple[str, int, int, float]]:
        return dict(self.state)


def read_board(board: Any) -> dict[str, tuple[str, int, int, float]]:
    """What each worker posted last; empty when there is no board or it does not answer."""
    if board is None:
        return {}
    try:
        return ray.get(board.snapshot.remote(), timeout=SNAPSHOT_TIMEOUT)
    except (GetTimeoutError, RayError):
        return {}
