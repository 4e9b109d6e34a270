"""The ``vfinfer`` command line (click)."""

from vfinfer.cli.main import main

__all__ = ["main"]
