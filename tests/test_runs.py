"""The run layer from Python, as a script would call it: typed requests, typed results, and
what a run tells its listener as it goes (a real local Ray, started and stopped by the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nst_engine.distributed.options import PoolOptions
from nst_engine.errors import NSTError
from nst_engine.runs.events import Silent
from nst_engine.runs.prepare import prepare
from nst_engine.runs.render import RenderRequest, render
from tests.ray_helpers import tiny_manifest


class Heard:
    """A listener that keeps what it hears, in order."""

    live = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, ...]] = []

    def note(self, line: str) -> None:
        self.calls.append(("note", line))

    def warn(self, line: str) -> None:
        self.calls.append(("warn", line))

    def connected(self, line: str, total: int = 0) -> None:
        self.calls.append(("connected", line, total))

    def progress(self, progress: object) -> None:
        self.calls.append(("progress", progress))

    def row(self, where: str, row: dict) -> None:
        self.calls.append(("row", where))


def test_a_render_from_python_tells_its_listener_as_it_goes(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=2, styles=1)
    heard = Heard()
    options = PoolOptions(threads_per_actor=1, cpu_actors=1, max_batch=1)
    rendered = render(RenderRequest(manifest, options=options), heard)
    assert rendered.summary.rendered == 2 and not rendered.summary.failed and rendered.lost is None
    assert rendered.results.endswith("results.parquet") and rendered.plan.to_render == 2
    kinds = [call[0] for call in heard.calls]
    assert kinds.index("note") < kinds.index("connected")  # the plan line comes before Ray
    assert heard.calls[kinds.index("note")][1].startswith("plan: 2 items")
    (connected,) = [call for call in heard.calls if call[0] == "connected"]
    assert "2 items from" in connected[1] and connected[2] == 2  # the live view's total

    again = render(RenderRequest(manifest), Silent())  # everything done: recorded without Ray
    assert again.summary.skipped == 2 and again.summary.rendered == 0


def test_a_run_refuses_what_the_user_must_fix_with_one_line(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("sizes:", "sizez:"))
    with pytest.raises(NSTError, match="sizez"):
        prepare(manifest)
    with pytest.raises(NSTError, match="manifest file not found"):
        prepare(tmp_path / "none.yaml")
