"""Checkpoints of a synthesis in progress, so a lost worker's retry resumes where it stopped.

The engine knows *what* a checkpoint holds and *when* to take one; *where* it lives is
the caller's business: a :class:`CheckpointPolicy` hands the engine two callables,
``load() -> bytes | None`` and ``save(bytes)``, so the engine stays free of Ray and of
output roots (the batch worker stores the bytes in the output root, atomically).

A checkpoint is ``torch.save`` of a plain dict — the optimisation run's ``state_dict()``
(iterate, L-BFGS's ring of pairs with their products SᵀY and YᵀY, or Adam's moments, the
iteration records so far; the two-loop's list of pairs of older checkpoints still loads)
and a fingerprint of
the work — read back with ``torch.load(..., weights_only=True)``, which refuses anything
but tensors and plain containers. The fingerprint hashes everything that decides the
iterates (every parameter, the input images, the network weights, the output size), so a
checkpoint left by different work is never applied. Nor is one that does not fit the run
(``run_state.check_state``: every key, type, shape and dtype, whole counts, a run still in
progress): whatever is wrong with a checkpoint, it costs a restart, never the item. An
unusable checkpoint is ignored with a warning and removed (``CheckpointPolicy.discard``),
so the next attempt does not read it again.

What is trusted: the fingerprint is no secret (it hashes the work, not a key), so whoever
can write where checkpoints live can write one that is applied, with any image of the
right shape; checks catch damage and mismatches, not an adversary with write access.

Size: the run state is the image and the gradient (2 × 3·H·W floats) plus, for L-BFGS,
``history_size`` curvature pairs (2 × 3·H·W floats each), all float32 — the dtype the
optimizer works in, so nothing is lost. At 2048×1536 with the default history of 100
that is 202 × 37.7 MB ≈ 7.6 GB; at 512×384, 0.48 GB; at 256×192, 0.12 GB. Storing the
pairs at lower precision would halve it but break the promise that a resumed run
equals an uninterrupted one, so instead the interval stretches: a checkpoint is never
taken sooner than ``1 / max_overhead`` times the last save's duration after it, which
bounds the time spent saving to about ``max_overhead`` of the run's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.optimize import Run
from nst_engine.engine.run_state import check_state
from nst_engine.engine.stop_notice import StopRequested, stop_requested
from nst_engine.errors import one_line

log = logging.getLogger(__name__)

#: Version of the checkpoint layout; a checkpoint of another version is ignored.
FORMAT = 1

#: ``nst render --checkpoint-every auto``: how often a long synthesis saves itself, and
#: how long (predicted from its own iterations so far) a synthesis must be to be checkpointed.
AUTO_EVERY_SECONDS = 60.0
AUTO_MIN_PREDICTED_SECONDS = 180.0


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to save a synthesis in progress, and where its bytes go.

    ``every_seconds``: optimisation time between checkpoints (0: after every iteration).
    ``min_predicted_seconds``: checkpoint only a run whose predicted length (its mean
    iteration time so far × the iterations asked for) exceeds this; short runs lose
    little when restarted, so they are spared the saves. ``max_overhead``: the next save
    waits at least the last save's duration divided by this (``None``: no such floor),
    so saving a large state never dominates the run. ``load`` returns the stored bytes or
    ``None``; ``save`` must replace them atomically (a reader sees the old or the new
    checkpoint, never half of one); ``discard``, when given, removes the stored bytes once
    they proved unusable (else every later attempt would read them again).
    """

    every_seconds: float
    load: Callable[[], bytes | None]
    save: Callable[[bytes], None]
    min_predicted_seconds: float = 0.0
    max_overhead: float | None = 0.1
    discard: Callable[[], None] | None = None


