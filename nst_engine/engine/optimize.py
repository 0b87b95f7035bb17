"""The optimisation over the image pixels: L-BFGS (the paper's choice) or Adam.

A run is a value: ``step()`` advances it one iteration, and ``state_dict()`` /
``load_state_dict()`` save and restore it as plain tensors, numbers and lists, so a
run can be checkpointed and resumed with the same result as one left running.
Iterations and loss evaluations are counted separately: a line search (or the
backtracking safeguard) may evaluate the loss several times in one iteration.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch.profiler import record_function

from nst_engine.engine.device import to_device
from nst_engine.engine.lbfgs import Lane, Segment, Segments
from nst_engine.engine.line_search import Probed, Search, Step, backtracking, strong_wolfe
from nst_engine.engine.losses import LossTerms, Values

#: Largest change of any pixel (image range [0, 1]) in a step taken without curvature pairs.
INITIAL_PIXEL_STEP = 0.05

#: ``stop_reason`` of an L-BFGS iteration that found no step; it leaves the image as it was.
NO_PROGRESS = "no_progress"


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "lbfgs"
    iterations: int = 500
    history_size: int = 100
    learning_rate: float | None = None  # step scale: 1.0 for L-BFGS, 0.02 for Adam
    line_search: bool = False  # strong-Wolfe line search for L-BFGS
    tolerance: float = 1e-9  # stop when the relative loss change falls below this
    max_backtracks: int = 20

    @property
    def history_length(self) -> int:
        """Curvature pairs L-BFGS keeps: ``history_size``, or fewer when the run has fewer
        iterations (it never writes more pairs than it has iterations)."""
        return max(1, min(self.history_size, self.iterations))


@dataclass
class IterationRecord:
    """Losses at the iterate an iteration starts from, and how long the iteration took."""

    iteration: int
    total: float
    content: float
    style: float
    tv: float
    seconds: float
    evaluations: int


@dataclass
class OptimizationTrace:
    records: list[IterationRecord] = field(default_factory=list)
    evaluations: int = 0
    stop_reason: str = "iterations"
    #: Loss terms at the returned image, as floats (total, content, style, tv).
    final: Values = (math.nan,) * 4

    @property
    def iterations(self) -> int:
        return len(self.records)


IterationCallback = Callable[[IterationRecord, torch.Tensor], None]
Objective = Callable[[torch.Tensor], LossTerms]
#: Loss terms (B, 4) and flat gradients (B, n) of an objective at images (B, 3, H, W), on
#: the device: ``StyleTransferObjective.evaluate``, or a tiled evaluation (``tiles``).
Gradient = Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: The same for several L-BFGS runs at once, one image each (each run's own objective).
RunsGradient = Callable[[list["LBFGSRun"], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Evaluator(Protocol):
    """How a run's objective is evaluated: alone (``Alone``) or in a batch's shared passes
    (``batch.Member``). L-BFGS runs hand it whole iterations, so that a batch can run its
    runs' iterations in lockstep, their optimizer math stacked (``lockstep``)."""

    def evaluate(self, objective: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms and gradients at ``images`` (a ``Gradient``)."""
        ...

    def iterate(self, run: LBFGSRun) -> None:
        """One iteration of ``run`` (``lockstep``), which leaves its ``outcome``."""
        ...


class Alone:
    """A run evaluated on its own: by its objective, or by ``gradient`` (tiles)."""

    def __init__(self, gradient: Gradient | None = None) -> None:
        self.gradient = gradient
        self.segments = Segments()

    def evaluate(self, objective: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gradient(objective, images) if self.gradient else objective.evaluate(images)

    def iterate(self, run: LBFGSRun) -> None:
        lockstep([run], self.segments, lambda runs, images: self.evaluate(runs[0].objective, images))


def _read(values: torch.Tensor) -> list[list[float]]:
    """A device tensor's rows as floats, in one host-device sync: on a GPU each read-back
    stalls the queue of kernels, so an iteration reads only twice (the slopes, then the
    losses at the trial steps)."""
    return values.tolist()


class Run:
    """One optimisation of ``image`` (left in it when the run ends) as a steppable,
    savable value.

    ``step()`` runs one iteration and returns its record, or ``None`` once ``done``;
    ``stop_reason`` says why it stopped. Subclasses implement ``_start``, ``_iterate``,
    ``_final`` and their part of the state.
    """

    kind = ""

    def __init__(
        self,
        objective: Any,
        image: torch.Tensor,
        settings: OptimizerSettings,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.objective = objective
        self._image = image
        self.settings = settings
        self.evaluator: Evaluator = evaluator or Alone()
        self.evaluations = 0
        self.records: list[IterationRecord] = []
        self.stop_reason: str | None = None
        self.final: Values | None = None
        self._start()

    @property
    def image(self) -> torch.Tensor:
        """The current iterate (1, 3, H, W)."""
        return self._image

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def iteration(self) -> int:
        return len(self.records)

    @property
    def trace(self) -> OptimizationTrace:
        return OptimizationTrace(
            records=list(self.records),
            evaluations=self.evaluations,
            stop_reason=self.stop_reason or "iterations",
            final=self.final or (math.nan,) * 4,
        )

    def step(self) -> IterationRecord | None:
        if self.done:
            return None
        if self.iteration >= self.settings.iterations:
            self.stop("iterations")
            return None
        record = self._iterate()
        self.records.append(record)
        if not self.done and self.iteration >= self.settings.iterations:
            self.stop("iterations")
        return record

    def stop(self, reason: str) -> None:
        """End the run (``cancelled`` from outside) and fix its final losses."""
        if not self.done:
            self.stop_reason = reason
            self.final = self._final()

    def close(self) -> None:
        """Give back what the run holds on its evaluator's behalf (an L-BFGS slot); its
        image stays. ``drive`` closes a run it leaves, however it leaves."""

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: tensors, numbers, strings and lists only, for ``torch.save``."""
        return {
            "kind": self.kind,
            "image": self.image.detach().clone(),
            "evaluations": self.evaluations,
            "records": [asdict(r) for r in self.records],
            "stop_reason": self.stop_reason,
            "final": list(self.final) if self.final is not None else None,
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (into a run not stepped yet): the image is copied into
        this run's image."""
        if state["kind"] != self.kind:
            raise ValueError(f"a {state['kind']} state cannot resume a {self.kind} run")
        with torch.no_grad():
            self._image.copy_(state["image"].to(self._image).reshape(self._image.shape))
        self.evaluations = state["evaluations"]
        self.records = [IterationRecord(**r) for r in state["records"]]
        self.stop_reason = state["stop_reason"]
        self.final = _as_values(state["final"])
        self._load(state)

    def _evaluate(self) -> tuple[Values, torch.Tensor]:
        """Loss terms (floats, one sync) and flat gradient at the current image."""
        values, grad = self.evaluator.evaluate(self.objective, self.image.detach())
        self.evaluations += 1
        total, content, style, tv = _read(values)[0]
        return (total, content, style, tv), grad.reshape(-1)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self._image.device, dtype=self._image.dtype)

    def _start(self) -> None:
        """The optimizer's own state at the start of a run."""
        raise NotImplementedError

    def _iterate(self) -> IterationRecord:
        raise NotImplementedError

    def _final(self) -> Values:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclass
class _History:
    """The ring of curvature pairs of a run without a slot (restored, or ended), in its
    slots' order, as a slot holds it (so a restored run continues bit for bit): the first
    min(written, m) slots."""

    s: torch.Tensor  # (k, n)
    y: torch.Tensor  # (k, n)
    good: torch.Tensor  # (k,) bool: passed the curvature test
    sy: torch.Tensor  # (k, k) s_i·y_j
    yy: torch.Tensor  # (k, k) y_i·y_j
    gamma: torch.Tensor  # () γ of the newest good pair, NaN without one
    written: int  # pairs written since the last restart (the ring's position)
    #: the ring slot of the newest pair when it is not yet tested (nor in ``good``, ``sy``,
    #: ``yy`` and ``gamma``): the next direction tests it, as it would have in the slot
    pending: int | None = None


class LBFGSRun(Run):
    """L-BFGS whose normal iteration costs one evaluation: the evaluation at the new
    point is the next iteration's. A step that fails the Armijo condition (or gives a
    non-finite loss) is halved until it passes, which keeps a full quasi-Newton step
    from blowing up on this non-convex objective; ``line_search`` instead searches for
    a step meeting the strong Wolfe conditions.

    From its first iteration the run's state lives in a slot of a ``lbfgs.Segment``
    (iterate, gradient, direction and its ring of curvature pairs), stacked with the
    other runs its evaluator steps with it; ``lockstep`` does the iteration. When the
    run ends, its image is copied back into the image it was given and the slot freed.
    """

    kind = "lbfgs"

    def _start(self) -> None:
        self.lane: Lane | None = None
        # loss terms at the current image; the first step() evaluates them
        self.values: Values | None = None
        self._grad: torch.Tensor | None = None  # without a lane: a restored gradient
        self._history: _History | None = None  # without a lane: restored pairs
        self.outcome: tuple[IterationRecord, str | None] | None = None
        #: set by an evaluator when this run's own evaluation failed (its image alone did
        #: not fit beside others); the iteration then raises it
        self.failure: BaseException | None = None

    @property
    def image(self) -> torch.Tensor:
        if self.lane is None:
            return self._image
        return self.lane.segment.x[self.lane.slot].view_as(self._image)

    @property
    def grad(self) -> torch.Tensor | None:
        """The flat gradient at the current image, once evaluated."""
        if self.lane is None or self.values is None:
            return self._grad
        return self.lane.segment.g[self.lane.slot]

    @property
    def history_length(self) -> int:
        return self.settings.history_length

    def _iterate(self) -> IterationRecord:
        try:
            self.evaluator.iterate(self)
            if self.failure is not None:
                raise self.failure
        except BaseException:
            self._leave()  # the slot is the batch's: hand it back before the item fails
            raise
        assert self.outcome is not None
        record, reason = self.outcome
        self.outcome = None
        if reason is not None:
            self.stop(reason)
        return record

    def stop(self, reason: str) -> None:
        try:
            super().stop(reason)
        finally:
            self._leave()

    def close(self) -> None:
        self._leave()

    def _leave(self) -> None:
        """Hand the slot back (the batch's memory), the image copied into the run's own
        tensor first. A run that left is never stepped again, so its ring is not kept."""
        lane = self.lane
        if lane is None:
            return
        self.lane = None
        try:
            with torch.no_grad():
                self._image.copy_(lane.segment.x[lane.slot].view_as(self._image))
        finally:
            segments = getattr(self.evaluator, "segments", None)
            if segments is not None:
                segments.release(lane)

    def _first_step(self, largest: float, curved: bool) -> float:
        """Without curvature pairs the gradient's scale says nothing about a good step
        (losses differ by 1e6 between weight sources), so the first step moves no pixel
        (``largest``: the direction's largest entry) by more than INITIAL_PIXEL_STEP; the
        pairs set the scale after that."""
        lr = self.settings.learning_rate or 1.0
        if curved:
            return lr
        return lr * INITIAL_PIXEL_STEP / max(largest, 1e-30)

    def _search(self, slope: float, largest: float, curved: bool) -> Search:
        start = Probed(0.0, self.values or (math.nan,) * 4, slope)
        step = self._first_step(largest, curved)
        if self.settings.line_search:
            return strong_wolfe(step, start)
        return backtracking(step, start, self.settings.max_backtracks)

    def _final(self) -> Values:
        if self.values is None:
            self.values = self._evaluate()[0]
        return self.values

    def _lane_history(self) -> _History | None:
        """The ring in the run's slot (or kept since it left one)."""
        lane = self.lane
        if lane is None:
            return self._history
        segment, slot, m = lane.segment, lane.slot, lane.segment.m
        count = min(lane.written, m)
        return _History(
            s=segment.pairs[slot, :count].clone(),
            y=segment.pairs[slot, m : m + count].clone(),
            good=segment.good[slot, :count].clone(),
            sy=segment.sy[slot, :count, :count].clone(),
            yy=segment.yy[slot, :count, :count].clone(),
            gamma=segment.gamma[slot].clone(),
            written=lane.written,
            pending=lane.pending,
        )

    def _state(self) -> dict[str, Any]:
        history = self._lane_history()
        grad = self.grad
        state: dict[str, Any] = {
            "values": list(self.values) if self.values is not None else None,
            "grad": grad.clone() if grad is not None else None,
        }
        if history is not None:
            state["ring"] = {
                "s": history.s,
                "y": history.y,
                "good": history.good,
                "sy": history.sy,
                "yy": history.yy,
                "written": history.written,
                "pending": -1 if history.pending is None else history.pending,
            }
            # γ may come from a good pair already pushed out of the history
            state["history_scale"] = history.gamma
        return state

    def _load(self, state: dict[str, Any]) -> None:
        if self.lane is not None:
            raise ValueError("a state can only be loaded into a run that has not started")
        self.values = _as_values(state["values"])
        self._grad = self._to_device(state["grad"]).reshape(-1) if state["grad"] is not None else None
        self._history = _restored_history(state, self._to_device)


def _restored_history(
    state: dict[str, Any], to_device: Callable[[torch.Tensor], torch.Tensor]
) -> _History | None:
    """The ring of a saved state; checkpoints from before the compact representation
    hold the two-loop's list of (s, y, ρ) oldest first (ρ > 0: a good pair), which become
    the first slots of a ring, their products computed anew."""
    scale = state.get("history_scale")
    ring = state.get("ring")
    if ring is not None:
        s = to_device(ring["s"])
        pending = int(ring["pending"])
        return _History(
            s=s,
            y=to_device(ring["y"]),
            good=ring["good"].to(device=s.device, dtype=torch.bool),
            sy=to_device(ring["sy"]),
            yy=to_device(ring["yy"]),
            gamma=to_device(scale).reshape(()),
            written=int(ring["written"]),
            pending=None if pending < 0 else pending,
        )
    if not state.get("history"):
        return None
    s = torch.stack([to_device(p[0]).reshape(-1) for p in state["history"]])
    y = torch.stack([to_device(p[1]).reshape(-1) for p in state["history"]])
    good = torch.tensor([float(p[2]) > 0 for p in state["history"]], device=s.device)
    if scale is not None:
        gamma = to_device(scale).reshape(())
    else:  # the oldest checkpoints lack it: γ of the newest good pair kept
        newest = [i for i in range(len(good)) if bool(good[i])]
        last = newest[-1] if newest else 0
        gamma = (s[last] @ y[last]) / (y[last] @ y[last]) if newest else s.new_tensor(math.nan)
    return _History(s, y, good, s @ y.T, y @ y.T, gamma, written=len(s))


# ---------------------------------------------------------------------- lockstep


#: Profiler label of the optimizer's own work (``benchmarks/launches.py``).
OPTIMIZER_LABEL = "nst.optimizer"


def lockstep(runs: Sequence[LBFGSRun], segments: Segments, evaluate: RunsGradient) -> None:
    """One L-BFGS iteration of each of ``runs`` at once; each run's ``outcome`` is left
    as (record, stop reason or None).

    Every run behaves exactly as alone: its own direction, its own line search (a
    generator, ``line_search``) with its own trial steps and acceptance. What is shared
    is the kernels: directions come from one set of stacked products per segment
    (``lbfgs.Segment.directions``), the trial images of all runs still searching are
    evaluated in one pass (``evaluate``), and everything read back is read in one sync
    per round: the slopes once, then the losses at the trial steps, which is two reads
    per iteration when the first step is taken, whatever the number of runs.
    """
    with record_function(OPTIMIZER_LABEL):
        _lockstep(runs, segments, evaluate)


def _lockstep(runs: Sequence[LBFGSRun], segments: Segments, evaluate: RunsGradient) -> None:
    _seat(runs, segments)
    runs = [run for run in runs if run.failure is None]
    fresh = [run for run in runs if run.values is None]
    if fresh:  # a run's first iteration first evaluates its start
        for run, probed in zip(
            fresh, _probe(fresh, [0.0] * len(fresh), evaluate, at_start=True), strict=True
        ):
            if run.failure is None:
                run.values = probed.values
                _keep_gradient(run, probed.point)
    runs = [run for run in runs if run.failure is None]
    if not runs:
        return
    started = time.perf_counter()
    before = [run.evaluations for run in runs]
    slope, largest, curved = (list(column) for column in zip(*_directions(runs), strict=True))
    restart = [i for i, s in enumerate(slope) if s > -1e-30]  # not a descent direction
    if restart:
        for i, row in zip(restart, _steepest([runs[i] for i in restart]), strict=True):
            slope[i], largest[i], curved[i] = row
    searches: dict[LBFGSRun, Search] = {}
    trials: dict[LBFGSRun, float] = {}
    for run, s, v, c in zip(runs, slope, largest, curved, strict=True):
        searches[run] = run._search(s, v, bool(c))
        _advance(run, searches[run], None, trials, {})
    steps: dict[LBFGSRun, Step] = {}
    while trials:
        waiting = list(trials)
        probed = _probe(waiting, [trials[run] for run in waiting], evaluate)
        trials, ended = {}, {}
        for run, result in zip(waiting, probed, strict=True):
            if run.failure is None:
                _advance(run, searches[run], result, trials, ended)
        # moved now, not after every search has ended: a round's trial images and
        # gradients are freed as soon as no search holds them
        _accept([(run, step.point) for run, step in ended.items() if step.accepted])
        for run, step in ended.items():
            step.point = None
            steps[run] = step
    seconds = time.perf_counter() - started
    for run, evaluations in zip(runs, before, strict=True):
        if run not in steps:  # failed: its iteration raises
            continue
        step, values = steps[run], run.values
        assert values is not None
        record = IterationRecord(
            run.iteration, *values, seconds=seconds, evaluations=run.evaluations - evaluations
        )
        reason = None
        if not step.accepted:
            reason = NO_PROGRESS
        else:
            run.values = step.values
            if abs(values[0] - step.values[0]) <= run.settings.tolerance * abs(values[0]):
                reason = "converged"
        run.outcome = (record, reason)


def _advance(
    run: LBFGSRun,
    search: Search,
    probed: Probed | None,
    trials: dict[LBFGSRun, float],
    ended: dict[LBFGSRun, Step],
) -> None:
    """Send ``probed`` to ``run``'s search (None: start it): its next trial step goes to
    ``trials``, its final step to ``ended``; an error is the run's own (``failure``), not
    its batch's."""
    try:
        trials[run] = next(search) if probed is None else search.send(probed)
    except StopIteration as done:
        ended[run] = done.value
    except Exception as exc:
        run.failure = exc


def _seat(runs: Sequence[LBFGSRun], segments: Segments) -> None:
    """A slot for each run without one, its state (image, restored gradient and pairs)
    moved in; runs that start together share a segment, and runs already seated may move
    into it (``Segments.seat``)."""
    groups: dict[tuple, list[LBFGSRun]] = {}
    for run in runs:
        if run.lane is None:
            image = run._image
            key = (image.numel(), run.history_length, image.device, image.dtype)
            groups.setdefault(key, []).append(run)
    seated = {run.lane: run for run in runs if run.lane is not None}
    for (n, m, device, dtype), group in groups.items():
        lanes, moved = segments.seat(n, m, device, dtype, len(group), movable=list(seated))
        for old, new in moved.items():
            seated[old].lane = new
        for run, lane in zip(group, lanes, strict=True):
            try:
                _install(run, lane)
            except Exception as exc:  # its restored state does not fit: the run's failure alone
                segments.release(lane)
                run.failure = exc


def _install(run: LBFGSRun, lane: Lane) -> None:
    segment, slot, m = lane.segment, lane.slot, lane.segment.m
    with torch.no_grad():
        segment.x[slot] = run._image.reshape(-1)
        if run._grad is not None and run.values is not None:
            segment.g[slot] = run._grad
        history = run._history
        if history is not None:
            if len(history.s) > m:
                raise ValueError(f"a saved history of {len(history.s)} pairs does not fit a ring of {m}")
            count = len(history.s)
            segment.pairs[slot, :count] = history.s
            segment.pairs[slot, m : m + count] = history.y
            segment.good[slot, :count] = history.good
            segment.sy[slot, :count, :count] = history.sy
            segment.yy[slot, :count, :count] = history.yy
            segment.gamma[slot] = history.gamma
            lane.written, lane.pending = history.written, history.pending
    run.lane, run._grad, run._history = lane, None, None


def _by_segment(runs: Sequence[LBFGSRun]) -> dict[Segment, list[LBFGSRun]]:
    """``runs`` by segment, each in slot order: the same runs always come in the same
    order, whatever order their threads asked in, so a batch's stacked objective is
    reused (``EvaluationBatch._stack``) and a full segment needs no gather (``_rows``)."""
    groups: dict[Segment, list[LBFGSRun]] = {}
    for run in sorted(runs, key=lambda r: (r.lane.segment.serial, r.lane.slot)):  # type: ignore[union-attr]
        groups.setdefault(run.lane.segment, []).append(run)  # type: ignore[union-attr]
    return groups


def _rows(tensor: torch.Tensor, runs: Sequence[LBFGSRun], segment: Segment) -> torch.Tensor:
    """``tensor``'s rows of ``runs`` (a segment's (capacity, ...) state): itself when they
    are all its slots in order, else one gather."""
    slots = [run.lane.slot for run in runs]  # type: ignore[union-attr]
    if slots == list(range(segment.capacity)):
        return tensor
    return tensor.index_select(0, to_device(slots, tensor.device))


def _directions(runs: Sequence[LBFGSRun]) -> list[list[float]]:
    """(slope, largest entry, curved) of each run's new direction: one read for all."""
    parts, order = [], []
    for segment, members in _by_segment(runs).items():
        parts.append(_rows(segment.directions(), members, segment))
        order += members
    return _in_order(runs, order, _read(torch.cat(parts)))


def _steepest(runs: Sequence[LBFGSRun]) -> list[list[float]]:
    """Restart ``runs`` from steepest descent (their pairs dropped); their summaries."""
    parts, order = [], []
    for segment, members in _by_segment(runs).items():
        parts.append(_rows(segment.steepest([run.lane for run in members]), members, segment))  # type: ignore[misc]
        order += members
    return _in_order(runs, order, _read(torch.cat(parts)))


def _in_order(runs: Sequence[LBFGSRun], order: list[LBFGSRun], rows: list[list[float]]) -> list[list[float]]:
    by_run = dict(zip(order, rows, strict=True))
    return [by_run[run] for run in runs]


@dataclass(eq=False)
class _Point:
    """A trial image and its gradient: row ``row`` of ``images`` and ``grads`` (n each)."""

    images: torch.Tensor
    grads: torch.Tensor
    row: int


def _probe(
    runs: Sequence[LBFGSRun], steps: Sequence[float], evaluate: RunsGradient, at_start: bool = False
) -> list[Probed]:
    """Evaluate each run at x + t·d (``at_start``: at x), one pass per image shape, and
    read every loss and slope in one sync."""
    position = {run: i for i, run in enumerate(runs)}
    shapes: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        shapes.setdefault(tuple(run._image.shape), []).append(i)
    parts, points = [], [None] * len(runs)
    for shape, indices in shapes.items():
        members = [runs[i] for i in indices]
        images, directions = [], []
        for segment, group in _by_segment(members).items():
            x = _rows(segment.x, group, segment)
            d = _rows(segment.d, group, segment)
            if at_start:
                images.append(x)
            else:
                t = to_device([steps[position[run]] for run in group], x.device, x.dtype)
                images.append(torch.addcmul(x, t.unsqueeze(1), d))
            directions.append(d)
        ordered = [run for group in _by_segment(members).values() for run in group]
        stacked = images[0] if len(images) == 1 else torch.cat(images)
        values, grads = evaluate(ordered, stacked.view(len(ordered), *shape[1:]))
        grads = grads.reshape(len(ordered), -1)
        slopes = (grads * (directions[0] if len(directions) == 1 else torch.cat(directions))).sum(dim=1)
        parts.append(torch.cat([values, slopes.unsqueeze(1)], dim=1))
        for row, run in enumerate(ordered):
            points[position[run]] = _Point(stacked, grads, row)
            run.evaluations += 1
        indices[:] = [position[run] for run in ordered]
    read = _read(torch.cat(parts))
    order = [i for indices in shapes.values() for i in indices]
    results: list[Probed] = [None] * len(runs)  # type: ignore[list-item]
    for i, (total, content, style, tv, slope) in zip(order, read, strict=True):
        results[i] = Probed(steps[i], (total, content, style, tv), slope, points[i])
    return results


def _keep_gradient(run: LBFGSRun, point: _Point) -> None:
    """A run's gradient at its start (its first evaluation) into its slot."""
    with torch.no_grad():
        run.lane.segment.g[run.lane.slot] = point.grads[point.row]  # type: ignore[union-attr]


def _accept(accepted: list[tuple[LBFGSRun, _Point]]) -> None:
    """Move each run to its accepted trial point and write the pair s = x⁺ − x,
    y = g⁺ − g into its ring (folded into SᵀY, YᵀY at the next direction): one set of
    kernels per segment and pass the points came from."""
    groups: dict[tuple, list[tuple[LBFGSRun, _Point]]] = {}
    for run, point in accepted:
        groups.setdefault((run.lane.segment, id(point.images)), []).append((run, point))  # type: ignore[union-attr]
    for (segment, _), members in groups.items():
        runs = [run for run, _ in members]
        device = segment.device
        host = [[run.lane.slot for run in runs], [point.row for _, point in members]]  # type: ignore[union-attr]
        host.append([run.lane.next_slot for run in runs])  # type: ignore[union-attr]
        slots, rows, ring = to_device([i for part in host for i in part], device).view(3, -1)
        images, grads = members[0][1].images, members[0][1].grads
        new_x, new_g = images.index_select(0, rows), grads.index_select(0, rows)
        with torch.no_grad():
            pair = torch.stack(
                [new_x - segment.x.index_select(0, slots), new_g - segment.g.index_select(0, slots)], 1
            )
            # a NaN or inf would reach every later direction through the products (0·NaN)
            segment.pairs[slots.unsqueeze(1), torch.stack([ring, ring + segment.m], 1)] = pair.nan_to_num_(
                0, 0, 0
            )
            segment.x.index_copy_(0, slots, new_x)
            segment.g.index_copy_(0, slots, new_g)
        for run in runs:
            lane = run.lane
            assert lane is not None
            lane.pending = lane.next_slot
            lane.written += 1


class AdamRun(Run):
    """Adam on the pixels: one evaluation per iteration, plus one for the final losses."""

    kind = "adam"

    def _start(self) -> None:
        self.optimizer = torch.optim.Adam([self.image], lr=self.settings.learning_rate or 0.02)
        self.previous = math.inf  # the loss the last iteration started from

    def _iterate(self) -> IterationRecord:
        start = time.perf_counter()
        values, grad = self._evaluate()
        self.image.grad = grad.view_as(self.image)
        self.optimizer.step()
        self.image.grad = None
        record = IterationRecord(self.iteration, *values, seconds=time.perf_counter() - start, evaluations=1)
        loss, previous = values[0], self.previous
        self.previous = loss
        if not math.isfinite(loss):
            self.stop("diverged")
        elif math.isfinite(previous) and abs(previous - loss) <= self.settings.tolerance * abs(previous):
            self.stop("converged")
        return record

    def _final(self) -> Values:
        return self._evaluate()[0]

    def _state(self) -> dict[str, Any]:
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "previous": self.previous}

    def _load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.previous = state["previous"]


