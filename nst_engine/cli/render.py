"""``nst render``: a manifest through Ray, with a live view and a summary."""

from __future__ import annotations

import functools
import shlex
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nst_engine.cli.app import (
    STORAGE_ERRORS,
    ManifestArgument,
    OutputOption,
    app,
    err,
    exit_code,
    fail,
    stop_on_sigterm,
    stopped_by,
)
from nst_engine.distributed.options import (
    MAX_DEFAULT_THREADS,
    WORKERS_FORMS,
    PoolOptions,
    parse_checkpoint_every,
    parse_max_batch,
    parse_workers,
)
from nst_engine.errors import NSTError, one_line

if TYPE_CHECKING:
    from nst_engine.distributed.scheduler import Progress, RunSummary
    from nst_engine.storage.lease import Lease
    from nst_engine.storage.roots import OutputRoot


class RenderView:
    """Overall bar (done / failed / total, ETA) and one line per worker."""

    def __init__(self, total: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]rendering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("render", total=total, detail="")
        self.workers = Table.grid(padding=(0, 2))

    def update(self, progress: Progress) -> None:
        self.bar.update(
            self.task,
            completed=progress.done + progress.failed + progress.skipped,
            detail=f"ok {progress.done}  failed {progress.failed}  skipped {progress.skipped}",
        )
        table = Table.grid(padding=(0, 2))
        for actor, (label, iteration, total, loss) in sorted(progress.workers.items()):
            state = f"{escape(label)}  iteration {iteration}/{total}  loss {loss:.4g}" if label else "idle"
            table.add_row(f"worker {actor[:8]}", state)
        self.workers = table

    def __rich__(self) -> Group:
        return Group(self.bar, self.workers)


