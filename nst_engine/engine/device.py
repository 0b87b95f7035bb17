"""The torch device a synthesis runs on, and the numeric precision it runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from nst_engine.engine.errors import ConfigError


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


@contextlib.contextmanager
def precision(device: torch.device, mode: str) -> Iterator[None]:
    """fp32: strict float32 everywhere; tf32: TF32 tensor cores (CUDA); bf16: the VGG
    convolutions in bfloat16 by autocast, losses and the optimizer in float32."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")
    if device.type != "cuda":
        with autocast:
            yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
