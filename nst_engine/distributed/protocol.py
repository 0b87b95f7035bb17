"""What a worker hands back to the driver for each item of a call: an ``Attempt``, its
result row and its ``Outcome``.

The outcome is decided where the exception is caught, from its type (``worker.outcome_of``),
so the driver's retry policy (``retry.decide``) never reads an error's text; the row keeps
its text for people and reports. Plain data, no Ray: the driver, the workers and the
policy's tests all import it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What one attempt at one item came to."""

    #: the image is written and the row complete
    OK = "ok"
    #: the item's own input is at fault (``NSTError``): another attempt fails the same way
    BAD_INPUT = "bad input"
    #: the synthesis does not fit its device at this size, even alone: final
    OUT_OF_MEMORY = "out of memory"
    #: it ran out of memory beside other syntheses of a batch (``CrowdedOut``), whose
    #: memory it may get on another attempt
    CROWDED_OUT = "crowded out"
    #: anything else the worker caught (an I/O hiccup, its batch failing to open)
    TRANSIENT = "transient"
    #: the item's image could not be written where it belongs (``UNWRITABLE_ERRNOS``: a
    #: file where its folder should be, no permission): another attempt fails the same way
    OUTPUT_UNWRITABLE = "output unwritable"
    #: the output root takes no more writes (``ROOT_FULL_ERRNOS``): final for the item, and
    #: the run stops handing out work, whose images would be lost the same way
    ROOT_FULL = "output root full"
    #: the worker's device or its driver failed (``is_device_fault``: a CUDA, cuBLAS, cuDNN
    #: or NCCL error): not the item's fault, so it is retried elsewhere, and it counts
    #: against the worker and its node (``nodes``), which may be excluded for the run
    DEVICE_FAULT = "device fault"
    #: the worker or its node died with the call; made by the driver, never by a worker
    LOST = "lost"


@dataclass(frozen=True)
class Attempt:
    """One attempt's result row (``results.schema.make_row``; status ``ok`` or ``failed``
    as the worker made it) and what it came to. The driver settles the row's final
    status (``retried`` when the item goes back to the queue) before recording it."""

    row: dict[str, Any]
    outcome: Outcome


#: Why a write of an item's image failed, by errno, when it says where the fault lies: the
#: whole output root is out of space or quota ...
ROOT_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: ... or the item's own place cannot be written (a file in the way of its folder, a
#: folder in the way of the file, no permission, a read-only filesystem, a name too long).
#: Any other write error (EIO, a network storage's hiccup without an errno) is transient.
UNWRITABLE_ERRNOS = frozenset(
    {
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EFBIG,
    }
)


def write_outcome(code: int | None) -> Outcome:
    """The outcome of an item whose image could not be written with errno ``code``."""
    if code in ROOT_FULL_ERRNOS:
        return Outcome.ROOT_FULL
    if code in UNWRITABLE_ERRNOS:
        return Outcome.OUTPUT_UNWRITABLE
    return Outcome.TRANSIENT


#: What the text of a plain ``RuntimeError`` carries when a device or its driver failed
#: (older torch raises these rather than ``torch.AcceleratorError``): the execution and
#: internal errors of CUDA's libraries, not their bad-parameter or not-supported errors,
#: which are the call's and fail alike on any node. Allocation failures among them are
#: checked first (``engine.memory.is_out_of_memory``): those are the item's size.
DEVICE_FAULT_MARKERS = (
    "CUDA error",
    "CUDA driver error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR",
    "NCCL error",
    "HIP error",
)


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` says the worker's accelerator or its driver failed: a
    ``torch.AcceleratorError`` (matched by name, so this module needs no torch), or a
    ``RuntimeError`` naming a device library's error (``DEVICE_FAULT_MARKERS``)."""
    if any(cls.__name__ == "AcceleratorError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in DEVICE_FAULT_MARKERS)
