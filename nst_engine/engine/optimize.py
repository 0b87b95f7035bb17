"""The optimisation loop: L-BFGS (the paper's choice) or Adam over the image pixels.

Iterations and loss evaluations are counted separately: a line search (or the
backtracking safeguard) may evaluate the loss several times in one iteration.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.lbfgs import _strong_wolfe  # torch's own strong-Wolfe search

from nst_engine.engine.losses import LossTerms

#: Sufficient-decrease constant of the Armijo condition.
ARMIJO_C1 = 1e-4
#: Largest change of any pixel (image range [0, 1]) in a step taken without curvature pairs.
INITIAL_PIXEL_STEP = 0.05


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
    final: tuple[float, float, float, float] = (math.nan,) * 4

    @property
    def iterations(self) -> int:
        return len(self.records)


IterationCallback = Callable[[IterationRecord, torch.Tensor], None]
Objective = Callable[[torch.Tensor], LossTerms]


def _values(terms: LossTerms) -> tuple[float, float, float, float]:
    """All four numbers in one device sync."""
    stacked = torch.stack(
        [terms.total.detach(), terms.content.detach(), terms.style.detach(), terms.tv.detach()]
    )
    total, content, style, tv = stacked.tolist()
    return total, content, style, tv


class _Evaluator:
    """Loss and flat gradient at the current image; counts evaluations."""

    def __init__(self, objective: Objective, image: torch.Tensor) -> None:
        self.objective = objective
        self.image = image
        self.count = 0

    def __call__(self) -> tuple[tuple[float, float, float, float], torch.Tensor]:
        image = self.image.requires_grad_(True)
        terms = self.objective(image)
        (grad,) = torch.autograd.grad(terms.total, image)
        self.image.requires_grad_(False)
        self.count += 1
        return _values(terms), grad.reshape(-1)

    def at(self, flat: torch.Tensor) -> tuple[tuple[float, float, float, float], torch.Tensor]:
        with torch.no_grad():
            self.image.view(-1).copy_(flat)
        return self()


class _History:
    """L-BFGS curvature pairs and the two-loop recursion for d = -H g."""

    def __init__(self, size: int) -> None:
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=size)

    def add(self, s: torch.Tensor, y: torch.Tensor) -> None:
        sy = s.dot(y)
        # skip pairs that would break positive definiteness (relative test: losses
        # range over many orders of magnitude between weight sources)
        if float(sy) > 1e-10 * float(s.norm() * y.norm()):
            self.pairs.append((s, y, 1.0 / sy))

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        q = grad.neg()
        if not self.pairs:
            return q
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * s.dot(q)
            q.addcmul_(y, alpha, value=-1)
            alphas.append(alpha)
        s, y, _ = self.pairs[-1]
        q.mul_(s.dot(y) / y.dot(y))
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            beta = rho * y.dot(q)
            q.addcmul_(s, alpha - beta)
        return q


Values = tuple[float, float, float, float]


def _armijo_step(
    evaluate: _Evaluator,
    origin: torch.Tensor,
    direction: torch.Tensor,
    step: float,
    loss: float,
    slope: float,
    max_backtracks: int,
) -> tuple[Values, torch.Tensor, bool]:
    """Try ``step``; halve it until the loss decreases enough (usually the first try passes)."""
    for _ in range(max_backtracks + 1):
        values, grad = evaluate.at(origin + step * direction)
        if math.isfinite(values[0]) and values[0] <= loss + ARMIJO_C1 * step * slope:
            return values, grad, True
        step *= 0.5
    return values, grad, False


def _wolfe_step(
    evaluate: _Evaluator,
    origin: torch.Tensor,
    direction: torch.Tensor,
    step: float,
    loss: float,
    grad: torch.Tensor,
    slope: float,
) -> tuple[Values, torch.Tensor, bool]:
    """torch's strong-Wolfe search; leaves the image at the accepted point."""
    seen: dict[float, Values] = {}

    def along(x: torch.Tensor, t: float, d: torch.Tensor) -> tuple[float, torch.Tensor]:
        values, g = evaluate.at(x + t * d)
        seen[t] = values
        return values[0], g

    _, new_grad, step, _ = _strong_wolfe(along, origin, step, direction, loss, grad, slope)
    if step in seen:
        values = seen[step]
        with torch.no_grad():
            evaluate.image.view(-1).copy_(origin + step * direction)
    else:
        values, new_grad = evaluate.at(origin + step * direction)
    return values, new_grad, math.isfinite(values[0])


