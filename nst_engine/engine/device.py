"""The torch device a synthesis runs on, and the numeric precision its kernels run in.

Precision modes: fp32 runs everything in IEEE float32; tf32 lets cuDNN run the network's
convolutions on TF32 tensor cores; bf16 runs the network's forward in bfloat16 under
autocast (its backward follows the forward's dtypes). In every mode the Gram matrices,
the losses and their backward, and the optimizer run in float32: Gram sums over a whole
image need float32's mantissa, and L-BFGS's curvature pairs are differences of nearby
gradients.

cuDNN's TF32 switch, its autotuning switch and cuBLAS's TF32 switch are process-wide and
read when a kernel is launched, so a worker whose threads run items of different
precisions must never toggle them per item. ``network_pass`` makes one owner hold them
for the whole launch of a network pass (forward and backward) and sets all of them
explicitly each time, so no pass inherits another's settings, nor PyTorch's default of
TF32 convolutions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Iterator, Sequence

import torch

from nst_engine.errors import ConfigError

#: Most distinct input shapes a process lets cuDNN autotune (``torch.backends.cudnn.benchmark``).
#: Tuning a shape runs every candidate algorithm of every convolution once (and counts its
#: workspace as memory in use); a worker meets a few shapes over and over (its batch sizes
#: at its image sizes), which tuning pays for, but a long tail of one-off shapes would each
#: pay the tuning again. Past this many, new shapes run on cuDNN's heuristics.
AUTOTUNE_SHAPES = 16

_switches = threading.RLock()  # held while a network pass launches its kernels
_tuned: set[Hashable] = set()  # shapes cuDNN has autotuned in this process


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is the GPU when one is visible, else the CPU; a named device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", field="device"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{device}: no CUDA GPU is visible; use cpu", field="device")
    return resolved


def to_device(values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A short host list as a tensor on ``device`` without waiting: a plain copy from
    pageable memory to a GPU waits for every kernel queued before it, which would make
    each index or step list a hidden sync; from pinned memory it is queued like a kernel."""
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast(device: torch.device, mode: str) -> torch.autocast:
    """Around a network's forward only: bfloat16 convolutions in bf16 mode, else nothing.
    The losses and the backward call stay outside, in float32 (autocast would otherwise
    also run the Gram matrices' backward products in bfloat16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")


@contextlib.contextmanager
def network_pass(device: torch.device, mode: str, shape: Hashable | None = None) -> Iterator[None]:
    """Hold the process-wide kernel switches for one network pass in ``mode`` (forward and
    backward launched inside): TF32 convolutions only in tf32 mode, TF32 matrix products
    never, and cuDNN autotuning for ``shape`` while the process's tuning budget
    (``AUTOTUNE_SHAPES``) lasts or the shape is tuned already (``None``: a shape that keeps
    changing, such as a moving tile, never tunes). A no-op on the CPU."""
    if device.type != "cuda":
        yield
        return
    with _switches:
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = _autotune(shape)
        yield


def _autotune(shape: Hashable | None) -> bool:
    """Whether cuDNN may autotune (or reuse what it tuned for) ``shape``."""
    if shape is None:
        return False
    if shape not in _tuned and len(_tuned) < AUTOTUNE_SHAPES:
        _tuned.add(shape)
    return shape in _tuned
