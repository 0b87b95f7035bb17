"""The one retry policy: what the driver does with an attempt's ``Outcome``.

A pure function of the outcome, the attempt's number and the limits (no Ray, no I/O), so
every case is one line of a table in ``tests/test_retry_policy.py``. Its rules:

* ok is recorded as it came;
* bad input, out of memory and an unwritable output are final at once: another attempt
  would fail the same way (the same input; the same size on the same kind of device; the
  same place to write);
* the output root full is final too, and stops the run handing out work (``stop_run``):
  every other item's image would be lost the same way, after its synthesis;
* crowded out, transient, a device fault and lost are retried, the item put first in its
  lane's queue, until ``max_attempts`` attempts are used up; then the item fails ("gave
  up after");
* crowded out, transient and a device fault count against the worker that returned them,
  which is retired at its ``max_worker_failures``-th; a lost worker is retired at once
  (what counts against a node is ``nodes.node_fault``'s rule);
* a lane's ``stop_on`` outcomes, once final, drop the lane's remaining queue (the scaling
  benchmark stops growing a device at its first out-of-memory size).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nst_engine.distributed.protocol import Outcome

#: Outcomes another attempt could turn out differently (on this worker or another).
RETRYABLE = frozenset({Outcome.CROWDED_OUT, Outcome.TRANSIENT, Outcome.DEVICE_FAULT, Outcome.LOST})
#: Outcomes that count against the worker that returned them (a lost one is retired anyway).
WORKER_FAULTS = frozenset({Outcome.CROWDED_OUT, Outcome.TRANSIENT, Outcome.DEVICE_FAULT})


class Action(StrEnum):
    """What becomes of the attempt's row and its item; the value is the row's ``status``."""

    OK = "ok"  # recorded as it came
    RETRY = "retried"  # recorded as retried; the item goes back to the queue, first
    FAIL = "failed"  # recorded as failed: the item is done with, for this run


@dataclass(frozen=True)
class Decision:
    action: Action
    worker_failed: bool = False  # one more failure counted against the worker
    retire: bool = False  # retire the worker (its lane replaces it while it has work)
    stop_lane: bool = False  # drop the lane's queue (its rule holds for this final outcome)
    gave_up: bool = False  # failed because its attempts are used up (the row's error says so)
    stop_run: bool = False  # hand out no more work: the output root takes no more writes


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    max_attempts: int,
    worker_failures: int,
    max_worker_failures: int,
    stop_on: frozenset[Outcome] = frozenset(),
) -> Decision:
    """The decision for attempt number ``attempt`` (from 1) of an item that came to
    ``outcome`` on a worker with ``worker_failures`` failures before this one."""
    if outcome is Outcome.OK:
        action = Action.OK
    elif outcome not in RETRYABLE:
        action = Action.FAIL
    else:
        action = Action.RETRY if attempt < max_attempts else Action.FAIL
    worker_failed = outcome in WORKER_FAULTS
    return Decision(
        action=action,
        worker_failed=worker_failed,
        retire=outcome is Outcome.LOST or (worker_failed and worker_failures + 1 >= max_worker_failures),
        stop_lane=action is not Action.RETRY and outcome in stop_on,
        gave_up=action is Action.FAIL and outcome in RETRYABLE,
        stop_run=outcome is Outcome.ROOT_FULL,
    )
