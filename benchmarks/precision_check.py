"""Each precision on a device against float64 on the CPU: one evaluation's losses and
gradient, then whole short syntheses.

evaluation: one content/style problem (the shipped Tübingen as The Starry Night, its
targets taken once in float32 on the CPU, so every run sees the same targets); the loss
terms and input gradient at one image (the noise start blended with the content) in
float64 on the CPU (the reference), then on ``--device`` in each precision. Reported:
relative error of the total loss, of each term, and of the gradient (L2), and the
gradient's cosine to the reference. Limits: fp32 1e-4 loss / 5e-3 gradient (float32's
own rounding through 13 layers' backward is about 1e-3); tf32 and bf16 2e-2 / 1e-1 (TF32
and bfloat16 keep 10 and 7 mantissa bits; the real VGG-19 gives about 5e-2 in bf16).

synthesis: ``--iterations`` of L-BFGS per precision on ``--device``, and fp32 on the
CPU: the final loss relative to the device's fp32 one (target for bf16: within 2%).

Run: .venv/bin/python benchmarks/precision_check.py --device cpu --size 64 --weights random --iterations 10
     (on a GPU: --device cuda --size 256 --iterations 100 --json $OUT/precision.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from engine_speed import machine_line, square, write_json  # benchmarks/ is the script's folder

from nst_engine.engine import Stylizer, SynthesisConfig, load_weights, random_weights
from nst_engine.engine.images import load_image
from nst_engine.engine.losses import StyleTransferObjective
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache
from nst_engine.engine.weights_spec import sample_images

#: (loss, gradient) relative error allowed per precision against float64.
LIMITS = {"fp32": (1e-4, 5e-3), "tf32": (2e-2, 1e-1), "bf16": (2e-2, 1e-1)}
TERMS = ("total", "content", "style", "tv")


def evaluate(objective: StyleTransferObjective, image: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    values, grad = objective.evaluate(image)
    return values[0].tolist(), grad.reshape(-1).double().cpu()


def on_device(
    objective: StyleTransferObjective, device: torch.device, precision: str
) -> StyleTransferObjective:
    """A copy of ``objective`` on ``device`` in ``precision`` (the same targets)."""
    moved = copy.deepcopy(objective).to(device)
    moved.precision = precision
    return moved


def evaluation_errors(problem: Problem, device: torch.device, precisions: list[str]) -> list[dict]:
    image = (0.5 * problem.initial_image() + 0.5 * problem.content).contiguous()
    reference = copy.deepcopy(problem.objective).double()
    expected, expected_grad = evaluate(reference, image.double())
    rows = []
    for precision in precisions:
        values, grad = evaluate(on_device(problem.objective, device, precision), image.to(device))
        errors = {
            f"{term}_relative_error": abs(v - e) / abs(e) if e else abs(v)
            for term, v, e in zip(TERMS, values, expected, strict=True)
        }
        grad_error = float((grad - expected_grad).norm() / expected_grad.norm())
        cosine = float(torch.nn.functional.cosine_similarity(grad, expected_grad, dim=0))
        loss_limit, grad_limit = LIMITS[precision]
        rows.append(
            {
                "check": "evaluation",
                "precision": precision,
                **errors,
                "gradient_relative_error": grad_error,
                "gradient_cosine": cosine,
                "ok": errors["total_relative_error"] <= loss_limit and grad_error <= grad_limit,
            }
        )
    return rows


def synthesis_losses(
    stylizer: Stylizer,
    cpu: Stylizer,
    content: Path,
    style: Path,
    config: SynthesisConfig,
    precisions: list[str],
) -> list[dict]:
    finals = {}
    for precision in precisions:
        result = stylizer.synthesize(content, [style], replace(config, precision=precision))
        finals[precision] = result.stats.final_total_loss
    cpu_final = cpu.synthesize(content, [style], replace(config, precision="fp32")).stats.final_total_loss
    base = finals.get("fp32", cpu_final)
    rows = [
        {
            "check": "synthesis",
            "precision": precision,
            "final_loss": final,
            "final_loss_vs_device_fp32": final / base,
            "ok": math.isfinite(final) and abs(final / base - 1) <= 0.02,
        }
        for precision, final in finals.items()
    ]
    rows.append(
        {
            "check": "synthesis",
            "precision": "fp32 on the CPU",
            "final_loss": cpu_final,
            "final_loss_vs_device_fp32": cpu_final / base,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100, help="L-BFGS iterations of each synthesis")
    parser.add_argument(
        "--precisions", default=None, help="default: fp32,tf32,bf16 on CUDA, fp32,bf16 on the CPU"
    )
    parser.add_argument("--weights", default="embedded", help="embedded (VGG-19) or random (tiny network)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    weights = random_weights(seed=0) if args.weights == "random" else load_weights(args.weights)
    stylizer = Stylizer(weights, device=args.device)
    device = stylizer.device
    precisions = (args.precisions or ("fp32,tf32,bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    print(machine_line(device))
    samples = {p.stem: p for p in sample_images()}
    with tempfile.TemporaryDirectory() as tmp:
        content = square(samples["tubingen"], args.size, Path(tmp) / "content.png")
        style = square(samples["starry_night"], args.size, Path(tmp) / "style.png")
        config = SynthesisConfig(size=args.size, iterations=args.iterations, tolerance=0.0)
        cache = TargetCache(weights, torch.device("cpu"))
        problem = Problem.build(load_image(content), [load_image(style)], config, cache)
        rows = evaluation_errors(problem, device, precisions)
        rows += synthesis_losses(
            stylizer, Stylizer(weights, device="cpu"), content, style, config, precisions
        )
    for row in rows:
        print(json.dumps(row), flush=True)
    write_json(args.json, rows)
    failed = [(r["check"], r["precision"]) for r in rows if r.get("ok") is False]
    print(f"outside the limits: {failed}" if failed else "all within the limits")


if __name__ == "__main__":
    main()
