"""``nst render``: a manifest through Ray, with a live view and a summary."""

from __future__ import annotations

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
    BUDGET_EXIT_CODE,
    ManifestArgument,
    OutputOption,
    PriceOption,
    Printer,
    app,
    err,
    exit_code,
    reports_errors,
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
from nst_engine.errors import NSTError
from nst_engine.results.cost import (
    BUDGET_FORM,
    DEVICE_KINDS,
    Prices,
    Spending,
    parse_budget,
    parse_prices,
    unpriced_kinds,
)

if TYPE_CHECKING:
    from nst_engine.distributed.scheduler import Progress, RunSummary


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
        for node in progress.excluded_nodes:
            table.add_row("[red]excluded[/]", escape(node))
        self.workers = table

    def __rich__(self) -> Group:
        return Group(self.bar, self.workers)


def print_summary(summary: RunSummary, results: str, prices: Prices | None = None) -> None:
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
    print_cost(summary, prices)
    for node in summary.excluded_nodes:
        err.print(f"  [red]excluded node[/]: {escape(node.describe())}", soft_wrap=True)
    for item, reason in summary.failed[:20]:
        err.print(f"  failed: {escape(item.label)}: {escape(reason)}", soft_wrap=True)
    if len(summary.failed) > 20:
        err.print(f"  ... and {len(summary.failed) - 20} more (see the status column of the results)")
    err.print(f"results: {escape(results)}")


