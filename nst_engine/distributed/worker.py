"""The render worker: a Ray actor that loads VGG-19 once and renders items.

It never raises for a bad item: every outcome comes back as a result row, marked
retryable only when another attempt could succeed (an I/O hiccup), never for bad
input or running out of memory at that resolution.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import socket
import time
from dataclasses import replace
from typing import Any

import ray
import torch

from nst_engine.distributed.checkpoints import ItemCheckpoint
from nst_engine.engine.batch import EvaluationBatch, auto_batch, run_together
from nst_engine.engine.errors import NSTError, one_line
from nst_engine.engine.images import encode_png
from nst_engine.engine.memory import is_out_of_memory, release_cached
from nst_engine.engine.synthesis import Stylizer
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.planning.items import WorkItem
from nst_engine.results.schema import make_row
from nst_engine.results.storage import OutputRoot
from nst_engine.results.store import ITEM_ID_KEY

PROGRESS_INTERVAL = 0.5  # seconds between progress reports to the board (the live view's period)
OUT_OF_MEMORY = "out of memory"  # how the error of an out-of-memory row starts


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RenderWorker:
    """Holds a ``Stylizer`` (weights on its device, style-target cache) for its lifetime."""

    def __init__(
        self,
        weights: WeightsSpec,
        output_uri: str,
        device: str = "auto",
        threads: int | None = None,
        board: Any = None,
        checkpoint_every: float | None = None,
        max_batch: int | None = None,
    ) -> None:
        loaded, seconds = weights.load()
        self.stylizer = Stylizer(loaded, device=device, threads=threads, load_seconds=seconds)
        # syntheses at once (PoolOptions.max_batch); auto: by device, within its memory
        self.max_batch = max_batch or auto_batch(self.stylizer.device)
        self.root = OutputRoot(output_uri)
        self.board = board
        self.last_report = 0.0  # monotonic time of the last board update (``_report``)
        self.batching = False  # inside render_batch: one idle report at its end
        self.checkpoint_every = checkpoint_every  # PoolOptions.checkpoint_every
        context = ray.get_runtime_context()
        self.actor_id = context.get_actor_id() or "local"
        self.node_id = context.get_node_id()
        self.hostname = socket.gethostname()

    def ready(self) -> dict[str, str]:
        return {
            "actor_id": self.actor_id,
            "node_id": self.node_id,
            "device": str(self.stylizer.device),
            "hostname": self.hostname,
            "max_batch": str(self.max_batch),
        }

    def render_batch(
        self, items: list[tuple[WorkItem, int]], run_started: float, run_kind: str = "render", warmup: int = 0
    ) -> list[tuple[dict, bool]]:
        """``render`` of each (item, attempt), in one remote call, rows in the order given.

        Items that share a ``batch_key`` run together, up to ``max_batch`` at once, in one
        ``EvaluationBatch`` (one thread per synthesis; as one leaves, the next joins); the
        rest one at a time. For items of milliseconds, a call (and a driver event) per
        item would cost more than the items. One idle report at the end rather than one
        per item."""
        self.batching = True
        outcomes: dict[int, tuple[dict, bool]] = {}
        try:
            groups: dict[tuple, list[int]] = {}
            for index, (item, _) in enumerate(items):
                groups.setdefault(item.batch_key, []).append(index)
            for indices in groups.values():
                rows = self._render_group([items[i] for i in indices], run_started, run_kind, warmup)
                outcomes.update(zip(indices, rows, strict=True))
            return [outcomes[i] for i in range(len(items))]
        finally:
            self.batching = False
            self._report(None)

    def _render_group(
        self, items: list[tuple[WorkItem, int]], run_started: float, run_kind: str, warmup: int
    ) -> list[tuple[dict, bool]]:
        """Items of one ``batch_key``: together when batching, else one after the other;
        items too large to fit whole run alone, each in tiles sized for the whole device."""
        if self.max_batch <= 1 or len(items) <= 1 or self._too_large(items[0][0]):
            return [self.render(item, attempt, run_started, run_kind, warmup) for item, attempt in items]
        with self.stylizer.batch(self.max_batch) as batch:
            outcomes = run_together(
                [
                    functools.partial(self.render, item, attempt, run_started, run_kind, warmup, batch)
                    for item, attempt in items
                ],
                self.max_batch,
            )
        # render never raises; should a thread still fail, the item is retried, not lost
        return [
            o if not isinstance(o, BaseException) else self._crashed(item, attempt, run_kind, o)
            for (item, attempt), o in zip(items, outcomes, strict=True)
        ]

    def _too_large(self, item: WorkItem) -> bool:
        """Whether ``item`` would not fit whole on this worker's device (then it runs in
        tiles, or fails in ``render`` with the memory in its row)."""
        try:
            return bool(all(item.shape) and self.stylizer.tile_side(*item.shape, item.config))
        except MemoryError:
            return True

    def _crashed(self, item: WorkItem, attempt: int, run_kind: str, exc: BaseException) -> tuple[dict, bool]:
        row = make_row(
            item, "failed", attempt, error=f"{type(exc).__name__}: {one_line(exc)}", run_kind=run_kind
        )
        return row, True

    def _report(self, item: WorkItem | None, iteration: int = 0, loss: float = float("nan")) -> None:
        """Post what this worker does to the board: an item's progress at most every
        ``PROGRESS_INTERVAL`` (a board call per tiny item would cost more than the item),
        idle when an item ends outside a batch or when a batch ends."""
        if self.board is None or (item is None and self.batching):
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
    ) -> tuple[dict, bool]:
        """(result row, retryable). The image is written before the row is returned, and
        the row records its size and checksum (``output_bytes``, ``output_sha256``).
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
        last = [0.0]

        def on_iteration(record: Any, _image: Any) -> None:
            now = time.perf_counter()
            if now - last[0] >= PROGRESS_INTERVAL:
                last[0] = now
                self._report(item, record.iteration + 1, record.total)

        self._report(item)
        config = item.config
        if len(item.style_paths) > 1:
            config = replace(config, style_weights=item.style_weights)
        stats, error, retryable = None, None, False
        checkpoint = ItemCheckpoint(self.root, item.item_id, self.checkpoint_every)
        try:
            result = self.stylizer.synthesize(
                item.content_path,
                list(item.style_paths),
                config,
                content_id=item.content_hash,
                style_ids=list(item.style_hashes),
                on_iteration=on_iteration,
                checkpoint=checkpoint.policy,
                batch=batch,
            )
            metadata = {**result.metadata, ITEM_ID_KEY: item.item_id}  # what recovery reads
            png = encode_png(result.image, metadata)
            self.root.write_bytes(item.output_path, png)
            checkpoint.discard()  # only once the image is in place
            stats = result.stats.with_warmup(warmup)
            # what a rerun verifies the image by (results.store: check_done), from these bytes
            extra.update(output_bytes=len(png), output_sha256=hashlib.sha256(png).hexdigest())
        except NSTError as exc:  # bad input: another attempt would fail the same way
            error = one_line(exc)
        except Exception as exc:
            if is_out_of_memory(exc):  # final at this size, on this device
                release_cached(self.stylizer.device)
                error = f"{OUT_OF_MEMORY} at size {item.size} on {self.stylizer.device}: {one_line(exc)}"
            else:  # an I/O hiccup or the like: worth another attempt
                error, retryable = f"{type(exc).__name__}: {one_line(exc)}", True
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
        )
        return row, retryable


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where workers post what they are doing; the driver reads it for the live view."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, int, int, float]] = {}

    def update(self, actor_id: str, label: str, iteration: int, total: int, loss: float) -> None:
        self.state[actor_id] = (label, iteration, total, loss)

    def snapshot(self) -> dict[str, tuple[str, int, int, float]]:
        return dict(self.state)