def fingerprint(
    config: SynthesisConfig,
    weights_digest: str,
    content_id: str,
    style_ids: Sequence[str],
    height: int,
    width: int,
) -> str:
    """A hash of everything that decides the iterates; checkpoints carry it, and only a
    checkpoint with the same one is resumed."""
    identity = {
        "format": FORMAT,
        "params": config.to_params(),
        "weights": weights_digest,
        "content": content_id,
        "styles": list(style_ids),
        "size": [height, width],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def encode(run: Run, work: str) -> bytes:
    """The checkpoint of ``run`` (a run in progress) for the work fingerprinted ``work``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "fingerprint": work, "run": run.state_dict()}, buffer)
    return buffer.getvalue()


def decode(data: bytes, work: str) -> dict[str, Any] | None:
    """The run state in ``data`` when it is a readable checkpoint of the work ``work``,
    else ``None`` (damaged, of another version or of other work: start afresh)."""
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file must cost a restart, never the item
        log.warning("ignoring an unreadable checkpoint: %s", exc)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        log.warning("ignoring a checkpoint of another format")
        return None
    if checkpoint.get("fingerprint") != work:
        log.warning("ignoring a checkpoint of other work (parameters, inputs or weights differ)")
        return None
    if not isinstance(checkpoint.get("run"), dict):
        log.warning("ignoring a checkpoint without a run state")
        return None
    return checkpoint["run"]


class Checkpointer:
    """Applies a policy to one run: restores it from a matching checkpoint, then saves it
    when due. Save failures are logged and end checkpointing for this run: a checkpoint
    protects the synthesis, it must never be the reason it fails."""

    def __init__(self, policy: CheckpointPolicy, work: str) -> None:
        self.policy = policy
        self.work = work
        self.resumed_from = 0  # the iteration this attempt started at
        self.started = time.perf_counter()  # of this attempt's optimisation
        self.last_save = self.started
        self.save_seconds = 0.0
        self.saves = 0
        self.enabled = True

    def restore(self, run: Run) -> int:
        """Load a matching checkpoint into ``run`` (fresh, not yet stepped); returns the
        iteration it resumes from, 0 when there is none to use."""
        try:
            data = self.policy.load()
        except Exception as exc:  # storage of any kind: a checkpoint must never fail the item
            log.warning("could not read the checkpoint, starting afresh: %s", one_line(exc))
            data = None
        state = decode(data, self.work) if data else None
        if data and state is None:
            self._discard()
        if state is not None:
            fresh = run.state_dict()
            try:
                check_state(run, state)
                run.load_state_dict(state)
            except Exception as exc:  # whatever the bytes hold: a restart, never the item
                log.warning("ignoring a checkpoint that does not fit this run: %s", one_line(exc))
                run.load_state_dict(fresh)
                self._discard()
        # the clocks start with the optimisation, after the read
        self.resumed_from, self.started = run.iteration, time.perf_counter()
        self.last_save = self.started
        if stop_requested():  # told to stop before any work: the checkpoint read stays as it is
            raise StopRequested(None)
        return self.resumed_from

    def _discard(self) -> None:
        """Remove an unusable checkpoint; a failure is only logged (a later save replaces it)."""
        if self.policy.discard is None:
            return
        try:
            self.policy.discard()
        except Exception as exc:  # storage of any kind: only disk space is at stake
            log.warning("could not remove the unusable checkpoint: %s", one_line(exc))

    def after_iteration(self, run: Run) -> None:
        """Save ``run`` if a checkpoint is due; called after each iteration that moved it.
        Once the process is told to stop (``stop_notice``), a run that goes on saves now,
        due or not, and ends with ``StopRequested``; a finished one ends as it would."""
        if stop_requested() and not run.done:
            saved = self.enabled and self._save(run)
            raise StopRequested(run.iteration if saved else None)
        if not self.enabled or run.done or not self._due(run):
            return
        self._save(run)

    def _save(self, run: Run) -> bool:
        """Save ``run`` now; whether it was saved (a failure ends checkpointing)."""
        start = time.perf_counter()
        try:
            self.policy.save(encode(run, self.work))
        except OSError as exc:
            log.warning("checkpointing stopped for this synthesis: could not save: %s", exc)
            self.enabled = False
            return False
        self.last_save = time.perf_counter()
        self.save_seconds = self.last_save - start
        self.saves += 1
        return True

    def _due(self, run: Run) -> bool:
        policy, now = self.policy, time.perf_counter()
        interval = policy.every_seconds
        if policy.max_overhead:
            interval = max(interval, self.save_seconds / policy.max_overhead)
        if now - self.last_save < interval:
            return False
        if policy.min_predicted_seconds > 0:
            per_iteration = (now - self.started) / max(1, run.iteration - self.resumed_from)
            if per_iteration * run.settings.iterations < policy.min_predicted_seconds:
                return False
        return True
