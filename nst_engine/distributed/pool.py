"""The driver's picture of its pool: lanes, their workers and the calls in flight. Plain
data with the bookkeeping that keeps its counts true; what to do with it is decided by
``autoscaling`` (how many workers), ``retry`` (what an attempt's outcome means) and
``dispatch`` (the loop that talks to Ray)."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nst_engine.distributed.autoscaling import LaneLoad
from nst_engine.distributed.protocol import Outcome
from nst_engine.planning.items import WorkItem

#: Items per call at most: bounds what a lost worker takes down with it (all retried).
MAX_BATCH = 64
#: Weight of the newest item in a running mean of seconds per item (a lane's worker
#: seconds, a budget's device-seconds per device kind).
ITEM_SECONDS_WEIGHT = 0.2


def folded(mean: float | None, value: float) -> float:
    """The running mean ``mean`` (None: none yet) with ``value`` folded in."""
    return value if mean is None else mean + ITEM_SECONDS_WEIGHT * (value - mean)


@dataclass
class Lane:
    """Workers of one shape, ``min_workers`` to ``max_workers`` of them, and the queue
    they draw from.

    ``resources`` are the Ray actor options that place a worker (``num_cpus``,
    ``num_gpus``, custom resources); ``stop_on`` is a per-lane rule: once an attempt
    comes to one of these outcomes for good, the lane's remaining items are dropped (the
    benchmark stops growing a device at its first out-of-memory size). ``max_batch`` 1
    sends each item alone through the worker's ``render``; above 1, items travel in
    ``render_batch`` calls sized by the lane's measured seconds per item and its workers'
    batches (``dispatch.call_size``), and a worker runs its calls side by side, so a later
    call's items join the batch an earlier one opened (``RenderWorker``)."""

    name: str
    resources: dict[str, Any]
    device: str  # cpu, cuda, or auto (cuda when the worker's torch sees one)
    threads: int | None  # torch threads (CPU workers)
    min_workers: int  # kept requested while items are queued
    max_workers: int  # requested at most
    items: list[WorkItem]  # in the order they are handed out
    max_in_flight: int | None = None  # calls on one worker (default: PoolOptions.max_in_flight)
    max_batch: int = MAX_BATCH  # items per call at most
    memory_share: float = 1.0  # part of its device's memory a worker plans on (PoolShape)
    stop_on: frozenset[Outcome] = frozenset()
    #: items per call when the item at the queue's head decides it (the scaling bench's
    #: batches of a set size); None: ``dispatch.call_size`` sizes the calls
    call_size: Callable[[WorkItem], int] | None = None
    queue: deque[tuple[WorkItem, int]] = field(init=False)  # (item, attempt)
    members: dict[int, Worker] = field(init=False, default_factory=dict)  # requested, not retired
    starts_left: int = field(init=False, default=0)  # worker starts this lane may still make
    last_ready: float = field(init=False, default_factory=time.time)
    ever_ready: bool = field(init=False, default=False)
    in_flight_items: int = field(init=False, default=0)
    item_seconds: float | None = field(init=False, default=None)  # running mean, worker time
    #: video frames held back until the frame before them has its image: that frame's item
    #: id -> the frame that continues from it (a shot is a chain: one follower at most)
    waiting: dict[str, WorkItem] = field(init=False, default_factory=dict)
    #: a released frame's item id -> the worker that rendered the frame before: it goes
    #: there while that worker can take it (its decoder stands at the frame, its style
    #: targets are cached), so a shot does not hop between workers
    home: dict[str, int] = field(init=False, default_factory=dict)
    #: whether the lane holds video frames: each goes alone, to its shot's worker when it
    #: can (``hand_out``); decided once here, since dispatch asks for every worker each pass
    chained: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.chained = any(item.frame is not None for item in self.items)
        ids = {item.item_id for item in self.items}
        for item in self.items:  # a predecessor done in an earlier run is not here: no wait
            if item.after in ids:
                self.waiting[item.after] = item
        self.queue = deque((item, 1) for item in self.items if item.after not in ids)

    def release(self, item_id: str, worker: Worker | None = None) -> None:
        """``item_id`` has its image (rendered by ``worker``): the frame that continues
        from it may go, first in line, so shots move on (and frames of shots at the same
        step meet in a batch), to that worker while it can take it (``home``)."""
        follower = self.waiting.pop(item_id, None)
        if follower is not None:
            self.queue.appendleft((follower, 1))
            if worker is not None:
                self.home[follower.item_id] = worker.key

    def _next_for(self, worker: Worker) -> int | None:
        """Where in the queue the next item for ``worker`` is: the first that is not
        another live worker's to take (``home``) while that one has room for it."""
        for index, (item, _) in enumerate(self.queue):
            home = self.members.get(self.home.get(item.item_id, worker.key))
            if home is None or home is worker or not home.live or home.items >= home.max_batch:
                return index
        return None

    def cut_off(self, item_id: str) -> list[WorkItem]:
        """``item_id`` failed for good: the frames that would continue from it, in order,
        taken from the lane (they cannot start; the caller records them)."""
        followers = []
        while (follower := self.waiting.pop(item_id, None)) is not None:
            followers.append(follower)
            item_id = follower.item_id
        return followers

    def clear(self) -> int:
        """Drop every item not handed out (queued or waiting); how many there were."""
        dropped = len(self.queue) + len(self.waiting)
        self.queue.clear()
        self.waiting.clear()
        self.home.clear()
        return dropped

    @property
    def batched(self) -> bool:
        """Whether calls carry several items (``render_batch``) rather than one (``render``)."""
        return self.max_batch > 1

    def take(self) -> tuple[WorkItem, int]:
        """The next (item, attempt) to hand out."""
        return self.queue.popleft()

    def put_back(self, item: WorkItem, attempt: int) -> None:
        """An item to retry: it goes first, so retries do not wait behind the whole queue."""
        self.queue.appendleft((item, attempt))

    def hand_out(self, worker: Worker, count: int) -> list[tuple[WorkItem, int]]:
        """Up to ``count`` queued items for one call to ``worker``, counted as in flight:
        the next one and those after it of the same ``batch_key`` (the queue keeps them
        together), so the worker can run them in one batch; none when every queued frame
        is another worker's to take (``home``)."""
        if self.chained:  # a frame a call, at its home if it has one (``home``)
            index = self._next_for(worker)
            if index is None:
                return []
            first = self.queue[index]
            del self.queue[index]
            self.home.pop(first[0].item_id, None)
            items = [first]
        else:
            items = [self.take()]
        key = items[0][0].batch_key
        while len(items) < count and self.queue and self.queue[0][0].batch_key == key:
            items.append(self.take())
        worker.in_flight += 1
        worker.items += len(items)
        self.in_flight_items += len(items)
        return items

    def live_workers(self) -> list[Worker]:
        return [w for w in self.members.values() if w.live]

    def pending_workers(self) -> list[Worker]:
        """Requested and not ready yet, oldest first (``members`` keeps request order)."""
        return [w for w in self.members.values() if not w.ready]

    def load(self) -> LaneLoad:
        """What the autoscaling policy sees of this lane."""
        live = len(self.live_workers())
        return LaneLoad(
            queued=len(self.queue),
            in_flight_items=self.in_flight_items,
            live=live,
            pending=len(self.members) - live,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            starts_left=self.starts_left,
        )

    def learn_item_seconds(self, seconds: float | None) -> None:
        """Fold an attempt's worker time into the running mean that sizes calls."""
        if seconds is not None:
            self.item_seconds = folded(self.item_seconds, float(seconds))


