"""``--budget``: how many more items a run may hand out before its spend would pass it.

The spend is what the run's workers have held so far (``Pool.held``: busy and idle, as a
cloud bills it), priced (``results.cost``); the projection adds, for every item in flight
and each one to hand out, the mean device-seconds of the items of that device kind that
came back. Items in flight are counted whole although part of their time is in the held
spend already: the projection errs on the side of stopping early. Before an item of a
kind has come back there is nothing to project from, so a call per worker goes out (and
no more until one is back): a budget smaller than that first wave is passed by it.
"""

from __future__ import annotations

import time

from nst_engine.distributed.pool import Pool, folded
from nst_engine.results.cost import Spending


class BudgetGuard:
    """The budget of one run (none: every item may go out)."""

    def __init__(self, spending: Spending) -> None:
        self.spending = spending
        self.per_item: dict[str, float] = {}  # device kind -> running mean of device-seconds per item

    def learn(self, kind: str | None, device_seconds: float | None) -> None:
        """Fold a returned attempt's device-seconds into its kind's mean."""
        if kind is None or device_seconds is None:
            return
        self.per_item[kind] = folded(self.per_item.get(kind), device_seconds)

    def unknown(self, kind: str | None) -> bool:
        """Whether the run has a budget and no item of device ``kind`` has come back yet:
        then there is no cost to project, and ``dispatch`` sends each worker one call,
        not ``max_in_flight``, so the first wave spends as little as it can."""
        return self.spending.budget is not None and self.per_item.get(kind or "unknown") is None

    def spent(self, pool: Pool, now: float | None = None) -> float:
        """What the run's workers have held so far, in the budget's unit (0 with no budget)."""
        budget = self.spending.budget
        if budget is None:
            return 0.0
        return budget.spent(self.spending.prices, pool.held(time.time() if now is None else now))

    def affordable(self, pool: Pool, kind: str, count: int, spent: float | None = None) -> int:
        """How many of ``count`` more items of device ``kind`` may go out: 0 once the spend
        so far (``spent``, if the caller has it: ``spent(pool)`` walks every worker) plus
        the projected cost of the items in flight and of these reaches the budget."""
        budget = self.spending.budget
        if budget is None or not count:
            return count
        left = budget.amount - (self.spent(pool) if spent is None else spent)
        if left <= 0:
            return 0
        item = budget.spent(self.spending.prices, {kind: self.per_item.get(kind, 0.0)})
        if item <= 0:  # no item of this kind back yet, or a kind the budget does not count
            return count
        left -= item * pool.in_flight_items()
        return max(0, min(count, int(left // item)))
