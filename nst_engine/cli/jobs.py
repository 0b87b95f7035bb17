"""``nst submit / status / logs / cancel``: render jobs on a cluster through Ray Jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import app, err, reports_errors
from nst_engine.errors import NSTError
from nst_engine.storage import uris

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
    job_id: Annotated[str, typer.Argument(help="Job id printed by nst submit.")],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from nst_engine.distributed.jobs import status as job_status

    typer.echo(job_status(_address(address), job_id))


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
