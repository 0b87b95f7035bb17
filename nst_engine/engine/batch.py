"""Several syntheses on one device at once: their loss evaluations batched together.

A 256² synthesis is a few hundred small kernels per iteration, far too little work to
fill a GPU. Here every synthesis keeps its own optimisation run (L-BFGS history, step
size, Armijo test or line search, stopping state) in a thread of its own, exactly as
when it runs alone; only the evaluation is shared: the last member of the batch to ask
for one runs a single forward and backward pass of the network over every waiting
image, each item with its own targets and losses, and hands each its loss terms and
gradient. VGG has no batch normalisation, so an image's responses, and so its loss and
gradient, do not depend on the other images of the batch (to float rounding), and an
item that diverges or fails leaves the others as they were.

Why not a batched L-BFGS over stacked tensors: one shared optimiser over the
concatenated problems is known to converge badly, and a per-item one on stacked tensors
would have to re-implement the run, its line searches and its checkpoints for each
item's own count of evaluations per iteration; reusing ``optimize.Run`` as it is keeps
"each item behaves exactly as if alone" true by construction. Items join (admitted when
the memory model says they fit, ``memory.MemoryModel``) and leave (converged, failed,
cancelled) between evaluations.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from nst_engine.engine.losses import StyleTransferObjective, Values
from nst_engine.engine.memory import MemoryModel, is_out_of_memory, release_cached
from nst_engine.engine.optimize import OptimizerSettings
from nst_engine.engine.stats import PeakMemory, current_memory

T = TypeVar("T")

#: Most syntheses a GPU runs at once under ``auto``; its memory model may admit fewer.
AUTO_MAX_BATCH_CUDA = 32


def auto_batch(device: torch.device) -> int:
    """Most syntheses to run at once on ``device`` when the user left it to us.

    A GPU: ``AUTO_MAX_BATCH_CUDA``, within what its memory holds (``MemoryModel``). A CPU:
    1, because batching does not pay there: its convolutions already keep every core busy
    on one image, and in ``benchmarks/batching.py`` (BENCHMARKS.md) two or four items at
    once rendered 0.7-0.95x as many items per second as one at a time.
    """
    return AUTO_MAX_BATCH_CUDA if device.type == "cuda" else 1


@dataclass(eq=False)
class _Request:
    """One member's evaluation: its objective at its image; filled in by the batch."""

    objective: StyleTransferObjective
    image: torch.Tensor
    need: int  # the member's predicted bytes, for an out-of-memory message
    values: Values | None = None
    grad: torch.Tensor | None = None
    error: BaseException | None = None
    together: int = 0  # evaluations run in the same pass
    done: bool = False


class Member:
    """One synthesis's place in an ``EvaluationBatch``; its ``evaluate`` is the run's
    gradient function (``optimize.Gradient``)."""

    def __init__(self, batch: EvaluationBatch, need: int) -> None:
        self.batch = batch
        self.need = need  # bytes reserved for it in the memory model
        self.largest = 1  # most evaluations run in one pass with this one's

    def evaluate(self, objective: StyleTransferObjective, image: torch.Tensor) -> tuple[Values, torch.Tensor]:
        request = self.batch.submit(_Request(objective, image.detach(), self.need))
        self.largest = max(self.largest, request.together)
        if request.error is not None:
            raise request.error
        assert request.values is not None and request.grad is not None
        return request.values, request.grad


