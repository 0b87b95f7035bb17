"""Preemption without loss: a worker told to stop (SIGTERM) checkpoints every synthesis it
holds at once and exits; the retry resumes from that checkpoint.

The engine's stop notice is tested in-process; the worker's stop on a real multi-node
Ray cluster, with SIGTERM sent to the actor's process as Kubernetes or a spot notice
relay would."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from ray.cluster_utils import Cluster

from nst_engine.distributed.checkpoints import checkpoint_path
from nst_engine.distributed.cluster import pool_shape
from nst_engine.distributed.dispatch import Scheduler
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.preemption import DEFAULT_GRACE_SECONDS, GRACE_ENV, grace_seconds
from nst_engine.distributed.recording import RunSummary
from nst_engine.distributed.scheduler import render_lane
from nst_engine.distributed.worker import RenderWorker
from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.checkpoint import CheckpointPolicy
from nst_engine.engine.stop_notice import StopRequested, request_stop, withdraw_stop
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

#: Where a traced worker notes its iterations (the test's folder), set for Ray's workers.
TRACE_ENV = "NST_TEST_PREEMPTION_TRACE"
#: Seconds a traced worker's iteration takes at least, so the test signals mid-synthesis.
PACE = 0.05


class Store:
    """Checkpoint bytes in memory: the policy's two callables."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data, self.saves = data, 0

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data, self.saves = data, self.saves + 1


def saved_iteration(data: bytes | None) -> int:
    """The iteration a checkpoint's bytes resume from (0: none)."""
    return len(torch.load(io.BytesIO(data), weights_only=True)["run"]["records"]) if data else 0


@pytest.fixture
def notice() -> Iterator[None]:
    """The process-wide stop notice, withdrawn after the test whatever happens."""
    try:
        yield
    finally:
        withdraw_stop()


# --- the engine's notice, no Ray ---------------------------------------------------------


def test_stop_notice_saves_at_the_next_iteration_and_ends(
    content_path: Path, style_path: Path, notice: None
) -> None:
    config = SynthesisConfig(size=32, iterations=30)
    store = Store()
    # an interval of an hour and a "too short to checkpoint" rule: only the stop saves
    policy = CheckpointPolicy(3600, store.load, store.save, min_predicted_seconds=1e9)

    def stop_at_4(record: Any, _image: Any) -> None:
        if record.iteration + 1 == 4:
            request_stop()

    stylizer = Stylizer(random_weights(seed=0), device="cpu")
    with pytest.raises(StopRequested) as stopped:
        stylizer.synthesize(content_path, [style_path], config, on_iteration=stop_at_4, checkpoint=policy)
    assert stopped.value.saved_at == 4 and store.saves == 1 and saved_iteration(store.data) == 4

    # while the notice stands, a synthesis does no work at all (its checkpoint stays)
    with pytest.raises(StopRequested) as again:
        stylizer.synthesize(content_path, [style_path], config, checkpoint=policy)
    assert again.value.saved_at is None and saved_iteration(store.data) == 4

    withdraw_stop()
    resumed = stylizer.synthesize(content_path, [style_path], config, checkpoint=policy)
    assert resumed.stats.resumed_from_iteration == 4 and resumed.stats.iterations == 30


def test_stop_notice_leaves_unchecked_syntheses_alone(
    content_path: Path, style_path: Path, notice: None
) -> None:
    """Checkpointing off (no policy): nothing to save, so the notice does not end it."""
    request_stop()
    result = Stylizer(random_weights(seed=0), device="cpu").synthesize(
        content_path, [style_path], SynthesisConfig(size=32, iterations=5)
    )
    assert result.stats.iterations == 5


def test_grace_period_from_the_environment() -> None:
    assert grace_seconds({}) == DEFAULT_GRACE_SECONDS
    assert grace_seconds({GRACE_ENV: "7.5"}) == 7.5
    assert grace_seconds({GRACE_ENV: "soon"}) == DEFAULT_GRACE_SECONDS
    assert grace_seconds({GRACE_ENV: "-1"}) == DEFAULT_GRACE_SECONDS
