"""The render worker: a Ray actor that loads VGG-19 once and renders items.

It never raises for a bad item: every attempt comes back as an ``Attempt``, its result
row and its ``Outcome``, decided here from the exception's type (``outcome_of``); the
driver's retry policy (``retry.decide``) reads the outcome, never the row's error text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
import torch

from nst_engine.distributed import metrics, preemption
from nst_engine.distributed.checkpoints import ItemCheckpoint
from nst_engine.distributed.device_time import DeviceClock, held_devices
from nst_engine.distributed.frames import FrameStart, FrameStarts
from nst_engine.distributed.protocol import Attempt, Outcome, is_device_fault, write_outcome
from nst_engine.engine.batch import CrowdedOut, EvaluationBatch, auto_batch
from nst_engine.engine.images import encode_png
from nst_engine.engine.memory import is_out_of_memory, release_cached
from nst_engine.engine.result import SynthesisResult
from nst_engine.engine.synthesis import Stylizer
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import NSTError, one_line
from nst_engine.planning.items import WorkItem
from nst_engine.results.provenance import ITEM_ID_KEY, item_config
from nst_engine.results.schema import make_row
from nst_engine.storage.roots import OutputRoot

PROGRESS_INTERVAL = 0.5  # seconds between progress reports to the board (the live view's period)
#: how the error of an out-of-memory row starts (for people and reports; the driver reads
#: the attempt's ``Outcome``)
OUT_OF_MEMORY = "out of memory"

T = TypeVar("T")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OutputWriteError(Exception):
    """The item's image could not be written to the output root: raised where it is
    written, so that an ``OSError`` elsewhere (reading an input, say) is never taken for
    one; ``errno`` is the storage's, which decides the outcome (``protocol.write_outcome``)."""

    def __init__(self, path: str, exc: OSError) -> None:
        self.errno = exc.errno
        super().__init__(f"cannot write {path}: {one_line(exc)}")


def outcome_of(exc: BaseException) -> Outcome:
    """What a synthesis that raised ``exc`` came to, by the exception's type: its image
    not written (by the errno: the place, the whole root, or a hiccup); the item's
    input (final); out of memory beside other syntheses (``CrowdedOut``, checked first:
    it is an allocation failure too, but one a smaller batch may not have); out of memory
    at its size on this device (final); the device or its driver failing (the node's
    fault, ``is_device_fault``); anything else (an I/O hiccup or the like)."""
    if isinstance(exc, OutputWriteError):
        return write_outcome(exc.errno)
    if isinstance(exc, NSTError):
        return Outcome.BAD_INPUT
    if isinstance(exc, CrowdedOut):
        return Outcome.CROWDED_OUT
    if is_out_of_memory(exc):
        return Outcome.OUT_OF_MEMORY
    if is_device_fault(exc):
        return Outcome.DEVICE_FAULT
    return Outcome.TRANSIENT


@dataclass(eq=False)
class Turn:
    """What holds a worker's device now: a batch of one ``batch_key`` and the threads
    its syntheses run in, one per member at most, shared by every call in it (a call's
    items beyond them wait in its queue, behind those of the calls before it, not inside
    ``render`` where their wait would count as their time); or (``batch`` None) a group
    of items running alone. ``users``: the calls inside it."""

    key: tuple
    batch: EvaluationBatch | None
    threads: ThreadPoolExecutor | None = None
    users: int = 0

    def run(self, tasks: list[Callable[[], T]]) -> list[T | BaseException]:
        """Each task's outcome in order, an exception as its outcome rather than raised."""
        assert self.threads is not None
        futures = [self.threads.submit(task) for task in tasks]
        return [f.exception() or f.result() for f in futures]


