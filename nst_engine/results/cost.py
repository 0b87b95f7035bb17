"""What a render costs: prices per device kind, a budget, and a run's bill.

A *device-second* is one second of one device held: a GPU for ``cuda`` (a worker sharing
a GPU holds its share of it, as Ray accounts it), a CPU core for ``cpu`` (a CPU worker
holds its threads' cores). A row's ``device_seconds`` is its synthesis's part of the
device-seconds its worker held while it ran (``distributed.worker``); a run's bill is the
device-seconds its workers held from ready to release, busy or idle, per device kind:
what a cloud bills. Prices are per device-hour of a kind (``--price cuda=2.50/h``); the
currency is the user's (the numbers are never converted).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Device kinds a price can name (the rows' ``device_type``).
DEVICE_KINDS = ("cuda", "cpu")
#: ``--price``'s form, for its help and its errors.
PRICE_FORM = "KIND=AMOUNT/h[,KIND=AMOUNT/h], KIND one of cuda, cpu (e.g. cuda=2.50/h,cpu=0.05/h)"
#: ``--budget``'s form, for its help and its errors.
BUDGET_FORM = "an amount of money (40, in the prices' currency) or device-hours (12h)"
#: units of a price -> how many of them make an hour
_PER = {"h": 1.0, "hour": 1.0, "min": 60.0, "s": 3600.0}
_PRICE = re.compile(r"^\s*([a-z]+)\s*=\s*([0-9.eE+-]+)\s*(?:/\s*([a-z]+))?\s*$")


@dataclass(frozen=True)
class Prices:
    """Price per device-hour of each device kind; a kind not given costs nothing known."""

    per_hour: Mapping[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.per_hour)

    def cost(self, kind: str, device_seconds: float) -> float:
        """The price of ``device_seconds`` of ``kind`` (0 for a kind with no price)."""
        return self.per_hour.get(kind, 0.0) * device_seconds / 3600

    def total(self, seconds: Mapping[str, float]) -> float:
        """The price of device-seconds per kind (``Bill.held``, a summary's ``busy``)."""
        return sum(self.cost(kind, amount) for kind, amount in seconds.items())

    def text(self) -> str:
        """``cuda=2.5/h,cpu=0.05/h``: what ``parse_prices`` reads back (recorded with a run)."""
        return ",".join(f"{kind}={amount:g}/h" for kind, amount in self.per_hour.items())


def parse_prices(text: str) -> Prices:
    """``--price``: ``cuda=2.50/h,cpu=0.05/h`` (``/min``, ``/s`` too; no unit: per hour)."""
    prices: dict[str, float] = {}
    for part in filter(str.strip, text.split(",")):
        match = _PRICE.match(part.lower())
        kind, amount, per = match.groups() if match else ("", "", None)
        try:
            value = float(amount) * _PER[per or "h"] if kind in DEVICE_KINDS else math.nan
        except (KeyError, ValueError):
            value = math.nan
        if not 0 <= value < math.inf:
            raise ValueError(f"expected {PRICE_FORM}, got {part.strip()!r}")
        if kind in prices:
            raise ValueError(f"{kind} is priced twice in {text!r}")
        prices[kind] = value
    if not prices:
        raise ValueError(f"expected {PRICE_FORM}, got {text!r}")
    return Prices(prices)


@dataclass(frozen=True)
class Budget:
    """The most a run may spend: money (in the prices' currency) or device-hours."""

    amount: float
    device_hours: bool = False  # else money

    def spent(self, prices: Prices, held: Mapping[str, float]) -> float:
        """What ``held`` (device-seconds per kind) spends of this budget, in its unit."""
        if self.device_hours:
            return sum(held.values()) / 3600
        return prices.total(held)

    def text(self) -> str:
        return f"{self.amount:g}h" if self.device_hours else f"{self.amount:g}"


def parse_budget(text: str) -> Budget:
    """``--budget``: ``40`` (money) or ``12h`` (device-hours), more than 0."""
    raw = text.strip().lower()
    hours = raw.endswith("h")
    try:
        amount = float(raw.removesuffix("h"))
    except ValueError:
        amount = math.nan
    if not 0 < amount < math.inf:
        raise ValueError(f"expected {BUDGET_FORM}, got {text!r}")
    return Budget(amount, device_hours=hours)


def unpriced_kinds(budget: Budget | None, prices: Prices, kinds: tuple[str, ...]) -> list[str]:
    """The device kinds a run may use (``kinds``) that a money budget cannot count: a
    kind with no price would spend without limit."""
    if budget is None or budget.device_hours:
        return []
    return [kind for kind in kinds if kind not in prices.per_hour]


@dataclass(frozen=True)
class Spending:
    """A run's prices and budget, as given (``--price``, ``--budget``)."""

    prices: Prices = field(default_factory=Prices)
    budget: Budget | None = None


@dataclass
class Bill:
    """What a run's workers held, per device kind: ``held`` (ready to released, busy or
    idle) and ``busy`` (its rows' ``device_seconds``), in device-seconds, priced."""

    prices: Prices
    held: dict[str, float] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)

    @property
    def cost(self) -> float | None:
        """The held device-seconds priced; None with no prices."""
        if not self.prices:
            return None
        return self.prices.total(self.held)

    def to_json(self) -> str:
        """Per kind: device-seconds held and busy, the price per hour and the cost."""
        kinds = sorted(set(self.held) | set(self.busy))
        return json.dumps(
            {
                kind: {
                    "held_seconds": round(self.held.get(kind, 0.0), 3),
                    "busy_seconds": round(self.busy.get(kind, 0.0), 3),
                    "price_per_hour": self.prices.per_hour.get(kind),
                    "cost": round(self.prices.cost(kind, self.held.get(kind, 0.0)), 6)
                    if kind in self.prices.per_hour
                    else None,
                }
                for kind in kinds
            },
            sort_keys=True,
        )
