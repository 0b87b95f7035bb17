"""The compact L-BFGS directions (engine.lbfgs) against the two-loop recursion, in float64:
pairs that fail the curvature test, a ring that wraps, several runs stacked, a restart,
restored states (this layout and the two-loop's), and kernels that do not grow with the
history or the number of runs."""

from __future__ import annotations

import collections
import math
from collections import deque
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_engine.engine import SynthesisConfig, random_weights
from nst_engine.engine.images import load_image
from nst_engine.engine.lbfgs import Lane, Segments
from nst_engine.engine.optimize import LBFGSRun, OptimizerSettings, _seat, lockstep, start_run
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache

DOUBLE = torch.float64
CPU = torch.device("cpu")


class TwoLoop:
    """The two-loop recursion (Nocedal & Wright, algorithm 7.4) as the engine ran it before:
    a failed pair kept with ρ = 0, γ from the newest good pair (1 without one)."""

    def __init__(self, size: int) -> None:
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=size)
        self.scale = math.nan

    def add(self, s: torch.Tensor, y: torch.Tensor) -> None:
        sy = float(s @ y)
        good = sy > 1e-10 * float(s.norm() * y.norm())
        self.pairs.append((s, y, torch.tensor(1 / sy if good else 0.0, dtype=DOUBLE)))
        if good:
            self.scale = sy / float(y @ y)

    def clear(self) -> None:
        self.pairs.clear()
        self.scale = math.nan

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        q = -grad.clone()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * (s @ q)
            q -= alpha * y
            alphas.append(alpha)
        q *= 1.0 if math.isnan(self.scale) else self.scale
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            q += (alpha - rho * (y @ q)) * s
        return q


def write_pair(lane: Lane, s: torch.Tensor, y: torch.Tensor) -> None:
    """What an accepted step does: the pair into the lane's ring, tested at the next direction."""
    segment, slot, k = lane.segment, lane.slot, lane.next_slot
    segment.pairs[slot, k], segment.pairs[slot, segment.m + k] = s, y
    lane.pending, lane.written = k, lane.written + 1


def random_pair(n: int, generator: torch.Generator, good: bool) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.randn(n, generator=generator, dtype=DOUBLE)
    y = 2.0 * s + 0.5 * torch.randn(n, generator=generator, dtype=DOUBLE)  # curved: s·y > 0
    return (s, y) if good else (s, -y)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs().max() / b.abs().max()) < 1e-10)


def test_stacked_compact_directions_equal_the_two_loops() -> None:
    """Three runs in one segment, with histories of 5 filled over 14 steps (the ring wraps
    twice), pairs that fail the curvature test now and then (a different pattern per run),
    and one run restarted from steepest descent midway: every direction equals its own
    two-loop's to 1e-10."""
    n, m, runs = 40, 5, 3
    generator = torch.Generator().manual_seed(0)
    lanes, _ = Segments().seat(n, m, CPU, DOUBLE, runs)
    segment = lanes[0].segment
    references = [TwoLoop(m) for _ in range(runs)]
    for step in range(14):
        segment.g.copy_(torch.randn(runs, n, generator=generator, dtype=DOUBLE))
        if step == 7:  # run 1 restarts (slope not a descent direction in the engine)
            references[1].clear()
            segment.steepest([lanes[1]])
        for b, (lane, reference) in enumerate(zip(lanes, references, strict=True)):
            if step != 7 or b != 1:
                s, y = random_pair(n, generator, good=(step + b) % 4 != 2)
                write_pair(lane, s, y)
                reference.add(s, y)
        summary = segment.directions()
        for b, reference in enumerate(references):
            expected = reference.direction(segment.g[b])
            assert close(segment.d[b], expected), (step, b)
            assert float(summary[b, 0]) == pytest.approx(float(segment.g[b] @ expected), rel=1e-10)
            assert bool(summary[b, 2]) == (not math.isnan(reference.scale))
    assert [lane.written for lane in lanes] == [14, 6, 14]


def test_a_run_without_good_pairs_goes_down_the_gradient() -> None:
    lanes, _ = Segments().seat(10, 3, CPU, DOUBLE, 1)
    segment, generator = lanes[0].segment, torch.Generator().manual_seed(1)
    segment.g.copy_(torch.randn(1, 10, generator=generator, dtype=DOUBLE))
    write_pair(lanes[0], *random_pair(10, generator, good=False))
    summary = segment.directions()
    assert torch.equal(segment.d, -segment.g) and float(summary[0, 2]) == 0.0


def problem(content_path: Path, style_path: Path) -> Problem:
    weights = random_weights(seed=0)
    weights.convs = [(w.double(), b.double()) for w, b in weights.convs]
    config = SynthesisConfig(size=32, channels_last=False)
    built = Problem.build(
        load_image(content_path), [load_image(style_path)], config, TargetCache(weights, CPU)
    )
    built.objective.double()
    return built


def direction_of(run: LBFGSRun) -> torch.Tensor:
    """The direction a run restored from a state takes first."""
    segments = Segments()
    _seat([run], segments)
    assert run.lane is not None
    run.lane.segment.directions()
    return run.lane.segment.d[run.lane.slot]


