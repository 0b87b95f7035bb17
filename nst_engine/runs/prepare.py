"""Before a render: the manifest loaded and checked, the output root probed, the work items
expanded (every image decoded, the weights loaded), and the plan of what a render would do.
``nst plan`` stops here; ``nst render`` and ``nst submit`` go on from here."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nst_engine.results.table import RESULTS_FILE
from nst_engine.storage.errors import storage_problem

if TYPE_CHECKING:
    from nst_engine.planning.items import WorkItem
    from nst_engine.planning.manifest import Manifest
    from nst_engine.reports.plan import RenderPlan

#: Where ``nst bench scaling`` writes by default, and so where plans look for fits.
BENCH_OUTPUT = "out/bench"
DEFAULT_BENCH_RESULTS = posixpath.join(BENCH_OUTPUT, RESULTS_FILE)


@dataclass(frozen=True)
class Prepared:
    """A manifest ready to render: its file, its checked fields and its work items."""

    source: Path
    manifest: Manifest
    items: list[WorkItem]


def load(source: Path, output: str | None = None) -> Manifest:
    """The manifest with its own fields checked (no image read)."""
    from nst_engine.planning.manifest import load_manifest

    return load_manifest(source, output)


def check_output_root(output: str) -> None:
    """Refuse an output root that cannot take results (no folder, no permission, a bucket
    that refuses writes), found by writing, renaming and deleting a probe there: before
    any work starts, not after rendering, when the results would be lost."""
    from nst_engine.storage.roots import OutputRoot

    # a URI no filesystem takes is not echoed: it may hold a secret
    with storage_problem("output root: {error}"):
        OutputRoot(output).probe_writable()


def prepare(source: Path, output: str | None = None, skip_bad_inputs: bool = False) -> Prepared:
    """The manifest and its work items, after everything a run needs is checked: the
    manifest, the output root (written to), every image (decoded in full) and the weights
    (loaded); all before Ray starts. ``skip_bad_inputs``: items whose images are bad are
    kept (to be recorded as failed) rather than refused."""
    from nst_engine.planning.items import expand

    manifest = load(source, output)
    check_output_root(str(manifest.output))  # first: cheap, and the hash cache is written there
    with storage_problem(f"{manifest.output}: cannot use the output root ({{error}})"):
        items = expand(manifest, skip_bad_inputs=skip_bad_inputs)
    return Prepared(source, manifest, items)


def fit_locations(manifest: Manifest, requested: list[str] | None) -> list[str]:
    """Where the fits come from: ``requested``, else the output root itself and the
    default benchmark folder (``nst bench scaling``'s output), when they hold rows."""
    if requested:
        return requested
    return list(dict.fromkeys([str(manifest.output), BENCH_OUTPUT]))


def plan(
    prepared: Prepared, force: bool = False, fits_from: list[str] | None = None, verify: bool = False
) -> RenderPlan:
    """What rendering ``prepared`` would do: items done (their images verified: by size,
    or read in full with ``verify``), recovered, to render and bad, and the predicted time
    per device from earlier runs' fits (``fits_from``, else ``fit_locations``'s)."""
    from nst_engine.reports.plan import load_fits, make_plan
    from nst_engine.results.table import ResultTable
    from nst_engine.storage.roots import OutputRoot

    manifest = prepared.manifest
    with storage_problem(f"{manifest.output}: cannot read the output root ({{error}})"):
        fits, used = load_fits(fit_locations(manifest, fits_from), required=bool(fits_from))
        table = ResultTable(OutputRoot(str(manifest.output)))
        return make_plan(
            str(prepared.source), prepared.items, table, force=force, fits=fits, fits_from=used, verify=verify
        )
