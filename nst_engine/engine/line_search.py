"""Step lengths along a descent direction: Armijo backtracking (the default, usually one
evaluation) and a strong-Wolfe search (``line_search``), after Nocedal & Wright,
*Numerical Optimization*, algorithms 3.5 and 3.6.

Both take a ``probe(t)`` that evaluates the loss and gradient at ``origin + t·d``; the
caller counts evaluations, so iterations and evaluations stay separate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nst_engine.engine.losses import Values

#: Sufficient-decrease constant of the Armijo condition.
ARMIJO_C1 = 1e-4
#: Curvature constant of the strong Wolfe condition (the usual choice for quasi-Newton).
WOLFE_C2 = 0.9
#: Most evaluations one strong-Wolfe search may spend.
MAX_SEARCH_EVALUATIONS = 25

Probe = Callable[[float], tuple[Values, torch.Tensor]]


@dataclass
class Step:
    """Where a search ended: step ``t``, the loss terms and gradient there, and whether
    the step is usable (``False``: the caller keeps the origin)."""

    t: float
    values: Values
    grad: torch.Tensor
    accepted: bool


def backtracking(probe: Probe, step: float, loss: float, slope: float, max_backtracks: int) -> Step:
    """Try ``step``; halve it until the loss decreases enough (usually the first try passes)."""
    for _ in range(max_backtracks + 1):
        values, grad = probe(step)
        if math.isfinite(values[0]) and values[0] <= loss + ARMIJO_C1 * step * slope:
            return Step(step, values, grad, True)
        step *= 0.5
    return Step(step, values, grad, False)


@dataclass
class _Point:
    t: float
    values: Values
    grad: torch.Tensor
    slope: float  # directional derivative φ'(t) = ∇f · d

    @property
    def loss(self) -> float:
        return self.values[0]


class _Search:
    """One strong-Wolfe search along ``direction`` from ``start``."""

    def __init__(self, probe: Probe, direction: torch.Tensor, start: _Point, budget: int) -> None:
        self.probe = probe
        self.direction = direction
        self.start = start
        self.budget = budget

    def point(self, t: float) -> _Point:
        self.budget -= 1
        values, grad = self.probe(t)
        return _Point(t, values, grad, float(grad.dot(self.direction)))

    def sufficient(self, p: _Point) -> bool:
        """Armijo: φ(t) ≤ φ(0) + c₁·t·φ'(0)."""
        return math.isfinite(p.loss) and p.loss <= self.start.loss + ARMIJO_C1 * p.t * self.start.slope

    def curvature(self, p: _Point) -> bool:
        """Strong Wolfe: |φ'(t)| ≤ c₂·|φ'(0)|."""
        return abs(p.slope) <= -WOLFE_C2 * self.start.slope

    def bracket(self, t: float) -> Step:
        """Algorithm 3.5: grow the step until an interval holds an acceptable one."""
        previous = self.start
        while self.budget > 0:
            p = self.point(t)
            if not self.sufficient(p) or (previous is not self.start and p.loss >= previous.loss):
                return self.zoom(previous, p)
            if self.curvature(p):
                return _accept(p)
            if p.slope >= 0:
                return self.zoom(p, previous)
            previous, t = p, _cubic_minimum(previous, p, 1.1 * p.t, 10.0 * p.t)
        return _accept(previous) if previous is not self.start else _reject(self.start)

    def zoom(self, low: _Point, high: _Point) -> Step:
        """Algorithm 3.6: shrink [low, high] (``low`` has the lower loss and satisfies
        Armijo) until a point meets both conditions or the budget runs out."""
        while self.budget > 0 and abs(high.t - low.t) > 1e-12 * max(low.t, high.t):
            left, right = sorted((low.t, high.t))
            margin = 0.1 * (right - left)  # keep the trial away from the ends
            p = self.point(_cubic_minimum(low, high, left + margin, right - margin))
            if not self.sufficient(p) or p.loss >= low.loss:
                high = p
                continue
            if self.curvature(p):
                return _accept(p)
            if p.slope * (high.t - low.t) >= 0:
                high = low
            low = p
        return _accept(low) if low is not self.start else _reject(self.start)


def strong_wolfe(
    probe: Probe,
    direction: torch.Tensor,
    step: float,
    values: Values,
    grad: torch.Tensor,
    slope: float,
    max_evaluations: int = MAX_SEARCH_EVALUATIONS,
) -> Step:
    """A step meeting the strong Wolfe conditions, starting from ``step``; with the budget
    spent, the best Armijo step found, or a rejection if there was none."""
    start = _Point(0.0, values, grad, slope)
    return _Search(probe, direction, start, max_evaluations).bracket(step)


def _accept(p: _Point) -> Step:
    return Step(p.t, p.values, p.grad, True)


def _reject(start: _Point) -> Step:
    return Step(0.0, start.values, start.grad, False)


def _cubic_minimum(a: _Point, b: _Point, low: float, high: float) -> float:
    """Minimiser of the cubic through (t, φ, φ') at ``a`` and ``b`` (N&W eq. 3.59),
    clamped to [low, high]; the middle of that interval when the cubic has none."""
    d1 = a.slope + b.slope - 3 * (a.loss - b.loss) / (a.t - b.t)
    square = d1 * d1 - a.slope * b.slope
    if not (math.isfinite(square) and square >= 0):
        return 0.5 * (low + high)
    d2 = math.copysign(math.sqrt(square), b.t - a.t)
    denominator = b.slope - a.slope + 2 * d2
    if denominator == 0:
        return 0.5 * (low + high)
    t = b.t - (b.t - a.t) * (b.slope + d2 - d1) / denominator
    return min(max(t, low), high) if math.isfinite(t) else 0.5 * (low + high)
