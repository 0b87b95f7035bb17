"""Whether a saved run state (a checkpoint's ``run``) is one a fresh run can continue from.

``Run.load_state_dict`` trusts its state: the engine's own snapshots are well formed, and a
wrong one fails loudly. A checkpoint is bytes from the output root, though: a damaged,
hand-edited or forged one must cost a restart, never the item, so the checkpointer checks
the whole state here before loading it (``check_state``). What is checked is what the
state's layout implies (``Run.state_dict``): every key, its type, every tensor's shape and
dtype against the run's, counts as whole numbers, and that it is a run in progress (a
checkpoint is never taken of a finished run, so a finished one is no one's checkpoint).
Nothing checks that the numbers are the ones a synthesis reached: whoever can write the
checkpoint can write any image of the right shape (see the fingerprint in ``checkpoint``).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch

from nst_engine.engine.optimize import AdamRun, IterationRecord, LBFGSRun, Run

#: The keys every saved state has, and each kind's own (``Run.state_dict``).
KEYS = frozenset({"kind", "image", "evaluations", "records", "stop_reason", "final"})
KIND_KEYS = {LBFGSRun.kind: frozenset({"values", "grad"}), AdamRun.kind: frozenset({"optimizer", "previous"})}
#: The fields of a saved iteration record (``IterationRecord``), and which are counts.
RECORD_FIELDS = frozenset(f.name for f in fields(IterationRecord))
RECORD_COUNTS = frozenset({"iteration", "evaluations"})
#: What Adam keeps of the image once it has stepped (amsgrad is off: the group says so).
ADAM_MOMENTS = frozenset({"step", "exp_avg", "exp_avg_sq"})


class UnusableState(ValueError):
    """A saved state that the run cannot continue from; the message says why."""


def check_state(run: Run, state: Any) -> None:
    """Raise ``UnusableState`` unless ``run`` (fresh, not yet stepped) can continue from
    ``state``: the layout of ``run.state_dict()`` for the run's kind, with the run's image
    shape and dtype, consistent sizes, whole counts, and the run still in progress."""
    _need(isinstance(state, dict), "the state is not a dict")
    _need(state.get("kind") == run.kind, f"a {state.get('kind')!r} state for a {run.kind} run")
    missing = (KEYS | KIND_KEYS.get(run.kind, frozenset())) - set(state)
    _need(not missing, f"missing {', '.join(sorted(missing))}")
    _tensor(state, "image", tuple(run.image.shape), run.image.dtype)
    _need(bool(torch.isfinite(state["image"]).all()), "image: not finite")
    _count(state, "evaluations")
    records = state.get("records")
    _need(isinstance(records, list), "records: not a list")
    _need(len(records) < run.settings.iterations, "records: as many as the run has iterations")
    for number, record in enumerate(records):
        _record(number, record)
    # a checkpoint is taken only between iterations of a run that goes on
    _need(state.get("stop_reason") is None, "stop_reason: a finished run")
    _need(state.get("final") is None, "final: a finished run")
    if isinstance(run, LBFGSRun):
        _check_lbfgs(run, state)
    elif isinstance(run, AdamRun):
        _check_adam(run, state)


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise UnusableState(why)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(state: dict[str, Any], key: str) -> int:
    value = state.get(key)
    _need(_is_count(value), f"{key}: not a whole number >= 0 ({value!r})")
    return value


def _tensor(
    state: dict[str, Any], key: str, shape: tuple[int, ...], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``state[key]``, a floating tensor of ``shape`` (and ``dtype`` when given)."""
    value = state.get(key)
    _need(isinstance(value, torch.Tensor), f"{key}: not a tensor")
    _need(tuple(value.shape) == shape, f"{key}: shape {tuple(value.shape)}, the run's is {shape}")
    _need(value.dtype == dtype if dtype else value.is_floating_point(), f"{key}: dtype {value.dtype}")
    return value


def _finite(tensor: torch.Tensor, key: str) -> None:
    _need(bool(torch.isfinite(tensor).all()), f"{key}: not finite")


def _record(number: int, record: Any) -> None:
    _need(isinstance(record, dict) and set(record) == RECORD_FIELDS, f"records[{number}]: not a record")
    _need(record["iteration"] == number, f"records[{number}]: iteration {record['iteration']!r}")
    for key, value in record.items():
        _need(
            _is_count(value) if key in RECORD_COUNTS else _is_number(value),
            f"records[{number}].{key}: {value!r}",
        )


