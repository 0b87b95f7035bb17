"""The optimisation run as a value: stepping, saving and resuming, and the line searches."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nst_engine.engine import SynthesisConfig, random_weights
from nst_engine.engine.images import load_image
from nst_engine.engine.line_search import (
    ARMIJO_C1,
    WOLFE_C2,
    Probed,
    Step,
    backtracking,
    search,
    strong_wolfe,
)
from nst_engine.engine.optimize import OptimizationTrace, OptimizerSettings, drive, optimize, start_run
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache


def build_problem(content_path: Path, style_path: Path, config: SynthesisConfig) -> Problem:
    """A fresh problem on the tiny random network, as a new process would build it."""
    cache = TargetCache(random_weights(seed=0), torch.device("cpu"))
    return Problem.build(load_image(content_path), [load_image(style_path)], config, cache)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


SETTINGS = {
    "lbfgs": OptimizerSettings(iterations=8),
    "adam": OptimizerSettings(name="adam", iterations=8),
    "lbfgs-line-search": OptimizerSettings(iterations=6, line_search=True),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_resumed_run_matches_straight_run(
    name: str, tmp_path: Path, content_path: Path, style_path: Path
) -> None:
    settings, config = SETTINGS[name], SynthesisConfig(size=32)
    straight_problem = build_problem(content_path, style_path, config)
    straight_image = straight_problem.initial_image()
    straight = optimize(straight_problem.objective, straight_image, settings)

    first = build_problem(content_path, style_path, config)
    run = start_run(first.objective, first.initial_image(), settings)
    for _ in range(3):
        assert run.step() is not None
    torch.save(run.state_dict(), tmp_path / "run.pt")
    del run, first

    second = build_problem(content_path, style_path, config)
    image = torch.zeros_like(straight_image)  # the state brings the pixels
    resumed = start_run(second.objective, image, settings)
    resumed.load_state_dict(torch.load(tmp_path / "run.pt", weights_only=True))
    trace = drive(resumed)

    assert trace.iterations == straight.iterations == settings.iterations
    assert trace.evaluations == straight.evaluations
    assert trace.stop_reason == straight.stop_reason
    assert all(close(a.total, b.total) for a, b in zip(trace.records, straight.records, strict=True))
    assert all(close(a, b) for a, b in zip(trace.final, straight.final, strict=True))
    assert torch.allclose(image, straight_image, rtol=1e-6, atol=1e-7)


def test_step_returns_none_once_done_and_stop_cancels(content_path: Path, style_path: Path) -> None:
    problem = build_problem(content_path, style_path, SynthesisConfig(size=32))
    run = start_run(problem.objective, problem.initial_image(), OptimizerSettings(iterations=2))
    assert not run.done and run.stop_reason is None
    assert [run.step() is not None for _ in range(3)] == [True, True, False]
    assert run.done and run.stop_reason == "iterations" and run.trace.iterations == 2

    seen: list[int] = []
    asked = iter([False, False, True])
    trace = optimize(
        problem.objective,
        problem.initial_image(),
        OptimizerSettings(iterations=10),
        on_iteration=lambda record, _image: seen.append(record.iteration),
        should_stop=lambda: next(asked),
    )
    assert trace.stop_reason == "cancelled" and seen == [0, 1] and trace.iterations == 2
    assert math.isfinite(trace.final[0])


def test_state_of_another_optimizer_is_refused(content_path: Path, style_path: Path) -> None:
    problem = build_problem(content_path, style_path, SynthesisConfig(size=32))
    adam = start_run(problem.objective, problem.initial_image(), OptimizerSettings(name="adam"))
    lbfgs = start_run(problem.objective, problem.initial_image(), OptimizerSettings())
    with pytest.raises(ValueError, match="adam"):
        lbfgs.load_state_dict(adam.state_dict())


def test_line_search_lowers_loss_with_more_evaluations_than_iterations(
    content_path: Path, style_path: Path
) -> None:
    problem = build_problem(content_path, style_path, SynthesisConfig(size=32))
    trace: OptimizationTrace = optimize(
        problem.objective, problem.initial_image(), OptimizerSettings(iterations=6, line_search=True)
    )
    assert trace.iterations == 6
    assert trace.evaluations > trace.iterations + 1  # the initial one, then >= 1 per iteration
    assert trace.final[0] < trace.records[0].total / 2
    assert all(b.total < a.total for a, b in zip(trace.records, trace.records[1:], strict=False))


# --- the line searches on functions of one variable along d = +1 -------------------------

Fn = Callable[[float], float]


def line(f: Fn, df: Fn) -> tuple[Callable[[float], Probed], list[float]]:
    """probe(t) for φ(t) = f(t) along a direction with φ'(t) = df(t), and a counter."""
    calls: list[float] = []

    def probe(t: float) -> Probed:
        calls.append(t)
        return Probed(t, (f(t), 0.0, 0.0, 0.0), df(t), point=t)

    return probe, calls


