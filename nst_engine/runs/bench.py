"""``nst bench scaling`` and ``nst estimate`` as functions: the same synthesis at each size
on every device kind of the cluster, rows to an output root; and the fits of time and
memory against pixels that earlier rows give."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_engine.errors import NSTError
from nst_engine.runs.events import Listener, Silent
from nst_engine.runs.lease import held
from nst_engine.runs.prepare import BENCH_OUTPUT

if TYPE_CHECKING:
    from nst_engine.planning.manifest import Manifest
    from nst_engine.reports.scaling import DeviceFit


@dataclass(frozen=True)
class ScalingRequest:
    """What to measure: ``sizes`` (longer side, px) × ``batches`` (1: alone) on ``devices``
    (``cpu``, ``gpu``), ``iterations`` each (the first ``warmup`` left out of the medians)."""

    sizes: list[int]
    iterations: int = 20
    warmup: int = 2
    devices: frozenset[str] = frozenset({"cpu", "gpu"})
    batches: list[int] = field(default_factory=lambda: [1])
    cpu_threads: int | None = None
    address: str | None = None
    output: Path = Path(BENCH_OUTPUT)
    content: Path | None = None  # default: the shipped Tübingen photo
    style: Path | None = None  # default: the shipped Starry Night
    weights: str = "embedded"
    wait: bool = False

    def check(self) -> None:
        """Refuse what cannot be measured, naming the field."""
        if not self.sizes or min(self.sizes) < 1:
            raise NSTError(f"give one or more sizes in pixels, got {self.sizes}", field="sizes")
        if not self.devices or self.devices - {"cpu", "gpu"}:
            raise NSTError(f"give cpu, gpu or cpu,gpu, got {','.join(sorted(self.devices))}", field="devices")
        if not self.batches or min(self.batches) < 1:
            raise NSTError(f"give whole numbers >= 1, got {self.batches}", field="batches")
        if self.iterations < 2:
            raise NSTError(f"must be at least 2, got {self.iterations}", field="iterations")
        if not 0 <= self.warmup < self.iterations:
            raise NSTError(f"must be between 0 and iterations - 1, got {self.warmup}", field="warmup")


@dataclass(frozen=True)
class Measured:
    """What a scaling bench wrote: its rows, items/s per (device, pixels, batch) when it
    batched, where the results are, and why its lease was lost (None: it was not)."""

    rows: list[dict[str, Any]]
    throughput: dict[tuple[str, int, int], float]
    results: str
    root: str
    lost: str | None


def scaling(request: ScalingRequest, listener: Listener | None = None) -> Measured:
    """Measure ``request`` on the connected cluster (connected here); each row reaches the
    listener as it comes."""
    from nst_engine.distributed.bench import batched_items, items_per_second
    from nst_engine.planning.items import expand
    from nst_engine.results.table import where_rows_are
    from nst_engine.storage.roots import OutputRoot

    listener = listener or Silent()
    request.check()
    manifest = _manifest(request)
    items = expand(manifest)
    root = OutputRoot(manifest.output)
    with held(root, "nst bench scaling", None, request.wait, listener) as lease:  # rows and compaction
        rows = _measure(request, manifest, items, root, listener)
        lost = lease.lost
    throughput = (
        items_per_second(rows, batched_items(items, request.batches)[1]) if len(request.batches) > 1 else {}
    )
    return Measured(rows, throughput, where_rows_are(root), root.uri, lost)


def _manifest(request: ScalingRequest) -> Manifest:
    """The bench as a manifest: one content, one style, every size."""
    from nst_engine.engine.weights_spec import sample_images
    from nst_engine.planning.manifest import manifest_from_dict

    samples = {p.stem: p for p in sample_images()}
    data = {
        "name": "scaling",
        "output": str(request.output.resolve()),
        "layout": "{size}/{content}_{style}.png",
        "contents": [str((request.content or samples["tubingen"]).resolve())],
        "styles": [str((request.style or samples["starry_night"]).resolve())],
        "sizes": request.sizes,
        "params": {"iterations": request.iterations, "tolerance": 0},
        "weights": {"source": request.weights},
    }
    return manifest_from_dict(data, Path.cwd())


def _measure(request: ScalingRequest, manifest: Manifest, items: list, root: Any, listener: Listener) -> list:
    from nst_engine.distributed.bench import device_slots, run_scaling
    from nst_engine.distributed.runtime import connect, disconnect  # Ray: loaded when needed

    where = connect(request.address)
    try:
        slots = device_slots(set(request.devices), request.cpu_threads)
        if not slots:
            raise NSTError(f"the cluster has no device of kind {','.join(sorted(request.devices))}")
        listener.connected(f"scaling on {where}: {', '.join(s.label for s in slots)}; sizes {request.sizes}")
        return run_scaling(
            items,
            manifest.weights,
            root,
            slots,
            request.warmup,
            lambda slot, row: listener.row(slot.label, row),
            batches=request.batches,
        )
    finally:
        disconnect()


def fits(locations: list[str]) -> list[DeviceFit]:
    """Time and memory against pixels per device, fitted to the rows at ``locations``
    (result tables: a .parquet file, an output folder, or a URI), each of which must hold
    some."""
    from nst_engine.reports.plan import load_fits

    found, _ = load_fits(locations, required=True)
    if not found:
        raise NSTError(
            "no device has ok rows at 3 or more sizes; run 'nst bench scaling --sizes 128,256,384,...'"
        )
    return found
