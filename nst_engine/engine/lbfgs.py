"""L-BFGS's search directions for many syntheses at once, in a few matrix products.

The two-loop recursion computes d = −H·g with about six small vector kernels per stored
pair: 600 kernel launches per iteration at the default history of 100, each too small
to keep a GPU busy, and one more set per synthesis of a batch. The compact
representation of Byrd, Nocedal & Schnabel (1994, "Representations of quasi-Newton
matrices and their use in limited memory methods", Theorem 2.2) gives the same H as
matrices of the m stored pairs, S = [s_i] and Y = [y_i]:

    H = γI + [S  γY] · [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]] · [Sᵀ; γYᵀ]

with R the upper triangle of SᵀY in the pairs' order, D its diagonal and γ = sᵀy / yᵀy
of the newest good pair. So H·g costs one product of the history with [g, …] (Sᵀg, Yᵀg),
two m×m triangular solves, and one product back: a fixed number of kernels whatever m,
and, with the state of B syntheses stacked ((B, 2m, n) history), whatever B. SᵀY and YᵀY
are kept up to date one pair at a time, from the same first product.

A pair that fails the curvature test keeps its slot with weight 0 (as the two-loop keeps
it with ρ = 0), masked out of every sum; the history is a ring whose slots are put in
the pairs' order by a gather of the m×m matrices only. Nothing here reads a value back
to the host: ``Segment.directions`` returns each synthesis's slope, largest entry and
whether it has curvature as one tensor, for the caller to read with others.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from nst_engine.engine.device import to_device

#: A pair is kept only when sᵀy exceeds this times |s|·|y|: the test is relative, as losses
#: range over many orders of magnitude between weight sources.
CURVATURE = 1e-10


_serials = itertools.count()


@dataclass(eq=False)
class Lane:
    """One synthesis's slot in a ``Segment``, and where its ring of pairs stands."""

    segment: Segment
    slot: int
    written: int = 0  # pairs written since the last restart
    pending: int | None = None  # the ring slot of a pair written but not yet in SᵀY, YᵀY

    @property
    def next_slot(self) -> int:
        return self.written % self.segment.m

    def order(self) -> list[int]:
        """Ring slots oldest first (slots not yet written last; their weight is 0)."""
        m = self.segment.m
        start = self.next_slot if self.written >= m else 0
        return [(start + i) % m for i in range(m)]


