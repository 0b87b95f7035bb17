"""``nst bench scaling`` and ``nst estimate``: how time and memory grow with resolution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nst_engine.cli.app import app, err, fail, stop_on_sigterm
from nst_engine.distributed.options import MAX_DEFAULT_THREADS
from nst_engine.errors import NSTError, one_line

if TYPE_CHECKING:
    import pyarrow as pa

    from nst_engine.engine.config import SynthesisConfig
    from nst_engine.reports.scaling import DeviceFit

bench_app = typer.Typer(help="Benchmarks that write result rows (run_kind 'bench').", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

DEFAULT_RESULTS = "out/bench/results.parquet"


def _read_fit_rows(locations: list[str]) -> pa.Table:
    """The columns the fits read (``reports.scaling.FIT_COLUMNS``) of every results
    location: a .parquet file, an output folder, or a URI such as file:///abs/out/bench
    or s3://bucket/out; as one table."""
    import pyarrow as pa

    from nst_engine.reports.scaling import FIT_COLUMNS
    from nst_engine.results.table import read_results

    tables = []
    for location in locations:
        try:
            table = read_results(location, FIT_COLUMNS)
        except NSTError as exc:  # ResultsError: not a result table
            raise fail(exc) from None
        except (OSError, ValueError, pa.ArrowException) as exc:  # unreachable or malformed location
            raise fail(f"{location}: cannot read results ({one_line(exc)})") from None
        if table.num_rows == 0:
            raise fail(f"{location}: no results there; run 'nst bench scaling' (or nst render) first")
        tables.append(table)
    return pa.concat_tables(tables)


def _print_fits(locations: list[str], size: int | None = None, iterations: int | None = None) -> None:
    from nst_engine.engine.config import SynthesisConfig
    from nst_engine.reports.scaling import fit_devices, format_k

    fits = fit_devices(_read_fit_rows(locations))
    if not fits:
        raise fail(
            "no device has ok rows at 3 or more sizes; run 'nst bench scaling --sizes 128,256,384,...'"
        )
    table = Table(title="time per iteration = a + b·pixels^k, memory = c + d·pixels", show_edge=False)
    for column in ("device", "sizes", "exponent (95% interval)", "a (s)", "largest square that fits"):
        table.add_column(column)
    if size:
        table.add_column(f"{size}² × {iterations} iterations")
    for fit in fits:
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


@bench_app.command("scaling")
def scaling(
    ctx: typer.Context,
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
        "out/bench"
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
    from nst_engine.cli.render import take_lease
    from nst_engine.distributed.bench import batched_items, device_slots, items_per_second, run_scaling
    from nst_engine.distributed.runtime import connect, disconnect
    from nst_engine.engine.weights_spec import sample_images
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import manifest_from_dict
    from nst_engine.results.table import RESULTS_FILE
    from nst_engine.storage.roots import OutputRoot

    try:
        size_list = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise fail(f"--sizes: expected comma-separated whole numbers, got {sizes!r}") from None
    try:
        batch_list = sorted({int(b) for b in batches.split(",") if b.strip()} | {1})
    except ValueError:
        batch_list = [0]
    if min(batch_list) < 1:
        raise fail(f"--batches: expected comma-separated whole numbers >= 1, got {batches!r}")
    kinds = {d.strip() for d in devices.split(",") if d.strip()}
    if not size_list or kinds - {"cpu", "gpu"} or not kinds:
        raise fail("--sizes needs at least one size and --devices is cpu, gpu or cpu,gpu")
    if iterations < 2 or not 0 <= warmup < iterations:
        raise fail(
            f"--iterations must be at least 2 and --warmup between 0 and iterations - 1 (got {warmup})"
        )
    samples = {p.stem: p for p in sample_images()}
    data = {
        "name": "scaling",
        "output": str(output.resolve()),
        "layout": "{size}/{content}_{style}.png",
        "contents": [str((content or samples["tubingen"]).resolve())],
        "styles": [str((style or samples["starry_night"]).resolve())],
        "sizes": size_list,
        "params": {"iterations": iterations, "tolerance": 0},
        "weights": {"source": weights},
    }
    try:
        plan = manifest_from_dict(data, Path.cwd())
        items = expand(plan)
    except NSTError as exc:  # a manifest's problems, deliberately one per line
        raise fail(exc) from None
    root = OutputRoot(plan.output)
    lease = take_lease(ctx, root, "nst bench scaling", None, wait)  # its rows and compaction share the root
    try:
        where = connect(address)
        stop_on_sigterm()  # ray.init installed its own handler, which dumps a C++ stack
    except NSTError as exc:
        raise fail(exc) from None
    try:
        slots = device_slots(kinds, cpu_threads)
        if not slots:
            raise fail(f"the cluster has no device of kind {devices}")
        err.print(f"scaling on {where}: {', '.join(s.label for s in slots)}; sizes {size_list}")

        def on_row(slot: object, row: dict) -> None:
            if row["status"] == "ok":
                err.print(
                    f"  {slot.label}: {row['width']}x{row['height']} "
                    f"{row['seconds_per_iteration']:.3f} s/iteration "
                    f"[{row['seconds_per_iteration_p25']:.3f}, {row['seconds_per_iteration_p75']:.3f}], "
                    f"{row['loss_evaluations'] / max(row['iterations'], 1):.2f} evaluations/iteration, "
                    f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB"
                )
            else:
                err.print(
                    f"  {slot.label}: size {row.get('size')} {row['status']}: {escape(str(row.get('error')))}"
                )

        rows = run_scaling(items, plan.weights, root, slots, warmup, on_row, batches=batch_list)
    finally:
        disconnect()
    if len(batch_list) > 1:
        _print_throughput(items_per_second(rows, batched_items(items, batch_list)[1]))
    err.print(f"results: {escape(root.display(RESULTS_FILE))}")
    if lease.lost:  # taken over mid-run (the heartbeat warned then)
        raise fail(lease.lost)
    _print_fits([root.uri])


@app.command()
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
    if size <= 0 or iterations <= 0:
        raise fail("--size and --iterations must be positive")
    _print_fits(results or [DEFAULT_RESULTS], size, iterations)
    err.print(f"(a square {size}x{size} image is {size * size:,} pixels; set-up time is not included)")
