"""The retry policy (``distributed.retry.decide``) as a table: every outcome, below and at
the attempt limit, below and at the worker's failure limit, with and without a lane rule;
and the worker's outcome for each kind of exception; the node rule (``nodes``) and its
ledger. No Ray is started."""

from __future__ import annotations

import errno
import os

import pytest
import ray
import torch

from nst_engine.distributed.nodes import (
    NODE_FAULTS,
    NODE_ID_LABEL,
    ExcludedNode,
    NodeLedger,
    node_fault,
    over_limit,
)
from nst_engine.distributed.protocol import Outcome
from nst_engine.distributed.retry import Action, Decision, decide
from nst_engine.distributed.worker import OutputWriteError, outcome_of
from nst_engine.engine.batch import CrowdedOut
from nst_engine.errors import ConfigError, ImageInputError

OK, RETRY, FAIL = Action.OK, Action.RETRY, Action.FAIL
MAX_ATTEMPTS, MAX_FAILURES = 3, 3
OOM_STOPS = frozenset({Outcome.OUT_OF_MEMORY})  # the scaling bench's rule

# outcome, attempt, the worker's failures before it, the lane's stop_on -> the decision
TABLE: list[tuple[Outcome, int, int, frozenset[Outcome], Decision]] = [
    # ok: recorded as it came, whatever the attempt
    (Outcome.OK, 1, 0, frozenset(), Decision(OK)),
    (Outcome.OK, MAX_ATTEMPTS, 2, frozenset(), Decision(OK)),
    (Outcome.OK, 1, 0, OOM_STOPS, Decision(OK)),
    # bad input: final at once, not the worker's fault
    (Outcome.BAD_INPUT, 1, 0, frozenset(), Decision(FAIL)),
    (Outcome.BAD_INPUT, MAX_ATTEMPTS, 2, frozenset(), Decision(FAIL)),
    (Outcome.BAD_INPUT, 1, 0, OOM_STOPS, Decision(FAIL)),
    # out of memory: final at once; stops a lane whose rule says so
    (Outcome.OUT_OF_MEMORY, 1, 0, frozenset(), Decision(FAIL)),
    (Outcome.OUT_OF_MEMORY, MAX_ATTEMPTS, 2, frozenset(), Decision(FAIL)),
    (Outcome.OUT_OF_MEMORY, 1, 0, OOM_STOPS, Decision(FAIL, stop_lane=True)),
    (Outcome.OUT_OF_MEMORY, MAX_ATTEMPTS, 0, OOM_STOPS, Decision(FAIL, stop_lane=True)),
    # crowded out: retried until the attempts are used up; counts against the worker
    (Outcome.CROWDED_OUT, 1, 0, frozenset(), Decision(RETRY, worker_failed=True)),
    (Outcome.CROWDED_OUT, MAX_ATTEMPTS - 1, 0, frozenset(), Decision(RETRY, worker_failed=True)),
    (Outcome.CROWDED_OUT, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL, worker_failed=True, gave_up=True)),
    (Outcome.CROWDED_OUT, 1, MAX_FAILURES - 1, frozenset(), Decision(RETRY, worker_failed=True, retire=True)),
    (Outcome.CROWDED_OUT, 1, 0, OOM_STOPS, Decision(RETRY, worker_failed=True)),
    # transient: the same as crowded out
    (Outcome.TRANSIENT, 1, 0, frozenset(), Decision(RETRY, worker_failed=True)),
    (Outcome.TRANSIENT, MAX_ATTEMPTS - 1, 1, frozenset(), Decision(RETRY, worker_failed=True)),
    (Outcome.TRANSIENT, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL, worker_failed=True, gave_up=True)),
    (Outcome.TRANSIENT, 1, MAX_FAILURES - 1, frozenset(), Decision(RETRY, worker_failed=True, retire=True)),
    (
        Outcome.TRANSIENT,
        MAX_ATTEMPTS,
        MAX_FAILURES - 1,
        frozenset(),
        Decision(FAIL, worker_failed=True, retire=True, gave_up=True),
    ),
    # a lane rule on a retryable outcome holds only once it is final
    (Outcome.TRANSIENT, 1, 0, frozenset({Outcome.TRANSIENT}), Decision(RETRY, worker_failed=True)),
    (
        Outcome.TRANSIENT,
        MAX_ATTEMPTS,
        0,
        frozenset({Outcome.TRANSIENT}),
        Decision(FAIL, worker_failed=True, stop_lane=True, gave_up=True),
    ),
    # a device fault: retried (elsewhere: it counts against the worker, and its node in nodes.py)
    (Outcome.DEVICE_FAULT, 1, 0, frozenset(), Decision(RETRY, worker_failed=True)),
    (
        Outcome.DEVICE_FAULT,
        1,
        MAX_FAILURES - 1,
        frozenset(),
        Decision(RETRY, worker_failed=True, retire=True),
    ),
    (Outcome.DEVICE_FAULT, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL, worker_failed=True, gave_up=True)),
    # lost: retried until the attempts are used up; the worker is retired, not counted
    (Outcome.LOST, 1, 0, frozenset(), Decision(RETRY, retire=True)),
    (Outcome.LOST, MAX_ATTEMPTS - 1, 0, frozenset(), Decision(RETRY, retire=True)),
    (Outcome.LOST, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL, retire=True, gave_up=True)),
    (Outcome.LOST, 1, 0, OOM_STOPS, Decision(RETRY, retire=True)),
    # the item's image cannot be written where it belongs: final at once, not the worker's fault
    (Outcome.OUTPUT_UNWRITABLE, 1, 0, frozenset(), Decision(FAIL)),
    (Outcome.OUTPUT_UNWRITABLE, 1, MAX_FAILURES - 1, frozenset(), Decision(FAIL)),
    (Outcome.OUTPUT_UNWRITABLE, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL)),
    # the output root is full: final, and the run hands out no more work
    (Outcome.ROOT_FULL, 1, 0, frozenset(), Decision(FAIL, stop_run=True)),
    (Outcome.ROOT_FULL, 1, MAX_FAILURES - 1, OOM_STOPS, Decision(FAIL, stop_run=True)),
    (Outcome.ROOT_FULL, MAX_ATTEMPTS, 0, frozenset(), Decision(FAIL, stop_run=True)),
]


