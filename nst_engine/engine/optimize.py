"""The optimisation over the image pixels: L-BFGS (the paper's choice) or Adam.

A run is a value: ``step()`` advances it one iteration, and ``state_dict()`` /
``load_state_dict()`` save and restore it as plain tensors, numbers and lists, so a
run can be checkpointed and resumed with the same result as one left running.
Iterations and loss evaluations are counted separately: a line search (or the
backtracking safeguard) may evaluate the loss several times in one iteration.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nst_engine.engine.line_search import backtracking, strong_wolfe
from nst_engine.engine.losses import LossTerms, Values

#: Largest change of any pixel (image range [0, 1]) in a step taken without curvature pairs.
INITIAL_PIXEL_STEP = 0.05

#: ``stop_reason`` of an L-BFGS iteration that found no step; it leaves the image as it was.
NO_PROGRESS = "no_progress"


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "lbfgs"
    iterations: int = 500
    history_size: int = 100
    learning_rate: float | None = None  # step scale: 1.0 for L-BFGS, 0.02 for Adam
    line_search: bool = False  # strong-Wolfe line search for L-BFGS
    tolerance: float = 1e-9  # stop when the relative loss change falls below this
    max_backtracks: int = 20


@dataclass
class IterationRecord:
    """Losses at the iterate an iteration starts from, and how long the iteration took."""

    iteration: int
    total: float
    content: float
    style: float
    tv: float
    seconds: float
    evaluations: int


@dataclass
class OptimizationTrace:
    records: list[IterationRecord] = field(default_factory=list)
    evaluations: int = 0
    stop_reason: str = "iterations"
    #: Loss terms at the returned image, as floats (total, content, style, tv).
    final: Values = (math.nan,) * 4

    @property
    def iterations(self) -> int:
        return len(self.records)


IterationCallback = Callable[[IterationRecord, torch.Tensor], None]
Objective = Callable[[torch.Tensor], LossTerms]
#: Loss terms and flat gradient of an objective at an image, computed elsewhere: a
#: synthesis in a batch gets them from the batch's shared pass (``batch.Member.evaluate``).
Gradient = Callable[[Any, torch.Tensor], tuple[Values, torch.Tensor]]


class _Evaluator:
    """Loss and flat gradient at the current image (by ``gradient`` when given); counts
    evaluations."""

    def __init__(self, objective: Objective, image: torch.Tensor, gradient: Gradient | None = None) -> None:
        self.objective = objective
        self.image = image
        self.gradient = gradient
        self.count = 0

    def __call__(self) -> tuple[Values, torch.Tensor]:
        if self.gradient is not None:
            self.count += 1
            return self.gradient(self.objective, self.image)
        image = self.image.requires_grad_(True)
        terms = self.objective(image)
        (grad,) = torch.autograd.grad(terms.total, image)
        self.image.requires_grad_(False)
        self.count += 1
        return terms.values(), grad.reshape(-1)

    def at(self, flat: torch.Tensor) -> tuple[Values, torch.Tensor]:
        self.move_to(flat)
        return self()

    def move_to(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            self.image.view(-1).copy_(flat)


class _History:
    """L-BFGS curvature pairs and the two-loop recursion for d = -H g.

    Nothing here reads a value back to the host: on a GPU each read-back stalls the
    queue of kernels, and an iteration already needs two (the loss for the step test,
    the slope). So a pair that fails the curvature test is kept with ρ = 0, which makes
    it a no-op in both loops, and the initial scaling γ = s·y / y·y of the newest good
    pair is carried on the device (NaN until there is one). Such a pair still takes a
    slot of the history.
    """

    def __init__(self, size: int) -> None:
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=size)
        self.scale: torch.Tensor | None = None

    def add(self, s: torch.Tensor, y: torch.Tensor) -> None:
        sy = s.dot(y)
        # a relative test: losses range over many orders of magnitude between weight sources
        good = sy > 1e-10 * (s.norm() * y.norm())
        none = torch.full_like(sy, math.nan)
        self.pairs.append((s, y, torch.where(good, sy.reciprocal(), torch.zeros_like(sy))))
        self.scale = torch.where(good, sy / y.dot(y), none if self.scale is None else self.scale)

    def clear(self) -> None:
        self.pairs.clear()
        self.scale = None

    def curved(self, like: torch.Tensor) -> torch.Tensor:
        """1 when a good pair holds curvature, else 0 (as a tensor: read back with others)."""
        if self.scale is None:
            return like.new_zeros(())
        return self.scale.isfinite().to(like.dtype)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        q = grad.neg()
        if self.scale is None:
            return q
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * s.dot(q)
            q.addcmul_(y, alpha, value=-1)
            alphas.append(alpha)
        q.mul_(torch.nan_to_num(self.scale, nan=1.0))
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            beta = rho * y.dot(q)
            q.addcmul_(s, alpha - beta)
        return q

    def load(self, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Restore saved pairs; γ comes from the newest one with ρ > 0."""
        self.clear()
        for s, y, rho in pairs:
            self.pairs.append((s, y, rho))
            if float(rho) > 0:
                self.scale = s.dot(y) / y.dot(y)
        if self.pairs and self.scale is None:
            self.scale = torch.full_like(self.pairs[-1][2], math.nan)


