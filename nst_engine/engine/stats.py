"""Per-synthesis statistics: a flat record, ready to become one Parquet row."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class SynthesisStats:
    content_id: str
    style_ids: list[str]
    height: int
    width: int
    pixels: int
    iterations: int
    loss_evaluations: int
    stop_reason: str
    final_content_loss: float
    final_style_loss: float
    final_tv_loss: float
    final_total_loss: float
    content_losses: list[float]
    style_losses: list[float]
    total_losses: list[float]
    iteration_seconds: list[float]
    weights_load_seconds: float
    targets_seconds: float
    setup_seconds: float
    synthesis_seconds: float
    total_seconds: float
    device: str
    device_type: str
    device_name: str
    peak_memory_bytes: int
    peak_memory_kind: str
    device_memory_bytes: int
    torch_version: str
    seed: int
    weights_source: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def seconds_per_iteration(self) -> float:
        """Median iteration time (the mean of the middle two for an even count)."""
        return statistics.median(self.iteration_seconds) if self.iteration_seconds else float("nan")


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