def _os_error(code: int) -> OSError:
    """The ``OSError`` a failed write raises (its subclass for the errno, as the OS gives it)."""
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize(("outcome", "attempt", "failures", "stop_on", "expected"), TABLE)
def test_retry_policy_table(
    outcome: Outcome, attempt: int, failures: int, stop_on: frozenset[Outcome], expected: Decision
) -> None:
    decision = decide(
        outcome,
        attempt=attempt,
        max_attempts=MAX_ATTEMPTS,
        worker_failures=failures,
        max_worker_failures=MAX_FAILURES,
        stop_on=stop_on,
    )
    assert decision == expected
    assert decision.action.value in {"ok", "retried", "failed"}  # the row's status values, unchanged


def test_the_table_covers_every_outcome_at_and_below_the_attempt_limit() -> None:
    cases = {(outcome, attempt == MAX_ATTEMPTS) for outcome, attempt, *_ in TABLE}
    assert cases == {(outcome, last) for outcome in Outcome for last in (False, True)}


def test_one_attempt_allowed_means_no_retry() -> None:
    for outcome in Outcome:
        decision = decide(outcome, attempt=1, max_attempts=1, worker_failures=0, max_worker_failures=3)
        assert decision.action is (OK if outcome is Outcome.OK else FAIL), outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (ImageInputError("photos/broken.png: not an image"), Outcome.BAD_INPUT),
        (ConfigError("must be positive", field="ratio"), Outcome.BAD_INPUT),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Outcome.OUT_OF_MEMORY),
        (MemoryError("512x512 does not fit alone: predicted 900 MiB"), Outcome.OUT_OF_MEMORY),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
            Outcome.OUT_OF_MEMORY,
        ),
        (CrowdedOut("256x256 did not fit beside 3 other syntheses"), Outcome.CROWDED_OUT),
        # by type, not text: a CrowdedOut that quotes the allocator's failure is still crowded out
        (
            CrowdedOut("the optimizer's state of 4 syntheses did not fit together: can't allocate memory"),
            Outcome.CROWDED_OUT,
        ),
        (OSError("Connection reset by peer"), Outcome.TRANSIENT),
        (RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"), Outcome.TRANSIENT),
        # the device or its driver failed: the node's fault, not the item's
        (
            torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
            Outcome.DEVICE_FAULT,
        ),
        (RuntimeError("CUDA error: uncorrectable ECC error encountered"), Outcome.DEVICE_FAULT),
        (RuntimeError("CUDA error: unspecified launch failure"), Outcome.DEVICE_FAULT),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"), Outcome.DEVICE_FAULT),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), Outcome.DEVICE_FAULT),
        (RuntimeError("NCCL error: unhandled system error"), Outcome.DEVICE_FAULT),
        # ... but an allocation failure is the item's size, even in a CUDA library's words
        (RuntimeError("CUDA error: out of memory"), Outcome.OUT_OF_MEMORY),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), Outcome.OUT_OF_MEMORY),
        # an image not written, by its errno: the whole root, the item's place, or a hiccup
        (OutputWriteError("s/32/a.png", _os_error(errno.ENOSPC)), Outcome.ROOT_FULL),
        (OutputWriteError("s/32/a.png", _os_error(errno.EDQUOT)), Outcome.ROOT_FULL),
        (OutputWriteError("s/32/a.png", _os_error(errno.ENOTDIR)), Outcome.OUTPUT_UNWRITABLE),
        (OutputWriteError("s/32/a.png", _os_error(errno.EEXIST)), Outcome.OUTPUT_UNWRITABLE),
        (OutputWriteError("s/32/a.png", _os_error(errno.EACCES)), Outcome.OUTPUT_UNWRITABLE),
        (OutputWriteError("s/32/a.png", _os_error(errno.EROFS)), Outcome.OUTPUT_UNWRITABLE),
        (OutputWriteError("s/32/a.png", _os_error(errno.EIO)), Outcome.TRANSIENT),
        (OutputWriteError("s/32/a.png", OSError("AWS Error NETWORK_CONNECTION")), Outcome.TRANSIENT),
        # the same errno anywhere but the image's write (an input read, say) decides nothing
        (_os_error(errno.ENOSPC), Outcome.TRANSIENT),
        (_os_error(errno.EACCES), Outcome.TRANSIENT),
    ],
)
def test_the_worker_decides_the_outcome_from_the_exception_type(exc: Exception, outcome: Outcome) -> None:
    assert outcome_of(exc) is outcome
    assert not ray.is_initialized()


