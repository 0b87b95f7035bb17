"""``nst plan``: what ``nst render`` would do, without starting Ray (``runs.prepare``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nst_engine.cli.app import ManifestArgument, OutputOption, PriceOption, app, err, reports_errors
from nst_engine.errors import NSTError
from nst_engine.results.cost import Prices, parse_prices

if TYPE_CHECKING:
    from nst_engine.reports.plan import RenderPlan

#: Items of a list (bad inputs, styles) shown before "... and N more".
SHOWN = 10


def print_plan(plan: RenderPlan, prices: Prices | None = None) -> None:
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
    if plan.video:
        err.print(f"  video        {escape(plan.video.text())}; {plan.video.done:,} frames done")
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
            cost = f", {_cost_text(p.device_type, p.seconds, prices)}" if prices else ""
            err.print(f"    {escape(p.device)} ({p.device_type}): {format_duration(p.seconds)}{cost}")
        err.print(f"  (fits from {escape(', '.join(plan.fits_from))})")
    for warning in plan.warnings():
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _cost_text(kind: str, seconds: float, prices: Prices) -> str:
    """The predicted cost of ``seconds`` on one device of ``kind`` (a CPU worker holds a
    core per thread: its cost is this times its threads)."""
    if kind not in prices.per_hour:
        return f"no --price for {kind}"
    return f"cost {prices.cost(kind, seconds):.4g}" + (" per core" if kind == "cpu" else "")


def _priced(data: dict, prices: Prices | None) -> dict:
    """The plan's JSON with each prediction's ``cost`` (null for a kind with no price)."""
    if prices:
        for p in data.get("predictions", []):
            known = p["device_type"] in prices.per_hour
            p["cost"] = prices.cost(p["device_type"], p["seconds"]) if known else None
    return data


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
    price: PriceOption = None,
) -> None:
    """Say what 'nst render' would do, without starting Ray.

    Validates and expands MANIFEST and prints the items, styles and sizes, how many are
    already done, to render and bad inputs, and the predicted time per device from earlier
    runs' fits (and its cost, with --price), with memory warnings. Writes no results:
    only its hash cache, and a probe file it deletes at once (the output root must take
    what render writes).
    """
    from nst_engine.runs import prepare

    try:
        prices = parse_prices(price) if price is not None else None
    except ValueError as exc:
        raise NSTError(str(exc), field="price") from None
    prepared = prepare.prepare(manifest, output, skip_bad_inputs=True)  # counted, not refused
    result = prepare.plan(prepared, force, results_for_fits, verify_outputs)
    if as_json:
        typer.echo(json.dumps(_priced(result.to_json(), prices)))
    else:
        print_plan(result, prices)
