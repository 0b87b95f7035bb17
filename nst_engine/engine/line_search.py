"""Step lengths along a descent direction: Armijo backtracking (the default, usually one
evaluation) and a strong-Wolfe search (``line_search``), after Nocedal & Wright,
*Numerical Optimization*, algorithms 3.5 and 3.6.

Both are generators: each yields the next trial step t and is sent back what the
caller measured there (``Probed``: the loss terms and the slope φ'(t) = ∇f(x + t·d)·d),
and returns the ``Step`` it settled on. The caller evaluates the trial steps of many
syntheses' searches in one batched pass (``optimize.lockstep``), and counts evaluations,
so iterations and evaluations stay separate; ``search`` runs one with a plain function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from nst_engine.engine.losses import Values

#: Sufficient-decrease constant of the Armijo condition.
ARMIJO_C1 = 1e-4
#: Curvature constant of the strong Wolfe condition (the usual choice for quasi-Newton).
WOLFE_C2 = 0.9
#: Most evaluations one strong-Wolfe search may spend.
MAX_SEARCH_EVALUATIONS = 25


@dataclass
class Probed:
    """What a trial step ``t`` gave: loss terms, slope φ'(t), and ``point``, the caller's
    handle on the trial image and its gradient (what an accepted step keeps)."""

    t: float
    values: Values
    slope: float
    point: Any = None

    @property
    def loss(self) -> float:
        return self.values[0]


@dataclass
class Step:
    """Where a search ended: step ``t``, the loss terms and the point there, and whether
    the step is usable (``False``: the caller keeps the origin)."""

    t: float
    values: Values
    point: Any
    accepted: bool


#: A search: yields trial steps, is sent what each gave, returns its ``Step``.
Search = Generator[float, Probed, Step]


def search(steps: Search, probe: Callable[[float], Probed]) -> Step:
    """Run ``steps`` to its end, measuring each trial step with ``probe``."""
    try:
        t = next(steps)
        while True:
            t = steps.send(probe(t))
    except StopIteration as done:
        return done.value


def backtracking(step: float, start: Probed, max_backtracks: int) -> Search:
    """Try ``step``; halve it until the loss decreases enough (usually the first try passes)."""
    for _ in range(max_backtracks + 1):
        p = yield step
        if math.isfinite(p.loss) and p.loss <= start.loss + ARMIJO_C1 * step * start.slope:
            return Step(step, p.values, p.point, True)
        step *= 0.5
    return Step(step, p.values, p.point, False)


class _Search:
    """One strong-Wolfe search from ``start`` (t = 0)."""

    def __init__(self, start: Probed, budget: int) -> None:
        self.start = start
        self.budget = budget

    def point(self, t: float) -> Search:
        self.budget -= 1
        p = yield t
        return p  # type: ignore[return-value]

    def sufficient(self, p: Probed) -> bool:
        """Armijo: φ(t) ≤ φ(0) + c₁·t·φ'(0)."""
        return math.isfinite(p.loss) and p.loss <= self.start.loss + ARMIJO_C1 * p.t * self.start.slope

    def curvature(self, p: Probed) -> bool:
        """Strong Wolfe: |φ'(t)| ≤ c₂·|φ'(0)|."""
        return abs(p.slope) <= -WOLFE_C2 * self.start.slope

    def bracket(self, t: float) -> Search:
        """Algorithm 3.5: grow the step until an interval holds an acceptable one."""
        previous = self.start
        while self.budget > 0:
            p = yield from self.point(t)
            if not self.sufficient(p) or (previous is not self.start and p.loss >= previous.loss):
                return (yield from self.zoom(previous, p))
            if self.curvature(p):
                return _accept(p)
            if p.slope >= 0:
                return (yield from self.zoom(p, previous))
            previous, t = p, _cubic_minimum(previous, p, 1.1 * p.t, 10.0 * p.t)
        return _accept(previous) if previous is not self.start else _reject(self.start)

    def zoom(self, low: Probed, high: Probed) -> Search:
        """Algorithm 3.6: shrink [low, high] (``low`` has the lower loss and satisfies
        Armijo) until a point meets both conditions or the budget runs out."""
        while self.budget > 0 and abs(high.t - low.t) > 1e-12 * max(low.t, high.t):
            left, right = sorted((low.t, high.t))
            margin = 0.1 * (right - left)  # keep the trial away from the ends
            p = yield from self.point(_cubic_minimum(low, high, left + margin, right - margin))
            if not self.sufficient(p) or p.loss >= low.loss:
                high = p
                continue
            if self.curvature(p):
                return _accept(p)
            if p.slope * (high.t - low.t) >= 0:
                high = low
            low = p
        return _accept(low) if low is not self.start else _reject(self.start)


def strong_wolfe(step: float, start: Probed, max_evaluations: int = MAX_SEARCH_EVALUATIONS) -> Search:
    """A step meeting the strong Wolfe conditions, starting from ``step``; with the budget
    spent, the best Armijo step found, or a rejection if there was none."""
    return _Search(start, max_evaluations).bracket(step)


def _accept(p: Probed) -> Step:
    return Step(p.t, p.values, p.point, True)


def _reject(start: Probed) -> Step:
    return Step(0.0, start.values, start.point, False)


def _cubic_minimum(a: Probed, b: Probed, low: float, high: float) -> float:
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