#: ``nst render``'s options (aliases keep the command's signature one line per option).
Address = Annotated[
    str | None, typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: embedded).")
]
Force = Annotated[bool, typer.Option(help="Render items again even when already done.")]
SkipBadInputs = Annotated[
    bool, typer.Option(help="Record items with missing/unreadable images as failed and render the rest.")
]
Gpus = Annotated[
    bool | None,
    typer.Option(
        "--gpus/--no-gpus",
        help="GPU workers only: wait for GPU nodes, an error if none joins within "
        "--worker-start-timeout; --no-gpus: CPU workers (default: GPUs if the cluster has "
        "any or its autoscaler can add some).",
    ),
]
Workers = Annotated[
    str | None,
    typer.Option(
        metavar="N|MIN:MAX",
        help=f"Workers: {WORKERS_FORMS}; requested at once so the autoscaler adds nodes, "
        "released as the queue drains (default: GPUs: one per GPU present, up to the "
        "autoscaler's most; CPU: as many as fit).",
    ),
]
WorkerStartTimeout = Annotated[
    float, typer.Option(min=1, help="Seconds with no worker ready (waiting for nodes) before the run fails.")
]
CpuActors = Annotated[int | None, typer.Option(min=1, hidden=True, help="Older spelling of --workers N.")]
ThreadsPerActor = Annotated[
    int | None,
    typer.Option(min=1, help=f"Torch threads per CPU worker (default: min(cores, {MAX_DEFAULT_THREADS}))."),
]
MaxInFlight = Annotated[
    int, typer.Option(min=1, help="Calls queued per worker (a call: one item, or several short ones).")
]
MaxBatch = Annotated[
    str,
    typer.Option(
        metavar="N|auto",
        help="Syntheses of one shape a worker runs at once, their evaluations batched "
        "(auto: up to 32 on a GPU, as many as its memory model admits; 1 on a CPU, where "
        "batching does not pay; 1: one at a time).",
    ),
]
WorkersPerGpu = Annotated[
    int, typer.Option(min=1, help="GPU workers sharing one GPU, each asking Ray for 1/N of it.")
]
MaxAttempts = Annotated[int, typer.Option(min=1, help="Attempts per item when workers die.")]
MaxWorkerFailures = Annotated[int, typer.Option(min=1, help="Failures before a worker is retired.")]
MaxNodeFailures = Annotated[
    int,
    typer.Option(
        min=1,
        help="Device faults (CUDA or driver errors) and worker deaths on one node before the "
        "run stops using that node: its items are retried elsewhere.",
    ),
]
CheckpointEvery = Annotated[
    str,
    typer.Option(
        metavar="SECONDS",
        help="Save each synthesis in progress this often, so a lost worker's retry resumes it "
        "(auto: every 60 s for syntheses predicted to take over 3 minutes; 0: off).",
    ),
]
VerifyOutputs = Annotated[
    bool,
    typer.Option(
        "--verify-outputs",
        help="Read every done image and render again those that do not decode, are not their "
        "item's or differ from their checksum (default: trusted when the size matches the row).",
    ),
]
Wait = Annotated[
    bool,
    typer.Option(
        help="When another run writes to the output root, wait for it to end and then render "
        "what it left (default: stop at once, exit code 2)."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No live view.")]
Budget = Annotated[
    str | None,
    typer.Option(
        metavar="AMOUNT|HOURSh",
        help=f"Stop handing out items once the next one's projected spend would pass {BUDGET_FORM}; "
        f"running ones finish, a rerun continues (exit code {BUDGET_EXIT_CODE}). Money needs --price.",
    ),
]


class RenderListener(Printer):
    """What ``nst render`` shows as the run goes: lines on stderr, and once the cluster is
    reached (unless ``quiet``) the live view until the run ends (``stop``)."""

    def __init__(self, quiet: bool) -> None:
        self.live = not quiet
        self.view: RenderView | None = None
        self._display: Live | None = None

    def connected(self, line: str, total: int = 0) -> None:
        super().connected(line, total)
        if self.live:
            self.view = RenderView(total)
            self._display = Live(self.view, console=err, refresh_per_second=4)
            self._display.start()

    def progress(self, progress: Progress) -> None:  # type: ignore[override]
        if self.view is not None:
            self.view.update(progress)

    def stop(self, summary: RunSummary | None) -> None:
        if self.view is not None and summary is not None:
            self.view.update(_final(summary))
        if self._display is not None:
            self._display.stop()


def pool_options(
    gpus: bool | None,
    workers: str | None,
    max_batch: str,
    checkpoint_every: str,
    **given: int | float | None,
) -> PoolOptions:
    """``PoolOptions`` from ``nst render``'s options; a malformed value is an ``NSTError``
    naming its flag."""
    try:
        checkpoint_seconds = parse_checkpoint_every(checkpoint_every)
    except ValueError as exc:
        raise NSTError(str(exc), field="checkpoint_every") from None
    try:
        worker_range = parse_workers(workers) if workers is not None else None
    except ValueError as exc:
        raise NSTError(str(exc)) from None  # its text names --workers
    try:
        batch_limit = parse_max_batch(max_batch)
    except ValueError as exc:
        raise NSTError(str(exc), field="max_batch") from None
    return PoolOptions(
        use_gpus=gpus,
        workers=worker_range,
        max_batch=batch_limit,
        checkpoint_every=checkpoint_seconds,
        **given,  # type: ignore[arg-type]
    )


@app.command()
@reports_errors
def render(
    manifest: ManifestArgument,
    output: OutputOption = None,
    address: Address = None,
    force: Force = False,
    skip_bad_inputs: SkipBadInputs = False,
    gpus: Gpus = None,
    workers: Workers = None,
    worker_start_timeout: WorkerStartTimeout = PoolOptions.worker_start_timeout,
    cpu_actors: CpuActors = None,
    threads_per_actor: ThreadsPerActor = None,
    max_in_flight: MaxInFlight = PoolOptions.max_in_flight,
    max_batch: MaxBatch = "auto",
    workers_per_gpu: WorkersPerGpu = PoolOptions.workers_per_gpu,
    max_attempts: MaxAttempts = PoolOptions.max_attempts,
    max_worker_failures: MaxWorkerFailures = PoolOptions.max_worker_failures,
    max_node_failures: MaxNodeFailures = PoolOptions.max_node_failures,
    checkpoint_every: CheckpointEvery = "auto",
    verify_outputs: VerifyOutputs = False,
    wait: Wait = False,
    price: PriceOption = None,
    budget: Budget = None,
    quiet: Quiet = False,
) -> None:
    """Render every item of MANIFEST and write images plus results.parquet.

    Items already rendered (ok row and its image, verified by size or with
    --verify-outputs by reading it) are skipped; the exit code is 1 when any item failed.
    """
    from nst_engine.runs.render import RenderRequest
    from nst_engine.runs.render import render as render_run

    options = pool_options(
        gpus,
        workers,
        max_batch,
        checkpoint_every,
        worker_start_timeout=worker_start_timeout,
        cpu_actors=cpu_actors,
        threads_per_actor=threads_per_actor,
        max_in_flight=max_in_flight,
        workers_per_gpu=workers_per_gpu,
        max_attempts=max_attempts,
        max_worker_failures=max_worker_failures,
        max_node_failures=max_node_failures,
    )
    spending = spending_options(price, budget, gpus)
    request = RenderRequest(
        manifest, output, address, options, force, skip_bad_inputs, verify_outputs, wait, spending
    )
    listener = RenderListener(quiet)
    rendered = None
    try:
        rendered = render_run(request, listener)
    finally:
        listener.stop(rendered.summary if rendered else None)
    print_summary(rendered.summary, rendered.results, spending.prices)
    if rendered.lost:  # taken over mid-run (the heartbeat warned then): its writes raced another run's
        raise NSTError(rendered.lost)
    if rendered.summary.interrupted is not None:
        print_resume(rendered.summary)
        raise typer.Exit(exit_code())
    if rendered.summary.budget_left is not None:
        print_budget_stop(rendered.summary, spending)
        raise typer.Exit(BUDGET_EXIT_CODE)
    if rendered.summary.failed:
        raise typer.Exit(1)


def spending_options(price: str | None, budget: str | None, gpus: bool | None) -> Spending:
    """``--price`` and ``--budget`` as a ``Spending``; a money budget needs a price for
    every device kind the run may use (``--gpus``: cuda; ``--no-gpus``: cpu; else both),
    since a kind with no price would spend without limit."""
    try:
        prices = parse_prices(price) if price is not None else Spending().prices
    except ValueError as exc:
        raise NSTError(str(exc), field="price") from None
    try:
        limit = parse_budget(budget) if budget is not None else None
    except ValueError as exc:
        raise NSTError(str(exc), field="budget") from None
    kinds = DEVICE_KINDS if gpus is None else ("cuda",) if gpus else ("cpu",)
    if missing := unpriced_kinds(limit, prices, kinds):
        raise NSTError(
            f"{budget} is money, and --price has no price for {', '.join(missing)}: give "
            f"--price {','.join(f'{k}=AMOUNT/h' for k in missing)}, or a budget in device-hours (e.g. 12h)",
            field="budget",
        )
    return Spending(prices, limit)


def print_cost(summary: RunSummary, prices: Prices | None) -> None:
    """The run's device time, and its bill when it has prices."""
    if not summary.held and not summary.busy:
        return
    held, busy = sum(summary.held.values()), sum(summary.busy.values())
    line = f"device time: {held / 3600:.3g} device-hours held by workers, {busy / 3600:.3g} busy"
    if prices:
        cost = prices.total(summary.held)
        line += f"; cost {cost:.4g} at {prices.text()}"
    err.print(line)


def print_budget_stop(summary: RunSummary, spending: Spending) -> None:
    """Why the run stopped short, and how to go on."""
    assert spending.budget is not None
    left = summary.budget_left or 0
    err.print(
        f"budget reached: the next item would have passed --budget {spending.budget.text()}; "
        f"{left} item{'' if left == 1 else 's'} left to do; to render them, run again "
        "(with a new --budget): finished items are kept",
        soft_wrap=True,
    )


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
        summary.total,
        summary.rendered,
        len(summary.failed),
        summary.skipped,
        summary.wall_seconds,
        {},
        [node.describe() for node in summary.excluded_nodes],
    )
