"""nst-engine: batch neural style transfer (Gatys, Ecker, Bethge, CVPR 2016).

Layers, each importing only the ones below it:

* ``nst_engine.engine``: the synthesis in pure PyTorch (no Ray, no CLI), usable as a library;
* ``nst_engine.planning``: manifests and work items with content-addressed ids (what to do);
* ``nst_engine.results``: output roots, the result schema and the Parquet store (what happened);
* ``nst_engine.distributed``: the Ray layer (worker actors, the scheduler, Ray Jobs);
* ``nst_engine.reports``: scaling fits, plots and the HTML report, read from result tables;
* ``nst_engine.cli``: the ``nst`` command (typer).
"""

__version__ = "0.1.0"