RUNS: dict[str, type[Run]] = {LBFGSRun.kind: LBFGSRun, AdamRun.kind: AdamRun}


def start_run(
    objective: Objective, image: torch.Tensor, settings: OptimizerSettings, evaluator: Evaluator | None = None
) -> Run:
    """A run of ``settings.name`` over ``image``; nothing is evaluated until its first step.
    ``evaluator``: how it is evaluated (default ``Alone()``: the objective's own pass)."""
    if settings.name not in RUNS:
        raise ValueError(f"unknown optimizer {settings.name!r}")
    return RUNS[settings.name](objective, image, settings, evaluator)


def optimize(
    objective: Objective,
    image: torch.Tensor,
    settings: OptimizerSettings,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizationTrace:
    """Minimise ``objective`` over ``image`` (left at the result); returns the trace.

    ``should_stop`` is asked before each iteration; ``on_iteration`` sees every iteration
    that moved the image.
    """
    return drive(start_run(objective, image, settings), on_iteration, should_stop)


def drive(
    run: Run,
    on_iteration: IterationCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizationTrace:
    """Step ``run`` to its end (a fresh one, or one restored from a state), and close it,
    also when a callback raises."""
    try:
        while not run.done:
            if run.iteration < run.settings.iterations and should_stop is not None and should_stop():
                run.stop("cancelled")
                break
            record = run.step()
            if record is not None and on_iteration is not None and run.stop_reason != NO_PROGRESS:
                on_iteration(record, run.image)
    finally:
        run.close()
    return run.trace


def _as_values(numbers: list[float] | None) -> Values | None:
    if numbers is None:
        return None
    total, content, style, tv = numbers
    return total, content, style, tv
