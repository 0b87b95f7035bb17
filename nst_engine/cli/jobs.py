"""``nst submit / status / logs / cancel``: render jobs on a cluster through Ray Jobs, and
``nst status OUTPUT_ROOT``: where a render stands, from its output root."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import app, err, reports_errors
from nst_engine.errors import NSTError
from nst_engine.storage import uris

if TYPE_CHECKING:
    from nst_engine.results.status import RenderStatus

#: Hosts and failure reasons shown before "..." (--json lists them all).
SHOWN = 10

ADDRESS_HELP = (
    "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS or http://127.0.0.1:8265)."
)


def _address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"


@app.command()
@reports_errors
def submit(
    manifest_or_job: Annotated[Path, typer.Argument(help="A manifest, or a job file (see jobs/).")],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Output root seen from the cluster.")
    ] = None,
    submission_id: Annotated[str | None, typer.Option(help="Job id to use (default: Ray picks one).")] = None,
    check: Annotated[
        bool,
        typer.Option(
            help="Check the manifest's images, weights and output root from here first, as "
            "'nst plan' does (--no-check: when only the cluster sees them; the job checks them there)."
        ),
    ] = True,
) -> None:
    """Submit a render to a Ray cluster as a Ray Job and print the job id.

    The job file is checked, then the manifest with the same planning pass as 'nst plan'
    and 'nst render' (every image decoded, the weights loaded, the output root probed),
    from this machine: with shared storage (s3://, a shared folder) a bad job is refused
    here, before the cluster is contacted; with --no-check only the job file and the
    manifest's own fields are, and the render checks the rest on the cluster."""
    from nst_engine.distributed.jobs import JobSpec, is_job_file, load_job
    from nst_engine.distributed.jobs import submit as submit_job
    from nst_engine.runs import prepare

    if not manifest_or_job.is_file():
        raise NSTError(f"{manifest_or_job}: file not found")
    job = (
        load_job(manifest_or_job) if is_job_file(manifest_or_job) else JobSpec(str(manifest_or_job.resolve()))
    )
    if output:
        job.output = uris.absolute(output)
    if check:
        prepare.prepare(Path(job.manifest), job.output, job.skip_bad_inputs)
    else:
        prepare.load(Path(job.manifest), job.output)
    job_id = submit_job(_address(address or job.address), job, submission_id)
    err.print(f"submitted to {escape(_address(address or job.address))}")
    typer.echo(job_id)


@app.command()
@reports_errors
def status(
    job_id: Annotated[
        str,
        typer.Argument(
            help="An output root (folder or s3://, gs:// URI), or a job id printed by nst submit."
        ),
    ],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Output root: print the status as one JSON object on stdout.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Output root: refresh until the render stops (Ctrl-C ends).")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 5.0,
) -> None:
    """Print where a render stands: for an output root, its latest run's items done,
    failed and to go, throughput, ETA, workers and whether it is alive, read from the
    root's files (from any machine); for a submitted job id, the job's status
    (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    if uris.is_uri(job_id) or Path(job_id).is_dir():
        _root_status(job_id, as_json, interval if watch else None)
        return
    from nst_engine.distributed.jobs import status as job_status

    typer.echo(job_status(_address(address), job_id))


def _root_status(output: str, as_json: bool, interval: float | None) -> None:
    """``nst status OUTPUT_ROOT``, once or every ``interval`` seconds while it runs."""
    from nst_engine.runs.status import status as root_status

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the watching, not the render
        while True:
            found = root_status(output)
            if as_json:  # a line per refresh, for scripts
                typer.echo(json.dumps(found.to_json()))
            else:
                if interval is not None and err.is_terminal:  # refreshed in place, as watch(1) does
                    err.clear()
                print_status(found)
            if interval is None or found.state != "running":
                return
            time.sleep(interval)


def print_status(found: RenderStatus) -> None:
    """A render's status for people, on stderr like every command's report."""
    from nst_engine.distributed.nodes import ExcludedNode
    from nst_engine.reports.plan import format_duration
    from nst_engine.results.status import THROUGHPUT_MINUTES

    state = {
        "died": "[red]died[/] (running, but its lease has no heartbeat: rerun nst render)",
        "budget": "[yellow]budget[/] (stopped at its --budget: rerun nst render to go on)",
    }
    started = found.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    err.print(f"[bold]status[/] {escape(found.output)}  ({escape(found.manifest or 'no manifest')})")
    err.print(f"  state        {state.get(found.state, found.state)}", soft_wrap=True)
    if found.lease:
        err.print(f"  driver       {escape(found.lease)}", soft_wrap=True)
    err.print(f"  started      {started}")
    err.print(f"  items        {found.total:>8,}")
    err.print(f"  done         {found.done:>8,}  ({found.skipped:,} before this run)")
    err.print(f"  failed       {found.failed:>8,}  ({found.retried:,} attempts retried)")
    err.print(f"  to go        {found.to_go:>8,}")
    if found.per_minute is not None:
        err.print(f"  throughput   {found.per_minute:>8,.1f}  items/min (last {THROUGHPUT_MINUTES} min)")
    if found.eta_seconds is not None:
        err.print(f"  eta          {format_duration(found.eta_seconds):>8}")
    err.print(
        f"  device time  {found.device_seconds / 3600:>8.3g}  device-hours of items "
        f"(worker time {format_duration(found.worker_seconds)})"
    )
    if found.cost is not None:
        basis = "billed: workers held, busy or idle" if found.cost_basis == "bill" else "items so far"
        each = f"; {found.cost_per_item:.4g} per item" if found.cost_per_item is not None else ""
        err.print(f"  cost         {found.cost:>8.4g}  ({basis}, at {escape(found.prices or '')}{each})")
    if found.budget:
        left = found.budget_left
        reached = f"reached: {left:,} items not handed out" if left is not None else ""
        err.print(f"  budget       {escape(found.budget):>8}  {reached}")
    hosts = ", ".join(found.hosts[:SHOWN]) + (
        f", ... ({len(found.hosts)})" if len(found.hosts) > SHOWN else ""
    )
    err.print(f"  workers      {found.workers:>8,}  nodes ({escape(hosts or 'none yet')})")
    for device, count in found.devices.items():
        err.print(f"    {count:>8,}  on {escape(device)}")
    for reason, count in list(found.failures.items())[:SHOWN]:
        err.print(f"  [red]failed[/] {count:>6,}  {escape(reason)}", soft_wrap=True)
    for node in found.excluded_nodes:  # one wording with the render's summary
        err.print(f"  [red]excluded[/]  {escape(ExcludedNode(**node).describe())}", soft_wrap=True)
    _print_clips(found)


def _print_clips(found: RenderStatus) -> None:
    """Frames done per clip and shot, for the first ``SHOWN`` clips (frame totals are not
    in the footers: an encoded clip is complete)."""
    if not found.clips:
        return
    frames = sum(c.frames_done for c in found.clips)
    more = "+" if found.clips_capped else ""
    err.print(f"  clips        {len(found.clips):>8,}{more}  ({frames:,} frames done by any run)")
    for clip in found.clips[:SHOWN]:
        shots = ", ".join(f"{shot}: {n}" for shot, n in clip.shots.items())
        failed = f", [red]{clip.failed} failed[/]" if clip.failed else ""
        encoded = {True: "encoded", False: "not encoded yet", None: "not checked"}[clip.encoded]
        done = f"{clip.frames_done:,} frames done (per shot {shots})"
        err.print(f"    {escape(clip.clip)}: {done}{failed}; {encoded}", soft_wrap=True)
    if len(found.clips) > SHOWN:
        err.print(f"    ... and {len(found.clips) - SHOWN} more (--json lists them all)")


@app.command()
@reports_errors
def logs(
    job_id: Annotated[str, typer.Argument(help="Job id printed by nst submit.")],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Print a submitted job's logs."""
    from nst_engine.distributed.jobs import logs as job_logs

    typer.echo(job_logs(_address(address), job_id), nl=False)


@app.command()
@reports_errors
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id printed by nst submit.")],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Stop a submitted job; finished items stay, a rerun completes the rest."""
    from nst_engine.distributed.jobs import cancel as job_cancel

    stopped = job_cancel(_address(address), job_id)
    typer.echo("stopping" if stopped else "not running")
