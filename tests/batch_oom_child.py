"""Run by tests/test_batch.py in a subprocess: batches that really run out of memory.

The address space is capped with RLIMIT_AS (soft limit, this process only), so the CPU
allocator's failures are real ones, as a GPU's would be. The caps are set from this
machine's own measurements (VmPeak after a pass of one, two and four images), between
what two images need and what four need, and below what one needs. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.batch import EvaluationBatch, run_together
from nst_engine.engine.memory import MemoryModel

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_image

# tile=0: the point is the batch running out, not the engine tiling so that it does not
CONFIGS = [SynthesisConfig(size=256, iterations=3, seed=i, history_size=2, tile=0) for i in range(4)]


def vm(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def together(stylizer: Stylizer, content: Path, style: Path, count: int, cap: int | None = None) -> tuple:
    """``count`` syntheses admitted at once (their first pass holds them all), under an
    address-space ``cap`` above what is mapped now; outcomes as text or results."""
    batch = EvaluationBatch(stylizer.device, count, MemoryModel(budget=2**40, bytes_per_pixel=1.0))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    with batch:
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + cap, hard))
        try:
            outcomes = run_together(
                [lambda c=c: stylizer.synthesize(content, [style], c, batch=batch) for c in CONFIGS[:count]],
                count,
            )
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    # exceptions as text: a traceback would keep the failed pass's tensors alive
    return batch, [o if not isinstance(o, BaseException) else f"{type(o).__name__}: {o}" for o in outcomes]


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    content = write_image(folder / "content.png", 256, 256, seed=1)
    style = write_image(folder / "style.png", 256, 256, seed=2)
    stylizer = Stylizer(random_weights((64, 128, 256, 512, 512), seed=0), device="cpu")
    before = vm("VmPeak")
    alone = [stylizer.synthesize(content, [style], c) for c in CONFIGS]
    grown = {1: vm("VmPeak") - before}
    for count in (2, 4):  # address space a pass of ``count`` images maps at its peak
        before = vm("VmPeak")
        together(stylizer, content, style, count)
        grown[count] = vm("VmPeak") - before + grown[count // 2]
    # nearer what two need than what four need: the peak of four is not reached every run
    split, outcomes = together(stylizer, content, style, 4, cap=grown[2] + (grown[4] - grown[2]) // 3)
    _, single = together(stylizer, content, style, 1, cap=grown[1] // 3)
    _, afterwards = together(stylizer, content, style, 1)  # the worker goes on
    results = [o for o in outcomes if not isinstance(o, str)]
    print(
        json.dumps(
            {
                "grown_mib": {k: v / 2**20 for k, v in grown.items()},
                "chunk": split.chunk,
                "errors": [o for o in outcomes if isinstance(o, str)],
                "batch_sizes": [r.stats.batch_size for r in results],
                "max_difference": max(
                    (
                        float((a.image - r.image).abs().max())
                        for a, r in zip(alone, outcomes, strict=True)
                        if not isinstance(r, str)
                    ),
                    default=-1.0,
                ),
                "single": single[0] if isinstance(single[0], str) else "ok",
                "afterwards": "ok" if not isinstance(afterwards[0], str) else afterwards[0],
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