class EvaluationBatch:
    """Where the runs of several syntheses on one device meet for their evaluations.

    ``max_members`` syntheses at most run together, fewer when the memory model says they
    would not fit; an evaluation pass holds at most ``chunk`` images, halved each time a
    pass runs out of memory (the halves are evaluated again, so no member notices but by
    its ``largest``); a single image that does not fit fails its own synthesis only, with
    the predicted and available memory in its error.
    """

    def __init__(self, device: torch.device, max_members: int, memory: MemoryModel | None = None) -> None:
        self.device = device
        self.max_members = max(1, max_members)
        self.memory = memory or MemoryModel.for_device(device)
        self.chunk = self.max_members
        #: peak memory over the batch's life (``with batch:``); per-item resets would collide
        self.peak = PeakMemory(device)
        self._cond = threading.Condition()
        # admitted members; a pass waits until each of them asks (or leaves), so a new
        # member's first evaluation is always in the pass after its set-up
        self._admitted: list[Member] = []
        self._waiting: list[_Request] = []

    def __enter__(self) -> EvaluationBatch:
        self.peak.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak.__exit__(*exc)

    # ------------------------------------------------------------------ membership

    @contextlib.contextmanager
    def member(self, pixels: int, settings: OptimizerSettings) -> Iterator[Member]:
        """A place for a synthesis of ``pixels`` with ``settings``: waits until it fits."""
        with self._cond:
            while not self._fits(pixels, settings):
                self._cond.wait()
            member = Member(self, self.memory.need(pixels, settings))
            self._admitted.append(member)
        try:
            yield member
        finally:
            with self._cond:
                self._admitted.remove(member)
                self._run_if_all_waiting()
                self._cond.notify_all()

    def _fits(self, pixels: int, settings: OptimizerSettings) -> bool:
        if not self._admitted:
            return True
        if len(self._admitted) >= self.max_members or not self.memory.measured:
            return False
        reserved = sum(m.need for m in self._admitted)
        return reserved + self.memory.need(pixels, settings) <= self.memory.budget

    # ------------------------------------------------------------------ evaluations

    def submit(self, request: _Request) -> _Request:
        """Queue ``request``; the last member to ask runs the pass for all."""
        with self._cond:
            self._waiting.append(request)
            self._run_if_all_waiting()
            while not request.done:
                self._cond.wait()
        return request

    def _run_if_all_waiting(self) -> None:
        """With the lock held: evaluate everything waiting once every member waits."""
        if not self._waiting or len(self._waiting) < len(self._admitted):
            return
        waiting, self._waiting = self._waiting, []
        groups: dict[tuple, list[_Request]] = {}
        for request in waiting:  # one pass per network and image shape
            key = (id(request.objective.network), tuple(request.image.shape), request.image.dtype)
            groups.setdefault(key, []).append(request)
        for group in groups.values():
            for start in range(0, len(group), self.chunk):
                self._evaluate(group[start : start + self.chunk])
        self._cond.notify_all()

    def _evaluate(self, requests: list[_Request]) -> None:
        """One pass over ``requests``, split in halves while it runs out of memory."""
        pixels = sum(r.image[0, 0].numel() for r in requests)
        try:
            self._evaluate_together(requests, measure=not self.memory.measured)
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                for request in requests:
                    request.error, request.done = exc, True
                return
            alone = self._out_of_memory(requests[0], exc) if len(requests) == 1 else None
        # out of memory, handled outside the handler: its traceback holds the failed pass's
        # tensors, which the cache release and the halves need freed
        release_cached(self.device)
        self.memory.ran_out(pixels)
        if alone is not None:
            requests[0].error, requests[0].done = alone, True
            return
        half = len(requests) // 2
        self.chunk = max(1, min(self.chunk, half))
        self._evaluate(requests[:half])
        self._evaluate(requests[half:])

    def _evaluate_together(self, requests: list[_Request], measure: bool) -> None:
        """Loss terms and input gradients of every request in one forward and backward."""
        baseline = current_memory(self.device) if measure else 0
        with PeakMemory(self.device) if measure else contextlib.nullcontext() as probe:
            images = torch.cat([r.image for r in requests]).requires_grad_(True)
            network = requests[0].objective.network
            layers = sorted(set().union(*(r.objective.layers for r in requests)))
            features = network(images, layers)
            terms = [
                r.objective.losses(images[i : i + 1], {k: f[i : i + 1] for k, f in features.items()})
                for i, r in enumerate(requests)
            ]
            (grad,) = torch.autograd.grad(sum(t.total for t in terms), images)
            del features
            stacked = torch.stack([t.stacked() for t in terms]).tolist()  # one device sync
        if probe is not None:
            self.memory.observe(sum(r.image[0, 0].numel() for r in requests), probe.peak - baseline)
        for request, values, image_grad in zip(requests, stacked, grad, strict=True):
            total, content, style, tv = values
            # a copy: a view would keep the whole batch's gradient alive in every member's run
            request.values, request.grad = (total, content, style, tv), image_grad.reshape(-1).clone()
            request.together, request.done = len(requests), True

    def _out_of_memory(self, request: _Request, exc: BaseException) -> Exception:
        """A single image's pass ran out of memory: final (``MemoryError``) when its
        synthesis was the batch's only one; beside others, whose memory it could have
        had, ``CrowdedOut`` (worth another attempt, in a smaller batch)."""
        height, width = request.image.shape[-2:]
        others = len(self._admitted) - 1
        facts = (
            f"predicted {request.need / 2**20:.0f} MiB, {self.memory.budget / 2**20:.0f} MiB "
            f"available on {self.device} ({type(exc).__name__})"
        )
        if others > 0:
            return CrowdedOut(f"{width}x{height} did not fit beside {others} other syntheses: {facts}")
        return MemoryError(f"{width}x{height} does not fit alone: {facts}")


class CrowdedOut(RuntimeError):
    """An image ran out of memory in a batch whose other members held memory it may need."""


def run_together(tasks: Sequence[Callable[[], T]], workers: int) -> list[T | BaseException]:
    """Run ``tasks`` on ``workers`` threads (the batch's members); each outcome in order,
    an exception as its outcome rather than raised."""
    if not tasks:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(tasks))), thread_name_prefix="synthesis") as pool:
        futures = [pool.submit(task) for task in tasks]
        return [f.exception() or f.result() for f in futures]
