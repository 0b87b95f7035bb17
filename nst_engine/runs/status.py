"""``nst status OUTPUT_ROOT``: where the latest render of an output root stands."""

from __future__ import annotations

from nst_engine.results.status import RenderStatus, render_status
from nst_engine.storage.errors import storage_problem
from nst_engine.storage.roots import OutputRoot


def status(output: str) -> RenderStatus:
    """The latest render's status in ``output`` (a folder or URI), from its files alone:
    any machine that can read the root can ask, while the render runs or after."""
    root = OutputRoot(output)
    with storage_problem(f"{root.uri}: cannot read the render's status ({{error}})"):
        return render_status(root)