@dataclass
class Worker:
    """One requested worker actor: pending until its ``ready()`` comes back, then live
    until it is retired (``dead``)."""

    key: int
    lane: Lane
    handle: Any
    ready_ref: Any
    ready: bool = False
    dead: bool = False
    in_flight: int = 0  # calls
    items: int = 0  # items of those calls
    failures: int = 0  # attempts that counted against it (``retry.WORKER_FAULTS``)
    info: dict[str, str] = field(default_factory=dict)  # what its ready() said
    ready_at: float | None = None  # time.time() when it became ready: its devices held from then
    released_at: float | None = None  # ... until it was released or lost

    @property
    def live(self) -> bool:
        return self.ready and not self.dead

    @property
    def max_batch(self) -> int:
        """Syntheses it runs at once, as its ``ready`` said (1 until then)."""
        return int(self.info.get("max_batch", 1))

    def held(self, now: float) -> tuple[str, float]:
        """(device kind, device-seconds held so far): its devices (``ready``'s
        ``devices``) from ready to released, busy or idle; nothing before it was ready
        (a pending request holds no device of ours yet)."""
        if self.ready_at is None:
            return self.info.get("device_kind", "unknown"), 0.0
        seconds = (self.released_at or now) - self.ready_at
        return self.info.get("device_kind", "unknown"), seconds * float(self.info.get("devices", 1))