# the node rule (``nodes.node_fault``): outcome, whether the driver had released the worker
NODE_TABLE: list[tuple[Outcome, bool, bool]] = [
    (Outcome.DEVICE_FAULT, False, True),
    (Outcome.DEVICE_FAULT, True, True),  # a retired worker's device still failed on that node
    (Outcome.LOST, False, True),  # the worker died by itself
    (Outcome.LOST, True, False),  # the driver stopped it (retired, surplus, its node excluded)
    *[(o, released, False) for o in Outcome if o not in NODE_FAULTS for released in (False, True)],
]


@pytest.mark.parametrize(("outcome", "released", "counts"), NODE_TABLE)
def test_node_fault_table(outcome: Outcome, released: bool, counts: bool) -> None:
    assert node_fault(outcome, released=released) is counts


def test_the_node_table_covers_every_outcome() -> None:
    assert {outcome for outcome, *_ in NODE_TABLE} == set(Outcome)


@pytest.mark.parametrize(
    ("faults", "limit", "out"), [(0, 3, False), (2, 3, False), (3, 3, True), (1, 1, True)]
)
def test_a_node_is_excluded_at_its_limit(faults: int, limit: int, out: bool) -> None:
    assert over_limit(faults, limit) is out


def test_the_ledger_excludes_a_node_once_and_selects_against_every_excluded_node() -> None:
    ledger = NodeLedger(max_failures=2)
    assert ledger.label_selector() == {}
    assert ledger.fault("a" * 56, "gpu-1", "CUDA error: x") is None
    assert ledger.fault("b" * 56, "gpu-2", "worker lost") is None  # another node's count is its own
    first = ledger.fault("a" * 56, "gpu-1", "CUDA error: y")
    assert first == ExcludedNode("a" * 56, "gpu-1", "2 faults, last: CUDA error: y")
    assert ledger.fault("a" * 56, "gpu-1", "CUDA error: z") is None  # excluded once
    assert ledger.label_selector() == {NODE_ID_LABEL: f"!in({'a' * 56})"}
    assert ledger.fault("b" * 56, "gpu-2", "worker lost") is not None
    assert ledger.label_selector() == {NODE_ID_LABEL: f"!in({'a' * 56},{'b' * 56})"}
    assert list(ledger.excluded) == ["a" * 56, "b" * 56]
