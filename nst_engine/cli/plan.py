"""``nst plan``: what ``nst render`` would do, without starting Ray (``runs.prepare``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import ManifestArgument, OutputOption, app, err, reports_errors

if TYPE_CHECKING:
    from nst_engine.reports.plan import RenderPlan

#: Items of a list (bad inputs, styles) shown before "... and N more".
SHOWN = 10


def print_plan(plan: RenderPlan) -> None:
    """The plan for people, on stderr like every command's report."""
    from nst_engine.reports.plan import format_duration
    from nst_engine.storage.lease import lease_note

    styles = ", ".join(plan.styles[:SHOWN]) + (
        f", ... ({len(plan.styles)})" if len(plan.styles) > SHOWN else ""
    )
    sizes = ", ".join(str(s) for s in plan.sizes)
    err.print(f"[bold]plan[/] {escape(plan.manifest)} -> {escape(plan.output)}")
    if note := lease_note(plan.output):  # another run writes there now
        err.print(f"  lease        {escape(note)}", soft_wrap=True)
    err.print(
        f"  items        {plan.items:>8,}  ({len(plan.styles)} styles: {escape(styles)}; sizes {sizes})"
    )
    verified = "  (every image read and verified)" if plan.verified else ""
    err.print(f"  done         {plan.done:>8,}{verified}")
    if plan.recoverable:
        err.print(
            f"  recovered    {plan.recoverable:>8,}  (image written, row lost: recorded as ok, not rendered)"
        )
    err.print(f"  to render    {plan.to_render:>8,}")
    if plan.redo:
        err.print(f"    new        {plan.to_render - plan.redo:>8,}")
        err.print(f"    redo       {plan.redo:>8,}  (damaged or missing outputs)")
        for reason, count in plan.redo_reasons.items():
            err.print(f"      {count:>8,}  {escape(reason)}")
    err.print(f"  bad inputs   {len(plan.bad_inputs):>8,}")
    for bad in plan.bad_inputs[:SHOWN]:
        err.print(f"    {escape(bad.label)}: {escape(bad.error)}", soft_wrap=True)
    if len(plan.bad_inputs) > SHOWN:
        err.print(f"    ... and {len(plan.bad_inputs) - SHOWN} more (--json lists them all)")
    if not plan.predictions:
        err.print(
            "  predicted time: no fits yet (run 'nst bench scaling', or pass --results-for-fits)",
            soft_wrap=True,
        )
    elif plan.to_render:
        err.print("  predicted synthesis time on one worker (set-up not included):")
        for p in plan.predictions:
            err.print(f"    {escape(p.device)} ({p.device_type}): {format_duration(p.seconds)}")
        err.print(f"  (fits from {escape(', '.join(plan.fits_from))})")
    for warning in plan.warnings():
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@app.command()
@reports_errors
def plan(
    manifest: ManifestArgument,
    output: OutputOption = None,
    force: Annotated[bool, typer.Option(help="Plan as 'nst render --force': every item again.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as one JSON object on stdout.")
    ] = False,
    results_for_fits: Annotated[
        list[str] | None,
        typer.Option(
            help="Results whose scaling fits predict the time (a folder, results.parquet or URI); "
            "repeat for several (default: the output root, and nst bench scaling's results when present)."
        ),
    ] = None,
    verify_outputs: Annotated[
        bool,
        typer.Option(
            "--verify-outputs",
            help="Read every done image and check that it decodes, is its item's and matches its "
            "checksum (default: trusted when its size matches its row); failures count as redo.",
        ),
    ] = False,
) -> None:
    """Say what 'nst render' would do, without starting Ray.

    Validates and expands MANIFEST and prints the items, styles and sizes, how many are
    already done, to render and bad inputs, and the predicted time per device from earlier
    runs' fits, with memory warnings. Writes no results: only its hash cache, and a probe
    file it deletes at once (the output root must take what render writes).
    """
    from nst_engine.runs import prepare

    prepared = prepare.prepare(manifest, output, skip_bad_inputs=True)  # counted, not refused
    result = prepare.plan(prepared, force, results_for_fits, verify_outputs)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        print_plan(result)
