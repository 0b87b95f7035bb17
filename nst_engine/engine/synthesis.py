"""One style-transfer synthesis, and the ``Stylizer`` that keeps networks and style
targets loaded between syntheses (a batch worker holds one for its lifetime).

The parts live in their own modules: ``targets`` (the cache), ``problem`` (one item's
objective, start and output), ``optimize`` (the run), ``stats`` and ``result``
(what is handed back); this module only puts them in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nst_engine.engine import color
from nst_engine.engine.batch import EvaluationBatch, Member
from nst_engine.engine.checkpoint import Checkpointer, CheckpointPolicy, fingerprint
from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.device import network_pass, resolve_device
from nst_engine.engine.images import ImageLike, load_image, save_png
from nst_engine.engine.losses import Term
from nst_engine.engine.memory import MemoryModel
from nst_engine.engine.optimize import (
    Alone,
    Evaluator,
    IterationCallback,
    IterationRecord,
    OptimizationTrace,
    Run,
    drive,
    start_run,
)
from nst_engine.engine.placement import How, Placement, place
from nst_engine.engine.problem import Problem, synthesis_size
from nst_engine.engine.result import SynthesisResult, png_metadata
from nst_engine.engine.scales import coarser_scales, schedule_text, upsample
from nst_engine.engine.stats import PeakMemory, SynthesisStats, Timings, synthesis_stats
from nst_engine.engine.targets import TargetCache, image_digest
from nst_engine.engine.tiles import TiledGradient, tile_count
from nst_engine.engine.weights import VGGWeights
from nst_engine.errors import ConfigError

__all__ = ["CheckpointPolicy", "PreviousFrame", "Stylizer", "SynthesisResult", "resolve_device"]


@dataclass(frozen=True)
class PreviousFrame:
    """What a video frame after its shot's first takes from the frame before (Ruder et al.
    2016, Sec. 3): the previous stylized output warped into this frame by the backward
    flow, (1, 3, H, W) in [0, 1] at the synthesis size, as the start image; and, with
    ``temporal``, the temporal loss towards it (eq. 7) over the consistency ``weights``
    (1, 1, H, W), weighted by ``SynthesisConfig.temporal_weight`` × the content loss of
    the warped frame (``_temporal_term``). Without ``temporal`` it is the warm start alone."""

    warped: torch.Tensor
    weights: torch.Tensor
    temporal: bool = True

    def digest(self) -> str:
        """A hash of what it changes in the iterates, for checkpoint fingerprints."""
        h = hashlib.sha256(b"temporal" if self.temporal else b"start")
        for tensor in (self.warped, self.weights):
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class Stylizer:
    """VGG-19 weights on one device, reused across syntheses with their style targets."""

    def __init__(
        self,
        weights: VGGWeights,
        device: str | torch.device = "auto",
        threads: int | None = None,
        target_cache_size: int = 32,
        load_seconds: float = 0.0,
        memory_share: float = 1.0,
    ) -> None:
        """``memory_share``: the part of the device this process may plan on (``1/N``
        for one of N workers sharing a GPU)."""
        self.weights = weights
        self.device = resolve_device(device)
        if not 0 < memory_share <= 1:
            raise ValueError(f"memory_share must be in (0, 1], got {memory_share}")
        self.memory_share = memory_share
        if threads:
            torch.set_num_threads(threads)
        self.cache = TargetCache(weights, self.device, target_cache_size)
        self._pending_load_seconds = load_seconds
        self._lock = threading.Lock()
        self._memory: MemoryModel | None = None  # the last batch's, measured (``batch``)

    def batch(self, max_members: int) -> EvaluationBatch:
        """A batch for up to ``max_members`` syntheses at once on this device, fewer when
        its memory (free at the batch's start) holds fewer; use it entered. What the
        earlier batches measured per pixel carries over, so only the first batch of a
        worker runs its first pass alone to measure it."""
        self._memory = self._memory_model()
        return EvaluationBatch(self.device, max_members, self._memory)

    def _memory_model(self) -> MemoryModel:
        """This device's memory free now, with the bytes per pixel the last batch measured."""
        memory = MemoryModel.for_device(self.device, self.memory_share)
        if self._memory is not None:
            memory.bytes_per_pixel = self._memory.bytes_per_pixel
        return memory

    def synthesize(
        self,
        content: ImageLike,
        styles: Sequence[ImageLike],
        config: SynthesisConfig,
        *,
        content_id: str | None = None,
        style_ids: Sequence[str] | None = None,
        on_iteration: Callable[[IterationRecord, torch.Tensor], None] | None = None,
        snapshot_every: int = 0,
        snapshot_path: Callable[[int], Path] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint: CheckpointPolicy | None = None,
        batch: EvaluationBatch | None = None,
        placement: Placement | None = None,
        previous: PreviousFrame | None = None,
    ) -> SynthesisResult:
        """Run one synthesis; ``content``/``styles`` are paths or PIL images.

        With ``batch`` (``Stylizer.batch``, entered), the synthesis is one member of it:
        it waits until the batch's memory model admits it, and its evaluations run in the
        batch's shared passes; called from one thread per synthesis (``run_together``).
        ``placement`` is how it runs (``placement.place``), when the caller has decided
        already (a worker, before it puts an item in its batch); else it is decided here.

        With ``checkpoint``, a checkpoint of the same work (same parameters, inputs,
        weights) is resumed from, and the run saves itself as the policy says, so a
        synthesis lost with its worker continues on the next attempt instead of starting
        over; the statistics then hold the whole run (records of the earlier attempts
        first) and ``resumed_from_iteration``. The result equals an uninterrupted run's.

        With ``previous`` it is a video frame after its shot's first (``video``): it starts
        from the previous stylized frame warped into it, not from ``config.init`` nor the
        coarser scales, and (``PreviousFrame.temporal``) adds the temporal loss.
        """
        _check_style_count(len(styles), config)
        started = time.perf_counter()
        content_img = load_image(content)
        style_imgs = [load_image(s) for s in styles]
        ids = (
            content_id or image_digest(content_img),
            list(style_ids or [image_digest(s) for s in style_imgs]),
        )
        placement = placement or self.place(*synthesis_size(content_img, config), config, batch)
        if previous is not None:
            _check_previous(previous, synthesis_size(content_img, config))
            ids = (f"{ids[0]}+previous:{previous.digest()}", ids[1])  # another work, for checkpoints
        watch = _Watch(on_iteration, snapshot_every, snapshot_path, should_stop, checkpoint)
        with (
            _join(batch if placement.how is How.BATCHED else None, content_img, config) as member,
            # a batch's members share the peak of the batch, which the batch itself enters
            contextlib.nullcontext(batch.peak) if batch is not None else PeakMemory(self.device) as memory,
        ):
            ran = self._optimize(
                content_img, style_imgs, config, placement.tile, member, ids, watch, previous
            )
        stats = self._stats(ran, config, memory, member, started)
        metadata = png_metadata(config, self.weights, ids[0], ids[1], stats)
        return SynthesisResult(ran.output, stats, metadata)

    def _optimize(
        self,
        content: Image.Image,
        styles: list[Image.Image],
        config: SynthesisConfig,
        tile: int,
        member: Member | None,
        ids: tuple[str, list[str]],
        watch: _Watch,
        previous: PreviousFrame | None = None,
    ) -> _Ran:
        """The synthesis itself: targets, the coarser scales unless a checkpoint resumes
        past them or a previous frame starts it, and the run at the requested size, timed."""
        targets_start = time.perf_counter()
        problem = Problem.build(content, styles, config, self.cache)
        image = problem.initial_image()
        if previous is not None:
            image.copy_(_as_optimised(problem, previous.warped))
        temporal = _temporal_term(problem, previous, image, tile)
        targets_seconds = time.perf_counter() - targets_start
        evaluator = _evaluator(problem, tile, member)
        run = start_run(problem.objective, image, config.optimizer_settings(), evaluator)
        hook = _iteration_hook(problem, watch.on_iteration, watch.snapshot_every, watch.snapshot_path)
        resumed_from = 0
        if watch.checkpoint is not None:
            work = fingerprint(config, self.weights.digest, ids[0], ids[1], problem.height, problem.width)
            keeper = Checkpointer(watch.checkpoint, work)
            resumed_from = keeper.restore(run)
            hook = _checkpointing(hook, keeper, run)
        start = time.perf_counter()
        # a run resumed from a checkpoint is past its coarse scales; a video frame after
        # its shot's first starts from the frame before instead
        coarse = (
            []
            if resumed_from or previous is not None
            else self._coarse_start(content, styles, config, image, member, watch.should_stop)
        )
        coarse_seconds = time.perf_counter() - start if coarse else 0.0
        trace = drive(run, hook, watch.should_stop)
        # the tile the run ended with: an evaluation that ran out of memory halved it
        tiled = evaluator.gradient if isinstance(evaluator, Alone) else None
        return _Ran(
            problem,
            trace,
            problem.finish(image),
            targets_seconds,
            time.perf_counter() - start,
            coarse,
            coarse_seconds,
            resumed_from,
            tiled.tile if isinstance(tiled, TiledGradient) else 0,
            _term_value(temporal, image),
        )

    def _stats(
        self, ran: _Ran, config: SynthesisConfig, memory: PeakMemory, member: Member | None, started: float
    ) -> SynthesisStats:
        with self._lock:  # charged once, whichever member of a batch finishes first
            load_seconds, self._pending_load_seconds = self._pending_load_seconds, 0.0
        timings = Timings(
            weights_load=load_seconds,
            targets=ran.targets_seconds,
            synthesis=ran.synthesis_seconds,
            engine=time.perf_counter() - started + load_seconds,
        )
        height, width = ran.problem.height, ran.problem.width
        return synthesis_stats(
            ran.trace,
            height=height,
            width=width,
            timings=timings,
            device=self.device,
            memory=memory,
            weights_source=self.weights.source,
            resumed_from_iteration=ran.resumed_from,
            batch_size=member.largest if member else 1,
            scale_schedule=schedule_text(config, height, width, ran.coarse),
            coarse_seconds=ran.coarse_seconds,
            tile=ran.tile,
            tiles=tile_count(height, width, ran.tile),
            temporal_loss=ran.temporal_loss,
        )

    def _coarse_start(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        config: SynthesisConfig,
        image: torch.Tensor,
        member: Member | None,
        should_stop: Callable[[], bool] | None,
    ) -> list[tuple[int, int, int]]:
        """Run the coarser scales (``scales``), smallest first from the configured start,
        and put the last one's result, upsampled, into ``image`` (the requested size's
        start); (height, width, iterations run) of each. A scale too large for the device
        runs tiled, as the requested size does."""
        ran: list[tuple[int, int, int]] = []
        start: torch.Tensor | None = None
        for scale in coarser_scales(config):
            problem = Problem.build(content, styles, scale, self.cache)
            coarse = (
                problem.initial_image() if start is None else upsample(start, problem.height, problem.width)
            )
            tile = self.place(problem.height, problem.width, scale, member and member.batch).tile
            trace = drive(
                start_run(
                    problem.objective, coarse, scale.optimizer_settings(), _evaluator(problem, tile, member)
                ),
                None,
                should_stop,
            )
            ran.append((problem.height, problem.width, trace.iterations))
            start = coarse
        if start is not None:
            with torch.no_grad():
                image.copy_(upsample(start, *image.shape[-2:]))
        return ran

    def place(
        self, height: int, width: int, config: SynthesisConfig, batch: EvaluationBatch | None = None
    ) -> Placement:
        """How a ``height`` × ``width`` synthesis runs here (``placement.place``): against
        ``batch``'s memory model when it joins one (the budget its members were admitted
        by; what the others hold now must not make it tile), else against this device's
        memory free now."""
        memory = batch.memory if batch is not None else self._memory_model()
        return place(height, width, config, memory, batch is not None)


def _evaluator(problem: Problem, tile: int, member: Member | None) -> Evaluator:
    """How a run evaluates: in tiles, in its batch's shared passes, or alone."""
    if tile:
        return Alone(TiledGradient(problem.objective, tile))
    return member if member is not None else Alone()


@contextlib.contextmanager
def _join(
    batch: EvaluationBatch | None, content: Image.Image, config: SynthesisConfig
) -> Iterator[Member | None]:
    """The synthesis's place in ``batch`` (None without one), sized by its pixels."""
    if batch is None:
        yield None
        return
    height, width = synthesis_size(content, config)
    with batch.member(height * width, config.optimizer_settings()) as member:
        yield member


@dataclass(frozen=True)
class _Watch:
    """What watches a synthesis: the caller's callback, snapshots, stopping, checkpoints."""

    on_iteration: IterationCallback | None
    snapshot_every: int
    snapshot_path: Callable[[int], Path] | None
    should_stop: Callable[[], bool] | None
    checkpoint: CheckpointPolicy | None


@dataclass(frozen=True)
class _Ran:
    """What a synthesis's optimisation leaves for its statistics and output."""

    problem: Problem
    trace: OptimizationTrace
    output: torch.Tensor
    targets_seconds: float
    synthesis_seconds: float
    coarse: list[tuple[int, int, int]]
    coarse_seconds: float
    resumed_from: int
    tile: int
    temporal_loss: float | None  # unweighted, at the output; None without the term


def _check_previous(previous: PreviousFrame, size: tuple[int, int]) -> None:
    """A previous frame must be at the synthesis size (tiled or not: ``tiles`` cuts its
    temporal loss per tile)."""
    if tuple(previous.warped.shape[-2:]) != size or tuple(previous.weights.shape[-2:]) != size:
        raise ValueError(
            f"the previous frame is {tuple(previous.warped.shape[-2:])}, "
            f"its weights {tuple(previous.weights.shape[-2:])}; the synthesis is {size}"
        )


def _as_optimised(problem: Problem, image: torch.Tensor) -> torch.Tensor:
    """An output-space image (RGB) as the optimisation sees it: its luminance in
    luminance mode (``Problem.finish`` puts the content's colours back)."""
    image = image.detach().float().cpu()
    return color.luminance(image) if problem.config.color == "luminance" else image


def _temporal_term(
    problem: Problem, previous: PreviousFrame | None, start: torch.Tensor, tile: int
) -> Term | None:
    """The temporal loss towards the warped previous frame, joined to ``problem``'s
    objective; None where there is none. Its weight is relative (``config.TEMPORAL_WEIGHT``):
    γ × the content loss of the frame's ``start`` (the warped previous frame), so that γ
    means the same on any network and at any size. Each frame has its own, so a batch's
    members keep theirs (``losses._set_weights`` stacks them per image)."""
    if previous is None or not previous.temporal:
        return None
    # imported here: ``temporal`` needs OpenCV (flow), which only video frames load
    from nst_engine.engine.temporal import TemporalLoss

    term = TemporalLoss(_as_optimised(problem, previous.warped), previous.weights.detach().float().cpu())
    weight = problem.config.temporal_weight
    weight = weight * _start_content_loss(problem, start, tile) if weight else 0.0
    problem.objective.with_temporal(term, weight)
    return problem.objective.temporal_loss


def _start_content_loss(problem: Problem, start: torch.Tensor, tile: int) -> float:
    """α·L_content (eq. 1) of ``start`` (1, 3, H, W) on the device: one forward without
    gradients before the optimisation (~50 evaluations follow), in tiles where the synthesis
    runs tiled. The whole image's, also when tiled: the temporal loss is one sum over the
    image (eq. 7) whose tiles' shares add up, so it takes one weight; a weight per tile would
    change with the grid, which moves every evaluation."""
    objective = problem.objective
    if tile:
        return float(TiledGradient(objective, tile).content_loss(objective, start))
    with torch.no_grad(), network_pass(start.device, objective.precision, None):
        return objective.content_weight * float(objective(start).content[0])


def _term_value(term: Term | None, image: torch.Tensor) -> float | None:
    """``term``'s raw value at the one image ``image``, as a float."""
    if term is None:
        return None
    with torch.no_grad():
        return float(term.raw(image.float())[0][0])


def _check_style_count(count: int, config: SynthesisConfig) -> None:
    if not count:
        raise ConfigError("give at least one style image")
    if config.style_weights is not None and len(config.style_weights) != count:
        raise ConfigError(
            f"give {count} weight{'s' if count > 1 else ''}, one per style image, "
            f"got {len(config.style_weights)}",
            field="style_weights",
        )


def _iteration_hook(
    problem: Problem,
    on_iteration: IterationCallback | None,
    snapshot_every: int,
    snapshot_path: Callable[[int], Path] | None,
) -> IterationCallback:
    """The caller's callback, then a PNG snapshot every ``snapshot_every`` iterations."""

    def hook(record: IterationRecord, image: torch.Tensor) -> None:
        if on_iteration is not None:
            on_iteration(record, image)
        done = record.iteration + 1
        if snapshot_every and snapshot_path is not None and done % snapshot_every == 0:
            save_png(problem.finish(image), snapshot_path(done))

    return hook


def _checkpointing(hook: IterationCallback, keeper: Checkpointer, run: Run) -> IterationCallback:
    """``hook``, then a checkpoint of ``run`` when one is due: after the iteration's
    other work, so a checkpoint never holds a state the caller has not seen."""

    def checkpointing(record: IterationRecord, image: torch.Tensor) -> None:
        hook(record, image)
        keeper.after_iteration(run)

    return checkpointing
