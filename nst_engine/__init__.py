"""nst-engine: batch neural style transfer (Gatys, Ecker, Bethge, CVPR 2016).

Layers, each importing only the ones below it:
``nst_engine.engine`` (pure PyTorch synthesis) and ``nst_engine.cli`` (typer).
"""

__version__ = "0.1.0"
