"""The ``moe2`` command line: the Typer app (``app.py``) and one module per command group."""

from moe2.cli.app import app

__all__ = ["app"]
