"""Entry point of the ``nst`` command: registers every sub-command on the app."""
# ruff: noqa: I001  (import order is the order of the commands in --help)

from nst_engine.cli import stylize  # noqa: F401
from nst_engine.cli import render  # noqa: F401
from nst_engine.cli import jobs  # noqa: F401
from nst_engine.cli import report  # noqa: F401
from nst_engine.cli import bench  # noqa: F401
from nst_engine.cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