def _lbfgs(
    objective: Objective,
    image: torch.Tensor,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None,
    should_stop: Callable[[], bool] | None,
) -> OptimizationTrace:
    """L-BFGS whose normal iteration costs one evaluation: the evaluation at the new
    point is the next iteration's. A step that fails the Armijo condition (or gives a
    non-finite loss) is halved until it passes, which keeps a full quasi-Newton step
    from blowing up on this non-convex objective."""
    trace = OptimizationTrace()
    evaluate = _Evaluator(objective, image)
    history = _History(settings.history_size)
    lr = settings.learning_rate or 1.0
    values, grad = evaluate()
    for iteration in range(settings.iterations):
        if should_stop is not None and should_stop():
            trace.stop_reason = "cancelled"
            break
        start = time.perf_counter()
        before = evaluate.count
        loss = values[0]
        direction = history.direction(grad)
        slope = float(grad.dot(direction))
        if slope > -1e-30:  # not a descent direction: restart from steepest descent
            history.pairs.clear()
            direction = grad.neg()
            slope = float(grad.dot(direction))
        # Without curvature pairs the gradient's scale says nothing about a good step
        # (losses differ by 1e6 between weight sources), so the first step moves no
        # pixel by more than INITIAL_PIXEL_STEP; the pairs set the scale after that.
        step = (
            lr if history.pairs else lr * INITIAL_PIXEL_STEP / float(direction.abs().max().clamp_min(1e-30))
        )
        origin = image.detach().reshape(-1).clone()
        if settings.line_search:
            new_values, new_grad, accepted = _wolfe_step(evaluate, origin, direction, step, loss, grad, slope)
        else:
            new_values, new_grad, accepted = _armijo_step(
                evaluate, origin, direction, step, loss, slope, settings.max_backtracks
            )
        record = IterationRecord(iteration, *values, seconds=0.0, evaluations=0)
        if not accepted:
            with torch.no_grad():
                image.view(-1).copy_(origin)
            record.seconds, record.evaluations = time.perf_counter() - start, evaluate.count - before
            trace.records.append(record)
            trace.stop_reason = "no_progress"
            break
        history.add(image.detach().reshape(-1) - origin, new_grad - grad)
        values, grad = new_values, new_grad
        record.seconds, record.evaluations = time.perf_counter() - start, evaluate.count - before
        trace.records.append(record)
        if on_iteration is not None:
            on_iteration(record, image)
        if abs(loss - values[0]) <= settings.tolerance * abs(loss):
            trace.stop_reason = "converged"
            break
    trace.evaluations = evaluate.count
    trace.final = values
    return trace


def _adam(
    objective: Objective,
    image: torch.Tensor,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None,
    should_stop: Callable[[], bool] | None,
) -> OptimizationTrace:
    trace = OptimizationTrace()
    evaluate = _Evaluator(objective, image)
    optimizer = torch.optim.Adam([image], lr=settings.learning_rate or 0.02)
    previous = math.inf
    for iteration in range(settings.iterations):
        if should_stop is not None and should_stop():
            trace.stop_reason = "cancelled"
            break
        start = time.perf_counter()
        values, grad = evaluate()
        image.grad = grad.view_as(image)
        optimizer.step()
        image.grad = None
        record = IterationRecord(iteration, *values, seconds=time.perf_counter() - start, evaluations=1)
        trace.records.append(record)
        if on_iteration is not None:
            on_iteration(record, image)
        if not math.isfinite(values[0]):
            trace.stop_reason = "diverged"
            break
        if math.isfinite(previous) and abs(previous - values[0]) <= settings.tolerance * abs(previous):
            trace.stop_reason = "converged"
            break
        previous = values[0]
    with torch.no_grad():
        trace.final = _values(objective(image))
    trace.evaluations = evaluate.count + 1
    return trace


def optimize(
    objective: Objective,
    image: torch.Tensor,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizationTrace:
    """Minimise ``objective`` over ``image`` (modified in place); returns the trace."""
    if settings.name == "lbfgs":
        return _lbfgs(objective, image, settings, on_iteration, should_stop)
    if settings.name == "adam":
        return _adam(objective, image, settings, on_iteration, should_stop)
    raise ValueError(f"unknown optimizer {settings.name!r}")
