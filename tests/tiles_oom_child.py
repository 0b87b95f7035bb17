"""Run by tests/test_tiles.py in a subprocess: a tiled evaluation that really runs out of
memory. The address space is capped with RLIMIT_AS (this process only) between what an
evaluation in one whole-image tile maps at its peak and what one in 128 px tiles maps
(both measured here first), so the allocator's failure is a real one, as a GPU's would
be. Prints one JSON line."""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from nst_engine.engine import SynthesisConfig, random_weights
from nst_engine.engine.images import load_image
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache
from nst_engine.engine.tiles import TiledGradient

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_image

SIZE = 512


def vm(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def grown(evaluate: Callable[[], object]) -> int:
    """Address space an evaluation maps beyond the peak so far."""
    before = vm("VmPeak")
    evaluate()
    return vm("VmPeak") - before


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    content = write_image(folder / "content.png", SIZE, SIZE, seed=1)
    style = write_image(folder / "style.png", 256, 256, seed=2)
    cache = TargetCache(random_weights((16, 32, 64, 128, 128), seed=0), torch.device("cpu"))
    problem = Problem.build(load_image(content), [load_image(style)], SynthesisConfig(size=SIZE), cache)
    image = problem.initial_image()
    small = grown(lambda: TiledGradient(problem.objective, 128)(problem.objective, image))
    whole = grown(lambda: TiledGradient(problem.objective, SIZE)(problem.objective, image)) + small
    expected, expected_grad = (t[0] for t in TiledGradient(problem.objective, SIZE)(problem.objective, image))
    tiled = TiledGradient(problem.objective, SIZE)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + (small + whole) // 2, hard))
    try:
        values, grad = (t[0] for t in tiled(problem.objective, image))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    print(
        json.dumps(
            {
                "grown_mib": {"whole": whole / 2**20, "128": small / 2**20},
                "tile": tiled.tile,
                "loss_difference": float(abs(values[0] - expected[0]) / abs(expected[0])),
                "grad_difference": float((grad - expected_grad).abs().max() / expected_grad.abs().max()),
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
