"""nst-engine: batch neural style transfer (Gatys, Ecker, Bethge, CVPR 2016).

Layers, each importing only the ones below it:

* ``nst_engine.errors`` and ``nst_engine.validation``: one-line errors, validated values;
* ``nst_engine.storage``: where bytes live (URIs, atomic writes, output roots, the lease);
* ``nst_engine.engine``: the synthesis in pure PyTorch (no Ray, no CLI), usable as a library;
* ``nst_engine.planning``: manifests and work items with content-addressed ids (what to do);
* ``nst_engine.results``: the result schema, the result table, resume (what happened);
* ``nst_engine.reports``: scaling fits, the plan, plots and the HTML report, over result tables;
* ``nst_engine.distributed``: the Ray layer (worker actors, scheduling, Ray Jobs);
* ``nst_engine.runs``: what each command does, callable from Python;
* ``nst_engine.cli``: the ``nst`` command (typer), thin.
"""

__version__ = "0.1.0"
