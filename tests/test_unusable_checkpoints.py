"""A checkpoint is applied only when it fits the run (issue 19, failures 8 and 2): whatever
else the output root holds at its place (wrong types, wrong shapes, missing keys, NaN
where counts are, a forged or finished image) costs a restart with a warning, and the
checkpoint is removed, never the item.

Each malformed state is a real checkpoint of a real synthesis (the same work, so its
fingerprint matches), edited and stored through the real ``ItemCheckpoint`` in an output
root; the last test renders through a real local Ray."""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from nst_engine.distributed.checkpoints import CHECKPOINT_DIR, ItemCheckpoint, checkpoint_path
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import connect
from nst_engine.distributed.scheduler import run_render
from nst_engine.engine import SynthesisConfig
from nst_engine.engine.result import SynthesisResult
from nst_engine.planning.items import expand
from nst_engine.planning.manifest import load_manifest
from nst_engine.storage.roots import OutputRoot
from tests.conftest import write_image
from tests.ray_helpers import rows, tiny_manifest
from tests.test_checkpoint import Store, left_checkpoint, synthesize

ITEM = "0123456789abcdef0123"  # an item id: where ItemCheckpoint keeps the checkpoint
ITERATIONS = 6
Edit = Callable[[dict[str, Any]], None]  # changes a checkpoint (its dict) in place


def _pairs(run: dict[str, Any]) -> None:
    """The ring as the two-loop's list of (s, y, ρ) of older checkpoints (which still load)."""
    ring = run.pop("ring")
    run["history"] = [[s, y, 1.0] for s, y in zip(ring["s"], ring["y"], strict=True)]


