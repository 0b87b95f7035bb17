"""The ``nst`` command line (typer): thin, calling the layers below."""
