"""``nst bench scaling`` and ``nst estimate``: how time and memory grow with resolution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nst_engine.cli.app import Printer, app, err, reports_errors
from nst_engine.distributed.options import MAX_DEFAULT_THREADS
from nst_engine.errors import NSTError
from nst_engine.runs.prepare import BENCH_OUTPUT

if TYPE_CHECKING:
    from nst_engine.engine.config import SynthesisConfig
    from nst_engine.reports.scaling import DeviceFit

bench_app = typer.Typer(help="Benchmarks that write result rows (run_kind 'bench').", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _print_fits(locations: list[str], size: int | None = None, iterations: int | None = None) -> None:
    from nst_engine.engine.config import SynthesisConfig
    from nst_engine.reports.scaling import format_k
    from nst_engine.runs.bench import fits

    table = Table(title="time per iteration = a + b·pixels^k, memory = c + d·pixels", show_edge=False)
    for column in ("device", "sizes", "exponent (95% interval)", "a (s)", "largest square that fits"):
        table.add_column(column)
    if size:
        table.add_column(f"{size}² × {iterations} iterations")
    for fit in fits(locations):
        side = fit.max_square_side()
        row = [
            escape(fit.device),
            str(fit.points),
            format_k(fit),
            f"{fit.a:.3g}",
            f"{side}²" if side else "?",
        ]
        if size:
            row.append(_estimate_cell(fit, SynthesisConfig(size=size, iterations=iterations or 1)))
        table.add_row(*row)
    err.print(table)


def _estimate_cell(fit: DeviceFit, config: SynthesisConfig) -> str:
    """Predicted seconds of a square synthesis of ``config``, and whether it runs in tiles."""
    size = config.size
    tile = fit.tile(size, size, config)
    if tile is None:
        return "does not fit in memory, even in tiles"
    seconds = f"{fit.predict_tiled_seconds(size, size, config, tile):,.0f} s"
    return f"{seconds} in {tile} px tiles (too large to fit whole)" if tile else seconds


def _print_throughput(rates: dict[tuple[str, int, int], float]) -> None:
    """Items/s per device and size, one column per batch size, with the gain over one at a time."""
    sizes = sorted({b for _, _, b in rates})
    table = Table(title="items/s against batch size (gain over one at a time)", show_edge=False)
    for column in ("device", "pixels", *(f"batch {b}" for b in sizes)):
        table.add_column(column)
    for device, pixels in sorted({(d, p) for d, p, _ in rates}):
        alone = rates.get((device, pixels, 1))
        cells = []
        for b in sizes:
            rate = rates.get((device, pixels, b))
            gain = f" ({rate / alone:.2f}×)" if rate and alone and b > 1 else ""
            cells.append(f"{rate:.3g}{gain}" if rate else "–")
        table.add_row(escape(device), f"{pixels:,}", *cells)
    err.print(table)


class ScalingListener(Printer):
    """What ``nst bench scaling`` shows as it goes: a line per size and device."""

    def row(self, where: str, row: dict) -> None:
        if row["status"] == "ok":
            err.print(
                f"  {where}: {row['width']}x{row['height']} "
                f"{row['seconds_per_iteration']:.3f} s/iteration "
                f"[{row['seconds_per_iteration_p25']:.3f}, {row['seconds_per_iteration_p75']:.3f}], "
                f"{row['loss_evaluations'] / max(row['iterations'], 1):.2f} evaluations/iteration, "
                f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB"
            )
        else:
            err.print(f"  {where}: size {row.get('size')} {row['status']}: {escape(str(row.get('error')))}")


def _numbers(text: str, field: str) -> list[int]:
    """Comma-separated whole numbers >= 1, or an error naming the option, with what was typed."""
    try:
        numbers = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        numbers = [0]
    if not numbers or min(numbers) < 1:
        raise NSTError(f"expected comma-separated whole numbers >= 1, got {text!r}", field=field)
    return numbers


@bench_app.command("scaling")
@reports_errors
def scaling(
    sizes: Annotated[
        str, typer.Option(help="Comma-separated sizes (longer side, px).")
    ] = "128,256,384,512,768,1024",
    iterations: Annotated[int, typer.Option(help="Iterations per size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Iterations left out of the per-iteration median.")] = 2,
    devices: Annotated[str, typer.Option(help="Device kinds to measure: cpu, gpu or cpu,gpu.")] = "cpu,gpu",
    cpu_threads: Annotated[
        int | None,
        typer.Option(
            help=f"Threads of the CPU worker (default as nst render: min(cores, {MAX_DEFAULT_THREADS}))."
        ),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster (default: embedded local Ray).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output root for images and rows.")] = Path(
        BENCH_OUTPUT
    ),
    content: Annotated[Path | None, typer.Option(help="Content image (default: shipped Tübingen).")] = None,
    style: Annotated[Path | None, typer.Option(help="Style image (default: shipped Starry Night).")] = None,
    weights: Annotated[str, typer.Option(help="VGG-19 weights (as for nst stylize).")] = "embedded",
    wait: Annotated[
        bool, typer.Option(help="When another run writes to the output root, wait for it to end.")
    ] = False,
    batches: Annotated[
        str,
        typer.Option(
            help="Also run each size as a batch of each of these many syntheses at once (e.g. 1,4,16) "
            "and print items/s against batch size; the fits use the lone syntheses only."
        ),
    ] = "1",
) -> None:
    """The same synthesis at each size on every device type of the cluster; prints the fitted
    exponent k per device (the paper predicts k ≈ 1) and writes rows to OUTPUT/results.parquet."""
    from nst_engine.runs.bench import ScalingRequest
    from nst_engine.runs.bench import scaling as measure

    request = ScalingRequest(
        sizes=_numbers(sizes, "sizes"),
        iterations=iterations,
        warmup=warmup,
        devices=frozenset(d.strip() for d in devices.split(",") if d.strip()),
        batches=sorted(set(_numbers(batches, "batches")) | {1}),
        cpu_threads=cpu_threads,
        address=address,
        output=output,
        content=content,
        style=style,
        weights=weights,
        wait=wait,
    )
    measured = measure(request, ScalingListener())
    if measured.throughput:
        _print_throughput(measured.throughput)
    err.print(f"results: {escape(measured.results)}")
    if measured.lost:  # taken over mid-run (the heartbeat warned then)
        raise NSTError(measured.lost)
    _print_fits([measured.root])


@app.command()
@reports_errors
def estimate(
    size: Annotated[int, typer.Option(help="Longer side of a square image, in pixels.")] = 1024,
    iterations: Annotated[int, typer.Option(help="Iterations.")] = 500,
    results: Annotated[
        list[str] | None,
        typer.Option(
            help="Results to fit: a results.parquet, an output folder or a URI (file://, s3://); "
            "repeat for several (default: out/bench/results.parquet)."
        ),
    ] = None,
) -> None:
    """Predict time and memory fit for a size from earlier scaling or render results."""
    from nst_engine.runs.prepare import DEFAULT_BENCH_RESULTS

    if size <= 0 or iterations <= 0:
        raise NSTError("--size and --iterations must be positive")
    _print_fits(results or [DEFAULT_BENCH_RESULTS], size, iterations)
    err.print(f"(a square {size}x{size} image is {size * size:,} pixels; set-up time is not included)")
