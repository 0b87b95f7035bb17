"""Tiny manifests for the Ray tests: real images, random tiny VGG, few iterations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import yaml
from PIL import Image

from nst_engine.distributed.protocol import Attempt, Outcome
from nst_engine.results.schema import make_row
from nst_engine.results.table import read_results
from tests.conftest import write_image

if TYPE_CHECKING:
    from nst_engine.distributed.scheduler import RunSummary


def tiny_manifest(
    folder: Path,
    contents: int = 2,
    styles: int = 2,
    sizes: tuple[int, ...] = (32,),
    iterations: int = 3,
    extra_contents: tuple[str, ...] = (),
) -> Path:
    photos = folder / "photos"
    (photos / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(contents):
        target = photos / ("sub" if i % 2 else "") / f"c{i}.png"
        write_image(target, 48, 40, seed=10 + i)
    for i in range(styles):
        write_image(folder / f"s{i}.png", 40, 48, seed=20 + i)
    manifest = {
        "name": "tiny",
        "output": "out",
        "contents": ["photos", *extra_contents],
        "styles": [f"s{i}.png" for i in range(styles)],
        "sizes": list(sizes),
        "params": {"iterations": iterations},
        "weights": {"source": "random"},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def rows(output: Path) -> list[dict]:
    """Every row: the compacted file plus any part files, through the project's one reader."""
    return read_results(str(output)).to_pylist()


def assert_outputs_whole(output: Path) -> list[Path]:
    """No temporary files left anywhere, and every PNG decodes fully."""
    assert not list(output.rglob(".nst-tmp-*")), list(output.rglob(".nst-tmp-*"))
    pngs = sorted(output.rglob("*.png"))
    for png in pngs:
        with Image.open(png) as img:
            img.load()
    return pngs


class ScriptedWorker:
    """Stands in for ``RenderWorker`` (same constructor, ``ready`` and ``render``, which
    returns an ``Attempt`` as the worker's does) without rendering: its process dies at
    the first attempt of size ``die_at``, and sizes from ``oom_at`` run out of memory;
    other items are ok. Pickled by value for Ray workers
    (``ray.cloudpickle.register_pickle_by_value(tests.ray_helpers)``)."""

    die_at = 40
    oom_at = 48

    def __init__(
        self,
        weights: Any,
        output_uri: str,
        device: str = "cpu",
        threads: Any = None,
        board: Any = None,
        checkpoint_every: Any = None,
        max_batch: Any = None,
        memory_share: Any = None,
    ):
        self.actor_id = ray.get_runtime_context().get_actor_id()

    def ready(self) -> dict[str, str]:
        return {"actor_id": self.actor_id}

    def render(
        self, item: Any, attempt: int, run_started: float, run_kind: str = "render", warmup: int = 0
    ) -> Attempt:
        if item.size == self.die_at and attempt == 1:
            os._exit(1)
        if item.size >= self.oom_at:
            error = f"out of memory at size {item.size} on cpu: scripted"
            row = make_row(item, "failed", attempt, error=error, run_kind=run_kind, actor_id=self.actor_id)
            return Attempt(row, Outcome.OUT_OF_MEMORY)
        return Attempt(make_row(item, "ok", attempt, run_kind=run_kind, actor_id=self.actor_id), Outcome.OK)


def render_in_one_batch_worker(manifest: Path, max_batch: int = 4) -> RunSummary:
    """Render ``manifest`` on a fresh local Ray with one 1-thread CPU worker that batches
    up to ``max_batch`` items; the run's summary."""
    from nst_engine.distributed.options import PoolOptions
    from nst_engine.distributed.runtime import connect
    from nst_engine.distributed.scheduler import run_render
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import load_manifest
    from nst_engine.storage.roots import OutputRoot

    plan = load_manifest(manifest)
    connect(num_cpus=2)
    try:
        options = PoolOptions(threads_per_actor=1, cpu_actors=1, max_batch=max_batch)
        return run_render(expand(plan), plan.weights, OutputRoot(plan.output), options)
    finally:
        ray.shutdown()