class DeviceTurns:
    """Which of a worker's concurrent calls uses its device, and how.

    Ray runs a batching worker's calls in threads (``max_concurrency``), so the items of
    a later call need not wait for an earlier call's batch to drain: a call whose items
    share the ``batch_key`` of the batch running now joins it (its syntheses are admitted
    as members leave, ``EvaluationBatch.member``), and the batch closes when the last
    call in it ends. Anything else waits for the device to be free: a second batch, or a
    group that runs alone (tiles sized for the whole device), would plan on memory the
    running batch holds. A call does not join while another waits, so none waits forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._now: Turn | None = None
        self._waiting = 0

    @contextlib.contextmanager
    def take(self, key: tuple, start: Callable[[], EvaluationBatch | None]) -> Iterator[Turn]:
        """The running batch of ``key``, joined; else, once the device is free, what
        ``start`` returns (called with nothing else on the device): a new batch, which
        this context enters and later calls of ``key`` may join, or None to run alone."""
        with self._cond:
            self._waiting += 1
            try:
                while not self._may_enter(key):
                    self._cond.wait()
            finally:
                self._waiting -= 1
            if self._now is None:
                batch = start()
                threads = None
                if batch is not None:
                    batch.__enter__()
                    threads = ThreadPoolExecutor(batch.max_members, thread_name_prefix="synthesis")
                self._now = Turn(key, batch, threads)
            turn = self._now
            turn.users += 1
        try:
            yield turn
        finally:
            with self._cond:
                turn.users -= 1
                if not turn.users:  # every call in it has its outcomes: the threads are idle
                    if turn.threads is not None:
                        turn.threads.shutdown()
                    if turn.batch is not None:
                        turn.batch.__exit__(None, None, None)
                    self._now = None
                    self._cond.notify_all()

    def _may_enter(self, key: tuple) -> bool:
        """With the lock held: the device is free, or runs a batch of ``key`` that no
        other call waits behind (``_waiting`` counts the caller too)."""
        now = self._now
        return now is None or (now.batch is not None and now.key == key and self._waiting == 1)


class RenderWorker:
    """Holds a ``Stylizer`` (weights on its device, style-target cache) for its lifetime.

    Its calls may run side by side (the scheduler makes a worker that gets
    ``render_batch`` calls a threaded actor): ``turns`` decides which uses the device."""

    def __init__(
        self,
        weights: WeightsSpec,
        output_uri: str,
        device: str = "auto",
        threads: int | None = None,
        board: Any = None,
        checkpoint_every: float | None = None,
        max_batch: int | None = None,
        memory_share: float = 1.0,
    ) -> None:
        """``memory_share``: the part of its device's memory this worker plans on (1/N
        for one of N workers sharing a GPU, ``PoolOptions.workers_per_gpu``)."""
        loaded, seconds = weights.load()
        self.stylizer = Stylizer(
            loaded, device=device, threads=threads, load_seconds=seconds, memory_share=memory_share
        )
        # syntheses at once (PoolOptions.max_batch); auto: by device, within its memory
        self.max_batch = max_batch or auto_batch(self.stylizer.device)
        self.root = OutputRoot(output_uri)
        self.board = board
        self.turns = DeviceTurns()  # render_batch calls run side by side (a threaded actor)
        # the board's bookkeeping, shared by the calls' threads: re-entered by render_batch
        self._reporting = threading.RLock()
        self.last_report = 0.0  # monotonic time of the last board update (``_report``)
        self.batching = 0  # render_batch calls running: one idle report when the last ends
        self.checkpoint_every = checkpoint_every  # PoolOptions.checkpoint_every
        context = ray.get_runtime_context()
        self.actor_id = context.get_actor_id() or "local"
        self.node_id = context.get_node_id()
        # the devices this worker holds, as Ray assigned them: what its rows' device-seconds count
        self.device_kind = self.stylizer.device.type
        self.clock = DeviceClock(held_devices(self.device_kind, context.get_assigned_resources()))
        self.hostname = socket.gethostname()
        self.frames = FrameStarts(self.root)  # video frames: their clips kept open between items
        self.holdings = preemption.Holdings()  # the syntheses a SIGTERM waits for
        if context.get_actor_id():  # an actor's process, not a caller's constructing one
            preemption.install(self.holdings)

    def ready(self) -> dict[str, str]:
        return {
            "actor_id": self.actor_id,
            "node_id": self.node_id,
            "device": str(self.stylizer.device),
            "hostname": self.hostname,
            "max_batch": str(self.max_batch),
            "memory_share": str(self.stylizer.memory_share),
            "device_kind": self.device_kind,
            "devices": str(self.clock.devices),
            "pid": str(os.getpid()),  # the process a stop (SIGTERM) goes to
        }

    def render_batch(
        self, items: list[tuple[WorkItem, int]], run_started: float, run_kind: str = "render", warmup: int = 0
    ) -> list[Attempt]:
        """``render`` of each (item, attempt), in one remote call, rows in the order given.

        Items that share a ``batch_key`` run together, up to ``max_batch`` at once, in one
        ``EvaluationBatch`` (one thread per synthesis; as one leaves, the next joins), the
        batch of that key another call of this worker runs already if there is one; the
        rest one at a time. For items of milliseconds, a call (and a driver event) per
        item would cost more than the items. One idle report when the worker's last call
        ends rather than one per item."""
        with self._reporting:
            self.batching += 1
        outcomes: dict[int, Attempt] = {}
        try:
            groups: dict[tuple, list[int]] = {}
            for index, (item, _) in enumerate(items):
                groups.setdefault(item.batch_key, []).append(index)
            for key, indices in groups.items():
                group = [items[i] for i in indices]
                try:
                    rows = self._render_group(key, group, run_started, run_kind, warmup)
                except Exception as exc:  # opening the batch failed: retried, not lost
                    rows = [self._crashed(item, attempt, run_kind, exc) for item, attempt in group]
                outcomes.update(zip(indices, rows, strict=True))
            return [outcomes[i] for i in range(len(items))]
        finally:
            with self._reporting:
                self.batching -= 1
                self._report(None)

    def _render_group(
        self, key: tuple, items: list[tuple[WorkItem, int]], run_started: float, run_kind: str, warmup: int
    ) -> list[Attempt]:
        """Items of one ``batch_key``: in the batch of that key, joined or opened, when
        batching; else one after the other, the device to themselves. Items too large to
        fit whole run alone, each in tiles sized for the whole device, and so does a lone
        item when no batch of its key runs (a batch of one only costs its bookkeeping)."""

        def start() -> EvaluationBatch | None:
            # a video frame opens a batch alone too: the frames of other shots come a call
            # each (``Scheduler.call_limit``) and join it
            alone = len(items) <= 1 and items[0][0].frame is None
            if self.max_batch <= 1 or alone or self._too_large(items[0][0]):
                return None
            return self.stylizer.batch(self.max_batch)

        with self.turns.take(key, start) as turn:
            if turn.batch is None:
                return [self.render(item, attempt, run_started, run_kind, warmup) for item, attempt in items]
            outcomes = turn.run(
                [
                    functools.partial(self.render, item, attempt, run_started, run_kind, warmup, turn.batch)
                    for item, attempt in items
                ]
            )
        # render never raises; should a thread still fail, the item is retried, not lost
        return [
            o if not isinstance(o, BaseException) else self._crashed(item, attempt, run_kind, o)
            for (item, attempt), o in zip(items, outcomes, strict=True)
        ]

    def _too_large(self, item: WorkItem) -> bool:
        """Whether ``item`` would not fit whole on this worker's device (``placement.place``
        says tiled: then its group opens no batch, and each item runs alone, in tiles, or
        fails in ``render`` with the memory in its row)."""
        try:
            return bool(all(item.shape) and self.stylizer.place(*item.shape, item.config).tile)
        except MemoryError:
            return True

    def _crashed(self, item: WorkItem, attempt: int, run_kind: str, exc: BaseException) -> Attempt:
        """An attempt the worker's own machinery lost (its batch failed to open, a thread
        failed outside ``render``): transient whatever ``exc`` is, since the item itself
        never ran and may well succeed on its next attempt."""
        row = make_row(
            item, "failed", attempt, error=f"{type(exc).__name__}: {one_line(exc)}", run_kind=run_kind
        )
        return Attempt(row, Outcome.TRANSIENT)

    def _report(self, item: WorkItem | None, iteration: int = 0, loss: float = float("nan")) -> None:
        """Post what this worker does to the board: an item's progress at most every
        ``PROGRESS_INTERVAL`` (a board call per tiny item would cost more than the item),
        idle when an item ends outside a batch or when the last running batch call ends.
        Under a lock: the syntheses of concurrent calls report from threads of their own."""
        if self.board is None:
            return
        with self._reporting:
            if item is None and self.batching:
                return
            now = time.monotonic()
            if item is not None and now - self.last_report < PROGRESS_INTERVAL:
                return
            self.last_report = now
            label = item.label if item else ""
            total = item.config.iterations if item else 0
            self.board.update.remote(self.actor_id, label, iteration, total, loss)

    def render(
        self,
        item: WorkItem,
        attempt: int,
        run_started: float,
        run_kind: str = "render",
        warmup: int = 0,
        batch: EvaluationBatch | None = None,
    ) -> Attempt:
        """The attempt's row and outcome (``outcome_of``). The image is written before
        the row is returned, and the row records its size and checksum (``output_bytes``,
        ``output_sha256``).
        ``warmup`` iterations are left out of the row's per-iteration statistics; with
        ``batch``, the synthesis is one of its members (``render_batch``)."""
        started, start_clock = _utcnow(), time.perf_counter()
        extra = {
            "node_id": self.node_id,
            "actor_id": self.actor_id,
            "hostname": self.hostname,
            "ray_version": ray.__version__,
            "torch_version": torch.__version__,
            "started_at": started,
            "queue_wait_seconds": max(0.0, time.time() - run_started),
        }
        self._report(item)
        mark = self.clock.start()
        stats, error, outcome = None, None, Outcome.OK
        checkpoint = ItemCheckpoint(self.root, item.item_id, self.checkpoint_every)
        try:
            frame = self.frames.start(item, item_config(item)) if item.frame is not None else None
            if frame is not None and frame.flow_seconds is not None:
                extra["flow_seconds"] = frame.flow_seconds
            result = self._synthesize(item, checkpoint, batch, frame)
            metadata = {**result.metadata, ITEM_ID_KEY: item.item_id}  # what recovery reads
            png = encode_png(result.image, metadata)
            self._write(item.output_path, png)
            checkpoint.discard()  # only once the image is in place
            stats = result.stats.with_warmup(warmup)
            # what a rerun verifies the image by (results.resume: check_done), from these bytes
            extra.update(output_bytes=len(png), output_sha256=hashlib.sha256(png).hexdigest())
        except Exception as exc:
            outcome = outcome_of(exc)
            if outcome is Outcome.OUT_OF_MEMORY:  # what the allocator keeps, back to the device
                release_cached(self.stylizer.device)
            error = self._error(item, outcome, exc)
        self._report(None)
        row = make_row(
            item,
            "failed" if error else "ok",
            attempt,
            stats=stats,
            error=error,
            run_kind=run_kind,
            **extra,
            finished_at=_utcnow(),
            total_seconds=time.perf_counter() - start_clock,
            device_seconds=self.clock.stop(mark),
        )
        row.setdefault("device_type", self.device_kind)  # a failed attempt's time is priced too
        metrics.item_rendered(row, self.stylizer.device)
        return Attempt(row, outcome)

    def _synthesize(
        self,
        item: WorkItem,
        checkpoint: ItemCheckpoint,
        batch: EvaluationBatch | None,
        frame: FrameStart | None = None,
    ) -> SynthesisResult:
        """``item``'s synthesis, its progress posted to the board. Told to stop (SIGTERM),
        a checkpointed synthesis saves and never returns (``preemption``). A video frame
        (``frame``) starts from its decoded content and the frame before it."""
        config = item_config(item)  # validates again: inside the caller's try, as a bad input
        # how it runs, decided here once (placement.place; the engine does not decide again)
        placement = self.stylizer.place(*item.shape, config, batch) if all(item.shape) else None
        last = [0.0]

        def on_iteration(record: Any, _image: Any) -> None:
            now = time.perf_counter()
            if now - last[0] >= PROGRESS_INTERVAL:
                last[0] = now
                self._report(item, record.iteration + 1, record.total)

        with self.holdings.holding(checkpoint.policy is not None):
            return self.stylizer.synthesize(
                frame.image if frame is not None else item.content_path,
                list(item.style_paths),
                config,
                content_id=item.content_hash,
                style_ids=list(item.style_hashes),
                on_iteration=on_iteration,
                checkpoint=checkpoint.policy,
                batch=batch,
                placement=placement,
                previous=frame.previous if frame is not None else None,
            )

    def _write(self, path: str, png: bytes) -> None:
        """The item's image into the output root; a failure is an ``OutputWriteError``."""
        try:
            self.root.write_bytes(path, png)
        except OSError as exc:
            raise OutputWriteError(path, exc) from exc

    def _error(self, item: WorkItem, outcome: Outcome, exc: Exception) -> str:
        """A failed attempt's error column: bad input and an image not written as their
        message says it (it names the file or parameter, the path and why), out of memory
        with the size and device, others with their type."""
        if outcome in (Outcome.BAD_INPUT, Outcome.OUTPUT_UNWRITABLE, Outcome.ROOT_FULL):
            return one_line(exc)
        if outcome is Outcome.OUT_OF_MEMORY:
            return f"{OUT_OF_MEMORY} at size {item.size} on {self.stylizer.device}: {one_line(exc)}"
        return f"{type(exc).__name__}: {one_line(exc)}"
