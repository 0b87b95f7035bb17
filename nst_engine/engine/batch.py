"""Several syntheses on one device at once: their evaluations and their optimizer math
batched together.

A 256² synthesis is a few hundred small kernels per iteration, far too little work to
fill a GPU. Here every synthesis keeps its own optimisation run (its own L-BFGS
history, step size, Armijo test or line search, stopping state, checkpoints) in a
thread of its own, exactly as when it runs alone; what is shared is the kernels. The
last member of the batch to ask runs one pass for everyone waiting:

- L-BFGS runs hand over whole iterations, which run in lockstep (``optimize.lockstep``):
  their directions come from one set of stacked products (``lbfgs.Segment``), their
  trial images go through one forward and backward of the network, their losses are one
  set of batched kernels against their stacked targets (``StyleTransferObjective.stack``),
  and what is read back is read in one sync per round, whatever the number of members;
- other runs (Adam) hand over single evaluations, batched the same way.

VGG has no batch normalisation, so an image's responses, and so its loss and gradient,
do not depend on the other images of the batch (to float rounding), and an item that
diverges or fails leaves the others as they were. Members join (admitted when the memory
model says they fit, ``memory.MemoryModel``) and leave (converged, failed, cancelled)
between passes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from nst_engine.engine.device import to_device
from nst_engine.engine.lbfgs import Segments
from nst_engine.engine.losses import StyleTransferObjective
from nst_engine.engine.memory import MemoryModel, is_out_of_memory, release_cached
from nst_engine.engine.optimize import LBFGSRun, OptimizerSettings, lockstep
from nst_engine.engine.stats import PeakMemory, current_memory

T = TypeVar("T")

#: Most syntheses a GPU runs at once under ``auto``; its memory model may admit fewer.
AUTO_MAX_BATCH_CUDA = 32
#: Stacked objectives kept for reuse: a batch's whole membership, and the latest subset
#: (members still searching for a step), which is selected from it.
STACKED_OBJECTIVES = 2


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
    """One member's wait: an evaluation of ``objective`` at ``image`` (``run`` None), or
    an iteration of the L-BFGS ``run``; filled in by the pass."""

    member: Member
    objective: StyleTransferObjective | None = None
    image: torch.Tensor | None = None
    run: LBFGSRun | None = None
    values: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


class Member:
    """One synthesis's place in an ``EvaluationBatch``: the ``optimize.Evaluator`` of its
    runs."""

    def __init__(self, batch: EvaluationBatch, need: int) -> None:
        self.batch = batch
        self.need = need  # bytes reserved for it in the memory model
        self.largest = 1  # most images evaluated in one pass with this one's
        self.segments = batch.segments  # where its L-BFGS runs keep their state

    def evaluate(
        self, objective: StyleTransferObjective, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        request = self.batch.submit(_Request(self, objective=objective, image=images.detach()))
        if request.error is not None:
            raise request.error
        assert request.values is not None and request.grad is not None
        return request.values, request.grad

    def iterate(self, run: LBFGSRun) -> None:
        request = self.batch.submit(_Request(self, run=run))
        if request.error is not None:
            raise request.error


class EvaluationBatch:
    """Where the runs of several syntheses on one device meet for their passes.

    ``max_members`` syntheses at most run together, fewer when the memory model says they
    would not fit; a network pass holds at most ``chunk`` images, halved each time a pass
    runs out of memory (the halves are evaluated again, so no member notices but by its
    ``largest``); a single image that does not fit fails its own synthesis only, with the
    predicted and available memory in its error.
    """

    def __init__(self, device: torch.device, max_members: int, memory: MemoryModel | None = None) -> None:
        self.device = device
        self.max_members = max(1, max_members)
        self.memory = memory or MemoryModel.for_device(device)
        self.chunk = self.max_members
        self.segments = Segments()
        #: peak memory over the batch's life (``with batch:``); per-item resets would collide
        self.peak = PeakMemory(device)
        self._cond = threading.Condition()
        # admitted members; a pass waits until each of them asks (or leaves), so a new
        # member's first evaluation is always in the pass after its set-up
        self._admitted: list[Member] = []
        self._waiting: list[_Request] = []
        # (the objectives, stacked): the parts are kept, so an entry is never mistaken for
        # the objectives of later members (``id`` values are reused)
        self._stacked: list[tuple[tuple[StyleTransferObjective, ...], StyleTransferObjective]] = []

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
                self._stacked.clear()  # the members' targets stacked: not worth keeping now
                self._run_if_all_waiting()
                self._cond.notify_all()

    def _fits(self, pixels: int, settings: OptimizerSettings) -> bool:
        if not self._admitted:
            return True
        if len(self._admitted) >= self.max_members or not self.memory.measured:
            return False
        reserved = sum(m.need for m in self._admitted)
        return reserved + self.memory.need(pixels, settings) <= self.memory.budget

    # ------------------------------------------------------------------ passes

    def submit(self, request: _Request) -> _Request:
        """Queue ``request``; the last member to ask runs the pass for all."""
        with self._cond:
            self._waiting.append(request)
            self._run_if_all_waiting()
            while not request.done:
                self._cond.wait()
        return request

    def _run_if_all_waiting(self) -> None:
        """With the lock held: serve everything waiting once every member waits."""
        if not self._waiting or len(self._waiting) < len(self._admitted):
            return
        waiting, self._waiting = self._waiting, []
        evaluations = [r for r in waiting if r.run is None]
        iterations = [r for r in waiting if r.run is not None]
        try:
            if evaluations:
                self._evaluations(evaluations)
            if iterations:
                members = {r.run: r.member for r in iterations}
                lockstep(
                    [r.run for r in iterations],  # type: ignore[misc]
                    self.segments,
                    lambda runs, images: self._pass(
                        [r.objective for r in runs], images, [members[r] for r in runs], runs
                    ),
                )
        except BaseException as exc:  # a fault of the pass itself: every waiting member gets it
            error = self._pass_failed(exc, len(waiting))
            for request in waiting:
                if not request.done:
                    request.error = error
        for request in waiting:
            request.done = True
        self._cond.notify_all()

    def _pass_failed(self, exc: BaseException, members: int) -> BaseException:
        """What the members of a pass that failed outside its evaluations get: running out
        of memory in the optimizer's own work beside others is worth another attempt in a
        smaller batch (``CrowdedOut``, retried), not a final failure of every member."""
        if not is_out_of_memory(exc):
            return exc
        self._stacked.clear()
        release_cached(self.device)
        if members <= 1:
            return exc
        return CrowdedOut(f"the optimizer's state of {members} syntheses did not fit together: {exc}")

    def _evaluations(self, requests: list[_Request]) -> None:
        """Single evaluations, one pass per network, image shape and precision."""
        groups: dict[tuple, list[_Request]] = {}
        for request in requests:
            assert request.objective is not None and request.image is not None
            key = (id(request.objective.network), tuple(request.image.shape), request.objective.precision)
            groups.setdefault(key, []).append(request)
        for group in groups.values():
            images = torch.cat([r.image for r in group])  # type: ignore[misc]
            failed: dict[int, BaseException] = {}
            values, grads = self._pass(
                [r.objective for r in group], images, [r.member for r in group], failed=failed
            )  # type: ignore[misc]
            for i, request in enumerate(group):
                request.error = failed.get(i)
                # copies: a view would keep the whole pass's gradient alive in every member's run
                request.values, request.grad = values[i : i + 1].clone(), grads[i : i + 1].clone()
                request.done = True

    def _pass(
        self,
        objectives: Sequence[StyleTransferObjective],
        images: torch.Tensor,
        members: Sequence[Member],
        runs: Sequence[LBFGSRun] | None = None,
        failed: dict[int, BaseException] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms (B, 4) and gradients (B, n) of ``objectives`` at ``images``, one image
        each: passes of one network and precision, at most ``chunk`` images each. An image
        that does not fit even alone fails its own synthesis: ``runs``' ``failure`` (or
        ``failed`` by position) gets the error, its row NaN."""
        values = images.new_full((len(images), 4), float("nan"), dtype=torch.float64)
        grads = images.new_zeros(len(images), images[0].numel())
        groups: dict[tuple, list[int]] = {}
        for i, objective in enumerate(objectives):
            groups.setdefault((id(objective.network), str(objective.precision)), []).append(i)
        for indices in groups.values():
            start = 0
            while start < len(indices):
                part = indices[start : start + self.chunk]
                outcome = self._evaluate([objectives[i] for i in part], _rows(images, part), part, members)
                if outcome is None:  # ran out of memory: again in smaller passes
                    continue
                if isinstance(outcome, BaseException):  # one image alone did not fit
                    if runs is not None:
                        runs[part[0]].failure = outcome
                    if failed is not None:
                        failed[part[0]] = outcome
                elif len(part) == len(images):
                    values, grads = outcome
                else:
                    where = to_device(part, images.device)
                    values.index_copy_(0, where, outcome[0])
                    grads.index_copy_(0, where, outcome[1])
                start += len(part)
        return values, grads

    def _evaluate(
        self,
        objectives: list[StyleTransferObjective],
        chosen: torch.Tensor,
        part: list[int],
        members: Sequence[Member],
    ) -> tuple[torch.Tensor, torch.Tensor] | BaseException | None:
        """One pass over the images ``chosen`` (at ``part`` of the pass); None when it ran
        out of memory (``chunk`` is smaller now), or, for a single image, the error its
        synthesis fails with."""
        try:
            outcome = self._evaluate_together(objectives, chosen, measure=not self.memory.measured)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            alone = self._out_of_memory(members[part[0]], chosen, exc) if len(part) == 1 else None
        else:
            for i in part:
                members[i].largest = max(members[i].largest, len(part))
            return outcome
        # out of memory, handled outside the handler: its traceback holds the failed pass's
        # tensors, which the cache release and the halves need freed
        self._stacked.clear()
        release_cached(self.device)
        self.memory.ran_out(chosen[0, 0].numel() * len(part))
        if alone is not None:
            return alone
        self.chunk = max(1, min(self.chunk, len(part) // 2))
        return None

    def _evaluate_together(
        self, objectives: list[StyleTransferObjective], images: torch.Tensor, measure: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms and input gradients of every image in one forward and backward;
        ``measure``: the batch's first pass, run twice, its memory measured on the
        second (the first autotunes cuDNN, whose workspaces are no activations)."""
        objective = self._stack(objectives)
        # cuDNN tunes the passes of the whole batch, not the shapes of passing subsets
        tune = len(objectives) == len(self._admitted)
        if not measure:
            return objective.evaluate(images, tune)
        objective.evaluate(images, tune)
        baseline = current_memory(self.device)
        with PeakMemory(self.device) as probe:
            outcome = objective.evaluate(images, tune)
        self.memory.observe(images[0, 0].numel() * len(images), probe.peak - baseline)
        return outcome

    def _stack(self, objectives: list[StyleTransferObjective]) -> StyleTransferObjective:
        """The objectives as one (``StyleTransferObjective.stack``), reused while the same
        members meet (stacking copies their targets); a subset of a stacked set (members
        still searching for a step, a half after running out of memory) is selected from
        it on the device (``rows``)."""
        parts = tuple(objectives)
        for i, (stacked_parts, stacked) in enumerate(self._stacked):
            if len(stacked_parts) == len(parts) and all(
                a is b for a, b in zip(stacked_parts, parts, strict=True)
            ):
                self._stacked.append(self._stacked.pop(i))  # most recently used last
                return stacked
        for stacked_parts, stacked in reversed(self._stacked):
            position = {id(p): i for i, p in enumerate(stacked_parts)}
            rows = [position.get(id(o), -1) for o in parts]
            if all(i >= 0 and stacked_parts[i] is o for i, o in zip(rows, parts, strict=True)):
                return self._keep(parts, stacked.rows(rows))
        return self._keep(parts, StyleTransferObjective.stack(objectives))

    def _keep(
        self, parts: tuple[StyleTransferObjective, ...], stacked: StyleTransferObjective
    ) -> StyleTransferObjective:
        if len(parts) > 1:
            while len(self._stacked) >= STACKED_OBJECTIVES:
                self._stacked.pop(0)
            self._stacked.append((parts, stacked))
        return stacked

    def _out_of_memory(self, member: Member, image: torch.Tensor, exc: BaseException) -> Exception:
        """A single image's pass ran out of memory: final (``MemoryError``) when its
        synthesis was the batch's only one; beside others, whose memory it could have
        had, ``CrowdedOut`` (worth another attempt, in a smaller batch)."""
        height, width = image.shape[-2:]
        others = len(self._admitted) - 1
        facts = (
            f"predicted {member.need / 2**20:.0f} MiB, {self.memory.budget / 2**20:.0f} MiB "
            f"available on {self.device} ({type(exc).__name__})"
        )
        if others > 0:
            return CrowdedOut(f"{width}x{height} did not fit beside {others} other syntheses: {facts}")
        return MemoryError(f"{width}x{height} does not fit alone: {facts}")


def _rows(images: torch.Tensor, part: list[int]) -> torch.Tensor:
    """The images at ``part``: a view when they are consecutive, else one gather."""
    if part == list(range(part[0], part[0] + len(part))):
        return images[part[0] : part[0] + len(part)]
    return images.index_select(0, to_device(part, images.device))


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
