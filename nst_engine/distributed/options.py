"""How a worker pool is shaped and how hard it retries: plain data, no Ray, so the CLI can
take its defaults (and its help) from here without importing Ray."""

from __future__ import annotations

from dataclasses import dataclass

#: Torch threads of a CPU worker unless asked otherwise: ``cpu_worker_threads``.
MAX_DEFAULT_THREADS = 4


@dataclass(frozen=True)
class PoolOptions:
    """How many workers, on what, and how hard to retry."""

    use_gpus: bool | None = None  # None: GPUs when the cluster has any
    cpu_actors: int | None = None  # CPU workers (default: one per `threads_per_actor` cores)
    threads_per_actor: int | None = None  # torch threads per CPU worker (default: cpu_worker_threads)
    max_in_flight: int = 2  # items queued on one worker, including the running one
    max_attempts: int = 3  # attempts per item when workers die or hit transient errors
    max_worker_failures: int = 3  # failures before a worker is retired
    worker_start_timeout: float = 600.0  # give up when no worker is ready for this long