def test_a_restored_run_takes_the_direction_of_the_saved_one(content_path: Path, style_path: Path) -> None:
    """A checkpoint saved mid-run (a full ring of 3 after 7 iterations, the newest pair
    not yet tested) restores its ring as it was: the next direction equals the two-loop's
    over the same pairs."""
    built = problem(content_path, style_path)
    settings = OptimizerSettings(iterations=20, history_size=3)
    run = start_run(built.objective, built.initial_image().double(), settings)
    for _ in range(7):
        assert run.step() is not None
    state = run.state_dict()
    assert len(state["ring"]["s"]) == 3 and state["ring"]["pending"] >= 0
    resumed = start_run(built.objective, torch.zeros_like(built.initial_image().double()), settings)
    resumed.load_state_dict(state)
    reference = TwoLoop(3)
    written, ring = state["ring"]["written"], state["ring"]
    for k in [(written + i) % 3 for i in range(3)]:  # the ring's slots, oldest first
        reference.add(ring["s"][k], ring["y"][k])
    assert close(direction_of(resumed), reference.direction(state["grad"]))


def test_a_two_loop_checkpoint_still_loads(content_path: Path, style_path: Path) -> None:
    """Checkpoints written before the compact representation hold a list of (s, y, ρ):
    they load, a ρ of 0 is a failed pair, and γ comes from the saved scale."""
    built = problem(content_path, style_path)
    n, generator = built.initial_image().numel(), torch.Generator().manual_seed(2)
    reference = TwoLoop(4)
    saved = []
    for good in (True, False, True, False):
        s, y = random_pair(n, generator, good)
        reference.add(s, y)
        saved.append([s, y, reference.pairs[-1][2]])
    grad = torch.randn(n, generator=generator, dtype=DOUBLE)
    state = {
        "kind": "lbfgs",
        "image": built.initial_image().double(),
        "evaluations": 5,
        "records": [],
        "stop_reason": None,
        "final": None,
        "values": [1.0, 1.0, 1.0, 0.0],
        "grad": grad,
        "history": saved,
        "history_scale": torch.tensor(reference.scale, dtype=DOUBLE),
    }
    run = start_run(built.objective, torch.zeros_like(state["image"]), OptimizerSettings(history_size=4))
    run.load_state_dict(state)
    assert close(direction_of(run), reference.direction(grad))


class _Calls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:  # a view launches nothing
            self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("history", "runs"), [(5, 8), (100, 1), (100, 8)])
def test_a_direction_costs_the_same_kernels_at_any_history_and_batch(history: int, runs: int) -> None:
    """The operators one direction issues (each a kernel launch on a GPU) do not depend on
    the history's length nor on how many runs are stacked: the two-loop issued about six
    per stored pair, and one set per run."""

    def calls(m: int, b: int) -> collections.Counter[str]:
        lanes, _ = Segments().seat(64, m, CPU, torch.float32, b)
        generator = torch.Generator().manual_seed(3)
        segment = lanes[0].segment
        for _ in range(2):
            for lane in lanes:
                write_pair(lane, *(t.float() for t in random_pair(64, generator, good=True)))
            segment.directions()
        for lane in lanes:
            write_pair(lane, *(t.float() for t in random_pair(64, generator, good=True)))
        with _Calls() as counter:
            segment.directions()
        return counter.calls

    assert calls(history, runs) == calls(5, 1)


def test_a_run_seated_alone_moves_into_the_segment_of_those_that_join_it() -> None:
    """A batch's first member runs alone for a while (its pass measures memory); when the
    others arrive, it moves into their new segment, with its ring, so the batch's
    iterations are one set of kernels, and its directions stay the two-loop's."""
    n, m, generator = 20, 4, torch.Generator().manual_seed(4)
    segments = Segments()
    (first,), _ = segments.seat(n, m, CPU, DOUBLE, 1)
    reference = TwoLoop(m)
    for step in range(6):  # wraps its ring of 4
        s, y = random_pair(n, generator, good=step != 3)
        write_pair(first, s, y)
        reference.add(s, y)
        first.segment.directions()
    grad = torch.randn(n, generator=generator, dtype=DOUBLE)
    first.segment.g[first.slot] = grad
    others, moved = segments.seat(n, m, CPU, DOUBLE, 3, movable=[first])
    lane = moved[first]
    assert lane.segment is others[0].segment and lane.segment.capacity == 4
    assert [len(found) for found in segments.segments.values()] == [1]  # the old one dropped
    lane.segment.directions()
    assert close(lane.segment.d[lane.slot], reference.direction(grad))


def test_a_run_whose_state_does_not_fit_fails_alone(content_path: Path, style_path: Path) -> None:
    """Runs iterate together, but a run's own fault stays its own: a saved ring longer than
    the run's history fails that run, and the run beside it takes its step."""
    built = problem(content_path, style_path)
    settings = OptimizerSettings(iterations=20, history_size=2)
    donor = start_run(built.objective, built.initial_image().double(), OptimizerSettings(iterations=20))
    for _ in range(4):
        donor.step()
    bad = start_run(built.objective, torch.zeros_like(built.initial_image().double()), settings)
    bad.load_state_dict(donor.state_dict())  # 4 pairs for a ring of 2
    good = start_run(built.objective, built.initial_image().double(), settings)

    def evaluate(runs: list, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return built.objective.stack([r.objective for r in runs]).evaluate(images)

    segments = Segments()
    lockstep([bad, good], segments, evaluate)
    assert isinstance(bad.failure, ValueError) and bad.lane is None
    assert good.failure is None and good.outcome is not None and good.outcome[0].evaluations >= 1