def print_summary(summary: RunSummary, results: str) -> None:
    table = Table(title="render summary", show_edge=False)
    table.add_column("rendered", justify="right")
    table.add_column("skipped (already done)", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("retried attempts", justify="right")
    table.add_column("workers", justify="right")
    table.add_column("wall time", justify="right")
    table.add_row(
        str(summary.rendered),
        str(summary.skipped),
        str(len(summary.failed)),
        str(summary.retried),
        f"{summary.workers} (peak {summary.peak_workers})",
        f"{summary.wall_seconds:.1f} s",
    )
    err.print(table)
    for item, reason in summary.failed[:20]:
        err.print(f"  failed: {escape(item.label)}: {escape(reason)}", soft_wrap=True)
    if len(summary.failed) > 20:
        err.print(f"  ... and {len(summary.failed) - 20} more (see the status column of the results)")
    err.print(f"results: {escape(results)}")


def take_lease(ctx: typer.Context, root: OutputRoot, command: str, manifest: str | None, wait: bool) -> Lease:
    """The output root's lease for this command, held until the command ends (any way:
    ``ctx.with_resource``); a root another run holds is one ``error:`` line naming it and
    exit 2, or with ``wait`` a line saying whom we wait for, then the wait."""
    from nst_engine.storage.lease import Lease

    def warn(line: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)

    lease = Lease(root, command, manifest, warn=warn)
    try:
        lease.acquire(wait=wait, on_wait=lambda line: err.print(escape(line), soft_wrap=True))
    except NSTError as exc:  # LeaseHeldError: the holder, and what to do
        raise fail(exc) from None
    except STORAGE_ERRORS as exc:
        raise fail(f"{root.uri}: cannot take the output root's lease ({one_line(exc)})") from None
    return ctx.with_resource(lease)


@app.command()
def render(
    ctx: typer.Context,
    manifest: ManifestArgument,
    output: OutputOption = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: embedded).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Render items again even when already done.")] = False,
    skip_bad_inputs: Annotated[
        bool, typer.Option(help="Record items with missing/unreadable images as failed and render the rest.")
    ] = False,
    gpus: Annotated[
        bool | None,
        typer.Option(
            "--gpus/--no-gpus",
            help="GPU workers only: wait for GPU nodes, an error if none joins within "
            "--worker-start-timeout; --no-gpus: CPU workers (default: GPUs if the cluster has "
            "any or its autoscaler can add some).",
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            metavar="N|MIN:MAX",
            help=f"Workers: {WORKERS_FORMS}; requested at once so the autoscaler adds nodes, "
            "released as the queue drains (default: GPUs: one per GPU present, up to the "
            "autoscaler's most; CPU: as many as fit).",
        ),
    ] = None,
    worker_start_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds with no worker ready (waiting for nodes) before the run fails."),
    ] = PoolOptions.worker_start_timeout,
    cpu_actors: Annotated[
        int | None, typer.Option(min=1, hidden=True, help="Older spelling of --workers N.")
    ] = None,
    threads_per_actor: Annotated[
        int | None,
        typer.Option(
            min=1, help=f"Torch threads per CPU worker (default: min(cores, {MAX_DEFAULT_THREADS}))."
        ),
    ] = None,
    max_in_flight: Annotated[
        int, typer.Option(min=1, help="Calls queued per worker (a call: one item, or several short ones).")
    ] = PoolOptions.max_in_flight,
    max_batch: Annotated[
        str,
        typer.Option(
            metavar="N|auto",
            help="Syntheses of one shape a worker runs at once, their evaluations batched "
            "(auto: up to 32 on a GPU, as many as its memory model admits; 1 on a CPU, where "
            "batching does not pay; 1: one at a time).",
        ),
    ] = "auto",
    workers_per_gpu: Annotated[
        int,
        typer.Option(min=1, help="GPU workers sharing one GPU, each asking Ray for 1/N of it."),
    ] = PoolOptions.workers_per_gpu,
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per item when workers die.")
    ] = PoolOptions.max_attempts,
    max_worker_failures: Annotated[
        int, typer.Option(min=1, help="Failures before a worker is retired.")
    ] = PoolOptions.max_worker_failures,
    checkpoint_every: Annotated[
        str,
        typer.Option(
            metavar="SECONDS",
            help="Save each synthesis in progress this often, so a lost worker's retry resumes it "
            "(auto: every 60 s for syntheses predicted to take over 3 minutes; 0: off).",
        ),
    ] = "auto",
    verify_outputs: Annotated[
        bool,
        typer.Option(
            "--verify-outputs",
            help="Read every done image and render again those that do not decode, are not their "
            "item's or differ from their checksum (default: trusted when the size matches the row).",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            help="When another run writes to the output root, wait for it to end and then render "
            "what it left (default: stop at once, exit code 2)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view.")] = False,
) -> None:
    """Render every item of MANIFEST and write images plus results.parquet.

    Items already rendered (ok row and its image, verified by size or with
    --verify-outputs by reading it) are skipped; the exit code is 1 when any item failed.
    """
    from nst_engine.cli.plan import load_and_expand, plan_render
    from nst_engine.distributed.runtime import connect, disconnect
    from nst_engine.distributed.scheduler import run_render
    from nst_engine.results.table import RESULTS_FILE
    from nst_engine.storage.roots import OutputRoot

    try:
        checkpoint_seconds = parse_checkpoint_every(checkpoint_every)
    except ValueError as exc:
        raise fail(f"--checkpoint-every: {exc}") from None
    try:
        worker_range = parse_workers(workers) if workers is not None else None
    except ValueError as exc:
        raise fail(exc) from None
    try:
        batch_limit = parse_max_batch(max_batch)
    except ValueError as exc:
        raise fail(f"--max-batch: {exc}") from None
    plan, items = load_and_expand(manifest, output, skip_bad_inputs)
    root = OutputRoot(plan.output)
    # the lease before the done check: what another run finishes is then in the rows read
    lease = take_lease(ctx, root, "nst render", str(manifest), wait)  # before Ray, before any item
    render_plan = plan_render(manifest, plan, items, force, None, verify_outputs)
    err.print(escape(render_plan.one_line()), soft_wrap=True)
    options = PoolOptions(
        use_gpus=gpus,
        workers=worker_range,
        worker_start_timeout=worker_start_timeout,
        cpu_actors=cpu_actors,
        threads_per_actor=threads_per_actor,
        max_in_flight=max_in_flight,
        max_batch=batch_limit,
        workers_per_gpu=workers_per_gpu,
        max_attempts=max_attempts,
        max_worker_failures=max_worker_failures,
        checkpoint_every=checkpoint_seconds,
    )
    try:
        # nothing to render (a rerun of a finished manifest): the run is recorded without Ray
        where = connect(address) if render_plan.to_render else "no cluster (nothing to render)"
    except NSTError as exc:
        raise fail(exc) from None
    stop_on_sigterm()  # again: ray.init installed its own handler, which dumps a C++ stack
    err.print(f"{len(items)} items from {escape(str(manifest))} -> {escape(plan.output)} on {where}")
    view = RenderView(len(items))
    render_all = functools.partial(
        run_render,
        items,
        plan.weights,
        root,
        options,
        force=force,
        done=render_plan.check,
        still_ours=lease.check,
    )
    try:
        if quiet:
            summary = render_all()
        else:
            with Live(view, console=err, refresh_per_second=4):
                summary = render_all(on_progress=view.update)
                view.update(_final(summary))
    except NSTError as exc:  # e.g. no worker could start (WorkerStartError)
        raise fail(exc) from None
    except STORAGE_ERRORS as exc:  # the output root cannot be written (rows, runs, images)
        raise fail(f"{plan.output}: cannot write the results ({one_line(exc)})") from None
    finally:
        disconnect()
    print_summary(summary, root.display(RESULTS_FILE))
    if lease.lost:  # taken over mid-run (the heartbeat warned then): its writes raced another run's
        raise fail(lease.lost)
    if summary.interrupted is not None:
        print_resume(summary)
        raise typer.Exit(exit_code())
    if summary.failed:
        raise typer.Exit(1)


def print_resume(summary: RunSummary) -> None:
    """What a stopped run finished and how to go on (the rows of finished items are
    written; a rerun skips them)."""
    finished = summary.rendered + summary.skipped + len(summary.failed)
    err.print(
        f"{stopped_by()}: {finished} of {summary.total} items finished, "
        f"{summary.total - finished} to go; to render the rest, run again: "
        f"{escape(shlex.join(['nst', *sys.argv[1:]]))}",
        soft_wrap=True,
    )


def _final(summary: RunSummary) -> Progress:
    from nst_engine.distributed.scheduler import Progress

    return Progress(
        summary.total, summary.rendered, len(summary.failed), summary.skipped, summary.wall_seconds, {}
    )