def check_wolfe(step: Step, f: Fn, df: Fn) -> None:
    assert step.accepted and step.t > 0
    assert f(step.t) <= f(0.0) + ARMIJO_C1 * step.t * df(0.0)
    assert abs(df(step.t)) <= WOLFE_C2 * abs(df(0.0))
    assert step.values[0] == f(step.t) and step.point == step.t


def quartic(t: float) -> float:  # non-convex, minimum near t = 2.1
    return (t - 2.0) ** 4 - 3 * (t - 2.0) ** 2 - (t - 2.0)


def quartic_slope(t: float) -> float:
    return 4 * (t - 2.0) ** 3 - 6 * (t - 2.0) - 1


@pytest.mark.parametrize("first_step", [1e-3, 0.5, 3.0, 50.0])
def test_strong_wolfe_step_meets_both_conditions(first_step: float) -> None:
    probe, calls = line(quartic, quartic_slope)
    start = Probed(0.0, (quartic(0.0), 0.0, 0.0, 0.0), quartic_slope(0.0))
    step = search(strong_wolfe(first_step, start), probe)
    check_wolfe(step, quartic, quartic_slope)
    assert 1 <= len(calls) <= 25


def test_strong_wolfe_rejects_when_no_step_decreases() -> None:
    probe, calls = line(lambda t: math.nan, lambda t: math.nan)
    step = search(strong_wolfe(1.0, Probed(0.0, (1.0, 0.0, 0.0, 0.0), -1.0)), probe)
    assert not step.accepted and step.t == 0.0 and step.values[0] == 1.0
    assert len(calls) <= 25


def test_backtracking_halves_a_step_that_overshoots() -> None:
    probe, calls = line(lambda t: (t - 1.0) ** 2, lambda t: 2 * (t - 1.0))
    step = search(backtracking(8.0, Probed(0.0, (1.0, 0.0, 0.0, 0.0), -2.0), max_backtracks=20), probe)
    assert step.accepted and calls == [8.0, 4.0, 2.0, 1.0] and step.t == 1.0


def test_an_lbfgs_iteration_reads_the_device_twice(
    monkeypatch: pytest.MonkeyPatch, content_path: Path, style_path: Path
) -> None:
    """On a GPU every value read back to the host stalls the kernel queue: a normal
    L-BFGS iteration reads twice (the losses at the new point, then the slope with the
    step scale); the curvature test of a pair stays on the device."""
    problem = build_problem(content_path, style_path, SynthesisConfig(size=32))
    run = start_run(problem.objective, problem.initial_image(), OptimizerSettings(iterations=12))
    reads: list[str] = []
    for name in ("tolist", "item", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: object, _original=original, _name=name) -> object:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    per_iteration = []
    while run.step() is not None:
        per_iteration.append((len(reads), run.records[-1].evaluations))
        reads.clear()
    assert len(per_iteration) == 12
    # the first iteration also evaluates the start; each extra evaluation is one more read
    assert all(count == evaluations + 1 for count, evaluations in per_iteration[1:]), per_iteration


def test_a_saved_run_keeps_the_scale_of_a_pair_pushed_out(content_path: Path, style_path: Path) -> None:
    """γ comes from the newest good pair, which a failed pair (kept with weight 0) may have
    pushed out of the history: a saved run carries γ itself, so it resumes the same."""
    problem = build_problem(content_path, style_path, SynthesisConfig(size=32))
    settings = OptimizerSettings(iterations=40, history_size=1)
    run = start_run(problem.objective, problem.initial_image(), settings)
    while not run.lane or not torch.isfinite(run.lane.segment.gamma[run.lane.slot]):  # early pairs fail
        assert run.step() is not None
    lane = run.lane
    segment, m = lane.segment, lane.segment.m
    s = torch.ones(segment.n)
    segment.pairs[lane.slot, lane.next_slot], segment.pairs[lane.slot, m + lane.next_slot] = s, -s
    lane.pending, lane.written = lane.next_slot, lane.written + 1  # s·y < 0: fails, evicts the good pair
    segment.directions()
    assert not bool(segment.good[lane.slot].any()) and torch.isfinite(segment.gamma[lane.slot])
    state = run.state_dict()
    assert state["ring"]["good"].tolist() == [False] and torch.isfinite(state["history_scale"])
    resumed = start_run(problem.objective, torch.zeros_like(run.image), settings)
    resumed.load_state_dict(state)
    run.step(), resumed.step()
    assert torch.equal(resumed.image, run.image)
