"""Command line: ``ssbx run | fit | tortuosity | composite | analyze`` (entry point ``main``)."""

from ssbx.engine.cli.main import main

__all__ = ["main"]