@dataclass(eq=False)
class Segment:
    """The L-BFGS state of up to ``capacity`` syntheses of ``n`` pixels × channels with
    histories of ``m`` pairs, stacked so one kernel serves them all: iterate ``x``, its
    gradient ``g``, the direction ``d``, and ``pairs`` (rows [0, m) the s_i, [m, 2m) the
    y_i), with SᵀY, YᵀY, the pairs' weights (1: passed the curvature test) and γ."""

    capacity: int
    n: int
    m: int
    device: torch.device
    dtype: torch.dtype
    lanes: list[Lane | None] = field(init=False)

    def __post_init__(self) -> None:
        self.serial = next(_serials)  # creation order: a stable order of segments
        c, n, m = self.capacity, self.n, self.m
        like = {"device": self.device, "dtype": self.dtype}
        # zeros, not empty: a slot's rows enter every product (with weight 0 until written)
        self.pairs = torch.zeros(c, 2 * m, n, **like)
        self.x = torch.zeros(c, n, **like)
        self.g = torch.zeros(c, n, **like)
        self.d = torch.zeros(c, n, **like)
        self.sy = torch.zeros(c, m, m, **like)  # s_i·y_j
        self.yy = torch.zeros(c, m, m, **like)  # y_i·y_j
        self.good = torch.zeros(c, m, device=self.device, dtype=torch.bool)
        self.gamma = torch.full((c,), math.nan, **like)  # NaN: no good pair yet
        self.lanes = [None] * c

    def take(self) -> Lane | None:
        """A free slot, or None when all are taken."""
        for slot, lane in enumerate(self.lanes):
            if lane is None:
                self.lanes[slot] = taken = Lane(self, slot)
                self.good[slot] = False
                self.gamma[slot] = math.nan
                self.pairs[slot].zero_()  # a former owner's pairs could hold anything
                return taken
        return None

    def release(self, lane: Lane) -> None:
        self.lanes[lane.slot] = None

    def move_in(self, lane: Lane) -> Lane:
        """A slot here holding a copy of ``lane``'s state (from another segment)."""
        mine = self.take()
        assert mine is not None
        source, b, slot = lane.segment, lane.slot, mine.slot
        with torch.no_grad():
            for name in ("pairs", "x", "g", "d", "sy", "yy", "good", "gamma"):
                getattr(self, name)[slot] = getattr(source, name)[b]
        mine.written, mine.pending = lane.written, lane.pending
        return mine

    @property
    def empty(self) -> bool:
        return all(lane is None for lane in self.lanes)

    # ------------------------------------------------------------------ directions

    def directions(self) -> torch.Tensor:
        """d = −H·g for every slot (into ``d``), after folding the pairs written since the
        last call into SᵀY, YᵀY, their weights and γ. Returns ``summary()``."""
        m, c = self.m, self.capacity
        pending = [lane for lane in self.lanes if lane is not None and lane.pending is not None]
        count = len(pending)
        # the host's indices in one copy: every slot, the ring slot of its newest pair,
        # its ring oldest first; the slots and ring slots of the pairs to fold in
        index = to_device(
            [
                *range(c),
                *(
                    lane.pending if lane is not None and lane.pending is not None else 0
                    for lane in self.lanes
                ),
                *(i for lane in self.lanes for i in (lane.order() if lane is not None else range(m))),
                *(lane.slot for lane in pending),
                *(lane.pending for lane in pending),  # type: ignore[misc]
                *range(count),
            ],
            self.device,
        )
        slots, ks, order = index[:c], index[c : 2 * c], index[2 * c : 2 * c + c * m].view(c, m)
        folded = index[2 * c + c * m :].view(3, count)
        # one pass over the history: Sᵀg, Yᵀg, and each new pair's products with the others
        rhs = torch.stack([self.g, self.pairs[slots, ks], self.pairs[slots, ks + m]], dim=2)
        products = torch.bmm(self.pairs, rhs)  # (c, 2m, 3)
        if pending:
            self._add_pairs(pending, products, *folded)
        p1 = torch.where(self.good, products[:, :m, 0], 0)  # s_i·g
        p2 = torch.where(self.good, products[:, m:, 0], 0)  # y_i·g
        gamma = torch.nan_to_num(self.gamma, nan=1.0).view(-1, 1, 1)
        top, u = self._middle(p1, p2, gamma, order)
        coefficients = torch.cat([top, -gamma.view(-1, 1) * u], dim=1).unsqueeze(1)  # (c, 1, 2m)
        # d = −(γ g + S·top − γ Y·u)
        self.d = torch.bmm(coefficients, self.pairs).squeeze(1).addcmul_(gamma.view(-1, 1), self.g).neg_()
        return self.summary()

    def steepest(self, lanes: Sequence[Lane]) -> torch.Tensor:
        """Restart ``lanes`` from steepest descent: their pairs dropped, d = −g. Returns
        ``summary()``."""
        index = self._index(lanes)
        self.good[index] = False
        self.gamma[index] = math.nan
        self.d[index] = -self.g[index]
        for lane in lanes:
            lane.written, lane.pending = 0, None
        return self.summary()

    def summary(self) -> torch.Tensor:
        """(capacity, 3): each slot's slope g·d, largest |d_i|, and 1 when it has curvature
        (γ from a good pair) else 0; on the device, for the caller to read with others."""
        slope = (self.g * self.d).sum(dim=1)
        largest = self.d.abs().amax(dim=1)
        return torch.stack([slope, largest, self.gamma.isfinite().to(slope.dtype)], dim=1)

    def _index(self, lanes: Sequence[Lane]) -> torch.Tensor:
        return to_device([lane.slot for lane in lanes], self.device)

    def _add_pairs(
        self,
        pending: list[Lane],
        products: torch.Tensor,
        b: torch.Tensor,
        k: torch.Tensor,
        rows: torch.Tensor,
    ) -> None:
        """Fold each lane's newest pair (slot ``b``, ring slot ``k``) into SᵀY, YᵀY, its
        weight and γ."""
        m = self.m
        with_s, with_y = products[b, :, 1], products[b, :, 2]  # [S; Y]·s_k, [S; Y]·y_k
        self.sy[b, k, :] = with_s[:, m:]  # s_k·y_j
        self.sy[b, :, k] = with_y[:, :m]  # s_i·y_k
        self.yy[b, k, :] = with_y[:, m:]
        self.yy[b, :, k] = with_y[:, m:]
        sy, ss, yy = with_y[rows, k], with_s[rows, k], with_y[rows, k + m]
        good = sy > CURVATURE * ss.sqrt() * yy.sqrt()  # False for NaN too; no overflow of ss·yy
        self.good[b, k] = good
        self.gamma[b] = torch.where(good, sy / yy, self.gamma[b])
        for lane in pending:
            lane.pending = None

    def _middle(
        self, p1: torch.Tensor, p2: torch.Tensor, gamma: torch.Tensor, order: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The m×m part: top = R⁻ᵀ((D + γYᵀY)·u − γ·p2) and u = R⁻¹·p1, solved in the pairs'
        order (``order``: each slot's ring, oldest first) and handed back in ring order.
        Pairs of weight 0 get an identity row and column in R and zeros elsewhere, so they
        drop out exactly."""
        m = self.m
        good = self.good.gather(1, order)
        both = good.unsqueeze(2) & good.unsqueeze(1)
        rows, cols = order.unsqueeze(2).expand(-1, m, m), order.unsqueeze(1).expand(-1, m, m)
        sy = torch.where(both, self.sy.gather(1, rows).gather(2, cols), 0)
        yy = torch.where(both, self.yy.gather(1, rows).gather(2, cols), 0)
        diagonal = torch.diagonal(sy, dim1=1, dim2=2)
        r = torch.triu(sy) + torch.diag_embed((~good).to(sy.dtype))
        u = torch.linalg.solve_triangular(r, p1.gather(1, order).unsqueeze(2), upper=True)
        v = diagonal.unsqueeze(2) * u + gamma * torch.bmm(yy, u) - gamma * p2.gather(1, order).unsqueeze(2)
        top = torch.linalg.solve_triangular(r.transpose(1, 2), v, upper=False)
        # back to ring order
        return (
            torch.zeros_like(p1).scatter(1, order, top.squeeze(2)),
            torch.zeros_like(p1).scatter(1, order, u.squeeze(2)),
        )


class Segments:
    """Where the L-BFGS runs evaluated together keep their state: segments by (size,
    history, device, dtype), each one set of kernels per iteration. Runs that start
    together share a new segment; a later one takes a slot a finished run left; and when
    new runs need a new segment anyway, the runs of smaller segments of their kind move
    into it with them (a copy of their state, once), so a batch's runs stay in one
    segment: its first member, which runs a pass alone to measure memory, does not keep
    a segment of its own for the whole batch."""

    def __init__(self) -> None:
        self.segments: dict[Hashable, list[Segment]] = {}
        self._lock = threading.Lock()  # members release their slots from their own threads

    def seat(
        self,
        n: int,
        m: int,
        device: torch.device,
        dtype: torch.dtype,
        count: int,
        movable: Sequence[Lane] = (),
    ) -> tuple[list[Lane], dict[Lane, Lane]]:
        """``count`` lanes for new runs of that shape, and where lanes of ``movable`` (runs
        between iterations) were moved: free slots first, then a new segment that also takes
        the runs of segments holding no more runs than it gets new ones."""
        key = (n, m, str(device), dtype)
        with self._lock:
            lanes: list[Lane] = []
            for segment in self.segments.get(key, []):
                while len(lanes) < count and (lane := segment.take()) is not None:
                    lanes.append(lane)
            moved: dict[Lane, Lane] = {}
            need = count - len(lanes)
            if need:
                may_move = set(movable)
                merged = [
                    s
                    for s in self.segments.get(key, [])
                    if all(lane is None or lane in may_move for lane in s.lanes)
                    and sum(lane is not None for lane in s.lanes) <= need
                ]
                riders = [lane for s in merged for lane in s.lanes if lane is not None]
                segment = Segment(need + len(riders), n, m, device, dtype)
                for old in riders:
                    moved[old] = segment.move_in(old)
                for s in merged:
                    self.segments[key].remove(s)
                self.segments.setdefault(key, []).append(segment)
                lanes += [segment.take() for _ in range(need)]  # type: ignore[misc]
            return lanes, moved

    def release(self, lane: Lane) -> None:
        """Free ``lane``'s slot; a segment with no run left is dropped (its memory freed)."""
        with self._lock:
            segment = lane.segment
            segment.release(lane)
            if segment.empty:
                for key, segments in list(self.segments.items()):
                    if segment in segments:
                        segments.remove(segment)
                        if not segments:
                            del self.segments[key]
