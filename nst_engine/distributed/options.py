"""How a worker pool is shaped and how hard it retries: plain data, no Ray, so the CLI can
take its defaults (and its help) from here without importing Ray."""

from __future__ import annotations

from dataclasses import dataclass

#: Torch threads of a CPU worker unless asked otherwise: ``cpu_worker_threads``.
MAX_DEFAULT_THREADS = 4

#: What ``--workers`` accepts, for its help and its error.
WORKERS_FORMS = "N (exactly N workers) or MIN:MAX (follow an autoscaling cluster)"


def parse_workers(text: str) -> tuple[int, int]:
    """``N`` -> (N, N); ``MIN:MAX`` -> (MIN, MAX), with 0 <= MIN <= MAX and MAX >= 1.

    MIN may be 0: on a cluster whose GPU group scales from zero nodes, no worker exists
    until the autoscaler adds a node for the requested ones."""
    low, sep, high = text.strip().partition(":")
    try:
        bounds = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise ValueError(f"--workers: expected {WORKERS_FORMS}, got {text!r}") from None
    if bounds[0] < 0 or bounds[1] < max(1, bounds[0]):
        raise ValueError(f"--workers: need 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return bounds


def parse_checkpoint_every(text: str) -> float | None:
    """``--checkpoint-every``: ``auto`` (``None``: checkpoint only syntheses predicted to
    take minutes) or seconds >= 0 (0: off)."""
    if text.strip().lower() == "auto":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"give auto or a number of seconds (0: off), got {text!r}")
    return seconds


def parse_max_batch(text: str) -> int | None:
    """``--max-batch``: ``auto`` (``None``: the engine's ``auto_batch`` for the worker's
    device, within what its memory holds) or a whole number >= 1 (1: one at a time)."""
    if text.strip().lower() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"give auto or a whole number >= 1, got {text!r}")
    return count


@dataclass(frozen=True)
class PoolOptions:
    """How many workers, on what, and how hard to retry."""

    use_gpus: bool | None = None  # None: GPUs when the cluster has any or its autoscaler can add some
    workers: tuple[int, int] | None = None  # (MIN, MAX) workers (default: scheduler.pool_shape)
    cpu_actors: int | None = None  # older spelling of workers=(N, N), kept for job files and scripts
    threads_per_actor: int | None = None  # torch threads per CPU worker (default: cpu_worker_threads)
    max_in_flight: int = 2  # calls queued on one worker, including the running one (a call: 1+ items)
    max_attempts: int = 3  # attempts per item when workers die or hit transient errors
    max_worker_failures: int = 3  # failures before a worker is retired
    max_node_failures: int = 3  # device faults and worker deaths before a node is excluded (nodes.py)
    worker_start_timeout: float = 600.0  # give up when no worker is ready for this long
    checkpoint_every: float | None = None  # seconds between checkpoints; None: auto; 0: off
    max_batch: int | None = None  # syntheses one worker runs at once; None: auto (engine.batch)
    workers_per_gpu: int = 1  # GPU workers sharing one GPU (each asks Ray for 1/N of it)

    @property
    def worker_range(self) -> tuple[int, int] | None:
        """(MIN, MAX) asked for by ``workers`` or ``cpu_actors``; None for the defaults."""
        if self.workers is not None:
            return self.workers
        return (self.cpu_actors, self.cpu_actors) if self.cpu_actors else None
