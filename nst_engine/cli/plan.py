"""``nst plan``: what ``nst render`` would do, without starting Ray; and the one-line plan
``nst render`` prints before it starts (both through ``plan_render``)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import STORAGE_ERRORS, ManifestArgument, OutputOption, app, err, fail
from nst_engine.errors import NSTError, one_line

if TYPE_CHECKING:
    from nst_engine.planning.items import WorkItem
    from nst_engine.planning.manifest import Manifest
    from nst_engine.reports.plan import RenderPlan

#: Items of a list (bad inputs, styles) shown before "... and N more".
SHOWN = 10


def fit_locations(manifest: Manifest, requested: list[str] | None) -> list[str]:
    """Where the fits come from: ``requested``, else the output root itself and the
    default benchmark folder (``nst bench scaling``'s output), when they hold rows."""
    from nst_engine.cli.bench import DEFAULT_RESULTS  # here: importing it registers bench's commands

    if requested:
        return requested
    bench = posixpath.dirname(DEFAULT_RESULTS)
    return list(dict.fromkeys([str(manifest.output), bench]))


def check_output_root(output: str) -> None:
    """Exit 2 with one line when ``output`` cannot take results (no folder, no permission,
    a bucket that refuses writes), found by writing, renaming and deleting a probe there:
    before any work starts, not after rendering, when the results would be lost."""
    from nst_engine.storage.roots import OutputRoot

    try:
        OutputRoot(output).probe_writable()
    except NSTError as exc:  # NotWritableError: the root, the step, what to do
        raise fail(exc) from None
    except STORAGE_ERRORS as exc:  # a URI no filesystem takes: not echoed, it may hold a secret
        raise fail(f"output root: {one_line(exc)}") from None


def load_checked_manifest(manifest: Path, output: str | None) -> Manifest:
    """The manifest with its own fields checked (no image read); a problem exits 2."""
    from nst_engine.planning.manifest import load_manifest

    try:
        return load_manifest(manifest, output)
    except NSTError as exc:
        raise fail(exc) from None


def load_and_expand(
    manifest: Path, output: str | None, skip_bad_inputs: bool
) -> tuple[Manifest, list[WorkItem]]:
    """The manifest and its work items, as ``nst plan`` and ``nst render`` both need them,
    after everything a run needs is checked: the manifest, the output root (written to),
    every image (decoded in full) and the weights (loaded). Every problem exits 2 before
    Ray starts: the manifest's one per line, the output root's in one line."""
    from nst_engine.planning.items import expand

    loaded = load_checked_manifest(manifest, output)
    check_output_root(str(loaded.output))  # first: cheap, and the hash cache is written there
    try:
        return loaded, expand(loaded, skip_bad_inputs=skip_bad_inputs)
    except NSTError as exc:  # bad inputs, deliberately one per line
        raise fail(exc) from None
    except STORAGE_ERRORS as exc:  # the hash cache in the output root: a bad URI, no access
        raise fail(f"{loaded.output}: cannot use the output root ({one_line(exc)})") from None


def plan_render(
    source: Path,
    manifest: Manifest,
    items: list[WorkItem],
    force: bool,
    fits_from: list[str] | None,
    verify: bool = False,
) -> RenderPlan:
    """The plan of rendering ``items`` (expanded from ``manifest``); ``verify`` reads every
    done image (``--verify-outputs``). A problem reading the output root or the fits'
    results is one ``error:`` line and exit code 2."""

    from nst_engine.reports.plan import load_fits, make_plan
    from nst_engine.results.table import ResultTable
    from nst_engine.storage.roots import OutputRoot

    try:
        fits, used = load_fits(fit_locations(manifest, fits_from), required=bool(fits_from))
        store = ResultTable(OutputRoot(str(manifest.output)))
        return make_plan(str(source), items, store, force=force, fits=fits, fits_from=used, verify=verify)
    except NSTError as exc:
        raise fail(exc) from None
    except STORAGE_ERRORS as exc:
        raise fail(f"{manifest.output}: cannot read the output root ({one_line(exc)})") from None


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
    loaded, items = load_and_expand(manifest, output, skip_bad_inputs=True)  # counted, not refused
    result = plan_render(manifest, loaded, items, force, results_for_fits, verify_outputs)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        print_plan(result)
