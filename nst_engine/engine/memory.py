"""How many syntheses fit on a device at once: a memory model measured on the device.

The scaling study fits a synthesis's memory as c + d·pixels per device. A batch of B
syntheses of P pixels each needs, beyond what the device holds already (c: the network,
cached style targets, other processes), B · (d·P + s): d, the bytes of activations one
evaluation keeps per pixel, is measured on the batch's first evaluation (run alone for
that reason, and twice: the first run warms the device up, and cuDNN's autotuning
workspaces would otherwise count as activations); s, the optimiser's own tensors,
follows exactly from its settings (L-BFGS keeps ``history_length`` pairs of image-sized
vectors). The batch admits a synthesis only while the sum stays within
``SAFETY_MARGIN`` of the memory the process may use when it began: what is free, and no
more than its share of the device when several workers share it
(``MemoryModel.for_device``).
"""

from __future__ import annotations

import torch

from nst_engine.engine.optimize import OptimizerSettings

#: Share of the free memory a batch plans to use: allocator fragmentation, cuDNN
#: workspaces and the measurement's own error live in the rest.
SAFETY_MARGIN = 0.8
#: Image-sized float32 vectors an optimisation run keeps besides L-BFGS's pairs: its
#: own image, the iterate, gradient and direction in its slot (``lbfgs.Segment``), a
#: trial image with its gradient, and the new pair before it is written to the ring.
RUN_VECTORS = 8
#: Activation bytes per pixel of one evaluation assumed before any is measured, and the
#: least ever assumed: VGG-19 to conv5_1 keeps about 290 float32 responses per input
#: pixel for the backward pass (64·2 + 128·2/4 + 256·4/16 + 512·4/64 + 512/256), each with
#: its rectified copy; a measurement below that (a CPU's sampled RSS misses short peaks)
#: is not believed.
MIN_ACTIVATION_BYTES_PER_PIXEL = 290 * 4 * 2


#: How allocation failures read when they are not ``torch.OutOfMemoryError``: the CPU
#: allocator's, cuDNN's and cuBLAS's own (a workspace or handle they could not allocate),
#: and CUDA's runtime error outside PyTorch's caching allocator (``torch.AcceleratorError``).
ALLOCATION_FAILURES = (
    "can't allocate memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: PyTorch's, Python's, the CPU allocator's, or a CUDA
    library's (``ALLOCATION_FAILURES``)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in ALLOCATION_FAILURES)


def release_cached(device: torch.device) -> None:
    """Hand what CUDA's caching allocator holds unused back to the device, after an
    allocation failed (the CPU's allocator keeps nothing back)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def optimizer_state_bytes(settings: OptimizerSettings, pixels: int) -> int:
    """Bytes an optimisation run of a 3-channel image of ``pixels`` keeps, exactly (L-BFGS:
    its ring of ``history_length`` pairs)."""
    vectors = RUN_VECTORS + (2 * settings.history_length if settings.name == "lbfgs" else 2)
    return 4 * 3 * pixels * vectors


def free_memory(device: torch.device, share: float = 1.0) -> int:
    """Bytes this process may still allocate on ``device``: CUDA's free memory plus what
    its caching allocator holds unused, and no more than ``share`` of the device's total
    less what it has allocated; for the CPU, the kernel's MemAvailable, or less under an
    address-space limit (``ulimit -v``, as a container or a test may set).
    0 means unknown (no /proc), not nothing."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        mine = free + torch.cuda.memory_reserved(device) - allocated
        return int(max(0, min(mine, share * total - allocated)))
    available = _proc_kib("/proc/meminfo", "MemAvailable:")
    try:
        import resource  # POSIX only
    except ImportError:
        return available
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if available and limit != resource.RLIM_INFINITY:
        available = min(available, max(1, limit - _proc_kib("/proc/self/status", "VmSize:")))
    return available


def _proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a /proc file, in bytes (0 when absent)."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class MemoryModel:
    """B · (d·pixels + state) against a budget; ``d`` learnt from measured evaluations."""

    def __init__(
        self, budget: int, bytes_per_pixel: float | None = None, floor: float = MIN_ACTIVATION_BYTES_PER_PIXEL
    ) -> None:
        self.budget = budget
        self.bytes_per_pixel = bytes_per_pixel  # None until an evaluation was measured
        #: the least believed per pixel; 0 for a model fitted to whole runs' measured peaks
        self.floor = floor

    @classmethod
    def for_device(cls, device: torch.device, share: float = 1.0) -> MemoryModel:
        """The budget of a process that may use ``share`` of ``device`` (``1/N`` when N
        workers share one GPU): what is free now, within its share of the device's total
        less what this process holds already, so N processes never plan on the same bytes."""
        return cls(int(SAFETY_MARGIN * free_memory(device, share)))

    @property
    def measured(self) -> bool:
        return self.bytes_per_pixel is not None

    @property
    def activation_bytes_per_pixel(self) -> float:
        """What one evaluation keeps per input pixel: measured, never below the floor."""
        return max(self.bytes_per_pixel or 0.0, self.floor)

    def need(self, pixels: int, settings: OptimizerSettings) -> int:
        """Predicted bytes of one more synthesis of ``pixels`` in the batch."""
        return int(self.activation_bytes_per_pixel * pixels) + optimizer_state_bytes(settings, pixels)

    def observe(self, pixels: int, activation_bytes: int) -> None:
        """An evaluation over ``pixels`` (all its images) used ``activation_bytes``."""
        if pixels > 0:
            self.bytes_per_pixel = max(self.bytes_per_pixel or 0.0, activation_bytes / pixels)

    def ran_out(self, pixels: int) -> None:
        """An evaluation over ``pixels`` ran out of memory: no fewer bytes per pixel than
        the whole budget spread over them, so later admissions stay below that."""
        if pixels > 0:
            self.bytes_per_pixel = max(self.bytes_per_pixel or 0.0, self.budget / pixels)