def _set(path: str, value: Any) -> Edit:
    """Set the run state's ``path`` (keys with dots, list indices as numbers) to ``value``."""

    def edit(checkpoint: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = checkpoint["run"]
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = checkpoint["run"]
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        for one in edits:
            one(checkpoint)

    return edit


def _finished_white(checkpoint: dict[str, Any]) -> None:
    """A forged result: the run said finished, every record there, a white image."""
    run = checkpoint["run"]
    run["records"] += [dict(run["records"][-1], iteration=n) for n in range(len(run["records"]), ITERATIONS)]
    run["stop_reason"], run["final"] = "iterations", [1.0, 1.0, 0.0, 0.0]
    run["image"] = torch.ones_like(run["image"])


def _old_history(value: Any) -> Edit:
    """A checkpoint of the older layout (``history``, no ``ring``) whose history is ``value``."""

    def edit(checkpoint: dict[str, Any]) -> None:
        _pairs(checkpoint["run"])
        checkpoint["run"]["history"] = value

    return edit


def _widen(key: str) -> Edit:
    """The ring's ``key`` one column wider than the run's image has pixels."""

    def edit(checkpoint: dict[str, Any]) -> None:
        ring = checkpoint["run"]["ring"]
        ring[key] = torch.cat([ring[key], ring[key][:, :1]], dim=1)

    return edit


def _without_run(checkpoint: dict[str, Any]) -> None:
    del checkpoint["run"]


LBFGS: dict[str, Edit] = {
    # wrong types
    "history a string": _old_history("not pairs"),
    "history pairs of strings": _old_history([["s", "y", 1.0]]),
    "history a dict": _old_history({"s": 1}),
    "ring a list": _set("ring", ["s", "y"]),
    "ring.s a string": _set("ring.s", "s"),
    "values a string": _set("values", "abcd"),
    "records a string": _set("records", "abc"),
    "evaluations a string": _set("evaluations", "3"),
    "run a list": lambda checkpoint: checkpoint.__setitem__("run", [1, 2]),
    # wrong shapes
    "ring.s wider": _widen("s"),
    "ring.sy one pair more": lambda c: c["run"]["ring"].__setitem__("sy", torch.zeros(5, 5)),
    "grad one short": lambda c: c["run"].__setitem__("grad", c["run"]["grad"][:-1].clone()),
    "history pair one short": _both(
        lambda c: _pairs(c["run"]), lambda c: c["run"]["history"][0].__setitem__(0, torch.zeros(3))
    ),
    # missing keys
    "no run": _without_run,
    "no records": _drop("records"),
    "no ring.written": _drop("ring.written"),
    "no history_scale": _drop("history_scale"),
    # NaN where counts are
    "evaluations NaN": _set("evaluations", math.nan),
    "ring.written NaN": _set("ring.written", math.nan),
    "ring.pending NaN": _set("ring.pending", math.nan),
    "records[0].iteration NaN": _set("records.0.iteration", math.nan),
    "records[1].evaluations NaN": _set("records.1.evaluations", math.nan),
    # the image (failure 2): forged shapes and dtypes, a finished run's forged result
    "image 1x1": _set("image", torch.zeros(1, 3, 1, 1)),
    "image transposed": lambda c: c["run"].__setitem__("image", c["run"]["image"].transpose(2, 3).clone()),
    "image float64": lambda c: c["run"].__setitem__("image", c["run"]["image"].double()),
    "image NaN": lambda c: c["run"]["image"].view(-1).__setitem__(0, math.nan),
    "finished with a white image": _finished_white,
}

ADAM: dict[str, Edit] = {
    "exp_avg one row short": lambda c: _moments(c).__setitem__("exp_avg", _moments(c)["exp_avg"][:, :, :-1]),
    "step NaN": lambda c: _moments(c).__setitem__("step", torch.tensor(math.nan)),
    "no exp_avg_sq": lambda c: _moments(c).pop("exp_avg_sq"),
    "lr a string": lambda c: c["run"]["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
    "previous a string": _set("previous", "x"),
}


def _moments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint["run"]["optimizer"]["state"][0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per optimizer: a real checkpoint after 3 of 6 iterations, the straight result, and
    the inputs (made once: every case edits a copy)."""
    folder = tmp_path_factory.mktemp("inputs")
    content = write_image(folder / "content.png", 48, 40, seed=1)
    style = write_image(folder / "style.png", 40, 48, seed=2)
    made: dict[str, Any] = {"content": content, "style": style}
    for optimizer in ("lbfgs", "adam"):
        config = SynthesisConfig(size=32, iterations=ITERATIONS, optimizer=optimizer, history_size=4)
        store = Store()
        synthesize(content, style, config, store.policy(max_overhead=None), stop_after=3)
        assert store.data is not None
        made[optimizer] = (config, store.data, synthesize(content, style, config, None))
    return made


def _resume_from(saved: dict[str, Any], optimizer: str, edit: Edit, root: OutputRoot) -> SynthesisResult:
    """Store the edited checkpoint where ``ItemCheckpoint`` looks, then synthesize with it."""
    config, data, _ = saved[optimizer]
    checkpoint = torch.load(io.BytesIO(data), weights_only=True)
    edit(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    root.write_bytes(checkpoint_path(ITEM), buffer.getvalue())
    keeper = ItemCheckpoint(root, ITEM, every=3600.0)  # reads it, saves nothing in 6 iterations
    return synthesize(saved["content"], saved["style"], config, keeper.policy)


@pytest.mark.parametrize(
    ("optimizer", "case"), [("lbfgs", name) for name in LBFGS] + [("adam", name) for name in ADAM]
)
def test_an_unusable_checkpoint_is_ignored_removed_and_the_synthesis_starts_afresh(
    saved: dict[str, Any], optimizer: str, case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    edit = (LBFGS if optimizer == "lbfgs" else ADAM)[case]
    with caplog.at_level(logging.WARNING, logger="nst_engine.engine.checkpoint"):
        result = _resume_from(saved, optimizer, edit, root)
    straight = saved[optimizer][2]
    assert result.stats.resumed_from_iteration == 0
    assert result.stats.iterations == ITERATIONS and result.stats.stop_reason == straight.stats.stop_reason
    torch.testing.assert_close(result.image, straight.image, rtol=1e-6, atol=1e-6)
    assert any("ignoring" in r.getMessage() for r in caplog.records), caplog.text
    assert not root.exists(checkpoint_path(ITEM))  # removed: the next attempt does not read it again
    assert not list((tmp_path / "out" / CHECKPOINT_DIR).iterdir())


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_whole_checkpoint_still_resumes(saved: dict[str, Any], optimizer: str, tmp_path: Path) -> None:
    """The checks refuse nothing the engine writes: the unedited checkpoint resumes, and
    so does one of the older layout (a list of pairs)."""
    root = OutputRoot(str(tmp_path / "out"))
    result = _resume_from(saved, optimizer, lambda _checkpoint: None, root)
    assert result.stats.resumed_from_iteration == 3 and result.stats.iterations == ITERATIONS
    torch.testing.assert_close(result.image, saved[optimizer][2].image, rtol=1e-5, atol=1e-5)
    if optimizer == "lbfgs":
        older = _resume_from(saved, optimizer, lambda c: _pairs(c["run"]), root)
        assert older.stats.resumed_from_iteration == 3 and older.stats.iterations == ITERATIONS


def test_a_forged_finished_checkpoint_is_not_the_result(saved: dict[str, Any], tmp_path: Path) -> None:
    """The audit's case: a copied fingerprint and a white image, the run marked finished.
    A checkpoint is only ever taken of a run in progress, so this one is no checkpoint."""
    result = _resume_from(saved, "lbfgs", _finished_white, OutputRoot(str(tmp_path / "out")))
    assert not torch.equal(result.image, torch.ones_like(result.image))
    torch.testing.assert_close(result.image, saved["lbfgs"][2].image, rtol=1e-6, atol=1e-6)


def test_a_render_with_a_malformed_checkpoint_renders_the_item(tmp_path: Path) -> None:
    """The issue's reproduction through a real Ray: the right fingerprint, a ``history``
    of the wrong type. The item is rendered in one attempt and the checkpoint is gone
    (it used to fail every attempt of every rerun, and stay)."""
    manifest = tiny_manifest(tmp_path, contents=1, styles=1, sizes=(32,), iterations=12)
    plan = load_manifest(manifest)
    (item,) = expand(plan)
    checkpoint = torch.load(io.BytesIO(left_checkpoint(plan, item, after=5)), weights_only=True)
    forged = copy.deepcopy(checkpoint)
    _old_history({"s": "not a pair"})(forged)
    buffer = io.BytesIO()
    torch.save(forged, buffer)
    root = OutputRoot(plan.output)
    root.write_bytes(checkpoint_path(item.item_id), buffer.getvalue())
    connect(num_cpus=1)
    try:
        summary = run_render([item], plan.weights, root, PoolOptions(cpu_actors=1, threads_per_actor=1))
    finally:
        ray.shutdown()
    assert (summary.rendered, summary.failed, summary.retried) == (1, [], 0)
    (row,) = rows(root.local_path())
    assert (row["status"], row["attempt"], row["resumed_from_iteration"]) == ("ok", 1, 0)
    assert not root.exists(checkpoint_path(item.item_id))
