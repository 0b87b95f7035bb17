"""Per-synthesis statistics: a flat record whose fields are result columns, its
assembly from an optimisation trace, and the device facts (name, memory, peak use) it
records."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from nst_engine.engine.optimize import OptimizationTrace


def stat(meaning: str, **options: Any) -> Any:
    """A statistics field; ``meaning`` documents its result column (the docs' schema
    table is generated from it)."""
    return field(metadata={"meaning": meaning}, **options)


@dataclass
class SynthesisStats:
    """What one synthesis measured. Every field is a column of the result table, with its
    type and meaning defined here once: a new metric is a field here plus the code that
    computes it."""

    height: int = stat("output height in pixels")
    width: int = stat("output width in pixels")
    pixels: int = stat("height × width (estimated from the content's aspect ratio for failed items)")
    iterations: int = stat("iterations run")
    resumed_from_iteration: int = stat(
        "iteration a checkpoint of an earlier attempt resumed from (0: started afresh); "
        "the per-iteration lists hold the whole run",
        kw_only=True,
        default=0,
    )
    batch_size: int = stat(
        "most syntheses whose evaluations ran in one pass with this one's (1: alone)",
        kw_only=True,
        default=1,
    )
    scale_schedule: str = stat(
        "coarse-to-fine schedule that ran, WxH:iterations per scale, smallest first (one entry: "
        "the paper's single scale); the per-iteration columns are the last scale's",
        kw_only=True,
        default="",
    )
    coarse_seconds: float = stat(
        "part of synthesis_seconds spent at the coarser scales (0 for one scale)", kw_only=True, default=0.0
    )
    tile: int = stat(
        "tile side in px the last scale's loss gradient was computed in (0: the whole image at once)",
        kw_only=True,
        default=0,
    )
    tiles: int = stat("tiles per evaluation at the last scale (0: untiled)", kw_only=True, default=0)
    loss_evaluations: int = stat("loss evaluations (>= iterations + 1 with L-BFGS)")
    stop_reason: str = stat("iterations, converged, no_progress, diverged or cancelled")
    final_content_loss: float = stat("content loss of the output")
    final_style_loss: float = stat("style loss of the output")
    final_tv_loss: float = stat("total-variation loss of the output (0 unless tv_weight is set)")
    final_total_loss: float = stat("total loss of the output")
    final_temporal_loss: float | None = stat(
        "video frames after a shot's first: temporal loss of the output (Ruder et al. 2016, eq. 7, "
        "unweighted), its departure from the previous stylized frame warped by the flow, over the "
        "pixels the consistency check trusts; the total holds it times temporal_weight (null for images)",
        kw_only=True,
        default=None,
    )
    iteration_seconds: list[float] = stat("wall time of each iteration")
    total_losses: list[float] = stat("loss curve: total loss at the start of each iteration")
    content_losses: list[float] = stat("content loss at the start of each iteration")
    style_losses: list[float] = stat("style loss at the start of each iteration")
    warmup_iterations: int = stat(
        "iterations left out of the per-iteration statistics", kw_only=True, default=0
    )
    seconds_per_iteration: float | None = stat(
        "median of iteration_seconds after the warm-up iterations", init=False
    )
    seconds_per_iteration_p25: float | None = stat(
        "25th percentile of iteration_seconds after warm-up", init=False
    )
    seconds_per_iteration_p75: float | None = stat(
        "75th percentile of iteration_seconds after warm-up", init=False
    )
    weights_load_seconds: float = stat(
        "VGG-19 load (and normalisation) time, charged to a worker's first item"
    )
    targets_seconds: float = stat("content and style target extraction")
    setup_seconds: float = stat("weights_load_seconds + targets_seconds")
    synthesis_seconds: float = stat("optimisation time of this attempt")
    engine_seconds: float = stat("engine time for the item: image decode, set-up and synthesis")
    device: str = stat("torch device, e.g. cuda:0 or cpu")
    device_type: str = stat("cuda or cpu")
    device_name: str = stat("GPU or CPU model")
    peak_memory_bytes: int = stat("CUDA peak allocated (GPU) or peak RSS during the item (CPU)")
    peak_memory_kind: str = stat("cuda_peak_allocated or cpu_peak_rss")
    device_memory_bytes: int = stat("total memory of the GPU, or RAM of the machine for CPU")
    weights_source: str = stat("where the VGG-19 weights came from")

    def __post_init__(self) -> None:
        # at least one iteration is kept, so a short run still has a median
        self.warmup_iterations = max(0, min(self.warmup_iterations, len(self.iteration_seconds) - 1))
        kept = sorted(self.iteration_seconds[self.warmup_iterations :])
        # None, not NaN, when no iteration ran: a null in Parquet and JSON, skipped by the fits
        if len(kept) > 1:
            p25, _, p75 = statistics.quantiles(kept, n=4, method="inclusive")
        else:
            p25 = p75 = kept[0] if kept else None
        self.seconds_per_iteration = statistics.median(kept) if kept else None
        self.seconds_per_iteration_p25, self.seconds_per_iteration_p75 = p25, p75

    def with_warmup(self, iterations: int) -> SynthesisStats:
        """The same record with the first ``iterations`` left out of the per-iteration statistics."""
        return replace(self, warmup_iterations=iterations)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timings:
    """Wall seconds of one item's phases."""

    weights_load: float  # charged to a worker's first item
    targets: float
    synthesis: float
    engine: float  # the whole item, weights load included