def _read(*scalars: torch.Tensor) -> list[float]:
    """Device scalars as floats in one host-device sync."""
    return torch.stack(scalars).tolist()


class Run:
    """One optimisation of ``image`` (modified in place) as a steppable, savable value.

    ``step()`` runs one iteration and returns its record, or ``None`` once ``done``;
    ``stop_reason`` says why it stopped. Subclasses implement ``_start``, ``_iterate``,
    ``_final`` and their part of the state.
    """

    kind = ""

    def __init__(
        self,
        objective: Objective,
        image: torch.Tensor,
        settings: OptimizerSettings,
        gradient: Gradient | None = None,
    ) -> None:
        self.objective = objective
        self.image = image
        self.settings = settings
        self.evaluate = _Evaluator(objective, image, gradient)
        self.records: list[IterationRecord] = []
        self.stop_reason: str | None = None
        self.final: Values | None = None
        self._start()

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def iteration(self) -> int:
        return len(self.records)

    @property
    def trace(self) -> OptimizationTrace:
        return OptimizationTrace(
            records=list(self.records),
            evaluations=self.evaluate.count,
            stop_reason=self.stop_reason or "iterations",
            final=self.final or (math.nan,) * 4,
        )

    def step(self) -> IterationRecord | None:
        if self.done:
            return None
        if self.iteration >= self.settings.iterations:
            self.stop("iterations")
            return None
        record = self._iterate()
        self.records.append(record)
        if not self.done and self.iteration >= self.settings.iterations:
            self.stop("iterations")
        return record

    def stop(self, reason: str) -> None:
        """End the run (``cancelled`` from outside) and fix its final losses."""
        if not self.done:
            self.stop_reason = reason
            self.final = self._final()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: tensors, numbers, strings and lists only, for ``torch.save``."""
        return {
            "kind": self.kind,
            "image": self.image.detach().clone(),
            "evaluations": self.evaluate.count,
            "records": [asdict(r) for r in self.records],
            "stop_reason": self.stop_reason,
            "final": list(self.final) if self.final is not None else None,
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the image is copied into this run's image."""
        if state["kind"] != self.kind:
            raise ValueError(f"a {state['kind']} state cannot resume a {self.kind} run")
        self.evaluate.move_to(state["image"].to(self.image).reshape(-1))
        self.evaluate.count = state["evaluations"]
        self.records = [IterationRecord(**r) for r in state["records"]]
        self.stop_reason = state["stop_reason"]
        self.final = _as_values(state["final"])
        self._load(state)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.image.device, dtype=self.image.dtype)

    def _start(self) -> None:
        """The optimizer's own state at the start of a run."""
        raise NotImplementedError

    def _iterate(self) -> IterationRecord:
        raise NotImplementedError

    def _final(self) -> Values:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class LBFGSRun(Run):
    """L-BFGS whose normal iteration costs one evaluation: the evaluation at the new
    point is the next iteration's. A step that fails the Armijo condition (or gives a
    non-finite loss) is halved until it passes, which keeps a full quasi-Newton step
    from blowing up on this non-convex objective; ``line_search`` instead searches for
    a step meeting the strong Wolfe conditions."""

    kind = "lbfgs"

    def _start(self) -> None:
        self.history = _History(self.settings.history_size)
        # loss terms and gradient at the current image; the first step() evaluates them
        self.values: Values | None = None
        self.grad: torch.Tensor | None = None

    def _current(self) -> tuple[Values, torch.Tensor]:
        if self.values is None or self.grad is None:
            self.values, self.grad = self.evaluate()
        return self.values, self.grad

    def _iterate(self) -> IterationRecord:
        values, grad = self._current()
        start, before = time.perf_counter(), self.evaluate.count
        loss = values[0]
        direction = self.history.direction(grad)
        slope, largest, curved = _read(grad.dot(direction), direction.abs().max(), self.history.curved(grad))
        if slope > -1e-30:  # not a descent direction: restart from steepest descent
            self.history.clear()
            direction = grad.neg()
            slope, largest, curved = _read(grad.dot(direction), direction.abs().max(), grad.new_zeros(()))
        origin = self.image.detach().reshape(-1).clone()

        def probe(t: float) -> tuple[Values, torch.Tensor]:
            return self.evaluate.at(origin + t * direction)

        step = self._first_step(largest, bool(curved))
        if self.settings.line_search:
            found = strong_wolfe(probe, direction, step, values, grad, slope)
        else:
            found = backtracking(probe, step, loss, slope, self.settings.max_backtracks)
        # leave the image at the accepted point (a search may have probed past it), or
        # back at the origin
        self.evaluate.move_to(origin + found.t * direction if found.accepted else origin)
        record = IterationRecord(self.iteration, *values, seconds=0.0, evaluations=0)
        if found.accepted:
            self.history.add(self.image.detach().reshape(-1) - origin, found.grad - grad)
            self.values, self.grad = found.values, found.grad
        record.seconds, record.evaluations = time.perf_counter() - start, self.evaluate.count - before
        if not found.accepted:
            self.stop(NO_PROGRESS)
        elif abs(loss - found.values[0]) <= self.settings.tolerance * abs(loss):
            self.stop("converged")
        return record

    def _first_step(self, largest: float, curved: bool) -> float:
        """Without curvature pairs the gradient's scale says nothing about a good step
        (losses differ by 1e6 between weight sources), so the first step moves no pixel
        (``largest``: the direction's largest entry) by more than INITIAL_PIXEL_STEP; the
        pairs set the scale after that."""
        lr = self.settings.learning_rate or 1.0
        if curved:
            return lr
        return lr * INITIAL_PIXEL_STEP / max(largest, 1e-30)

    def _final(self) -> Values:
        return self._current()[0]

    def _state(self) -> dict[str, Any]:
        return {
            "values": list(self.values) if self.values is not None else None,
            "grad": self.grad,
            "history": [[s, y, rho] for s, y, rho in self.history.pairs],
            # γ may come from a good pair already pushed out of the history
            "history_scale": self.history.scale,
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.values = _as_values(state["values"])
        self.grad = self._to_device(state["grad"]) if state["grad"] is not None else None
        self.history.load([tuple(self._to_device(t) for t in pair) for pair in state["history"]])
        if state.get("history_scale") is not None:  # checkpoints from before it was saved lack it
            self.history.scale = self._to_device(state["history_scale"])


class AdamRun(Run):
    """Adam on the pixels: one evaluation per iteration, plus one for the final losses."""

    kind = "adam"

    def _start(self) -> None:
        self.optimizer = torch.optim.Adam([self.image], lr=self.settings.learning_rate or 0.02)
        self.previous = math.inf  # the loss the last iteration started from

    def _iterate(self) -> IterationRecord:
        start = time.perf_counter()
        values, grad = self.evaluate()
        self.image.grad = grad.view_as(self.image)
        self.optimizer.step()
        self.image.grad = None
        record = IterationRecord(self.iteration, *values, seconds=time.perf_counter() - start, evaluations=1)
        loss, previous = values[0], self.previous
        self.previous = loss
        if not math.isfinite(loss):
            self.stop("diverged")
        elif math.isfinite(previous) and abs(previous - loss) <= self.settings.tolerance * abs(previous):
            self.stop("converged")
        return record

    def _final(self) -> Values:
        with torch.no_grad():
            values = self.objective(self.image).values()
        self.evaluate.count += 1
        return values

    def _state(self) -> dict[str, Any]:
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "previous": self.previous}

    def _load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.previous = state["previous"]