@dataclass(frozen=True)
class Call:
    """One remote call in flight: ``render`` of one item, or ``render_batch`` of several."""

    items: list[tuple[WorkItem, int]]  # (item, attempt number)
    worker: Worker
    batched: bool


@dataclass
class Pool:
    """Every lane, every worker started, and the Ray refs the driver waits on."""

    lanes: list[Lane] = field(default_factory=list)
    workers: dict[int, Worker] = field(default_factory=dict)  # every worker started, retired ones too
    starting: dict[Any, Worker] = field(default_factory=dict)  # ready() ref -> worker
    in_flight: dict[Any, Call] = field(default_factory=dict)  # render() / render_batch() ref -> call
    live: int = 0  # workers ready and not retired, all lanes
    _keys: itertools.count = field(default_factory=itertools.count)

    def add_worker(self, lane: Lane, handle: Any, ready_ref: Any) -> Worker:
        """A worker just requested for ``lane``: pending until ``ready_ref`` comes back."""
        worker = Worker(next(self._keys), lane, handle, ready_ref)
        self.workers[worker.key] = worker
        lane.members[worker.key] = worker
        lane.starts_left -= 1
        self.starting[ready_ref] = worker
        return worker

    def mark_ready(self, worker: Worker, info: dict[str, str]) -> None:
        worker.info, worker.ready, worker.ready_at = info, True, time.time()
        worker.lane.last_ready, worker.lane.ever_ready = time.time(), True
        self.live += 1

    def drop(self, worker: Worker) -> None:
        """``worker`` retired or its request withdrawn: out of its lane (its calls still
        in flight come back, as lost, through ``call_back``)."""
        if worker.live:
            self.live -= 1
            worker.released_at = time.time()
        worker.dead = True
        worker.lane.members.pop(worker.key, None)
        self.starting.pop(worker.ready_ref, None)

    def call_sent(self, ref: Any, call: Call) -> None:
        self.in_flight[ref] = call

    def call_back(self, ref: Any) -> Call:
        """The call of ``ref``, no longer in flight."""
        call = self.in_flight.pop(ref)
        call.worker.in_flight -= 1
        call.worker.items -= len(call.items)
        call.worker.lane.in_flight_items -= len(call.items)
        return call

    def refs(self) -> list[Any]:
        """What the driver waits on: calls in flight and workers starting."""
        return [*self.in_flight, *self.starting]

    def has_work(self) -> bool:
        """Calls in flight or items queued. (A waiting frame alone is no work: its
        predecessor is queued or in flight; else ``Scheduler.fail_stranded``.)"""
        return bool(self.in_flight) or any(lane.queue for lane in self.lanes)

    def held(self, now: float) -> dict[str, float]:
        """Device-seconds every worker of the run has held so far, per device kind."""
        held: dict[str, float] = {}
        for worker in self.workers.values():
            kind, seconds = worker.held(now)
            if seconds:
                held[kind] = held.get(kind, 0.0) + seconds
        return held

    def in_flight_items(self) -> int:
        return sum(lane.in_flight_items for lane in self.lanes)