def synthesis_stats(
    trace: OptimizationTrace,
    *,
    height: int,
    width: int,
    timings: Timings,
    device: torch.device,
    memory: PeakMemory,
    weights_source: str,
    resumed_from_iteration: int = 0,
    batch_size: int = 1,
    scale_schedule: str = "",
    coarse_seconds: float = 0.0,
    tile: int = 0,
    tiles: int = 0,
    temporal_loss: float | None = None,
) -> SynthesisStats:
    """The statistics record of one finished optimisation (``trace`` holds the records of
    every attempt, those before ``resumed_from_iteration`` restored from a checkpoint)."""
    records = trace.records
    total, content, style, tv = trace.final
    return SynthesisStats(
        height=height,
        width=width,
        pixels=height * width,
        iterations=trace.iterations,
        resumed_from_iteration=resumed_from_iteration,
        batch_size=batch_size,
        scale_schedule=scale_schedule,
        coarse_seconds=coarse_seconds,
        tile=tile,
        tiles=tiles,
        loss_evaluations=trace.evaluations,
        stop_reason=trace.stop_reason,
        final_content_loss=content,
        final_style_loss=style,
        final_tv_loss=tv,
        final_total_loss=total,
        final_temporal_loss=temporal_loss,
        iteration_seconds=[r.seconds for r in records],
        total_losses=[r.total for r in records],
        content_losses=[r.content for r in records],
        style_losses=[r.style for r in records],
        weights_load_seconds=timings.weights_load,
        targets_seconds=timings.targets,
        setup_seconds=timings.weights_load + timings.targets,
        synthesis_seconds=timings.synthesis,
        engine_seconds=timings.engine,
        device=str(device),
        device_type=device.type,
        device_name=device_name(device),
        peak_memory_bytes=memory.so_far(),
        peak_memory_kind=memory.kind,
        device_memory_bytes=device_memory(device),
        weights_source=weights_source,
    )


def device_name(device: torch.device) -> str:
    """Human-readable model of the device: the GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def device_memory(device: torch.device) -> int:
    """Total memory of the device: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_memory(device: torch.device) -> int:
    """Memory in use now, as ``PeakMemory`` measures it: CUDA allocated, or RSS."""
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else _rss_bytes()


class PeakMemory:
    """Peak memory during a block: CUDA peak allocated on GPU, sampled peak RSS on CPU.

    A long-lived worker's ``ru_maxrss`` only ever grows, so on CPU a sampler thread
    records the peak of this block alone.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0
        self.kind = "cuda_peak_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def so_far(self) -> int:
        """The peak since ``__enter__``, read while the block still runs."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(self.peak, _rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