RUNS: dict[str, type[Run]] = {LBFGSRun.kind: LBFGSRun, AdamRun.kind: AdamRun}


def start_run(
    objective: Objective, image: torch.Tensor, settings: OptimizerSettings, gradient: Gradient | None = None
) -> Run:
    """A run of ``settings.name`` over ``image``; nothing is evaluated until its first step.
    ``gradient`` evaluates the objective instead of the run's own forward and backward."""
    if settings.name not in RUNS:
        raise ValueError(f"unknown optimizer {settings.name!r}")
    return RUNS[settings.name](objective, image, settings, gradient)


def optimize(
    objective: Objective,
    image: torch.Tensor,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizationTrace:
    """Minimise ``objective`` over ``image`` (modified in place); returns the trace.

    ``should_stop`` is asked before each iteration; ``on_iteration`` sees every iteration
    that moved the image.
    """
    return drive(start_run(objective, image, settings), on_iteration, should_stop)


def drive(
    run: Run,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizationTrace:
    """Step ``run`` to its end (a fresh one, or one restored from a state)."""
    while not run.done:
        if run.iteration < run.settings.iterations and should_stop is not None and should_stop():
            run.stop("cancelled")
            break
        record = run.step()
        if record is not None and on_iteration is not None and run.stop_reason != NO_PROGRESS:
            on_iteration(record, run.image)
    return run.trace


def _as_values(numbers: list[float] | None) -> Values | None:
    if numbers is None:
        return None
    total, content, style, tv = numbers
    return total, content, style, tv
