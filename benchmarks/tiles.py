"""What tiling costs: seconds per iteration and peak memory, untiled against tiled.

The same synthesis (the shipped Tübingen photo cropped square, as The Starry Night, real
VGG-19, fp32, ``--iterations`` L-BFGS iterations from the same noise) runs whole and in
each tile size, alternating, ``--repeats`` times; the medians are reported with the ratio
to the untiled run measured in the same session, the relative difference of the final
loss (tiling is exact up to float rounding, so this should be tiny), and the measured
cost per computed pixel against ``tiles.TILED_PASS_COST`` (the planner's assumption).

Run: .venv/bin/python benchmarks/tiles.py --sizes 256,512 --tiles 128,256 --iterations 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from engine_speed import machine_line, square, write_json  # benchmarks/ is the script's folder, on sys.path

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
from nst_engine.engine.tiles import TILED_PASS_COST, tile_areas
from nst_engine.engine.weights_spec import sample_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--tiles", default="128,256")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    stylizer = Stylizer(load_weights("embedded"), device=args.device)
    samples = {p.stem: p for p in sample_images()}
    print(machine_line(stylizer.device))
    header = "| size | tile | tiles | s/iteration | vs whole | cost per px computed | peak MiB | loss diff |"
    print(f"# the planner assumes {TILED_PASS_COST:.2f} per pixel computed (tiles.TILED_PASS_COST)")
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        style = square(samples["starry_night"], 512, Path(tmp) / "style.png")
        for size in [int(s) for s in args.sizes.split(",")]:
            content = square(samples["tubingen"], size, Path(tmp) / f"content{size}.png")
            base = SynthesisConfig(size=size, iterations=args.iterations, tile=0)
            tiles = [0, *(int(t) for t in args.tiles.split(",") if int(t) < size)]
            configs = [replace(base, tile=t) for t in tiles]
            stylizer.synthesize(content, [style], replace(base, iterations=2))  # warm-up
            runs: dict[int, list] = {t: [] for t in tiles}
            for _ in range(args.repeats):  # alternating, so drift hits every configuration alike
                for config in configs:
                    runs[config.tile or 0].append(stylizer.synthesize(content, [style], config).stats)
            whole = statistics.median(s.seconds_per_iteration for s in runs[0])
            for tile in tiles:
                stats = runs[tile]
                seconds = statistics.median(s.seconds_per_iteration for s in stats)
                computed = sum(tile_areas(size, size, tile, base.loss_layers)) if tile else size * size
                cost = (seconds / whole) * (size * size) / computed  # per computed pixel, vs whole
                loss = stats[0].final_total_loss
                diff = abs(loss - runs[0][0].final_total_loss) / abs(runs[0][0].final_total_loss)
                row = {
                    "size": size,
                    "tile": tile,
                    "tiles": stats[0].tiles,
                    "seconds_per_iteration": seconds,
                    "ratio": seconds / whole,
                    "cost_per_computed_pixel": cost,
                    "peak_memory_bytes": max(s.peak_memory_bytes for s in stats),
                    "final_loss_relative_difference": diff,
                    "runs": [s.seconds_per_iteration for s in stats],
                }
                rows.append(row)
                print(
                    f"| {size}² | {tile or 'whole'} | {row['tiles'] or 1} | {seconds:.3f} "
                    f"| {row['ratio']:.2f}× "
                    f"| {cost:.2f} | {row['peak_memory_bytes'] / 2**20:.0f} | {diff:.1e} |",
                    flush=True,
                )
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
