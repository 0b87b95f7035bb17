"""``nst bench scaling`` and ``nst estimate``: how time and memory grow with resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nst_engine.cli.app import app, err, fail
from nst_engine.engine.errors import NSTError

bench_app = typer.Typer(help="Benchmarks that write result rows (run_kind 'bench').", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

DEFAULT_RESULTS = Path("out/bench/results.parquet")


def _print_fits(results: list[str], size: int | None = None, iterations: int | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nst_engine.reports.scaling import fit_devices, format_k

    tables = []
    for path in results:
        if not Path(path).is_file():
            raise fail(f"{path}: results file not found; run 'nst bench scaling' (or nst render) first")
        try:
            tables.append(pq.read_table(path))
        except Exception as exc:  # pyarrow raises several types
            raise fail(f"{path}: not a readable Parquet file ({exc})") from None
    needed = {"device_name", "pixels", "seconds_per_iteration", "status"}
    for path, table in zip(results, tables, strict=True):
        if not needed <= set(table.column_names):
            raise fail(
                f"{path}: not an nst results table (missing {sorted(needed - set(table.column_names))})"
            )
    common = sorted(set.intersection(*(set(t.column_names) for t in tables)))
    fits = fit_devices(pa.concat_tables([t.select(common) for t in tables], promote_options="permissive"))
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
            seconds = fit.predict_seconds(size * size, iterations or 1)
            fits_memory = fit.max_pixels() is None or size * size <= fit.max_pixels()
            row.append(f"{seconds:,.0f} s" + ("" if fits_memory else " (does not fit in memory)"))
        table.add_row(*row)
    err.print(table)


@bench_app.command("scaling")
def scaling(
    sizes: Annotated[
        str, typer.Option(help="Comma-separated sizes (longer side, px).")
    ] = "128,256,384,512,768,1024",
    iterations: Annotated[int, typer.Option(help="Iterations per size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Iterations left out of the per-iteration median.")] = 2,
    devices: Annotated[str, typer.Option(help="Device kinds to measure: cpu, gpu or cpu,gpu.")] = "cpu,gpu",
    cpu_threads: Annotated[
        int | None, typer.Option(help="Threads of the CPU worker (default: all, max 8).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster (default: embedded local Ray).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output root for images and rows.")] = Path(
        "out/bench"
    ),
    content: Annotated[Path | None, typer.Option(help="Content image (default: shipped Tübingen).")] = None,
    style: Annotated[Path | None, typer.Option(help="Style image (default: shipped Starry Night).")] = None,
    weights: Annotated[str, typer.Option(help="VGG-19 weights (as for nst stylize).")] = "embedded",
) -> None:
    """The same synthesis at each size on every device type of the cluster; prints the fitted
    exponent k per device (the paper predicts k ≈ 1) and writes rows to OUTPUT/results.parquet."""
    from nst_engine.distributed.bench import device_slots, run_scaling
    from nst_engine.distributed.runtime import connect, disconnect
    from nst_engine.engine.weights_spec import sample_images
    from nst_engine.planning.items import expand
    from nst_engine.planning.manifest import manifest_from_dict
    from nst_engine.results.storage import OutputRoot
    from nst_engine.results.store import RESULTS_FILE

    try:
        size_list = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise fail(f"--sizes: expected comma-separated whole numbers, got {sizes!r}") from None
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
        where = connect(address)
    except NSTError as exc:
        raise fail(str(exc)) from None
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
                err.print(f"  {slot.label}: size {row.get('size')}: {escape(str(row.get('error')))}")

        run_scaling(items, plan.weights, OutputRoot(plan.output), slots, warmup, on_row)
    finally:
        disconnect()
    results = str(output / RESULTS_FILE)
    err.print(f"results: {results}")
    _print_fits([results])


@app.command()
def estimate(
    size: Annotated[int, typer.Option(help="Longer side of a square image, in pixels.")] = 1024,
    iterations: Annotated[int, typer.Option(help="Iterations.")] = 500,
    results: Annotated[
        list[Path] | None, typer.Option(help="Results files to fit (default: out/bench/results.parquet).")
    ] = None,
) -> None:
    """Predict time and memory fit for a size from earlier scaling or render results."""
    if size <= 0 or iterations <= 0:
        raise fail("--size and --iterations must be positive")
    _print_fits([str(p) for p in results or [DEFAULT_RESULTS]], size, iterations)
    err.print(f"(a square {size}x{size} image is {size * size:,} pixels; set-up time is not included)")
