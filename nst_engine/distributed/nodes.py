"""Bad nodes stop getting work: the driver's ledger of faults per Ray node, and the pure
rule of what counts (``node_fault``) and when a node is out (``over_limit``).

A node whose workers' devices fail (``Outcome.DEVICE_FAULT``: a CUDA or driver error) or
whose workers die (``Outcome.LOST``) ``max_node_failures`` times is excluded for the rest
of the run, as Flamenco's blocklist and Deadline's worker limits do: ``dispatch`` releases
its workers (their items come back lost and are retried elsewhere) and asks Ray to place
no new worker there, by a label selector on Ray's own node-id label (``label_selector``:
``ray.io/node-id`` ``!in(...)``, Ray 2.60's actor option). Bad input, out of memory and an
unwritable output are the item's or the root's, never the node's. Plain data, no Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nst_engine.distributed.protocol import Outcome

#: The label every Ray node carries with its own id, which a label selector can exclude.
NODE_ID_LABEL = "ray.io/node-id"
#: Outcomes that say a node is at fault (a lost worker only when it died by itself).
NODE_FAULTS = frozenset({Outcome.DEVICE_FAULT, Outcome.LOST})


def node_fault(outcome: Outcome, *, released: bool) -> bool:
    """Whether an attempt that came to ``outcome`` counts against its worker's node.

    ``released``: the driver had stopped the worker itself before the attempt came back
    (retired, surplus, or on a node just excluded), so its lost calls are the driver's
    doing, not the node's: counting them would blame the node for each of a dead worker's
    calls rather than for its one death, and blame good nodes for an exclusion's release."""
    if outcome is Outcome.LOST:
        return not released
    return outcome in NODE_FAULTS


def over_limit(faults: int, max_node_failures: int) -> bool:
    """Whether a node with ``faults`` faults is excluded for the rest of the run."""
    return faults >= max_node_failures


@dataclass(frozen=True)
class ExcludedNode:
    """A node the run stopped using, and why (its last fault's error)."""

    node_id: str
    hostname: str
    reason: str

    def describe(self) -> str:
        return f"{self.hostname} (node {self.node_id[:12]}): {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class NodeLedger:
    """Faults counted per node id, and the nodes excluded by them, in order."""

    max_failures: int
    faults: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, ExcludedNode] = field(default_factory=dict)

    def fault(self, node_id: str, hostname: str, reason: str) -> ExcludedNode | None:
        """Count one fault against ``node_id``; the node, if this fault excludes it."""
        if node_id in self.excluded:
            return None
        self.faults[node_id] = self.faults.get(node_id, 0) + 1
        if not over_limit(self.faults[node_id], self.max_failures):
            return None
        node = ExcludedNode(node_id, hostname, f"{self.faults[node_id]} faults, last: {reason}")
        self.excluded[node_id] = node
        return node

    def label_selector(self) -> dict[str, str]:
        """The actor option that keeps new workers off every excluded node (none: {})."""
        if not self.excluded:
            return {}
        return {NODE_ID_LABEL: f"!in({','.join(sorted(self.excluded))})"}
