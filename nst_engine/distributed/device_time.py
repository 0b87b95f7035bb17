"""Which part of a worker's device time each synthesis used: its row's ``device_seconds``.

A worker runs one synthesis at a time, or several side by side in a batch; the device
time it holds while they run is split evenly among the syntheses running at each moment
(two running for 10 s use 5 s each), times the devices the worker holds (its share of a
GPU, or its CPU cores). So a run's rows add up to its workers' busy device time, whatever
the batching, and prices apply to them directly (``results.cost``).
"""

from __future__ import annotations

import threading
import time
from typing import Any


def held_devices(device_kind: str, assigned: dict[str, Any]) -> float:
    """The devices a worker holds, from the Ray resources assigned to it: its GPUs (a
    fraction when it shares one) on ``cuda``, else its CPU cores; 1 when Ray assigned
    none of that kind (a worker placed with ``num_gpus`` on a node whose torch sees no
    GPU runs on the CPU and holds one core's worth of it)."""
    amount = float(assigned.get("GPU" if device_kind == "cuda" else "CPU", 0) or 0)
    return amount if amount > 0 else 1.0


class DeviceClock:
    """Splits the time of ``devices`` among the syntheses running at once (``start`` /
    ``stop`` from each synthesis's thread)."""

    def __init__(self, devices: float) -> None:
        self.devices = devices
        self._lock = threading.Lock()
        self._running = 0
        self._shared = 0.0  # seconds each running synthesis has had, summed since creation
        self._last = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        if self._running:
            self._shared += (now - self._last) / self._running
        self._last = now

    def start(self) -> float:
        """A synthesis begins; returns the mark its ``stop`` takes."""
        with self._lock:
            self._advance()
            self._running += 1
            return self._shared

    def stop(self, mark: float) -> float:
        """The synthesis begun at ``mark`` ends: the device-seconds it used."""
        with self._lock:
            self._advance()
            self._running -= 1
            return (self._shared - mark) * self.devices
