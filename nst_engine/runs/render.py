"""``nst render`` as a function: a manifest through Ray, its rows in the output root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nst_engine.distributed.options import PoolOptions
from nst_engine.results.cost import Spending
from nst_engine.results.table import where_rows_are
from nst_engine.runs.events import Listener, Silent
from nst_engine.runs.lease import held
from nst_engine.runs.prepare import Prepared, plan, prepare
from nst_engine.storage.errors import storage_problem
from nst_engine.storage.roots import OutputRoot

if TYPE_CHECKING:
    from nst_engine.distributed.scheduler import RunSummary
    from nst_engine.reports.plan import RenderPlan


@dataclass(frozen=True)
class RenderRequest:
    """What to render, and how (``nst render``'s options)."""

    source: Path  # the manifest file
    output: str | None = None  # the output root, instead of the manifest's
    address: str | None = None  # Ray: auto, HOST:PORT, ray://HOST:10001 (None: embedded)
    options: PoolOptions = field(default_factory=PoolOptions)
    force: bool = False  # render done items again
    skip_bad_inputs: bool = False  # record items with bad images as failed, render the rest
    verify_outputs: bool = False  # read every done image rather than trust its size
    wait: bool = False  # wait for another run that holds the output root
    spending: Spending = field(default_factory=Spending)  # prices and budget (--price, --budget)


@dataclass(frozen=True)
class Rendered:
    """What a render did: ``summary`` (rendered, skipped, failed, interrupted), where its
    result rows are (``results.where_rows_are``: results.parquet, or the root and its parts
    when the run stopped before its final merge), the plan it followed, and why its lease
    was lost (None: it was not)."""

    summary: RunSummary
    results: str
    plan: RenderPlan
    lost: str | None


def render(request: RenderRequest, listener: Listener | None = None) -> Rendered:
    """Render every item of ``request.source`` not yet done; the images and result rows go to
    the output root, which this run holds (its lease) from before the done check (what
    another run finishes is then in the rows read) to its end. Every check is made before
    Ray starts; nothing to render (a finished manifest) records the run without Ray."""
    listener = listener or Silent()
    prepared = prepare(request.source, request.output, request.skip_bad_inputs)
    root = OutputRoot(prepared.manifest.output)
    with held(root, "nst render", str(request.source), request.wait, listener) as lease:
        render_plan = plan(prepared, request.force, None, request.verify_outputs)
        listener.note(render_plan.one_line())
        summary = _run(prepared, render_plan, request, root, lease.check, listener)
        lost = lease.lost
    return Rendered(summary, where_rows_are(root), render_plan, lost)


def _run(
    prepared: Prepared,
    render_plan: RenderPlan,
    request: RenderRequest,
    root: OutputRoot,
    still_ours: Callable[[], None],
    listener: Listener,
) -> RunSummary:
    """The items through Ray (connected here, disconnected however it ends)."""
    from nst_engine.distributed.runtime import connect, disconnect  # Ray: loaded when needed
    from nst_engine.distributed.scheduler import run_render

    manifest = prepared.manifest
    where = connect(request.address) if render_plan.to_render else "no cluster (nothing to render)"
    stopping = False
    try:
        items = len(prepared.items)
        listener.connected(f"{items} items from {prepared.source} -> {manifest.output} on {where}", items)
        with storage_problem(f"{manifest.output}: cannot write the results ({{error}})"):
            summary = run_render(
                prepared.items,
                manifest.weights,
                root,
                request.options,
                force=request.force,
                done=render_plan.check,
                still_ours=still_ours,
                on_progress=listener.progress if listener.live else None,
                spending=request.spending,
            )
        stopping = summary.interrupted is not None
        if not stopping and any(item.frame is not None for item in prepared.items):
            _encode_clips(prepared, root, listener)
        return summary
    finally:
        _disconnect(disconnect, stopping)


def _encode_clips(prepared: Prepared, root: OutputRoot, listener: Listener) -> None:
    """The stylized clips whose frames are all rendered, encoded (``distributed.clips``);
    a line for each clip written, and for each still waiting for frames."""
    from nst_engine.distributed.clips import encode_clips

    for outcome in encode_clips(prepared.items, root):
        state = "clip" if outcome.written else "clip not written"
        listener.note(f"{state}: {root.display(outcome.output)}: {outcome.note}")


def _disconnect(disconnect: Callable[[], None], stopping: bool) -> None:
    """``disconnect()``; when the run is ``stopping`` already (Ctrl-C, SIGTERM), another
    Ctrl-C meanwhile only cuts short its wait for Ray (``runtime.disconnect``), so the
    summary and how to go on are still shown."""
    try:
        disconnect()
    except KeyboardInterrupt:
        if not stopping:
            raise