def _check_lbfgs(run: LBFGSRun, state: dict[str, Any]) -> None:
    """The L-BFGS part: losses, gradient, and the ring (or the older list of pairs)."""
    n = run.image.numel()
    values = state.get("values")
    four = isinstance(values, list | tuple) and len(values) == 4 and all(map(_is_number, values))
    _need(values is None or four, "values: not four numbers")
    grad = state["grad"]
    if grad is not None:
        _need(isinstance(grad, torch.Tensor) and grad.numel() == n, "grad: not the run's size")
        _tensor(state, "grad", tuple(grad.shape))
    if "ring" in state:
        _check_ring(run, state, n)
    elif state.get("history") is not None:
        _check_pairs(run, state, n)


def _check_ring(run: LBFGSRun, state: dict[str, Any], n: int) -> None:
    """The ring as ``LBFGSRun._state`` saves it: the first min(written, m) slots."""
    ring, m = state["ring"], run.history_length
    _need(isinstance(ring, dict), "ring: not a dict")
    written = _count(ring, "written")
    pending = ring.get("pending")
    # the slot of the newest pair, until the next direction has tested it
    _need(
        pending == -1 or (written > 0 and pending == (written - 1) % m and _is_count(pending)),
        f"ring.pending: {pending!r} after {written} pairs in a ring of {m}",
    )
    k = min(written, m)
    for key, shape in (("s", (k, n)), ("y", (k, n)), ("sy", (k, k)), ("yy", (k, k))):
        _finite(_tensor(ring, key, shape), f"ring.{key}")
    good = ring.get("good")
    _need(isinstance(good, torch.Tensor) and tuple(good.shape) == (k,), "ring.good: not one flag per pair")
    _scale(state, required=True)


def _check_pairs(run: LBFGSRun, state: dict[str, Any], n: int) -> None:
    """The two-loop's list of (s, y, ρ) of checkpoints from before the ring."""
    history = state["history"]
    _need(isinstance(history, list) and len(history) <= run.history_length, "history: not a list of pairs")
    for number, pair in enumerate(history):
        _need(isinstance(pair, list | tuple) and len(pair) == 3, f"history[{number}]: not (s, y, rho)")
        s, y, rho = pair
        for name, vector in (("s", s), ("y", y)):
            _need(
                isinstance(vector, torch.Tensor) and vector.is_floating_point() and vector.numel() == n,
                f"history[{number}].{name}: not the run's size",
            )
            _finite(vector, f"history[{number}].{name}")
        rho = rho.item() if isinstance(rho, torch.Tensor) and rho.numel() == 1 else rho
        _need(_is_number(rho) and math.isfinite(rho), f"history[{number}].rho: {rho!r}")
    _scale(state, required=False)


def _scale(state: dict[str, Any], required: bool) -> None:
    """γ, one number (NaN without a good pair)."""
    scale = state.get("history_scale")
    if scale is None and not required:
        return
    _need(
        isinstance(scale, torch.Tensor) and scale.is_floating_point() and scale.numel() == 1,
        "history_scale: not one number",
    )


def _check_adam(run: AdamRun, state: dict[str, Any]) -> None:
    """Adam's moments of the image, and the settings its parameter group was made with."""
    saved, fresh = state.get("optimizer"), run.optimizer.state_dict()
    _need(isinstance(saved, dict), "optimizer: not a dict")
    moments, groups = saved.get("state"), saved.get("param_groups")
    _need(isinstance(moments, dict) and set(moments) <= {0}, "optimizer.state: not the image's")
    if moments:  # empty before the first step
        entry = moments[0]
        _need(isinstance(entry, dict) and set(entry) == ADAM_MOMENTS, "optimizer.state: not Adam's")
        step = _tensor(entry, "step", ())
        _need(bool(torch.isfinite(step)) and float(step) >= 0, f"optimizer step: {float(step)}")
        for key in ("exp_avg", "exp_avg_sq"):
            _finite(_tensor(entry, key, tuple(run.image.shape)), f"optimizer.{key}")
    _need(isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict), "param_groups")
    for key, value in fresh["param_groups"][0].items():
        _need(_plain(groups[0].get(key)) == _plain(value), f"param_groups.{key}: {groups[0].get(key)!r}")
    _need(_is_number(state.get("previous")), "previous: not a number")


def _plain(value: Any) -> Any:
    """Tuples as lists: a saved group's betas may come back as either."""
    return list(value) if isinstance(value, tuple) else value
